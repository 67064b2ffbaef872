"""GGUF files, memory-mapped and lazy.

`open_gguf(path)` checks the file before the `gguf` package parses it (a truncated file or
a header with absurd counts gets one clear `ModelFileError`, never a giant allocation), then
exposes the metadata as plain Python values and each tensor as a lazy view of its bytes.

Shapes are in numpy order: a weight GGUF lists as (in, out) ggml dims is (out, in) here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader

from drift.errors import ModelFileError, UnsupportedError
from drift.formats import quants

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: (rows, cols) for a matrix
    qtype: GGMLQuantizationType
    data: np.ndarray  # uint8 (or float) memmap view of the stored bytes; nothing is copied

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


class GGUFFile:
    """One opened GGUF file: `metadata` (key -> value) and `tensors` (name -> TensorInfo)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        _precheck(self.path)
        try:
            reader = GGUFReader(self.path, "r")
        except (ValueError, IndexError, OverflowError, MemoryError, KeyError, TypeError) as e:
            raise ModelFileError(f"{self.path}: not a readable GGUF file ({e})") from None
        self._reader = reader
        self.version = int(reader.fields["GGUF.version"].contents())

    @cached_property
    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, field in self._reader.fields.items():
            if key.startswith("GGUF."):
                continue
            out[key] = field.contents()
        return out

    @cached_property
    def tensors(self) -> dict[str, TensorInfo]:
        out = {}
        for t in self._reader.tensors:
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            out[t.name] = TensorInfo(t.name, shape, GGMLQuantizationType(t.tensor_type), t.data)
        return out

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise ModelFileError(f"{self.path}: no general.architecture key")
        return arch

    def dequantize(self, name: str) -> np.ndarray:
        """The whole tensor as float32 in its numpy shape."""
        info = self.tensors[name]
        return quants.dequantize(info.data, info.qtype, info.shape, tensor_name=name)

    def dequantize_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Some rows of a 2-D tensor as float32, (len(rows), cols): an embedding lookup that
        does not expand the whole table."""
        info = self.tensors[name]
        rows = np.asarray(rows, dtype=np.int64)
        raw = np.asarray(info.data)[rows]
        return quants.dequantize(raw, info.qtype, (len(rows), info.shape[-1]), tensor_name=name)


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    return GGUFFile(path)


def _precheck(path: str) -> None:
    """Fail early, with one line, on what the gguf package would turn into a traceback."""
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ModelFileError(f"{path}: is a directory, not a GGUF file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 4 or head[:4] != GGUF_MAGIC:
        raise ModelFileError(f"{path}: not a GGUF file (bad magic {head[:4]!r})")
    if len(head) < 24:
        raise ModelFileError(f"{path}: truncated GGUF header ({size} bytes)")
    version = int.from_bytes(head[4:8], "little")
    if version not in (2, 3):
        raise UnsupportedError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    n_tensors = int.from_bytes(head[8:16], "little")
    n_kv = int.from_bytes(head[16:24], "little")
    # Each tensor info and each key/value takes well over 8 bytes; counts beyond what the file
    # could hold are corruption, and trusting them would allocate or loop without end.
    if n_tensors * 8 > size or n_kv * 8 > size:
        raise ModelFileError(
            f"{path}: corrupt GGUF header ({n_tensors} tensors, {n_kv} keys in {size} bytes)"
        )


def check_quant_supported(info: TensorInfo) -> None:
    if info.qtype not in quants.SUPPORTED:
        raise UnsupportedError(
            f"tensor {info.name}: quant type {info.qtype.name} is not supported "
            f"(supported: {', '.join(t.name for t in quants.SUPPORTED)})"
        )
