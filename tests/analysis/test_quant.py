"""The assumed per-tensor quant mixes, checked against a real llama.cpp Q4_K_M file."""

from __future__ import annotations

import pytest

from drift.analysis import quant
from drift.analysis.source import from_gguf, resolve
from drift.errors import DriftError


def test_q4_k_m_recipe_reproduces_the_gemma_file(gemma3_path):
    """llama-quantize wrote gemma-3-270m-q4_k_m.gguf; the recipe must predict every tensor's
    type, including the 256-column fallbacks (640-wide rows: Q4_K -> Q5_0, Q6_K -> Q8_0)."""
    real = from_gguf(gemma3_path)
    assumed = quant.weight_dtypes(real.config, "Q4_K_M")
    assert assumed == real.weight_dtypes
    assert real.quant == "Q4_K_M"


def test_use_more_bits_matches_llama_cpp():
    # n=32: first 4, last 4, and every third layer from 6 on
    picked = [i for i in range(32) if quant.use_more_bits(i, 32)]
    assert picked == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]


def test_legacy_quants_keep_a_q6_k_head_and_uniform_wide_types():
    spec = resolve("llama-3.1-8b", "Q4_0")
    assert spec.weight_dtypes["output.weight"] == "Q6_K"
    assert spec.weight_dtypes["token_embd.weight"] == "Q4_0"
    assert spec.weight_dtypes["blk.0.ffn_down.weight"] == "Q4_0"
    assert spec.weight_dtypes["blk.0.attn_norm.weight"] == "f32"
    for q, t in (("F16", "f16"), ("Q8_0", "Q8_0"), ("bf16", "bf16")):
        types = resolve("llama-3.2-1b", q).weight_dtypes
        assert {v for k, v in types.items() if not k.endswith("norm.weight")
                and k != "rope_freqs.weight"} == {t}


@pytest.mark.parametrize("bad", ["Q4_X", "q9", ""])
def test_unknown_quant_is_a_drift_error(bad):
    with pytest.raises(DriftError, match="unknown quant"):
        resolve("llama-3.1-8b", bad or "none")
