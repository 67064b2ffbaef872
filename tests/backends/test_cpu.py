"""The numpy backend as a backend: it compiles through the pass pipeline, runs from one shared
arena through the storages the layout pass chose, concatenates the weights of horizontal
fusions once, and hands back outputs that survive the next call."""

from __future__ import annotations

import numpy as np
import pytest

from drift.backends.cpu import CPU_CAPABILITIES, CPUBackend
from drift.ir import GraphBuilder
from drift.ir.ops_fused import stacked_rows
from drift.models.decoder import build_graph
from tests.passes.helpers import TIGHT, random_feeds, random_weights, rel_err, run_plain
from tests.passes.test_model_graphs import tiny_config, tiny_weights


def _graph(rows: int = 3):
    b = GraphBuilder("mlp")
    x = b.input("x", (rows, 8), "f32")
    q = b.op("matmul", x, b.weight("wq", (8, 8), "f32"))
    k = b.op("matmul", x, b.weight("wk", (4, 8), "f32"))
    v = b.op("matmul", x, b.weight("wv", (4, 8), "f32"))
    h = b.op("swiglu", b.op("matmul", q, b.weight("wg", (16, 8), "f32")),
             b.op("matmul", q, b.weight("wu", (16, 8), "f32")))
    b.output(b.op("add", b.op("matmul", h, b.weight("wd", (8, 16), "f32")), q))
    b.output(b.op("mul", k, v))
    return b.finish()


def test_compile_runs_the_pipeline_and_matches_the_plain_evaluation():
    g = _graph()
    w, f = random_weights(g), random_feeds(g)
    ref = run_plain(g, w, f)
    for fuse in (True, False):
        b = CPUBackend(fuse=fuse)
        b.load_arrays(w)
        prog = b.compile(g)
        ops = [n.op for n in prog.graph.nodes]
        assert ("stacked_matmul" in ops) == fuse and ("ffn_gate_up" in ops) == fuse
        got = prog.run(f)
        for o in g.outputs:
            assert rel_err(got[o], ref[o]) <= 1e-6
        assert prog.plan.arena_bytes <= b.arena.nbytes


def test_horizontal_fusion_weights_concatenated_once():
    g = _graph()
    b = CPUBackend()
    b.load_arrays(random_weights(g))
    before = {k: v.copy() for k, v in b.weights.items()}
    b.compile(g)
    assert stacked_rows([b.weights[n] for n in ("wq", "wk", "wv")]) is not None
    assert stacked_rows([b.weights[n] for n in ("wg", "wu")]) is not None
    for k, v in before.items():  # same values, now views of the concatenation
        np.testing.assert_array_equal(b.weights[k], v)
    whole = b.weights["wq"].base
    b.compile(_graph(rows=5))  # another program: nothing concatenated again
    assert b.weights["wq"].base is whole


def test_outputs_survive_the_next_call():
    g = _graph()
    b = CPUBackend()
    b.load_arrays(random_weights(g))
    prog = b.compile(g)
    f1, f2 = random_feeds(g, seed=1), random_feeds(g, seed=2)
    out1 = prog.run(f1)
    kept = {k: v.copy() for k, v in out1.items()}
    prog.run(f2)
    for k in out1:
        np.testing.assert_array_equal(out1[k], kept[k])
        assert not np.shares_memory(out1[k], b.arena)


def test_one_arena_shared_and_grown_across_programs():
    cfg = tiny_config("llama")
    w = tiny_weights(cfg)
    dtypes = {k: "f32" for k in w}
    b = CPUBackend(capabilities=TIGHT)
    b.load_arrays(w)
    decode = b.compile(build_graph(cfg, dtypes, 1, 32))
    small = b.arena
    prefill = b.compile(build_graph(cfg, dtypes, 12, 32))
    assert b.arena.nbytes >= prefill.plan.arena_bytes > decode.plan.arena_bytes
    assert b.arena is not small  # grown; the decode program binds to the new one
    state: dict = {}
    feeds = {"tokens": np.arange(12, dtype=np.int32), "positions": np.arange(12, dtype=np.int32)}
    ref = run_plain(build_graph(cfg, dtypes, 12, 32), w, feeds, state)["logits"]
    assert rel_err(prefill.run(feeds)["logits"], ref) <= 1e-5
    step = {"tokens": np.array([3], np.int32), "positions": np.array([12], np.int32)}
    ref = run_plain(build_graph(cfg, dtypes, 1, 32), w, step, state)["logits"]
    assert rel_err(decode.run(step)["logits"], ref) <= 1e-5


def test_default_capabilities_exercise_the_storages():
    assert CPU_CAPABILITIES.channel_slices and CPU_CAPABILITIES.max_object_bytes
    b = CPUBackend()
    assert not b.capabilities().quant_planes  # weights dequantized at load: no planes
    b.weights_dequantized = False
    assert b.capabilities().quant_planes


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
@pytest.mark.parametrize("rows", [1, 3, 9])  # 9: past GEMV_ROWS, the slab + BLAS path
def test_native_quant_matrix_against_gguf_py(qtype, rows, monkeypatch):
    """A kept-quantized weight through the compiled GEMV (or slabs dequantized in C, then
    BLAS) against gguf-py's dequantization in float64, fresh random weights and x."""
    import drift.backends.cpu as cpu

    monkeypatch.setattr(cpu, "SLAB_FLOATS", 96 * 300)  # slabs of 1024 rows: two, one partial
    from gguf import GGMLQuantizationType as Q
    from gguf import quants as gguf_quants

    from drift.backends.cpu import NativeQuantMatrix
    from drift.backends.cpu.native import library
    from drift.formats import quants
    from drift.formats.gguf import TensorInfo

    lib = library()
    if lib is None:
        pytest.skip("no C compiler here")
    rng = np.random.default_rng()
    w = rng.standard_normal((1100, 96)).astype(np.float32)  # > ROWS_PER_CHUNK rows
    raw = quants.quantize(w, Q[qtype])
    m = NativeQuantMatrix.from_file(TensorInfo("w", (1100, 96), Q[qtype], raw), lib)
    x = rng.standard_normal((rows, 96)).astype(np.float32)
    ref = x.astype(np.float64) @ gguf_quants.dequantize(raw, Q[qtype]).reshape(1100, 96).T
    got = m.matmul_t(x)
    assert got.shape == (rows, 1100)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-6
    ids = rng.integers(0, 1100, 5)
    np.testing.assert_array_equal(m.rows(ids), gguf_quants.dequantize(raw[ids], Q[qtype]))


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_dequant_rows_is_gguf_py_exactly(qtype):
    """The C dequantization of a range of rows (the prefill's slabs) gives gguf-py's float32
    values bit for bit, from a row stride that is not the row width (a view's)."""
    from gguf import GGMLQuantizationType as Q
    from gguf import quants as gguf_quants

    from drift.backends.cpu.native import RowPlanes, dequant_rows, interleaved, library
    from drift.formats import quants

    lib = library()
    if lib is None:
        pytest.skip("no C compiler here")
    rng = np.random.default_rng()
    w = rng.standard_normal((70, 576)).astype(np.float32)
    raw = quants.quantize(w, Q[qtype])
    ref = gguf_quants.dequantize(raw, Q[qtype]).reshape(70, 576)
    planes = RowPlanes.from_blocks(raw, qtype, (70, 576))
    np.testing.assert_array_equal(dequant_rows(lib, planes, 5, 61), ref[5:61])
    down = RowPlanes.from_blocks(quants.quantize(w, Q.Q8_0), "Q8_0", (70, 576))
    strided, _ = interleaved(planes, down)  # rows 6.6 KB apart
    np.testing.assert_array_equal(dequant_rows(lib, strided, 0, 70), ref)
    with pytest.raises(ValueError, match="C-contiguous"):
        dequant_rows(lib, planes, 0, 4, np.empty((4, 576), np.float64))


def test_auto_is_the_cpu_at_once_without_gpu_device_nodes(monkeypatch):
    """On Linux without a GPU device node, `auto` is the CPU and no GPU API is asked (no
    backend class is even looked up); with one, every backend is tried in order as before."""
    import drift.backends as backends

    asked: list[str] = []

    class Emulated:
        @classmethod
        def available(cls):
            return True

        @classmethod
        def emulated(cls):
            return True

    def lookup(name):
        asked.append(name)
        return Emulated

    monkeypatch.setattr(backends, "backend_class", lookup)
    monkeypatch.setattr(backends.sys, "platform", "linux")
    monkeypatch.setattr(backends.glob, "glob", lambda pattern: [])
    assert backends.best_available() == "cpu" and asked == []
    monkeypatch.setattr(backends.glob, "glob",
                        lambda pattern: ["/dev/dri/renderD128"] if "dri" in pattern else [])
    assert backends.best_available() == "cpu"  # every one emulated here
    assert asked == list(backends.BACKENDS)


def test_cpu_isa_setting_refused_in_one_line(monkeypatch):
    """DRIFT_CPU_ISA takes native or avx2 (the latter builds without AVX-512)."""
    from drift.backends.cpu.native import isa_flags
    from drift.errors import InvalidArgumentError

    monkeypatch.setenv("DRIFT_CPU_ISA", "avx2")
    assert isa_flags() == ["-mno-avx512f"]
    monkeypatch.setenv("DRIFT_CPU_ISA", "native")
    assert isa_flags() == []
    monkeypatch.setenv("DRIFT_CPU_ISA", "sse9")
    with pytest.raises(InvalidArgumentError, match="DRIFT_CPU_ISA='sse9': native or avx2"):
        isa_flags()
