"""Llama 2 / 3.x and the models that share its GGUF layout: SmolLM2, Mistral, TinyLlama."""

from __future__ import annotations

from typing import Any

from drift.errors import UnsupportedError
from drift.models.config import Metadata, ModelConfig

ARCHS = ("llama",)


def rope_scaling(m: Metadata) -> float:
    """The linear positions factor; Llama 3's scaling comes as the rope_freqs tensor instead."""
    kind = m.md.get(f"{m.arch}.rope.scaling.type", "none")
    if kind in ("none", "llama3"):
        return 1.0
    if kind == "linear":
        return 1.0 / m.get("rope.scaling.factor", kind=float)
    raise UnsupportedError(f"{m.source}: rope scaling {kind!r} is not supported (none, linear)")


def config_from_metadata(md: dict[str, Any], tensor_names: set[str], source: str) -> ModelConfig:
    arch = md["general.architecture"]
    m = Metadata(md, arch, source)
    d_model, n_heads = m.get("embedding_length"), m.get("attention.head_count")
    head_dim = m.get("attention.key_length", d_model // n_heads)
    return ModelConfig(
        arch=arch,
        n_layers=m.get("block_count"),
        d_model=d_model,
        d_ff=m.get("feed_forward_length"),
        n_heads=n_heads,
        n_kv_heads=m.get("attention.head_count_kv", n_heads),
        head_dim=head_dim,
        v_head_dim=m.get("attention.value_length", head_dim),
        vocab_size=m.vocab_size(),
        ctx_train=m.get("context_length"),
        norm_eps=m.get("attention.layer_norm_rms_epsilon", kind=float),
        rope_theta=m.get("rope.freq_base", 10000.0, kind=float),
        rope_dims=m.get("rope.dimension_count", head_dim),
        rope_mode="norm",
        rope_freq_scale=rope_scaling(m),
        has_rope_freqs="rope_freqs.weight" in tensor_names,
        tied_embeddings="output.weight" not in tensor_names,
    )
