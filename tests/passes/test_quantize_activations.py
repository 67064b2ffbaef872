"""The quantize pass on tiny hand-built graphs: at decode (int8 GEMVs) a two-level
`quantize_q8` before each distinct x of the matmuls whose weights the backend's GEMV reads;
in a prefill (the int8 GEMM) a one-level one (q8x1), only past the GEMV's rows and only for
the GEMM's weight types; nothing where the backend did not ask; and the fusion rules fold
the two-level quantize into its producer but leave the one-level one apart."""

from __future__ import annotations

import numpy as np

from drift.ir import Graph, GraphBuilder
from drift.ir.ops_quant import quantize_blocks, quantize_blocks_1
from drift.passes import Capabilities, PassContext, fuse_quantize, quantize_activations

from .helpers import run_plain

GEMM = frozenset({"Q4_0", "Q8_0"})


def layer(S: int, down_type: str = "Q4_0") -> Graph:
    """rms_norm -> matmul (q) and matmul (k) on one x, then a matmul of another type on it."""
    b = GraphBuilder("layer", n_tokens=S)
    x = b.input("x", (S, 64), "f32")
    n = b.op("rms_norm", x, b.weight("nw", (64,), "f32"), eps=1e-5)
    q = b.op("matmul", n, b.weight("wq", (64, 64), "Q4_0"))
    k = b.op("matmul", n, b.weight("wk", (32, 64), "Q8_0"))
    b.output(q)
    b.output(k)
    b.output(b.op("matmul", q, b.weight("wd", (64, 64), down_type)))
    return b.finish()


def run(g: Graph, caps: Capabilities) -> tuple[Graph, PassContext]:
    ctx = PassContext(caps)
    out = quantize_activations.PASS.run(g, ctx)
    out.validate()
    return out, ctx


def quantizes(g: Graph) -> list[tuple[str, int]]:
    return [(n.inputs[0], n.attrs.get("levels", 2)) for n in g.nodes if n.op == "quantize_q8"]


def test_prefill_gets_one_level_quantize_before_the_gemms():
    caps = Capabilities(int8_gemm=True, int8_gemm_weights=GEMM, gemv_rows=4)
    g = layer(16)
    out, _ = run(g, caps)
    # one quantize for the norm's output (read by q and k), one for q (read by the down)
    assert len(quantizes(out)) == 2 and all(lv == 1 for _, lv in quantizes(out))
    for n in out.nodes:
        if n.op == "matmul":
            assert out.tensors[n.inputs[0]].dtype == "q8x1"
    order = [n.op for n in out.nodes]
    assert order.index("quantize_q8") < order.index("matmul")


def test_prefill_leaves_other_weight_types_and_few_rows_alone():
    caps = Capabilities(int8_gemm=True, int8_gemm_weights=GEMM, gemv_rows=4)
    out, _ = run(layer(16, down_type="Q6_K"), caps)
    assert len(quantizes(out)) == 1  # the down's x (Q6_K) stays f32
    down = [n for n in out.nodes if n.op == "matmul"][-1]
    assert out.tensors[down.inputs[0]].dtype == "f32"
    out, _ = run(layer(4), caps)  # 4 rows: GEMVs, not the GEMM
    assert quantizes(out) == []


def test_decode_gets_two_levels_and_nothing_unasked():
    caps = Capabilities(int8_dot=True, int8_weights=GEMM | {"Q6_K"}, int8_gemm=True,
                        int8_gemm_weights=GEMM)
    out, _ = run(layer(1), caps)
    assert len(quantizes(out)) == 2 and all(lv == 2 for _, lv in quantizes(out))
    for g in (layer(1), layer(16)):
        out, ctx = run(g, Capabilities())
        assert out is g and ctx.log == ["not asked for"]


def test_fusion_folds_two_levels_into_the_norm_but_not_one():
    fused_ops = Capabilities().fused_ops | {"rms_norm_q8"}
    decode = Capabilities(int8_dot=True, int8_weights=GEMM, fused_ops=fused_ops)
    out, ctx = run(layer(1), decode)
    out = fuse_quantize.PASS.run(out, ctx)
    assert "rms_norm_q8" in [n.op for n in out.nodes]
    prefill = Capabilities(int8_gemm=True, int8_gemm_weights=GEMM, fused_ops=fused_ops)
    out, ctx = run(layer(16), prefill)
    out = fuse_quantize.PASS.run(out, ctx)
    assert "rms_norm_q8" not in [n.op for n in out.nodes] and len(quantizes(out)) == 2


def test_one_level_values_are_the_blocks_grid():
    """The plain evaluation of the pass's graph computes the matmuls on x as its q8x1 blocks
    represent it: within one level (1/127 of a block's largest) of x, and the two-level
    blocks within 1/(127 * 254)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    amax = np.abs(x.reshape(-1, 32)).max(axis=1).repeat(32).reshape(5, 64)
    one, two = quantize_blocks_1(x), quantize_blocks(x)
    assert np.all(np.abs(one - x) <= amax / 254 * 1.0001)
    assert np.all(np.abs(two - x) <= amax / (127 * 254 * 2) * 1.01)
    caps = Capabilities(int8_gemm=True, int8_gemm_weights=GEMM, gemv_rows=4)
    g = layer(16)
    out, _ = run(g, caps)
    w = {"nw": np.ones(64, np.float32),
         **{k: rng.standard_normal(out.tensors[k].shape).astype(np.float32)
            for k in ("wq", "wk", "wd")}}
    xs = rng.standard_normal((16, 64)).astype(np.float32)
    got = run_plain(out, w, {"x": xs})
    ref = run_plain(g, w, {"x": xs})
    for o in g.outputs:
        err = np.abs(got[o] - ref[o]).max() / np.abs(ref[o]).max()
        assert 0 < err < 3e-2, o  # quantized (not the f32 product), within x's rounding
