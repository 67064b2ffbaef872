"""The profiling executor (per-op timing without touching the CPU backend) and the energy
counters."""

from __future__ import annotations

import numpy as np
import pytest

from drift.analysis import energy
from drift.analysis.profile import profile_call, profile_engine, reference_walk, stored_dtypes
from drift.backends.cpu import CPUBackend
from drift.errors import DriftError, UnsupportedError
from drift.ir import REGISTRY, Role
from drift.runtime.engine import Engine


@pytest.fixture(scope="module")
def engine(smollm2_path):
    """SmolLM2 on the numpy backend with its weights as float copies (a dequantization budget
    given; by default a Q4_1 file stays in its blocks, `test_costs_count_the_blocks_held`)."""
    from drift.backends.cpu import DEFAULT_DEQUANT_BUDGET

    return Engine(smollm2_path, backend=CPUBackend(dequant_budget=DEFAULT_DEQUANT_BUDGET), ctx=32)


def test_costs_count_the_blocks_held(smollm2_path):
    """By default the numpy backend keeps a Q4_0/Q4_1/Q8_0 file's matrices in their blocks:
    the profile's costs count the file's types, not float32."""
    e = Engine(smollm2_path, device="cpu", ctx=32)
    assert stored_dtypes(e.backend, e.graph(1)) == {}
    r = profile_engine(e, "smollm2", prompt_len=4, decode_tokens=1, repeat=1)
    mm = next(o for o in r.decode.cost.ops if "blk.0.attn_q.weight" in o.node.inputs)
    assert mm.dtype == "Q4_1"


def test_reference_walk_computes_what_run_computes(engine, smollm2_path, monkeypatch):
    """The walk's logits and KV cache against an independent run: the same model compiled
    without fusion, run from its arena (other graph, other kernels: no stacked matmuls, no
    fused norms or RoPE), from an empty cache each."""
    from drift.analysis import profile as prof
    from drift.backends.cpu import CPUBackend

    feeds = {"tokens": np.array([1, 2, 3, 4], np.int32),
             "positions": np.arange(4, dtype=np.int32)}
    unfused = Engine(smollm2_path, backend=CPUBackend(fuse=False), ctx=32)
    want = unfused.program(4).run(feeds)["logits"]
    want_state = unfused.backend.state

    prog = engine.program(4)
    assert any(REGISTRY[n.op].fused for n in prog.graph.nodes)  # not the graph compared with
    for v in engine.backend.state.values():
        v[...] = 0
    produced: dict[str, np.ndarray] = {}
    reference = prof.run_reference

    def recording(op, args, attrs):
        out = reference(op, args, attrs)
        produced[f"#{len(produced)}"] = out
        return out

    monkeypatch.setattr(prof, "run_reference", recording)
    timed = reference_walk(prog, feeds)
    assert [n for n, _ in timed] == prog.graph.nodes
    assert all(s >= 0 for _, s in timed)
    # what the walk's nodes produced, by output name
    values = {name: v for n, outs in zip(prog.graph.nodes, produced.values(), strict=True)
              for name, v in zip(n.outputs, outs, strict=True)}
    got = np.asarray(values[prog.graph.outputs[0]])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    assert np.argmax(got[-1]) == np.argmax(want[-1])
    # the walk wrote the cache rows run without fusion writes, and only those
    assert set(engine.backend.state) == set(want_state)
    for k, v in engine.backend.state.items():
        assert np.abs(v[:4]).max() > 0 and not v[4:].any(), k
        np.testing.assert_allclose(v, want_state[k], rtol=0, atol=1e-4 * np.abs(v).max())


def test_programs_with_their_own_profile_are_asked(engine):
    class GPUProgram:
        graph = engine.program(1).graph

        def profile(self, feeds):
            return [(n, 1e-6) for n in self.graph.nodes]

    out = profile_call(GPUProgram(), {})
    assert len(out) == len(GPUProgram.graph.nodes)

    from drift.backends.base import Program

    class Opaque(Program):  # a backend that cannot time its kernels: the base class says so
        def run(self, feeds, to_host=True):
            return {}

    with pytest.raises(UnsupportedError, match="does not time its kernels"):
        profile_call(Opaque(), {})


def test_profile_engine_matches_every_node(engine):
    r = profile_engine(engine, "smollm2", prompt_len=8, decode_tokens=3, repeat=1)
    for ms in (r.prefill, r.decode):
        assert len(ms.op_s) == len(ms.cost.graph.nodes) == len(ms.cost.ops)
        assert ms.seconds > 0 and ms.op_total_s > 0
    assert r.prefill.cost.n_tokens == 8 and r.prefill.cost.kv_len == 8
    assert r.decode.cost.kv_len == 8 + 1 + 1  # the middle decode step's context
    assert len(r.itl_s) == 3 and r.ttft_s == r.prefill.seconds
    assert len(engine.cached_tokens) == 11
    # the numpy backend holds this small model dequantized: costs count the f32 it reads
    assert stored_dtypes(engine.backend, engine.graph(1))["blk.0.attn_q.weight"] == "f32"
    g = r.decode.cost.graph  # the compiled graph: fused ops, whatever the passes made
    mm = next(o for o in r.decode.cost.ops if "blk.0.attn_q.weight" in o.node.inputs)
    assert mm.dtype == "f32" and "attn_q" in mm.label and mm.layer == 0
    assert mm.weight_bytes == sum(4 * g.tensors[w].numel for w in mm.node.inputs
                                  if g.tensors[w].role == Role.WEIGHT)
    assert mm.macs == sum(g.tensors[w].numel for w in mm.node.inputs  # one decode row
                          if g.tensors[w].role == Role.WEIGHT and len(g.tensors[w].shape) == 2)
    assert any("dequantized" in n for n in r.notes)


def test_rapl_counter_unwraps(tmp_path):
    pkg = tmp_path / "intel-rapl:0"
    sub = tmp_path / "intel-rapl:0:0"  # a sub-domain: part of the package, not added
    for d in (pkg, sub):
        d.mkdir()
        (d / "max_energy_range_uj").write_text("1000000\n")
    (pkg / "energy_uj").write_text("999000\n")
    (sub / "energy_uj").write_text("5\n")
    counter, why = energy.find_counter("cpu", powercap_root=str(tmp_path))
    assert counter is not None and why == ""
    assert counter.domains == [str(pkg)]
    start = counter.read_j()
    (pkg / "energy_uj").write_text("2000\n")  # wrapped past 1 J
    assert counter.read_j() - start == pytest.approx(0.003)


def test_energy_not_available_says_why(tmp_path, monkeypatch):
    counter, why = energy.find_counter("cpu", powercap_root=str(tmp_path))
    assert counter is None and "RAPL" in why
    monkeypatch.setattr(energy, "find_counter", lambda kind: (None, "no counter here"))
    m = energy.Meter("cpu")
    r = m.stop(m.start(), tokens=4)
    assert r.joules is None and r.j_per_token is None
    assert r.source == "not available: no counter here"


def test_nvml_absent_is_reported():
    try:
        import pynvml  # noqa: F401
    except ImportError:
        counter, why = energy.find_counter("gpu")
        assert counter is None and "pynvml" in why
    else:
        pytest.skip("pynvml installed: the GPU machine's tests cover NVML")


def test_profile_cli_rejects_context_too_small(smollm2_path, capsys):
    from drift.cli import main

    rc = main(["profile", str(smollm2_path), "--prompt-len", "30", "--decode-tokens", "8",
               "--ctx", "16"])
    assert rc != 0
    assert "exceed --ctx 16" in capsys.readouterr().err
    assert issubclass(UnsupportedError, DriftError)


def test_without_per_op_timing_the_stages_still_stand(engine, monkeypatch):
    """A backend with no per-op timing (a GPU program without `profile`) still gets time to
    first token, inter-token latency, stage MBU/MFU and energy."""
    from drift.analysis import profile as prof
    from drift.analysis.hardware import device_spec
    from drift.analysis.report import profile_dict, profile_tables

    def refuse(program, feeds):
        raise UnsupportedError("no per-op timing here")

    monkeypatch.setattr(prof, "profile_call", refuse)
    r = prof.profile_engine(engine, "smollm2", prompt_len=4, decode_tokens=2, repeat=1)
    assert r.prefill.op_s is None and r.decode.op_s is None
    assert any("per-op times not available" in n for n in r.notes)
    d = profile_dict(r, device_spec("h100"))
    assert d["decode"]["mbu"] > 0 and "measured_s" not in d["ops"][0]
    summary, pre, _ = profile_tables(r, device_spec("h100"))
    assert "measured" not in pre.columns and summary.rows[0][7] == "-"
