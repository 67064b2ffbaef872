"""Gemma, Gemma 2 and Gemma 3.

Over Llama's block: embeddings scaled by sqrt(d_model), GeGLU, NeoX RoPE, tied embeddings.
Gemma 2 adds norms after attention and FFN, logit soft-capping and sliding-window attention
on every other layer; Gemma 3 drops the soft-capping, adds QK-norm, slides five layers in six
and gives the sliding layers their own RoPE base (10 000).

The GGUF converter stores Gemma's RMSNorm weights with the checkpoint's +1 already added, so
the graph uses the plain rms_norm (`unit_offset` stays off).
"""

from __future__ import annotations

import math
from typing import Any

from drift.models import llama
from drift.models.config import MAX_POSITIONS, Metadata, ModelConfig

ARCHS = ("gemma", "gemma2", "gemma3")

# Layer i slides when i % pattern < pattern - 1 (llama.cpp's swa pattern).
SWA_PATTERN = {"gemma2": 2, "gemma3": 6}
GEMMA3_LOCAL_ROPE_BASE = 10000.0


def config_from_metadata(md: dict[str, Any], tensor_names: set[str], source: str) -> ModelConfig:
    base = llama.config_from_metadata(md, tensor_names, source)
    arch, m = base.arch, Metadata(md, base.arch, source)
    cfg = base.with_(
        rope_mode="neox",
        ffn_act="geglu",
        embed_scale=math.sqrt(base.d_model),
        tied_embeddings="output.weight" not in tensor_names,
    )
    if arch == "gemma":
        return cfg
    pattern = SWA_PATTERN[arch]
    swa = tuple(i % pattern < pattern - 1 for i in range(base.n_layers))
    # The 27B models scale queries by 1/sqrt(d_model / n_heads), the others by 1/sqrt(head_dim)
    # (query_pre_attn_scalar in the checkpoints' configs).
    is_27b = base.n_layers in (46, 62)
    scale = 1.0 / math.sqrt(base.d_model / base.n_heads if is_27b else base.head_dim)
    cfg = cfg.with_(
        post_norms=True,
        sliding_window=m.get("attention.sliding_window", 4096, lo=1, hi=MAX_POSITIONS),
        swa_layers=swa,
        attn_scale=scale,
    )
    if arch == "gemma2":
        return cfg.with_(
            attn_softcap=m.get("attn_logit_softcapping", 50.0, kind=float, lo=0.0, hi=1e6),
            final_softcap=m.get("final_logit_softcapping", 30.0, kind=float, lo=0.0, hi=1e6),
        )
    return cfg.with_(qk_norm=True, rope_theta_local=GEMMA3_LOCAL_ROPE_BASE)
