"""Memory planning, property-based: on random buffers and on random graphs, no two tensors
alive at the same step overlap, each fits in the arena, greedy-by-size never needs more than
naive, and nothing beats the lower bound. Random graphs also run through the numpy backend
from the planned arena, against the plain evaluation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drift.ir import Graph, GraphBuilder, Role
from drift.passes import Capabilities, PassContext, run_pipeline
from drift.passes.lifetimes import Buffer, buffers, in_arena, lower_bound, tensor_lifetimes
from drift.passes.memory_plan import check_plan, plan_memory
from drift.passes.strategies import STRATEGIES, plan_offsets

from .helpers import TIGHT, random_feeds, random_weights, rel_err, run_backend, run_plain

ALIGN = 64


@st.composite
def buffer_lists(draw):
    n = draw(st.integers(1, 40))
    out = []
    for i in range(n):
        first = draw(st.integers(0, 30))
        last = first + draw(st.integers(0, 12))
        size = draw(st.integers(1, 64)) * ALIGN
        out.append(Buffer(i, size, first, last, ((f"t{i}", 0),)))
    return out


def assert_valid(bufs: list[Buffer], offsets: dict[int, int], total: int) -> None:
    for b in bufs:
        assert offsets[b.id] % ALIGN == 0 and 0 <= offsets[b.id]
        assert offsets[b.id] + b.size <= total
    for i, a in enumerate(bufs):
        for b in bufs[i + 1:]:
            if a.overlaps(b):
                a0, b0 = offsets[a.id], offsets[b.id]
                assert a0 + a.size <= b0 or b0 + b.size <= a0, (a, b, a0, b0)


@given(buffer_lists())
@settings(max_examples=300, deadline=None)
def test_strategies_on_random_buffers(bufs):
    totals = {}
    for name in STRATEGIES:
        offsets, total = plan_offsets(bufs, name)
        assert_valid(bufs, offsets, total)
        totals[name] = total
    assert totals["naive"] == sum(b.size for b in bufs)
    assert totals["greedy_by_size"] <= totals["naive"]
    lb = lower_bound(bufs)
    assert all(t >= lb for t in totals.values())


# ---------------------------------------------------------------------------- random graphs


@st.composite
def graphs(draw, with_kv: bool = True) -> Graph:
    """Random graphs of (S, c) activations: elementwise ops (candidates for in place), matmuls,
    norms, views (reshape, last_row), KV-cache writes, several outputs."""
    S = draw(st.integers(1, 5))
    widths = [4, 8, 12]
    b = GraphBuilder("random")
    alive = [b.input(f"in{i}", (S, draw(st.sampled_from(widths))), "f32")
             for i in range(draw(st.integers(1, 3)))]
    pos = b.input("positions", (S,), "i32") if with_kv else None
    n_ops = draw(st.integers(1, 25))
    for k in range(n_ops):
        x = draw(st.sampled_from(alive))
        shape = b.graph.tensors[x].shape
        same = [t for t in alive if b.graph.tensors[t].shape == shape]
        kind = draw(st.sampled_from(["silu", "add", "mul", "swiglu", "matmul", "rms_norm",
                                     "reshape", "last_row", "scale", "kv"]))
        if kind in ("add", "mul", "swiglu"):
            y = draw(st.sampled_from(same))
            alive.append(b.op(kind, x, y))
        elif kind == "matmul":
            n = draw(st.sampled_from(widths))
            alive.append(b.op("matmul", x, b.weight(f"w{k}", (n, shape[1]), "f32")))
        elif kind == "rms_norm":
            alive.append(b.op("rms_norm", x, b.weight(f"n{k}", (shape[1],), "f32"), eps=1e-5))
        elif kind == "reshape" and len(shape) == 2:
            alive.append(b.op("reshape", x, shape=(shape[1], shape[0])))
        elif kind == "last_row" and len(shape) == 2:
            alive.append(b.op("last_row", x))
        elif kind == "kv" and with_kv and shape[0] == S:
            c = b.state(f"cache{k}", (S + 2, 1, shape[1]), "f32")
            v = b.op("reshape", x, shape=(S, 1, shape[1]))
            c = b.op("kv_write", c, v, pos)
            q = b.op("reshape", b.op("silu", x), shape=(S, 1, shape[1]))
            a = b.op("attention", q, c, c, pos, scale=0.5, window=0, softcap=0.0)
            alive.append(b.op("reshape", a, shape=(S, shape[1])))
        else:
            alive.append(b.op("silu" if kind != "scale" else "scale", x,
                              **({"value": 0.5} if kind == "scale" else {})))
    produced = [t for t in alive if b.graph.tensors[t].role == Role.ACTIVATION]
    outs = {produced[-1]} if produced else set()
    outs |= set(draw(st.lists(st.sampled_from(produced), max_size=3))) if produced else set()
    if not outs:  # a graph of inputs only: return one of them through a view
        outs = {b.op("reshape", alive[0], shape=b.graph.tensors[alive[0]].shape)}
    for o in sorted(outs):
        b.output(o)
    return b.finish()


def _sizes(g: Graph) -> dict[str, int]:
    return {n: g.tensors[n].nbytes for n in in_arena(g)}


@given(graphs())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_plans_of_random_graphs(g):
    sizes = _sizes(g)
    life = tensor_lifetimes(g)
    naive = None
    for name in STRATEGIES:
        plan = plan_memory(g, sizes, name, ALIGN)
        check_plan(plan)
        # every arena tensor placed, nothing else: weights and the KV cache stay out
        assert set(plan.offsets) == set(in_arena(g))
        assert not any(t.role in (Role.WEIGHT, Role.KV) and t.name in plan.offsets
                       for t in g.tensors.values())
        # tensors alive at one step never overlap, views and in-place pairs excepted
        shared = {frozenset(p) for p in plan.inplace}
        by_buf = {m: b.id for b in plan.buffers for m, _ in b.members}
        names = sorted(plan.offsets)
        for i, a in enumerate(names):
            for c in names[i + 1:]:
                if by_buf[a] == by_buf[c]:
                    continue  # one buffer: a view of it or an in-place result
                (fa, la), (fc, lc) = life[a], life[c]
                if fa <= lc and fc <= la:
                    a0, c0 = plan.offsets[a], plan.offsets[c]
                    assert a0 + sizes[a] <= c0 or c0 + sizes[c] <= a0, (a, c)
        # outputs survive to the end: nothing is placed over them after they are written
        for o in g.outputs:
            assert life[o][1] == len(g.nodes)
        assert all(frozenset(p) in shared for p in plan.inplace)
        if name == "naive":
            naive = plan.arena_bytes
        if name == "greedy_by_size":
            assert plan.arena_bytes <= naive
            assert plan.arena_bytes >= plan.lower_bound


def test_views_alias_and_extend_their_input():
    b = GraphBuilder("views")
    x = b.input("x", (4, 8), "f32")
    h = b.op("silu", x)
    v = b.op("reshape", h, shape=(8, 4))
    last = b.op("last_row", h)
    y = b.op("silu", b.op("silu", x))  # runs while h is only reachable through its views
    b.output(b.op("add", b.op("reshape", v, shape=(4, 8)), y))
    b.output(b.op("scale", last, value=2.0))
    g = b.finish()
    plan = plan_memory(g, _sizes(g), "greedy_by_size", ALIGN)
    check_plan(plan)
    assert plan.offsets[v] == plan.offsets[h]
    assert plan.offsets[last] == plan.offsets[h] + 3 * 8 * 4  # the last of four rows
    assert {v, last} <= plan.views
    (buf,) = [bf for bf in plan.buffers if any(m == h for m, _ in bf.members)]
    add_at = next(i for i, n in enumerate(g.nodes) if n.op == "add")
    assert tensor_lifetimes(g)[h][1] < add_at  # h itself is last read early ...
    assert buf.last >= add_at  # ... but its memory lives as long as its views are read


def test_elementwise_ops_write_in_place_over_a_dying_input():
    b = GraphBuilder("inplace")
    x = b.input("x", (4, 8), "f32")
    h = b.op("matmul", x, b.weight("w", (8, 8), "f32"))
    h2 = b.op("silu", h)  # h dies here: h2 may take its memory
    h3 = b.op("add", h2, x)  # x dies here too
    b.output(b.op("matmul", h3, b.weight("w2", (8, 8), "f32")))
    g = b.finish()
    plan = plan_memory(g, _sizes(g), "greedy_by_size", ALIGN)
    assert (h2, h) in plan.inplace and plan.offsets[h2] == plan.offsets[h]
    off = plan_memory(g, _sizes(g), "greedy_by_size", ALIGN, inplace=False)
    assert not off.inplace
    assert plan.arena_bytes <= off.arena_bytes


def test_no_in_place_over_an_input_still_needed():
    b = GraphBuilder("needed")
    x = b.input("x", (4, 8), "f32")
    h = b.op("matmul", x, b.weight("w", (8, 8), "f32"))
    h2 = b.op("silu", h)
    b.output(b.op("add", h2, h))  # h is read after silu
    g = b.finish()
    plan = plan_memory(g, _sizes(g), "greedy_by_size", ALIGN)
    assert (h2, h) not in plan.inplace
    check_plan(plan)


def test_kv_in_place_updates_stay_out_of_the_arena():
    b = GraphBuilder("kv")
    x = b.input("x", (2, 1, 4), "f32")
    pos = b.input("positions", (2,), "i32")
    c = b.op("kv_write", b.state("k_cache.0", (8, 1, 4), "f32"), x, pos)
    b.output(b.op("attention", x, c, c, pos, scale=0.5, window=0, softcap=0.0))
    g = b.finish()
    plan = plan_memory(g, _sizes(g), "greedy_by_size", ALIGN)
    assert "k_cache.0" not in plan.offsets and "k_cache.0'" not in plan.offsets


# ------------------------------------------------------- random graphs through the backend


@given(graphs(), st.sampled_from(sorted(STRATEGIES)), st.booleans())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_graphs_run_from_the_arena(g, strategy, fuse):
    w, f = random_weights(g), random_feeds(g)
    f["positions"] = np.arange(len(f.get("positions", [])), dtype=np.int32)
    ref = run_plain(g, w, f)
    prog = _backend_program(g, w, strategy, fuse)
    got = prog.run(f)
    for o in g.outputs:
        assert rel_err(got[o], ref[o]) <= 1e-5, o
    # outputs are copies: the next call (other inputs) leaves them as they were
    kept = {o: v.copy() for o, v in got.items()}
    f2 = {k: (v + 1 if v.dtype != np.int32 else v) for k, v in f.items()}
    prog.run(f2)
    for o in g.outputs:
        np.testing.assert_array_equal(got[o], kept[o])


def _backend_program(g, w, strategy, fuse):
    from .helpers import backend_for

    return backend_for(w, strategy=strategy, fuse=fuse, capabilities=TIGHT).compile(g)


def test_a_wrong_plan_gives_wrong_results():
    """The backend really runs from the plan: overlapping two live tensors breaks the result
    (so the model tests would catch a wrong plan)."""
    b = GraphBuilder("clobber")
    x = b.input("x", (4, 8), "f32")
    h1 = b.op("matmul", x, b.weight("w1", (8, 8), "f32"))
    h2 = b.op("matmul", x, b.weight("w2", (8, 8), "f32"))
    b.output(b.op("mul", h1, h2))
    g = b.finish()
    w, f = random_weights(g), random_feeds(g)
    ref = run_plain(g, w, f)
    prog = _backend_program(g, w, "greedy_by_size", False)
    np.testing.assert_allclose(prog.run(f)[g.outputs[0]], ref[g.outputs[0]], rtol=1e-6)
    offsets = dict(prog.plan.offsets)
    offsets[h2] = offsets[h1]  # both alive at the mul: now they share memory
    object.__setattr__(prog.plan, "offsets", offsets)
    prog._bound = None
    assert not np.allclose(prog.run(f)[g.outputs[0]], ref[g.outputs[0]], rtol=1e-3)


def test_pipeline_plan_sizes_come_from_storages():
    """Channel slices pad 3 channels to 4: the plan sizes what the storage takes."""
    b = GraphBuilder("padded")
    x = b.input("x", (1, 4, 4, 3), "f32")
    b.output(b.op("silu", b.op("scale", x, value=2.0)))
    g = b.finish()
    c = run_pipeline(g, PassContext(Capabilities(channel_slices=True), fuse=False))
    t = c.graph.nodes[0].outputs[0]
    assert c.plan.sizes[t] == 1 * 4 * 4 * 4 * 4
    assert str(c.storages[t]).startswith("phwc4")
    check_plan(c.plan)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_runs_a_model_graph(strategy):
    from drift.models.decoder import build_graph

    from .test_model_graphs import tiny_config, tiny_weights

    cfg = tiny_config("llama")
    g = build_graph(cfg, {k: "f32" for k in tiny_weights(cfg)}, 5, 16)
    w = tiny_weights(cfg)
    feeds = {"tokens": np.arange(5, dtype=np.int32), "positions": np.arange(5, dtype=np.int32)}
    ref = run_plain(g, w, feeds)["logits"]
    got = run_backend(g, w, feeds, strategy=strategy, capabilities=TIGHT)["logits"]
    assert rel_err(got, ref) <= 1e-5
    assert buffers  # imported for the property tests' helpers
