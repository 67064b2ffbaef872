"""Which type each weight would have in a file quantized with a named llama.cpp recipe.

`drift analyze llama-3.1-8b --quant Q4_K_M` has no file to read the types from, so it assumes
the per-tensor mix `llama-quantize` writes (`llama_tensor_get_type` in llama.cpp's
`src/llama-quant.cpp`), simplified to the rules that matter for dense decoder-only models
without an importance matrix:

- 1-D tensors (norms, biases, rope_freqs) stay f32, as every converter writes them.
- The output matrix (or the embedding table when it doubles as the output) gets Q6_K unless
  the base type is Q8_0 or wider: the logits are sensitive, and it is one tensor.
- The "M" (medium) K-quant mixes give more bits to attn_v and ffn_down on the first and
  last eighths of the layers and on every third layer between (`use_more_bits`).
- K-quant blocks span 256 columns; a matrix whose rows are not a multiple of 256 falls back
  to a legacy type of about the same size (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0;
  llama.cpp picks IQ4_NL for Q2_K/Q3_K, approximated here by Q4_0, which has the same size).

Left out: the rules for MoE experts, Falcon, 70B-specific bumps and the IQ types. The Gemma 3
270M Q4_K_M file is reproduced tensor for tensor (tests/analysis/test_quant.py), and the
llama.cpp file sizes in ANCHORS.md to within 1 %.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from drift.errors import InvalidArgumentError
from drift.models.config import ModelConfig
from drift.models.decoder import expected_tensors

QK_K = 256  # K-quant super-block width


class UnknownQuantError(InvalidArgumentError):
    """--quant names a recipe this module does not know."""


@dataclass(frozen=True)
class QuantRecipe:
    name: str
    base: str  # type of every 2-D weight no rule below changes
    output: str  # output matrix (or tied embedding table)
    attn_v_more: str | None = None  # attn_v on the layers use_more_bits picks
    ffn_down_more: str | None = None  # ffn_down likewise
    attn_v_first: tuple[int, str] | None = None  # (n, type): attn_v of layers < n
    ffn_down_first_eighth: str | None = None  # ffn_down of layers < n_layers / 8
    ffn_down_first_16th: str | None = None  # ffn_down of layers < n_layers / 16
    ffn_down_rest: str | None = None  # ffn_down of the other layers, where it differs
    attn_v_rest: str | None = None
    attn_output: str | None = None


_LEGACY_OUT = "Q6_K"  # llama.cpp's output type for every base narrower than Q8_0

RECIPES: dict[str, QuantRecipe] = {
    r.name: r
    for r in [
        QuantRecipe("F32", "f32", "f32"),
        QuantRecipe("F16", "f16", "f16"),
        QuantRecipe("BF16", "bf16", "bf16"),
        QuantRecipe("Q8_0", "Q8_0", "Q8_0"),
        QuantRecipe("Q4_0", "Q4_0", _LEGACY_OUT),
        QuantRecipe("Q4_1", "Q4_1", _LEGACY_OUT),
        QuantRecipe("Q5_0", "Q5_0", _LEGACY_OUT),
        QuantRecipe("Q5_1", "Q5_1", _LEGACY_OUT),
        QuantRecipe("Q6_K", "Q6_K", "Q6_K"),
        QuantRecipe("Q5_K_S", "Q5_K", _LEGACY_OUT),
        QuantRecipe("Q5_K_M", "Q5_K", _LEGACY_OUT, attn_v_more="Q6_K", ffn_down_more="Q6_K"),
        QuantRecipe("Q4_K_S", "Q4_K", _LEGACY_OUT, attn_v_first=(4, "Q5_K"),
                    ffn_down_first_eighth="Q5_K"),
        QuantRecipe("Q4_K_M", "Q4_K", _LEGACY_OUT, attn_v_more="Q6_K", ffn_down_more="Q6_K"),
        QuantRecipe("Q3_K_M", "Q3_K", _LEGACY_OUT, attn_v_first=(2, "Q5_K"), attn_v_rest="Q4_K",
                    ffn_down_first_16th="Q5_K", ffn_down_rest="Q4_K", attn_output="Q4_K"),
    ]
}

# A K-quant on a row that is not a multiple of 256 falls back to a legacy type.
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def recipe(name: str) -> QuantRecipe:
    key = name.upper().replace("-", "_")
    if key not in RECIPES:
        raise UnknownQuantError(
            f"unknown quant {name!r} (known: {', '.join(RECIPES)})"
        )
    return RECIPES[key]


def use_more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's pick of layers that get the wider type in the _M mixes."""
    eighth = n_layers // 8
    return layer < eighth or layer >= 7 * n_layers // 8 or (layer - eighth) % 3 == 2


_LAYER = re.compile(r"^blk\.(\d+)\.(\w+)\.weight$")


def weight_dtypes(cfg: ModelConfig, quant: str) -> dict[str, str]:
    """GGUF tensor name -> IR dtype ("Q4_K", "f32", ...) under the named recipe."""
    r = recipe(quant)
    out_name = "token_embd.weight" if cfg.tied_embeddings else "output.weight"
    types: dict[str, str] = {}
    for name, shape in expected_tensors(cfg).items():
        if len(shape) == 1:
            types[name] = "f32"
            continue
        t = r.output if name == out_name else r.base
        m = _LAYER.match(name)
        if m:
            t = _layer_type(r, int(m.group(1)), m.group(2), cfg.n_layers, t)
        if t in _FALLBACK and shape[-1] % QK_K:
            t = _FALLBACK[t]
        types[name] = t
    return types


def _layer_type(r: QuantRecipe, i: int, kind: str, n: int, t: str) -> str:
    if kind == "attn_v":
        if r.attn_v_more and use_more_bits(i, n):
            return r.attn_v_more
        if r.attn_v_first and i < r.attn_v_first[0]:
            return r.attn_v_first[1]
        return r.attn_v_rest or t
    if kind == "ffn_down":
        if r.ffn_down_more and use_more_bits(i, n):
            return r.ffn_down_more
        if r.ffn_down_first_16th and i < n // 16:
            return r.ffn_down_first_16th
        if r.ffn_down_first_eighth and i < n // 8:
            return r.ffn_down_first_eighth
        return r.ffn_down_rest or t
    if kind == "attn_output" and r.attn_output:
        return r.attn_output
    return t
