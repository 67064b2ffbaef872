"""The launch term's reason classes (`explain`) on synthetic rows, the launch counting of a
profile, and the energy window against a fake counter that advances in coarse steps."""

from __future__ import annotations

import pytest

from drift.analysis import energy
from drift.analysis.cost import stage_cost
from drift.analysis.hardware import DeviceSpec
from drift.analysis.profile import launch_counts
from drift.analysis.roofline import OpEstimate, estimate_stage, explain
from drift.ir import GraphBuilder

# 1 TB/s, 100 TFLOP/s f16, 2 us per launch
DEV = DeviceSpec("dev", "dev", "test", "local", 1, 1000, 10.0, 100.0, 100.0, 200.0, None, "test",
                 launch_us=2.0, launch_source="test")


def row(nbytes: float, flops: float = 0.0, launches: float = 1.0) -> OpEstimate:
    """A synthetic op: only what `explain` reads (bytes, flops, times, launches)."""

    class Op:
        bytes = nbytes

    Op.flops = flops
    return OpEstimate(Op(), "f16", DEV.peak("f16"), flops / DEV.peak("f16"),
                      nbytes / DEV.bandwidth, launches, launches * DEV.launch_s)


def test_prediction_adds_launches_times_latency():
    b = GraphBuilder("toy", stage="decode", n_tokens=1)
    x = b.input("x", (1, 4096), "f32")
    w = b.weight("w", (4096, 4096), "f16")
    y = b.op("matmul", x, w)
    r = b.op("reshape", y, shape=(4096,))
    b.output(r)
    st = stage_cost(b.finish(), kv_len=0)
    e = estimate_stage(st, DEV)
    mm, view = e.ops
    assert mm.launches == 1 and view.launches == 0  # a view is no kernel on a GPU
    assert mm.seconds == pytest.approx(max(mm.compute_s, mm.memory_s) + 2e-6)
    assert view.seconds == view.roofline_s == 0
    assert e.seconds == pytest.approx(e.roofline_s + 2e-6)


def test_within_25_percent_needs_no_reason():
    r = row(10e6)  # 10 us + 2 us predicted
    assert explain([r], 12e-6, DEV) == ""
    assert explain([r], 1.2 * 12e-6, DEV) == ""
    assert explain([r], 0.8 * 12e-6, DEV) == ""
    assert explain([r], None, DEV) == ""


def test_launch_bound():
    r = row(1e6)  # roofline 1 us < 2 x 2 us
    why = explain([r], 6e-6, DEV)
    assert why == "launch-bound: 6 us per launch measured (roofline 1 us < 2 x 2 us latency)"
    # a group of 32 such kernels: per-launch time over the group
    why = explain([row(1e6) for _ in range(32)], 32 * 6e-6, DEV)
    assert why.startswith("launch-bound: 6 us per launch")


def test_memory_bound_below_and_above_copy_bandwidth():
    r = row(100e6)  # 100 us roofline + 2 us
    why = explain([r], 150e-6, DEV)
    assert why.startswith("below copy bandwidth") and "667 GB/s achieved" in why
    assert "67 % of 1.00 TB/s" in why
    why = explain([r], 50e-6, DEV)
    assert why.startswith("above copy bandwidth") and "2.00 TB/s" in why and "cache" in why
    # faster than roofline + launch but under the copy rate: the launch overlapped
    small = row(4e6, launches=1)  # 4 us + 2 us; roofline not under 2 launches
    why = explain([small], 4.2e-6, DEV)
    assert why.startswith("faster than roofline + launch")


def test_compute_bound_reports_percent_of_peak():
    r = row(1e6, flops=1e9)  # 10 us compute at 100 TFLOP/s, 1 us memory
    why = explain([r], 20e-6, DEV)
    assert why == "compute: 50 % of peak (f16)"


def test_fused_and_unmeasured_rows():
    assert explain([row(1e6, launches=0)], 0.0, DEV).startswith("fused")
    assert explain([row(0, launches=0)], 0.0, DEV) == ""


def test_gemv_reference_from_the_probe():
    from dataclasses import replace

    dev = replace(DEV, extra={"gemv_gbs": 800.0})
    r = row(100e6)
    r.op.weight_bytes = 100e6
    why = explain([r], 150e-6, dev)
    assert why.endswith("the probe's f16 GEMV streams 800 GB/s")


def test_op_rows_carry_roofline_launches_and_why():
    from drift.analysis.report import group_table, op_rows

    b = GraphBuilder("toy", stage="decode", n_tokens=1)
    x = b.input("x", (1, 4096), "f32")
    w = b.weight("w", (4096, 4096), "f16")
    b.output(b.op("matmul", x, w))
    st = stage_cost(b.finish(), kv_len=0)
    e = estimate_stage(st, DEV)
    pred = e.ops[0].seconds
    (r,) = op_rows(st, e, [2 * pred], DEV)
    assert r["roofline_s"] == pytest.approx(e.ops[0].roofline_s)
    assert r["launches"] == 1 and r["launch_s"] == pytest.approx(2e-6)
    assert r["predicted_s"] == pytest.approx(pred) and r["meas_over_pred"] == pytest.approx(2)
    assert not r["within_25pct"] and r["why"].startswith("below copy bandwidth")
    t = group_table(st, e, [2 * pred], DEV)
    assert t.columns[-1].startswith("why") and t.rows[0][-1].startswith("below copy")
    assert "roofline" in t.columns and "launches" in t.columns


def test_triton_launch_hook_counts():
    """The hook API of the Triton installed (the GPU machine's is the same 3.6): the counter
    registers on the launch-enter chain, counts each call and leaves the chain as it was."""
    triton = pytest.importorskip("triton")
    if not hasattr(getattr(triton, "knobs", None), "runtime"):
        pytest.skip("Triton < 3.4: launch hook is a CompiledKernel attribute")
    from drift.backends.triton.launch_hook import _counting

    chain = triton.knobs.runtime.launch_enter_hook
    before = list(chain.calls)
    with _counting() as box:
        chain(None)  # what a compiled kernel's launcher calls before each launch
        chain(None)
    assert box[0] == 2 and chain.calls == before


def test_launch_counts_from_the_backend_or_assumed():
    from types import SimpleNamespace as NS

    nodes = [NS(inputs=("x", name)) for name in "qkvo"]
    uncounted = NS(graph=NS(nodes=nodes), launch_counts=lambda: None)
    counts, how = launch_counts(uncounted, [1e-6, 0.0, 2e-6, 3e-6])
    assert counts == [1.0, 0.0, 1.0, 1.0] and how.startswith("assumed")
    assert launch_counts(uncounted) == (None, launch_counts(uncounted)[1])
    counted = NS(graph=NS(nodes=nodes), launch_counts=lambda: [2, 0, 1, 1])
    assert launch_counts(counted)[0] == [2.0, 0.0, 1.0, 1.0]


class SteppedCounter:
    """An energy counter that, like NVML's, only moves every `interval` seconds: it reads
    the energy `power` W drew up to the last update."""

    name = "fake counter"

    def __init__(self, clock, power: float, interval: float):
        self.clock, self.power, self.interval = clock, power, interval

    def read_j(self) -> float:
        t = self.clock.t
        return self.power * (t // self.interval) * self.interval


class Clock:
    def __init__(self, t: float = 0.037):
        self.t = t

    def __call__(self) -> float:
        return self.t


def fake_meter(counter) -> energy.Meter:
    m = energy.Meter.__new__(energy.Meter)
    m.counter, m.why = counter, ""
    return m


def test_a_short_span_can_read_nothing():
    """The failure the window fixes: 16 decode steps of 2.8 ms (45 ms) under a counter that
    moves every 100 ms read 0 J."""
    clock = Clock(0.01)
    m = fake_meter(SteppedCounter(clock, power=300.0, interval=0.1))
    e0 = m.start()
    clock.t += 16 * 0.0028
    assert m.stop(e0, 16).joules == 0


@pytest.mark.parametrize("step_s", [0.0028, 0.029])
def test_energy_window_spans_whole_counter_intervals(step_s):
    clock = Clock()
    counter = SteppedCounter(clock, power=300.0, interval=0.1)
    m = fake_meter(counter)
    calls = []

    def step():
        clock.t += step_s
        calls.append(clock.t)

    r = m.window(step, tokens_per_step=1, min_s=1.0, clock=clock)
    assert r.window_s >= 1.0 and r.steps > 0 and r.tokens == r.steps
    assert r.source == "fake counter"
    # 300 W x step time per token, within one step of detection latency at either edge
    assert r.j_per_token == pytest.approx(300.0 * step_s, rel=2 * step_s / 1.0 + 1e-9)
    assert r.watts == pytest.approx(300.0, rel=2 * step_s / 1.0 + 1e-9)
    assert "over" in r.describe() and "W" in r.describe()


def test_energy_window_with_a_counter_that_never_moves():
    clock = Clock()
    m = fake_meter(SteppedCounter(clock, power=0.0, interval=0.1))

    def step():
        clock.t += 0.01

    r = m.window(step, tokens_per_step=4, min_s=0.5, clock=clock)
    assert r.joules is None and r.j_per_token is None
    assert r.source.startswith("not available: fake counter did not advance")
    assert clock.t < 10  # gave up after its caps


def test_energy_window_without_a_counter_runs_nothing():
    m = fake_meter(None)
    m.why = "no RAPL here"
    r = m.window(lambda: pytest.fail("must not run"), 1)
    assert r.joules is None and r.source == "not available: no RAPL here"
