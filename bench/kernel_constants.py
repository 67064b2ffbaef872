"""Kernel constants set from the command line, for comparing variants one process a setting
(`drift_with.py`, `gpuapi_kernels.py --set`, `gpuapi_attention.py --set`): NVIDIA's OpenCL
has crashed on a second backend in one process, and WebGPU's later settings ran slower.

`kernel_tile_rows` (the quant planes' tile) and `render_memo` are GPUBackend's, every other
name the templates'.
"""

from __future__ import annotations

import ast
import re

from drift.backends.kernels import templates
from drift.backends.kernels.gpu import GPUBackend


def owner(key: str):
    return GPUBackend if key in ("kernel_tile_rows", "render_memo") else templates


def items(text: str) -> list[str]:
    """K=V,K=V (a comma inside parentheses or brackets belongs to its value: a tuple)."""
    return [kv for kv in re.split(r",(?![^()\[\]]*[)\]])", text) if kv]


def parse(items: list[str]) -> dict:
    """{name: value} of CONSTANT=python-literal items; ValueError (one line) on a bad item or
    an unknown constant."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"{item!r} is not CONSTANT=python-literal")
        if not hasattr(owner(key), key):
            raise ValueError(f"no constant {key}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"{item!r} is not CONSTANT=python-literal") from None
    return out


def apply(settings: dict) -> dict:
    """Set each constant; returns the values they had."""
    saved = {k: getattr(owner(k), k) for k in settings}
    for k, v in settings.items():
        setattr(owner(k), k, v)
    return saved
