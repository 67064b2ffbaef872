"""Roofline times against the formula t = max(flops / peak(dtype), bytes / bandwidth)
+ launches x latency, the device table, and `--device-spec local` from a saved probe."""

from __future__ import annotations

import json

import pytest

from drift.analysis import probe
from drift.analysis.cost import model_cost, stage_cost
from drift.analysis.hardware import DEVICES, DeviceSpec, device_spec
from drift.analysis.roofline import estimate_model, estimate_op, estimate_stage
from drift.analysis.source import from_preset
from drift.errors import DriftError
from drift.ir import GraphBuilder

TOY = DeviceSpec("toy", "toy", "test", "local", 1, 100, 1.0, 4.0, 4.0, 8.0, 10, "test",
                 launch_us=3.0, launch_source="test")


def toy_graph():
    """x (8, 64) @ w (128, 64).T in f16 weights, then an add: one compute-ish op, one memory op."""
    b = GraphBuilder("toy", stage="prefill", n_tokens=8)
    x = b.input("x", (8, 64), "f32")
    w = b.weight("w", (128, 64), "f16")
    y = b.op("matmul", x, w)
    z = b.op("add", y, y)
    b.output(z)
    return b.finish()


def test_op_time_is_the_max_of_compute_and_memory():
    st = stage_cost(toy_graph(), kv_len=0)
    mm, add = st.ops
    e = estimate_op(mm, TOY)
    assert e.math_dtype == "f16"  # f16 weights: the f16 peak
    assert e.compute_s == pytest.approx(mm.flops / 4e12)
    assert e.memory_s == pytest.approx(mm.bytes / 100e9)
    assert e.roofline_s == max(e.compute_s, e.memory_s)
    assert e.launches == 1 and e.launch_s == pytest.approx(3e-6)
    assert e.seconds == pytest.approx(max(e.compute_s, e.memory_s) + 3e-6)
    assert mm.flops == 2 * 8 * 64 * 128
    assert mm.bytes == 8 * 64 * 4 + 128 * 64 * 2 + 8 * 128 * 4
    assert e.bound == "memory"  # intensity ~17 < ridge 40 FLOP/B
    a = estimate_op(add, TOY)
    assert a.math_dtype == "f32" and a.bound == "memory"
    assert a.roofline_s == pytest.approx(3 * 8 * 128 * 4 / 100e9)
    assert a.seconds == pytest.approx(3 * 8 * 128 * 4 / 100e9 + 3e-6)
    forced = estimate_op(mm, TOY, compute_dtype="f32")
    assert forced.compute_s == pytest.approx(mm.flops / 1e12)
    total = estimate_stage(st, TOY)
    assert total.seconds == pytest.approx(e.seconds + a.seconds)
    assert total.roofline_s == pytest.approx(e.roofline_s + a.roofline_s)
    assert total.launches == 2 and total.launch_s == pytest.approx(6e-6)
    # counted launches (a profiled backend) replace the default of one per op
    counted = estimate_stage(st, TOY, launches=[2, 0.5])
    assert counted.ops[0].seconds == pytest.approx(e.roofline_s + 2 * 3e-6)
    assert counted.ops[1].seconds == pytest.approx(a.roofline_s + 0.5 * 3e-6)


def test_quantized_matmuls_use_the_devices_quant_math():
    h100 = device_spec("h100")
    assert h100.math_dtype("Q4_K") == "f16" and h100.math_dtype("f32") == "f32"
    assert h100.peak("int8") == pytest.approx(1978.9e12)
    assert h100.peak("bf16") == h100.peak("f16")
    adreno = device_spec("adreno-750")
    assert adreno.peak("int8") == adreno.peak("f16")  # no int8 path: falls to f16


def test_model_prediction_matches_anchors_floor():
    """8B Q4_0 decode on an H100 SXM: about 4.46 GB per token over 3.35 TB/s."""
    spec = from_preset("llama-3.1-8b", "Q4_0")
    c = model_cost(spec.label, spec.quant, spec.config, spec.weight_dtypes, 512, 128)
    e = estimate_model(c, device_spec("h100-sxm"))
    assert e.decode_s == pytest.approx(e.decode.seconds)
    assert e.decode_tok_s == pytest.approx(1 / e.decode_s)
    assert e.decode.bound_share["memory"] > 0.99
    assert e.decode.roofline_s == pytest.approx(c.decode.bytes / 3350e9, rel=0.01)
    assert 700 < 1 / e.decode.roofline_s < 800  # ANCHORS: floor ~690 at the measured 3.02 TB/s
    # the launch term: one assumed 1 us launch per non-view op of the unfused graph
    h100 = device_spec("h100-sxm")
    assert h100.launch_s == pytest.approx(1e-6) and h100.launch_note.startswith("assumed")
    n = sum(1 for o in c.decode.ops if o.node.op not in ("reshape", "last_row"))
    assert e.decode.launches == n
    assert e.decode_s == pytest.approx(e.decode.roofline_s + n * 1e-6)
    # prefill at 512: the block matmuls are compute-bound and take most of the time; the
    # f32 elementwise ops between them stay memory-bound
    for o in e.prefill.ops:
        if o.op.label.startswith("matmul ffn"):
            assert o.bound == "compute"
        if o.op.node.op in ("add", "rms_norm", "swiglu"):
            assert o.bound == "memory"
    assert e.prefill.bound_share["compute"] > 0.7
    assert e.ttft_s == pytest.approx(sum(o.roofline_s + o.launch_s for o in e.prefill.ops))
    assert e.request_s == pytest.approx(e.ttft_s + 128 * e.decode_s)
    assert e.energy_j_per_token() == pytest.approx(700 * e.decode_s)


def test_device_table_is_complete_and_sourced():
    keys = {d.key for d in DEVICES}
    for k in ("h100-sxm", "h100-pcie", "h200", "a100-40gb", "a100-80gb", "rtx4090", "rtx3060",
              "m1", "m1-pro", "m1-max", "m2", "m2-pro", "m2-max", "m3", "m3-pro", "m3-max", "m4",
              "m4-pro", "m4-max", "arc-a770", "adreno-740", "adreno-750", "mali-g715"):
        assert k in keys
    for d in DEVICES:
        assert d.source and d.bandwidth_gbs > 0 and d.fp16_tflops >= d.fp32_tflops > 0
        # no vendor publishes a launch cost: every table entry's is marked as assumed
        assert d.launch_s > 0 and d.launch_note.startswith("assumed")
    assert device_spec("H100").key == "h100-sxm"
    assert device_spec("RTX 4090").key == "rtx4090"
    with pytest.raises(DriftError, match="unknown device spec 'rtx9090'"):
        device_spec("rtx9090")


def test_local_spec_comes_from_the_saved_probe(tmp_path, monkeypatch):
    monkeypatch.setenv("DRIFT_HOME", str(tmp_path))
    with pytest.raises(DriftError, match="drift probe"):
        device_spec("local", "cpu")
    r = probe.ProbeResult("cpu", "test cpu", 20.0, 25.0, {"f32": 0.1, "f16": 0.001}, 8.0,
                          "now", "host")
    path = probe.save_probe(r)
    assert path == tmp_path / "probe" / "cpu.json"
    assert json.loads(path.read_text())["copy_gbs"] == 20.0
    d = device_spec("local", "cpu")
    assert d.bandwidth == 20e9 and d.peak("f32") == pytest.approx(0.1e12)
    # numpy's f16 is a slow loop the backend never uses: f16 ops get the f32 rate
    assert d.peak("f16") == d.peak("f32") and d.math_dtype("Q4_1") == "f32"
    assert device_spec("local:cpu") == d
    # a probe saved before the launch measurement: an assumed latency, marked as such
    assert d.launch_s > 0 and "assumed" in d.launch_note and d.views_dispatch
    probe.save_probe(probe.ProbeResult("cuda", "gpu", 3000.0, 2500.0, {"f16": 700.0}, 80.0,
                                       "now", "host", launch_us=1.25, launch_what="graph"))
    g = device_spec("local:cuda")
    assert g.launch_s == pytest.approx(1.25e-6) and "drift probe" in g.launch_note
    assert g.launches("reshape") == 0 and d.launches("reshape") == 1


def test_numpy_probe_measures_something(tmp_path, monkeypatch):
    monkeypatch.setenv("DRIFT_HOME", str(tmp_path))
    r = probe.run_probe("cpu", quick=True)
    assert r.backend == "cpu" and r.copy_gbs > 0.1 and r.gemv_gbs > 0.1
    assert set(r.matmul_tflops) >= {"f32", "f16", "int8"}
    assert all(v > 0 for v in r.matmul_tflops.values())
    assert 0 < r.launch_us < 1000 and "dispatch" in r.launch_what
