"""Hybrid execution: the split against the dense model, the CPU kernels against numpy and
gguf-py, the budget, and bad input.

- a plan that puts every neuron on the GPU is exactly the dense model (same logits, bit for
  bit), on the numpy backend and on Triton (its interpreter here);
- with skipping off, any split (random counts per layer, random neuron orders) is the dense
  model within rounding: the only numerical change is down re-quantized to Q8_0 (and, on
  Triton, x quantized to int8 blocks for the CPU's dot products);
- the C kernel against the same arithmetic in numpy, and its planes against gguf-py;
- the split graph through the Triton pipeline: the hot part fuses as the dense FFN does, and
  the cold part is a host call whose inputs leave right after their producer.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("DRIFT_TEST_GPU") != "1":
    os.environ["TRITON_INTERPRET"] = "1"

from gguf import GGMLQuantizationType as Q
from gguf import quants as gguf_quants

from drift.backends.cpu import CPUBackend
from drift.backends.cpu.native import ColdFFN, RowPlanes, library
from drift.cli import main
from drift.errors import InvalidArgumentError
from drift.formats import quants
from drift.formats.writer import write_random
from drift.hybrid.backend import HybridBackend, ffn_bytes, plan_for_budget
from drift.hybrid.split import HybridPlan, split_ffn
from drift.ir import run_reference
from drift.models import build_graph
from drift.models.presets import Preset, _llama
from drift.runtime.engine import Engine

TINY = {
    "llama-q4_0": (Preset("tiny-llama", "llama", _llama(2, 64, 4, 2, 96, ctx=128), 300,
                          False, True), "Q4_0"),
    "llama-q4_1": (Preset("tiny-llama", "llama", _llama(2, 64, 4, 2, 128, ctx=128), 300,
                          False, True), "Q4_1"),
    "gemma2-q4_k": (Preset("tiny-gemma2", "gemma2",  # GeGLU; K-quant rows re-quantized
                           _llama(2, 256, 2, 1, 256, head_dim=32, ctx=128, theta=10000.0)
                           | {"attention.sliding_window": 4, "attn_logit_softcapping": 50.0,
                              "final_logit_softcapping": 0.0}, 300, True), "Q4_K"),
}
PROMPT = [5, 17, 260, 3, 99, 42, 7]


@pytest.fixture(scope="module", params=sorted(TINY))
def model(request, tmp_path_factory):
    preset, qtype = TINY[request.param]
    path = tmp_path_factory.mktemp("hybrid") / f"{request.param}.gguf"
    return write_random(preset, qtype, path, seed=3, workers=1)


def _run(engine: Engine, steps: int = 3) -> list[np.ndarray]:
    logits = [engine.prefill(PROMPT)]
    for i in range(steps):
        logits.append(engine.forward([int(np.argmax(logits[-1]))], len(PROMPT) + i))
    return logits


def _random_plan(engine: Engine, rng, threshold: float = 0.0) -> HybridPlan:
    """Random counts and orders; every other layer (from a random one) has its cold gate on
    the GPU, so both kinds of cold layer are in every plan; the embedding table on the CPU
    (a host call on Triton; where the model ties it to the LM head, it stays on the GPU)."""
    L, F = engine.config.n_layers, engine.config.d_ff
    counts = rng.choice(np.arange(0, F, 32), size=L)
    counts[rng.integers(L)] = 0  # a layer wholly on the CPU
    start = int(rng.integers(2))
    return HybridPlan(F, tuple(int(k) for k in counts),
                      tuple(rng.permutation(F) for _ in range(L)), (threshold,) * L,
                      gate_gpu=tuple((l + start) % 2 == 1 for l in range(L)),
                      embedding_cpu=True)


def _triton():
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    from drift.backends.triton import TritonBackend

    return TritonBackend()


@pytest.mark.parametrize("gpu", ["cpu", "triton"])
def test_all_on_gpu_is_exactly_dense(model, gpu):
    make = CPUBackend if gpu == "cpu" else _triton
    dense = _run(Engine(model, backend=make(), ctx=32))
    e = Engine(model, backend=make(), ctx=32)
    plan = HybridPlan.uniform(e.config.n_layers, e.config.d_ff, e.config.d_ff)
    hybrid = _run(Engine(model, backend=HybridBackend(make(), plan), ctx=32))
    for a, b in zip(dense, hybrid):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("gpu", ["cpu", "triton"])
def test_any_split_without_skipping_is_dense_within_rounding(model, gpu):
    seed = int(np.random.SeedSequence().entropy % 2**32)
    rng = np.random.default_rng(seed)
    make = CPUBackend if gpu == "cpu" else _triton
    dense = _run(Engine(model, backend=make(), ctx=32))
    e = Engine(model, backend=make(), ctx=32)
    plan = _random_plan(e, rng)
    backend = HybridBackend(make(), plan)
    hybrid = _run(Engine(model, backend=backend, ctx=32))
    assert backend.cpu_runs_cold == (gpu == "triton")
    for a, b in zip(dense, hybrid):
        err = np.abs(a - b).max() / np.abs(a).max()
        assert err < 2e-2, f"seed {seed}: plan {plan.n_gpu}: relative error {err:.2e}"
    assert [int(np.argmax(x)) for x in dense[1:]] == [int(np.argmax(x)) for x in hybrid[1:]]


def test_skipping_on_triton_matches_the_numpy_reference(model):
    """With a threshold, the CPU kernel's choice of neurons and its sums against the graph's
    reference interpretation (ffn_cold's numpy reference on the numpy backend): decode logits
    within the tolerance of int8 x (a neuron within rounding of the threshold may flip)."""
    rng = np.random.default_rng(7)
    e = Engine(model, device="cpu", ctx=32)
    plan = _random_plan(e, rng, threshold=0.05)
    ref = _run(Engine(model, backend=HybridBackend(CPUBackend(), plan), ctx=32))
    got = _run(Engine(model, backend=HybridBackend(_triton(), plan), ctx=32))
    for a, b in zip(ref, got):
        assert np.abs(a - b).max() / np.abs(a).max() < 5e-2


# ---------------------------------------------------------------------------------------------
# the CPU kernels


def _weights(rng, shape, qtype):
    w = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    return quants.quantize(w, Q[qtype])


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K"])
def test_row_planes_hold_what_gguf_py_decodes(qtype):
    rng = np.random.default_rng()
    raw = _weights(rng, (40, 256), qtype)
    planes = RowPlanes.from_blocks(raw, qtype, (40, 256))
    ref = gguf_quants.dequantize(raw, Q[qtype]).reshape(40, 256)
    if qtype in ("Q4_0", "Q4_1", "Q8_0"):
        np.testing.assert_array_equal(planes.dequantize(), ref)
    else:  # re-quantized to Q8_0 rows: within half a level of each block's largest weight
        # (and the f16 rounding of the block's scale: 127 levels * 2^-11 of a level)
        step = np.abs(ref.reshape(40, -1, 32)).max(axis=-1, keepdims=True) / 127
        assert np.all(np.abs(planes.dequantize().reshape(40, -1, 32) - ref.reshape(40, -1, 32))
                      <= (0.5 + 127 * 2**-11) * step + 1e-7)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
@pytest.mark.parametrize("tokens", [1, 3])
@pytest.mark.parametrize("down_rows", [True, False])
def test_cold_ffn_kernel_against_numpy(qtype, tokens, down_rows):
    if library() is None:
        pytest.skip("no C compiler here")
    seed = int(np.random.SeedSequence().entropy % 2**32)
    rng = np.random.default_rng(seed)
    F, D = 160, 576  # D: 18 blocks, a 16-block vector step and a remainder (SmolLM2's width)
    gate = RowPlanes.from_blocks(_weights(rng, (F, D), qtype), qtype, (F, D))
    up = RowPlanes.from_blocks(_weights(rng, (F, D), qtype), qtype, (F, D))
    if down_rows:
        down = RowPlanes.from_blocks(_weights(rng, (F, D), "Q8_0"), "Q8_0", (F, D))
    else:
        down = RowPlanes.from_blocks(_weights(rng, (D, F), qtype), qtype, (D, F))
    x = rng.standard_normal((tokens, D)).astype(np.float32)
    thresholds = [0.0, 0.02] if down_rows else [0.0]
    for act in ("swiglu", "geglu"):
        for t in thresholds:
            native = ColdFFN(gate, up, down, act, t, down_rows)(x)
            ffn = ColdFFN(gate, up, down, act, t, down_rows)
            reference = ffn._numpy(x, None)
            err = np.abs(native - reference).max() / np.abs(reference).max()
            # the dense down GEMV quantizes h to int8 blocks too (numpy keeps it float)
            assert err < (1e-4 if down_rows else 2e-2), f"seed {seed}: {act} t={t}: {err:.2e}"
            # the gate computed elsewhere (the GPU): fresh pre-activations of its scale
            g = (rng.standard_normal((tokens, F)) * 0.3).astype(np.float32)
            given = ColdFFN(None, up, down, act, 5 * t, down_rows)  # some kept, some not
            native, reference = given(x, g), given._numpy(x, g)
            err = np.abs(native - reference).max() / np.abs(reference).max()
            assert err < (1e-4 if down_rows else 2e-2), f"seed {seed}: given gate: {err:.2e}"
            assert t == 0 or given.last_active < F
            # the prefetch distance and level change what is fetched early, never the sums
            lib = library()
            for rows, level in ((0, 0), (1, 0), (16, 3)):
                lib.set_prefetch(rows, level)
                np.testing.assert_array_equal(given(x, g), native)
            lib.set_prefetch(4, 2)


def test_cold_ffn_numpy_path_is_the_op_reference():
    """`ColdFFN._numpy` (the fallback without a compiler) is the ffn_cold op's reference on
    x as its int8 blocks."""
    rng = np.random.default_rng()
    F, D = 96, 64
    raws = [_weights(rng, (F, D), "Q8_0") for _ in range(3)]
    planes = [RowPlanes.from_blocks(r, "Q8_0", (F, D)) for r in raws]
    x = rng.standard_normal((2, D)).astype(np.float32)
    ffn = ColdFFN(*planes, "swiglu", 0.01)
    got = ffn._numpy(x, None)
    b = x.reshape(2, -1, 32)
    amax = np.abs(b).max(-1, keepdims=True)
    t = b * (127 / amax)
    xq = (np.trunc(t + np.where(t >= 0, 0.5, -0.5)) * amax / 127).reshape(2, D)
    w = [quants.dequantize(r, Q.Q8_0, (F, D)) for r in raws]
    (ref,) = run_reference("ffn_cold", [xq.astype(np.float32), *w],
                           {"act": "swiglu", "threshold": 0.01, "down_rows": True})
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
    g = rng.standard_normal((2, F)).astype(np.float32)  # the gate from elsewhere
    given = ColdFFN(None, *planes[1:], "swiglu", 0.2)
    (ref,) = run_reference("ffn_cold_gated", [xq.astype(np.float32), g, *w[1:]],
                           {"act": "swiglu", "threshold": 0.2, "down_rows": True})
    np.testing.assert_allclose(given._numpy(x, g), ref, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# the graph and the program


@pytest.mark.parametrize("gate_gpu", [False, True])
def test_split_graph_fuses_the_hot_part_and_calls_the_host_for_the_cold(model, gate_gpu):
    """With the cold gate on the GPU too, its matmul joins the hot gate/up one (one x) and
    the host call's inputs (x and the cold gate) leave right after it."""
    tb = _triton()
    e = Engine(model, device="cpu", ctx=32)
    L, F = e.config.n_layers, e.config.d_ff
    plan = replace(HybridPlan.uniform(L, F, 32), gate_gpu=(gate_gpu,) * L, embedding_cpu=True)
    untied = "output.weight" in e.file.tensors  # then the lookup is a host call too
    cold_op = "ffn_cold_gated" if gate_gpu else "ffn_cold"
    g = split_ffn(build_graph(e.config, e.weight_dtypes, 1, 32), plan)
    assert sum(n.op == cold_op for n in g.nodes) == L
    hb = HybridBackend(tb, plan)
    eng = Engine(model, backend=hb, ctx=32)
    prog = eng.program(1)
    ops = [n.op for n in prog.graph.nodes]
    dense_ops = [n.op for n in tb.lower(build_graph(e.config, e.weight_dtypes, 1, 32)).graph.nodes]
    # the hot FFN is fused like the dense one: the same number of stacked gate/up matmuls
    assert ops.count("stacked_matmul") == dense_ops.count("stacked_matmul")
    assert ops.count(cold_op) == L and len(prog.host_calls) == L + untied
    assert untied == (prog.graph.nodes[min(prog.host_calls)].op == "embedding")
    assert ("token_embd.weight" in tb.weights) != untied
    # each host call's input leaves before the hot matmuls run (the GPU works meanwhile)
    sends = [i for i, item in enumerate(prog.schedule) if getattr(item, "__name__", "") == "send"]
    receives = [i for i, item in enumerate(prog.schedule)
                if getattr(item, "__name__", "") == "receive"]
    assert len(sends) == len(receives) == L + untied
    assert all(isinstance(prog.schedule[s + 1], list) and s + 1 < r
               for s, r in list(zip(sends, receives))[untied:])


# ---------------------------------------------------------------------------------------------
# the budget and bad input


def test_plan_for_budget(model):
    e = Engine(model, device="cpu", ctx=32)
    cfg, f = e.config, e.file
    big = plan_for_budget(f, cfg, 2**40, 32, "f32")
    assert big.n_gpu == (cfg.d_ff,) * cfg.n_layers
    layers = plan_for_budget(f, cfg, 2**40, 32, "f32", layers=True)
    assert layers.n_gpu == (cfg.d_ff,) * cfg.n_layers
    from drift.hybrid.backend import ACTIVATION_MARGIN, embedding_stays_on_cpu, fixed_gpu_bytes

    fixed = fixed_gpu_bytes(f, cfg, 32, "f32", embedding_stays_on_cpu(f)) + ACTIVATION_MARGIN
    half = plan_for_budget(f, cfg, fixed + ffn_bytes(f) // 2, 32, "f32", gates_first=False)
    assert 0 < sum(half.n_gpu) < cfg.d_ff * cfg.n_layers and not any(half.gate_gpu)
    assert all(k % 32 == 0 for k in half.n_gpu)
    # gates first: half the FFN bytes buy every gate (a third), then hot neurons
    gates = plan_for_budget(f, cfg, fixed + ffn_bytes(f) // 2, 32, "f32")
    assert gates.gate_gpu == (True,) * cfg.n_layers
    assert sum(gates.n_gpu) < sum(half.n_gpu)
    gate_bytes = [f.tensors[f"blk.{l}.ffn_gate.weight"].nbytes for l in range(cfg.n_layers)]
    one = plan_for_budget(f, cfg, fixed + gate_bytes[0] + gate_bytes[1] // 2, 32, "f32")
    assert one.gate_gpu == (True,) + (False,) * (cfg.n_layers - 1) and sum(one.n_gpu) == 0
    off = plan_for_budget(f, cfg, fixed + ffn_bytes(f) // 2, 32, "f32", layers=True)
    assert set(off.n_gpu) <= {0, cfg.d_ff} and off.n_gpu[0] >= off.n_gpu[-1]
    with pytest.raises(InvalidArgumentError, match="below what the GPU must hold"):
        plan_for_budget(f, cfg, fixed // 2, 32, "f32")
    with pytest.raises(InvalidArgumentError, match="calibration"):
        plan_for_budget(f, cfg, fixed + 1, 32, "f32", sparsity=0.5)


def test_bad_plans_are_refused():
    perm = (np.arange(96),)
    for bad in ({"n_gpu": (40,)}, {"n_gpu": (97,)}, {"thresholds": (-1.0,)},
                {"order": (np.zeros(96, dtype=np.int64),)}, {"thresholds": (np.nan,)},
                {"gate_gpu": (True, False)},  # one per layer
                {"gate_gpu": (True,), "predictor_rank": 8}):  # nothing left to predict
        args = {"n_ffn": 96, "n_gpu": (32,), "order": perm, "thresholds": (0.0,)} | bad
        with pytest.raises(InvalidArgumentError):
            HybridPlan(**args)


@pytest.mark.parametrize("flags, message", [
    (["--gpu-mem", "lots"], "a size such as"),
    (["--gpu-mem=-3G"], "a size such as"),
    (["--gpu-mem", "1M"], "below what the GPU must hold"),
    (["--sparsity", "1.5"], "--sparsity must be in"),
    (["--gpu-mem", "1G", "--sparsity", "0.5"], "calibration"),
    (["--predictor=-2"], "--predictor must be >= 0"),
    (["--gpu-mem", "1G", "--predictor", "16"], "give --sparsity too"),
    (["--offload", "sideways"], "invalid choice"),
])
def test_bad_hybrid_flags_give_one_line(model, tmp_path, monkeypatch, capsys, flags, message):
    monkeypatch.setenv("DRIFT_HOME", str(tmp_path))
    try:
        code = main(["bench", str(model), "-p", "4", "-n", "2", "-r", "1", "--device", "cpu",
                     "--no-ceilings", *flags])
    except SystemExit as e:  # argparse refused it (one line: drift.cli._Parser)
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and message in err[-1] and len(err) <= 2, err


def test_a_backend_without_host_calls_is_refused():
    from drift.errors import UnsupportedError

    class NoColdKernel(CPUBackend):  # like webgpu/opencl: no ffn_cold, no host calls
        host_calls = False

        def supports(self, op: str) -> bool:
            return op != "ffn_cold" and super().supports(op)

    with pytest.raises(UnsupportedError, match="cannot call CPU kernels"):
        HybridBackend(NoColdKernel(), HybridPlan.uniform(2, 96, 32))


@pytest.mark.parametrize("gpu", ["cpu", "triton"])
def test_predictor_full_rank_changes_nothing_and_low_rank_agrees_across_paths(gpu):
    """A full-rank gate predictor predicts the gate itself, so with margin < 1 it drops
    nothing: the same logits as no predictor. A low-rank one drops neurons; the C kernel's
    choice then agrees with the op's numpy reference."""
    rng = np.random.default_rng()
    preset, _ = TINY["llama-q4_0"]
    path = write_random(preset, "Q4_0", Path(tempfile.mkdtemp()) / "p.gguf", seed=5, workers=1)
    F, L = 96, 2
    order = tuple(rng.permutation(F) for _ in range(L))
    make = CPUBackend if gpu == "cpu" else _triton

    def run(rank: int, backend_maker=make) -> list[np.ndarray]:
        plan = HybridPlan(F, (32, 0), order, (0.05, 0.05), predictor_rank=rank)
        return _run(Engine(path, backend=HybridBackend(backend_maker(), plan), ctx=32))

    none, full = run(0), run(64)  # D = 64: rank 64 is exact
    for a, b in zip(none, full):
        assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()
    if gpu == "triton":
        low_ref, low = run(8, CPUBackend), run(8)
        for a, b in zip(low_ref, low):
            assert np.abs(a - b).max() / np.abs(a).max() < 5e-2


def test_numpy_backend_runs_the_compiled_cold_ffn_as_a_host_op(model):
    """HybridBackend(CPUBackend(), plan, cpu_kernels=True): the numpy backend calls the C
    kernel for ffn_cold instead of its reference (what the quality bench measures with),
    within int8 x's rounding of the reference; with a predictor it counts rows and recall."""
    if library() is None:
        pytest.skip("no C compiler here")
    rng = np.random.default_rng()
    e = Engine(model, device="cpu", ctx=32)
    plan = _random_plan(e, rng)
    ref = _run(Engine(model, backend=HybridBackend(CPUBackend(), plan), ctx=32))
    backend = HybridBackend(CPUBackend(), plan, cpu_kernels=True)
    got = _run(Engine(model, backend=backend, ctx=32))
    assert backend.cold and backend.cpu_runs_cold
    for a, b in zip(ref, got):
        assert np.abs(a - b).max() / np.abs(a).max() < 2e-2
    skipping = replace(_random_plan(e, rng, threshold=0.05), predictor_rank=8, gate_gpu=())
    backend = HybridBackend(CPUBackend(), skipping, cpu_kernels=True)
    _run(Engine(model, backend=backend, ctx=32))
    rows, recall = backend.predictor_stats()  # its counts: test_predictor_counts
    assert 0 <= rows <= 1 and (np.isnan(recall) or 0 <= recall <= 1)


def test_predictor_counts_against_numpy():
    """The predictor's counters (gate rows read, recall) against a direct numpy count on the
    same weights: the predicted set from the factors, the active set from the gate on x as its
    int8 blocks (a neuron within rounding of the threshold may count differently)."""
    if library() is None:
        pytest.skip("no C compiler here")
    rng = np.random.default_rng()
    F, D, S, r = 200, 64, 5, 6
    raws = [_weights(rng, (F, D), "Q8_0") for _ in range(3)]
    planes = [RowPlanes.from_blocks(raw, "Q8_0", (F, D)) for raw in raws]
    wg = quants.dequantize(raws[0], Q.Q8_0, (F, D)).astype(np.float64)
    u, sv, vt = np.linalg.svd(wg, full_matrices=False)
    A, B = (u[:, :r] * sv[:r]).astype(np.float32), vt[:r].astype(np.float32)
    x = rng.standard_normal((S, D)).astype(np.float32)
    silu = lambda v: v / (1 + np.exp(-v))
    t = float(np.quantile(np.abs(silu(x.astype(np.float64) @ wg.T)), 0.6))
    ffn = ColdFFN(*planes, "swiglu", t, predictor=(A, B, 0.5))
    ffn(x)  # several tokens: the whole gate is computed, so recall is counted
    pred = np.abs(silu(x.astype(np.float64) @ B.T.astype(np.float64) @ A.T)) > 0.5 * t
    b = x.reshape(S, -1, 32)
    amax = np.abs(b).max(-1, keepdims=True)
    v = b * (127 / amax)
    xq = (np.trunc(v + np.where(v >= 0, 0.5, -0.5)) * amax / 127).reshape(S, D)
    active = np.abs(silu(xq.astype(np.float64) @ wg.T)) > t
    assert ffn.pred_tokens == S
    assert abs(ffn.pred_rows - pred.sum()) <= 2
    assert abs(ffn.recall_total - active.sum()) <= 3
    assert abs(ffn.recall_hits - (active & pred).sum()) <= 3
    assert 0 < ffn.recall_hits < ffn.recall_total  # a rank-6 predictor misses some


def test_prefill_streams_the_dense_ffn_to_the_gpu(model):
    """A call of STREAM_MIN_TOKENS or more runs the dense graph on the GPU backend, the FFN
    weights it does not hold uploaded from the file by the node that reads them: its logits
    are the dense model's (same kernels, same weights), whatever the plan skips at decode;
    decode after it still calls the CPU."""
    from drift.hybrid.backend import STREAM_MIN_TOKENS

    rng = np.random.default_rng()
    prompt = [int(t) for t in rng.integers(0, 300, STREAM_MIN_TOKENS + 3)]
    dense = Engine(model, backend=_triton(), ctx=32)
    ref = dense.prefill(prompt)
    plan = _random_plan(dense, rng, threshold=0.05)
    tb = _triton()
    hb = HybridBackend(tb, plan)
    e = Engine(model, backend=hb, ctx=32)
    got = e.prefill(prompt)
    prog = e.program(len(prompt))
    assert prog.streams and not any(n.op.startswith("ffn_cold") for n in prog.graph.nodes)
    cold = [l for l in range(plan.n_layers) if not plan.is_dense_gpu(l)]
    assert all(f"blk.{l}.ffn_up.weight" in tb.streamed and f"blk.{l}.ffn_up.weight" not in
               tb.weights for l in cold)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    step = e.forward([int(np.argmax(got))], len(prompt))
    assert np.isfinite(step).all() and hb.cold_calls == len(cold)
    # scoring every position (perplexity) runs the split, as decode does: not streamed
    scored = e.program(len(prompt), all_logits=True)
    assert not scored.streams and any(n.op.startswith("ffn_cold") for n in scored.graph.nodes)


def test_cold_ops_cost_counts_the_products_and_every_input():
    """The analysis's cost of both cold ops, with and without the predictor's two inputs."""
    from drift.ir import REGISTRY, Role, TensorSpec

    S, D, F = 3, 64, 96
    x = TensorSpec("x", (S, D), "f32", Role.ACTIVATION)
    w = TensorSpec("w", (F, D), "Q8_0", Role.WEIGHT)
    a, b = TensorSpec("a", (F, 8), "f32", Role.WEIGHT), TensorSpec("b", (8, D), "f32", Role.WEIGHT)
    g = TensorSpec("g", (S, F), "f32", Role.ACTIVATION)
    for op, ins, products in (("ffn_cold", (x, w, w, w), 3), ("ffn_cold", (x, w, w, w, a, b), 3),
                              ("ffn_cold_gated", (x, g, w, w), 2)):
        c = REGISTRY[op].cost(ins, (x,), {}, 0)
        assert c.flops == 2 * products * S * F * D
        assert sum(c.reads) == sum(t.nbytes for t in ins)


@pytest.mark.parametrize("value", ["abc", "4", "-1,2", "4,7", "100,1"])
def test_a_bad_prefetch_setting_is_one_line(monkeypatch, value):
    from drift.backends.cpu.native import prefetch_setting

    monkeypatch.setenv("DRIFT_CPU_PREFETCH", value)
    with pytest.raises(InvalidArgumentError, match="DRIFT_CPU_PREFETCH"):
        prefetch_setting()
    monkeypatch.setenv("DRIFT_CPU_PREFETCH", "8,2")
    assert prefetch_setting() == (8, 2)
