"""drift's FLOPs against torch's FlopCounterMode on the transformers reference model.

FlopCounterMode counts only matmul-like aten ops (mm, addmm, bmm, and the fused SDPA
kernels), at 2 FLOPs per multiply-accumulate. So the like-for-like comparison is:

- linear layers (aten.mm) against drift's `matmul` FLOPs: equal to the FLOP. We pass
  `logits_to_keep=1` so the LM head runs on the last position only, as drift's prefill graph
  does (`last_row` before the head).
- attention with `attn_implementation="eager"` (aten.bmm: QK^T and PV): torch computes every
  (query, key) pair of the S x S square and masks afterwards, while drift counts only the
  S(S+1)/2 causal pairs. With the contraction FLOPs (2 x MACs, which leave out drift's 5
  FLOPs per pair for scale, max, exp, sum and divide) the two agree after scaling drift's by
  S^2 / (S(S+1)/2) = 2S / (S+1).
- The rest of drift's FLOPs (norms, RoPE, SwiGLU, adds, softmax) have no counterpart in the
  counter; they are checked against closed forms in test_cost.py.
"""

from __future__ import annotations

import pytest

from drift.analysis.cost import model_cost
from drift.analysis.source import from_gguf

S = 16


@pytest.fixture(scope="module")
def hf_counts(smollm2_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from torch.utils.flop_counter import FlopCounterMode

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_path.parent), gguf_file=smollm2_path.name, dtype=torch.float32,
        attn_implementation="eager")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.arange(1, S + 1)[None], logits_to_keep=1)
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    return by_op


@pytest.mark.slow
def test_matmul_and_attention_flops_match_flop_counter(smollm2_path, hf_counts):
    spec = from_gguf(smollm2_path)
    c = model_cost(spec.label, spec.quant, spec.config, spec.weight_dtypes, S, 1)
    matmul = sum(o.flops for o in c.prefill.ops if o.node.op == "matmul")
    attention = 2 * sum(o.macs for o in c.prefill.ops if o.node.op == "attention")
    assert set(hf_counts) == {"aten.mm", "aten.bmm"}
    assert matmul == hf_counts["aten.mm"]
    assert attention * 2 * S == hf_counts["aten.bmm"] * (S + 1)
