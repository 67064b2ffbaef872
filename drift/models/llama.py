"""Llama 2 / 3.x and the models that share its GGUF layout: SmolLM2, Mistral, TinyLlama."""

from __future__ import annotations

from typing import Any

from drift.errors import ModelFileError, UnsupportedError, quote
from drift.models.config import MAX_DIM, MAX_HEADS, MAX_POSITIONS, Metadata, ModelConfig, count_blocks

ARCHS = ("llama",)


def rope_scaling(m: Metadata) -> float:
    """The linear positions factor; Llama 3's scaling comes as the rope_freqs tensor instead."""
    kind = m.md.get(f"{m.arch}.rope.scaling.type", "none")
    if not isinstance(kind, str):
        m.check(f"{m.arch}.rope.scaling.type", kind, kind=str)
    if kind in ("none", "llama3"):
        return 1.0
    if kind == "linear":
        return 1.0 / m.get("rope.scaling.factor", kind=float, lo=0.0, hi=1e6, lo_open=True)
    raise UnsupportedError(f"{m.source}: rope scaling {quote(kind)} is not supported (none, linear)")


def config_from_metadata(md: dict[str, Any], tensor_names: set[str], source: str) -> ModelConfig:
    """Every value range-checked where it is read; the block count against the blocks present
    (the shapes of the tensors are checked against the config afterwards)."""
    arch = md["general.architecture"]
    m = Metadata(md, arch, source)
    d_model = m.get("embedding_length", lo=1, hi=MAX_DIM)
    n_heads = m.get("attention.head_count", lo=1, hi=MAX_HEADS)
    n_kv_heads = m.get("attention.head_count_kv", n_heads, lo=1, hi=n_heads)
    if n_heads % n_kv_heads:
        raise ModelFileError(f"{source}: {arch}.attention.head_count={n_heads} is not a multiple "
                             f"of {arch}.attention.head_count_kv={n_kv_heads}")
    if f"{arch}.attention.key_length" not in md and d_model % n_heads:
        raise ModelFileError(f"{source}: {arch}.embedding_length={d_model} is not a multiple of "
                             f"{arch}.attention.head_count={n_heads}")
    head_dim = m.get("attention.key_length", d_model // n_heads, lo=1, hi=MAX_DIM // 64)
    n_layers = m.get("block_count", lo=1, hi=MAX_HEADS)
    present = count_blocks(tensor_names)
    if n_layers != present:
        raise ModelFileError(f"{source}: metadata {arch}.block_count={n_layers}, but the file "
                             f"holds tensors for {present} blocks")
    rope_dims = m.get("rope.dimension_count", head_dim, lo=2, hi=head_dim)
    if rope_dims % 2:
        raise ModelFileError(f"{source}: metadata {arch}.rope.dimension_count={rope_dims} is odd")
    return ModelConfig(
        arch=arch,
        n_layers=n_layers,
        d_model=d_model,
        d_ff=m.get("feed_forward_length", lo=1, hi=MAX_DIM),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        v_head_dim=m.get("attention.value_length", head_dim, lo=1, hi=MAX_DIM // 64),
        vocab_size=m.vocab_size(),
        ctx_train=m.get("context_length", lo=1, hi=MAX_POSITIONS),
        norm_eps=m.get("attention.layer_norm_rms_epsilon", kind=float, lo=0.0, hi=1.0,
                       lo_open=True),
        rope_theta=m.get("rope.freq_base", 10000.0, kind=float, lo=1.0, hi=1e12, lo_open=True),
        rope_dims=rope_dims,
        rope_mode="norm",
        rope_freq_scale=rope_scaling(m),
        has_rope_freqs="rope_freqs.weight" in tensor_names,
        tied_embeddings="output.weight" not in tensor_names,
    )
