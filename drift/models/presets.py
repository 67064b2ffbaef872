"""Published model shapes, usable without their weights.

Each preset is the GGUF metadata the real file carries (the architecture's keys), plus which
optional tensors it holds. From them come a `ModelConfig` for analysis and memory reports,
and random-weight GGUF files with exact shapes for speed measurements (`drift make-random`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drift.errors import DriftError
from drift.models.config import ModelConfig


@dataclass(frozen=True)
class Preset:
    name: str
    arch: str
    keys: dict[str, Any]  # `{arch}.` is prefixed to each
    vocab_size: int
    tied_embeddings: bool
    rope_freqs: bool = False  # carries rope_freqs.weight (Llama 3.1+ long-context scaling)

    def metadata(self) -> dict[str, Any]:
        md: dict[str, Any] = {"general.architecture": self.arch, "general.name": self.name}
        md |= {f"{self.arch}.{k}": v for k, v in self.keys.items()}
        md[f"{self.arch}.vocab_size"] = self.vocab_size
        return md

    def tensor_names(self) -> set[str]:
        # The real file's blocks (one name each: the config checks the block count by them)
        names = {f"blk.{i}.attn_norm.weight" for i in range(self.keys["block_count"])}
        if not self.tied_embeddings:
            names.add("output.weight")
        if self.rope_freqs:
            names.add("rope_freqs.weight")
        return names

    def config(self) -> ModelConfig:
        from drift.models import arch_module

        module = arch_module(self.arch, self.name)
        return module.config_from_metadata(self.metadata(), self.tensor_names(), self.name)


def _llama(layers, d, heads, kv, ff, *, head_dim=None, ctx=131072, theta=500000.0, eps=1e-5):
    keys = {
        "block_count": layers, "embedding_length": d, "feed_forward_length": ff,
        "attention.head_count": heads, "attention.head_count_kv": kv,
        "context_length": ctx, "rope.freq_base": theta,
        "attention.layer_norm_rms_epsilon": eps,
    }
    if head_dim:
        keys |= {"attention.key_length": head_dim, "attention.value_length": head_dim,
                 "rope.dimension_count": head_dim}
    return keys


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("llama-3.2-1b", "llama", _llama(16, 2048, 32, 8, 8192), 128256, True, True),
        Preset("llama-3.2-3b", "llama", _llama(28, 3072, 24, 8, 8192, head_dim=128), 128256,
               True, True),
        Preset("llama-3.1-8b", "llama", _llama(32, 4096, 32, 8, 14336), 128256, False, True),
        Preset("qwen2.5-7b", "qwen2",
               _llama(28, 3584, 28, 4, 18944, ctx=32768, theta=1e6, eps=1e-6), 152064, False),
        Preset("gemma-2-2b", "gemma2",
               _llama(26, 2304, 8, 4, 9216, head_dim=256, ctx=8192, theta=10000.0, eps=1e-6)
               | {"attention.sliding_window": 4096, "attn_logit_softcapping": 50.0,
                  "final_logit_softcapping": 30.0}, 256000, True),
        Preset("smollm2-135m", "llama",
               _llama(30, 576, 9, 3, 1536, ctx=8192, theta=100000.0), 49152, True),
        Preset("gemma3-270m", "gemma3",
               _llama(18, 640, 4, 1, 2048, head_dim=256, ctx=32768, theta=1e6, eps=1e-6)
               | {"attention.sliding_window": 512}, 262144, True),
    ]
}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise DriftError(f"unknown model shape {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[name]
