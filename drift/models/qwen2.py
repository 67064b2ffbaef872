"""Qwen2 / Qwen2.5: Llama's block with biases on Q, K, V and NeoX-style RoPE."""

from __future__ import annotations

from typing import Any

from drift.models import llama
from drift.models.config import ModelConfig

ARCHS = ("qwen2",)


def config_from_metadata(md: dict[str, Any], tensor_names: set[str], source: str) -> ModelConfig:
    return llama.config_from_metadata(md, tensor_names, source).with_(
        rope_mode="neox", qkv_bias=True
    )
