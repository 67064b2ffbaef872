"""ModelConfig: everything a graph builder needs to know about a decoder-only transformer.

Architecture modules fill one from GGUF metadata (or from a published configuration, for
analysis without weights); the shared decoder builder reads nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from drift.errors import ModelFileError, quote


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    n_layers: int
    d_model: int
    d_ff: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    v_head_dim: int
    vocab_size: int
    ctx_train: int
    norm_eps: float
    rope_theta: float
    rope_dims: int
    rope_mode: str = "norm"  # "norm" (adjacent pairs, Llama GGUF) or "neox" (halves)
    rope_freq_scale: float = 1.0  # linear rope scaling: positions * freq_scale
    rope_theta_local: float | None = None  # sliding-window layers' base, where it differs
    has_rope_freqs: bool = False  # the file holds rope_freqs.weight (Llama 3 scaling)
    attn_scale: float = 0.0  # 0: 1/sqrt(head_dim)
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    sliding_window: int = 0
    swa_layers: tuple[bool, ...] = ()  # per layer: uses the sliding window
    embed_scale: float = 0.0  # 0: none; Gemma multiplies embeddings by sqrt(d_model)
    ffn_act: str = "swiglu"  # or "geglu"
    qkv_bias: bool = False
    qk_norm: bool = False
    post_norms: bool = False  # Gemma 2/3: norms after attention and FFN, before the residual
    tied_embeddings: bool = False  # LM head reuses token_embd.weight
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def layer_window(self, layer: int) -> int:
        if self.swa_layers and self.swa_layers[layer]:
            return self.sliding_window
        return 0

    def layer_rope_theta(self, layer: int) -> float:
        if self.rope_theta_local is not None and self.layer_window(layer):
            return self.rope_theta_local
        return self.rope_theta

    def layer_rope_freq_scale(self, layer: int) -> float:
        # Gemma 3 scales only its global layers' positions.
        if self.rope_theta_local is not None and self.layer_window(layer):
            return 1.0
        return self.rope_freq_scale

    def with_(self, **changes: Any) -> "ModelConfig":
        return replace(self, **changes)


# Bounds on the sizes a file may declare: far beyond any published model, small enough that
# arithmetic on them (the expected-tensor list, the KV cache) stays cheap.
MAX_DIM = 1 << 20  # widths: embedding, FFN, head dim
MAX_HEADS = 1 << 12
MAX_POSITIONS = 1 << 24  # context length, sliding window
MAX_VOCAB = 1 << 24


class Metadata:
    """Typed, range-checked access to `{arch}.*` keys: a value of the wrong type, out of its
    range, NaN or infinite is an error that names the key and the value."""

    def __init__(self, md: dict[str, Any], arch: str, source: str = "model"):
        self.md, self.arch, self.source = md, arch, source

    def get(self, key: str, default: Any = None, *, kind: type = int, lo: float | None = None,
            hi: float | None = None, lo_open: bool = False) -> Any:
        """The value of `{arch}.{key}` as `kind` (int or float), within [lo, hi] ((lo, hi]
        with `lo_open`); `default` when absent (None: the key is required)."""
        full = f"{self.arch}.{key}"
        if full not in self.md:
            if default is None:
                raise ModelFileError(f"{self.source}: missing metadata key {full}")
            return default
        return self.check(full, self.md[full], kind=kind, lo=lo, hi=hi, lo_open=lo_open)

    def check(self, full: str, value: Any, *, kind: type = int, lo: float | None = None,
              hi: float | None = None, lo_open: bool = False) -> Any:
        bad = f"{self.source}: metadata {full}={quote(value)}"
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ModelFileError(f"{bad} is not an integer")
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ModelFileError(f"{bad} is not a number")
            value = float(value)
            if not math.isfinite(value):
                raise ModelFileError(f"{bad} is not finite")
        elif not isinstance(value, kind):
            raise ModelFileError(f"{bad} is not a {kind.__name__}")
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise ModelFileError(f"{bad} is out of range (must be {'>' if lo_open else '>='} {lo})")
        if hi is not None and value > hi:
            raise ModelFileError(f"{bad} is out of range (must be <= {hi})")
        return value

    def vocab_size(self) -> int:
        tokens = self.md.get("tokenizer.ggml.tokens")
        if f"{self.arch}.vocab_size" in self.md:
            return self.get("vocab_size", lo=1, hi=MAX_VOCAB)
        if not isinstance(tokens, list) or not tokens:
            raise ModelFileError(f"{self.source}: no vocabulary (tokenizer.ggml.tokens)")
        return len(tokens)


def count_blocks(tensor_names: set[str]) -> int:
    """How many transformer blocks the file holds tensors for (`blk.N.*`: the largest N + 1)."""
    found = -1
    for name in tensor_names:
        if name.startswith("blk."):
            index = name[4:].split(".", 1)[0]
            if index.isdigit() and len(index) < 8:
                found = max(found, int(index))
    return found + 1
