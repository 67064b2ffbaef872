"""Each fusion rule on tiny hand-built graphs: the pattern is found and rewritten into the fused
op, the fused graph computes what the unfused one did, and the rule stays away where a tensor
inside the pattern has another consumer."""

from __future__ import annotations

import pytest

from drift.ir import Graph, GraphBuilder
from drift.passes import (
    PassContext,
    fuse_add_norm,
    fuse_elementwise,
    fuse_gate_up,
    fuse_lm_head,
    fuse_stack,
    fuse_rope,
)
from drift.passes.pipeline import Pass

from .helpers import TIGHT, random_feeds, random_weights, rel_err, run_backend, run_plain


def apply(p: Pass, g: Graph) -> Graph:
    out = p.run(g, PassContext())
    out.validate()
    return out


def ops(g: Graph) -> list[str]:
    return [n.op for n in g.nodes]


def same_results(g: Graph, fused: Graph, tol: float = 1e-6) -> None:
    w, f = random_weights(g), random_feeds(g)
    ref = run_plain(g, w, f)
    got = run_plain(fused, w, f)
    through_backend = run_backend(g, w, f, capabilities=TIGHT)
    for o in g.outputs:
        assert got[o].shape == ref[o].shape
        assert rel_err(got[o], ref[o]) <= tol, o
        assert rel_err(through_backend[o], ref[o]) <= tol, o


# --------------------------------------------------------------------------------- gate + up


def ffn_graph(act="swiglu", bias=False, leak=False) -> Graph:
    b = GraphBuilder("ffn")
    x = b.input("x", (3, 8), "f32")
    g = b.op("matmul", x, b.weight("wg", (16, 8), "f32"))
    u = b.op("matmul", x, b.weight("wu", (16, 8), "f32"))
    if bias:
        g = b.op("add", g, b.weight("bg", (16,), "f32"))
        u = b.op("add", u, b.weight("bu", (16,), "f32"))
    b.output(b.op(act, g, u))
    if leak:  # the gate projection is needed elsewhere too
        b.output(b.op("silu", g))
    return b.finish()


@pytest.mark.parametrize("act", ["swiglu", "geglu", "geglu_erf"])
@pytest.mark.parametrize("bias", [False, True])
def test_gate_up_fuses(act, bias):
    g = ffn_graph(act, bias)
    f = apply(fuse_gate_up.PASS, g)
    assert ops(f) == ["ffn_gate_up"]
    assert f.nodes[0].attrs["act"] == act and f.nodes[0].attrs["bias"] == bias
    assert f.nodes[0].inputs[:3] == ("x", "wg", "wu")
    same_results(g, f)


def test_gate_up_not_fused_when_a_projection_has_another_consumer():
    g = ffn_graph(leak=True)
    assert ops(apply(fuse_gate_up.PASS, g)) == ops(g)


def test_gate_up_needs_one_input():
    b = GraphBuilder("two_inputs")
    x, y = b.input("x", (3, 8), "f32"), b.input("y", (3, 8), "f32")
    g = b.op("matmul", x, b.weight("wg", (16, 8), "f32"))
    u = b.op("matmul", y, b.weight("wu", (16, 8), "f32"))
    b.output(b.op("swiglu", g, u))
    g = b.finish()
    assert "ffn_gate_up" not in ops(apply(fuse_gate_up.PASS, g))


# --------------------------------------------------------------------------------------- QKV


def qkv_graph(n_mm=3, bias=False) -> Graph:
    b = GraphBuilder("qkv")
    x = b.input("x", (4, 8), "f32")
    for i, n in enumerate([8, 4, 4, 6][:n_mm]):
        y = b.op("matmul", x, b.weight(f"w{i}", (n, 8), "f32"), name=f"y{i}")
        if bias:
            y = b.op("add", y, b.weight(f"b{i}", (n,), "f32"), name=f"z{i}")
        b.output(b.op("silu", y))
    return b.finish()


@pytest.mark.parametrize("bias", [False, True])
def test_stack_fuses_three_projections(bias):
    g = qkv_graph(bias=bias)
    f = apply(fuse_stack.PASS, g)
    assert ops(f).count("stacked_matmul") == 1 and "matmul" not in ops(f)
    assert "add" not in ops(f)  # biases folded in
    (n,) = [n for n in f.nodes if n.op == "stacked_matmul"]
    assert n.inputs[:4] == ("x", "w0", "w1", "w2") and n.attrs["n"] == 3
    assert n.outputs == (("z0", "z1", "z2") if bias else ("y0", "y1", "y2"))
    same_results(g, f)


@pytest.mark.parametrize("n_mm", [2, 4])
def test_stack_takes_every_matmul_of_one_x(n_mm):
    g = qkv_graph(n_mm)
    f = apply(fuse_stack.PASS, g)
    (n,) = [n for n in f.nodes if n.op == "stacked_matmul"]
    assert n.attrs["n"] == n_mm and "matmul" not in ops(f)
    same_results(g, f)


def test_stack_leaves_weights_of_other_types_apart():
    b = GraphBuilder("mixed")
    x = b.input("x", (4, 32), "f32")
    for i, dt in enumerate(("f32", "f16", "f32")):
        b.output(b.op("matmul", x, b.weight(f"w{i}", (8, 32), dt)))
    f = apply(fuse_stack.PASS, b.finish())
    (n,) = [n for n in f.nodes if n.op == "stacked_matmul"]
    assert n.inputs == ("x", "w0", "w2") and ops(f).count("matmul") == 1


def test_qkv_keeps_bias_adds_apart_when_one_is_missing():
    b = GraphBuilder("partial_bias")
    x = b.input("x", (4, 8), "f32")
    y0 = b.op("add", b.op("matmul", x, b.weight("w0", (8, 8), "f32")), b.weight("b0", (8,), "f32"))
    y1 = b.op("matmul", x, b.weight("w1", (4, 8), "f32"))
    y2 = b.op("matmul", x, b.weight("w2", (4, 8), "f32"))
    for y in (y0, y1, y2):
        b.output(y)
    g = b.finish()
    f = apply(fuse_stack.PASS, g)
    assert ops(f) == ["stacked_matmul", "add"]
    same_results(g, f)


# -------------------------------------------------------------------------------------- RoPE


def rope_graph(H: int, Hkv: int, qk_norm=False, freqs=False, leak=False) -> Graph:
    S, Dh, C = 3, 8, 16
    b = GraphBuilder("rope")
    pos = b.input("positions", (S,), "i32")
    xq = b.input("xq", (S, H * Dh), "f32")
    xk = b.input("xk", (S, Hkv * Dh), "f32")
    xv = b.input("xv", (S, Hkv * Dh), "f32")
    extra = [b.weight("rope_freqs", (Dh // 2,), "f32")] if freqs else []
    rope = {"mode": "neox", "n_dims": Dh, "theta": 10000.0, "freq_scale": 1.0}
    q = b.op("reshape", xq, shape=(S, H, Dh))
    k = b.op("reshape", xk, shape=(S, Hkv, Dh))
    v = b.op("reshape", xv, shape=(S, Hkv, Dh))
    if qk_norm:
        q = b.op("rms_norm", q, b.weight("qn", (Dh,), "f32"), eps=1e-6)
        k = b.op("rms_norm", k, b.weight("kn", (Dh,), "f32"), eps=1e-6)
    if leak:
        b.output(b.op("scale", q, value=2.0))  # the heads before rotation are needed too
    q = b.op("rope", q, pos, *extra, **rope)
    k = b.op("rope", k, pos, *extra, **rope)
    kc = b.op("kv_write", b.state("k_cache", (C, Hkv, Dh), "f32"), k, pos)
    vc = b.op("kv_write", b.state("v_cache", (C, Hkv, Dh), "f32"), v, pos)
    a = b.op("attention", q, kc, vc, pos, scale=Dh**-0.5, window=0, softcap=0.0)
    b.output(b.op("reshape", a, shape=(S, H * Dh), name="out"))
    return b.finish()


@pytest.mark.parametrize("H,Hkv", [(4, 4), (4, 2), (4, 1)], ids=["MHA", "GQA", "MQA"])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_rope_fuses_with_the_layout_change(H, Hkv, qk_norm):
    g = rope_graph(H, Hkv, qk_norm, freqs=True)
    f = apply(fuse_rope.PASS, g)
    assert ops(f).count("rope_heads") == 1 and ops(f).count("rope_kv_write") == 1
    assert "rope" not in ops(f)
    (q,) = [n for n in f.nodes if n.op == "rope_heads"]
    (k,) = [n for n in f.nodes if n.op == "rope_kv_write"]
    assert q.inputs[0] == "xq" and q.attrs["heads"] == H
    assert f.tensors[q.outputs[0]].shape == (3, H, 8)
    assert k.inputs[:2] == ("k_cache", "xk") and k.attrs["heads"] == Hkv
    assert k.outputs == ("k_cache'",)  # the same persistent cache, updated in place
    assert bool(q.attrs["qk_norm"]) == qk_norm
    same_results(g, f)


def test_rope_not_fused_when_the_heads_are_needed_elsewhere():
    f = apply(fuse_rope.PASS, rope_graph(4, 2, leak=True))
    assert "rope_heads" not in ops(f)  # q's reshape feeds the rope and the scale
    assert "rope_kv_write" in ops(f)  # k is free to fuse


# -------------------------------------------------------------------------- add + RMSNorm


def add_norm_graph(broadcast=False) -> Graph:
    b = GraphBuilder("add_norm")
    a = b.input("a", (3, 8), "f32")
    other = b.weight("bias", (8,), "f32") if broadcast else b.input("b", (3, 8), "f32")
    s = b.op("add", a, other, name="sum")
    x = b.op("rms_norm", s, b.weight("w", (8,), "f32"), eps=1e-5, name="normed")
    b.output(b.op("add", s, b.op("silu", x)))  # the sum goes on: the residual stream
    return b.finish()


def test_add_rms_norm_fuses_and_keeps_the_sum():
    g = add_norm_graph()
    f = apply(fuse_add_norm.PASS, g)
    (n,) = [n for n in f.nodes if n.op == "add_rms_norm"]
    assert n.inputs == ("a", "b", "w") and n.outputs == ("sum", "normed")
    assert ops(f).count("add") == 1  # the later residual add stays
    same_results(g, f)


def test_add_rms_norm_not_fused_for_a_broadcast_add():
    assert "add_rms_norm" not in ops(apply(fuse_add_norm.PASS, add_norm_graph(broadcast=True)))


# --------------------------------------------------------------------- final norm + LM head


def head_graph(two_heads=False) -> Graph:
    b = GraphBuilder("head")
    h = b.input("h", (1, 8), "f32")
    x = b.op("rms_norm", h, b.weight("output_norm", (8,), "f32"), eps=1e-5)
    b.output(b.op("matmul", x, b.weight("output", (32, 8), "f32"), name="logits"))
    if two_heads:
        b.output(b.op("matmul", x, b.weight("other", (4, 8), "f32")))
    return b.finish()


def test_final_norm_folds_into_the_lm_head():
    g = head_graph()
    f = apply(fuse_lm_head.PASS, g)
    assert ops(f) == ["rms_norm_matmul"] and f.nodes[0].outputs == ("logits",)
    same_results(g, f)


def test_final_norm_stays_when_shared():
    assert ops(apply(fuse_lm_head.PASS, head_graph(two_heads=True))) == ["rms_norm", "matmul",
                                                                         "matmul"]


# ------------------------------------------------------------------------- elementwise chains


def test_elementwise_chain_becomes_one_op():
    b = GraphBuilder("chain")
    x, y = b.input("x", (3, 8), "f32"), b.input("y", (3, 8), "f32")
    t = b.op("silu", x)
    t = b.op("mul", t, y)
    t = b.op("scale", t, value=0.5)
    b.output(b.op("add", t, x))
    g = b.finish()
    f = apply(fuse_elementwise.PASS, g)
    assert ops(f) == ["fused_elementwise"]
    assert [s[0] for s in f.nodes[0].attrs["program"]] == ["silu", "mul", "scale", "add"]
    assert f.nodes[0].inputs == ("x", "y")
    same_results(g, f)


def test_elementwise_epilogue_anchors_on_the_producer():
    b = GraphBuilder("epilogue")
    x = b.input("x", (3, 8), "f32")
    skip = b.op("matmul", x, b.weight("ws", (16, 8), "f32"))
    h = b.op("matmul", x, b.weight("w", (16, 8), "f32"))
    h = b.op("add", h, b.weight("bias", (16,), "f32"))
    h = b.op("silu", h)
    b.output(b.op("add", skip, h))
    g = b.finish()
    f = apply(fuse_elementwise.PASS, g)
    assert ops(f) == ["matmul", "fused_elementwise"]
    prog = f.nodes[1].attrs["program"]
    assert [s[0] for s in prog] == ["matmul", "add", "silu", "add"]  # the later matmul anchors
    same_results(g, f)


def test_elementwise_chain_stops_at_a_shared_tensor():
    b = GraphBuilder("shared")
    x = b.input("x", (3, 8), "f32")
    t = b.op("silu", x)
    u = b.op("scale", t, value=2.0)
    b.output(b.op("add", u, x))
    b.output(b.op("mul", t, x))  # t has two consumers: it must be written
    g = b.finish()
    f = apply(fuse_elementwise.PASS, g)
    assert "silu" in ops(f)  # not swallowed by either chain
    assert ops(f).count("fused_elementwise") == 1  # scale + add
    same_results(g, f)


def test_fused_ops_cost_reads_the_shared_input_once():
    from drift.ir import cost_of

    g = ffn_graph()
    f = apply(fuse_gate_up.PASS, g)
    n = f.nodes[0]
    c = cost_of(n.op, [f.tensors[i] for i in n.inputs], [f.tensors[o] for o in n.outputs],
                n.attrs)
    unfused = sum(cost_of(m.op, [g.tensors[i] for i in m.inputs],
                          [g.tensors[o] for o in m.outputs], m.attrs).bytes for m in g.nodes)
    assert c.reads[0] == 3 * 8 * 4  # x once
    assert c.bytes < unfused
    flops = sum(cost_of(m.op, [g.tensors[i] for i in m.inputs],
                        [g.tensors[o] for o in m.outputs], m.attrs).flops for m in g.nodes)
    assert c.flops == flops  # fusion moves fewer bytes, computes the same
