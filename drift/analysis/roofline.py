"""The roofline: how long each op takes at best on a device, and what bounds it.

    t(op) = max(flops / peak(dtype of its arithmetic), bytes / bandwidth)
            + launches(op) x launch latency

summed over the ops of a stage, with no overlap between ops. The first term is the pure
roofline (`roofline_s`, kept beside the prediction everywhere); the second is the fixed cost
of each kernel whatever its size, measured by `drift probe` (replays of an empty kernel in a
CUDA graph; the numpy backend's per-op dispatch) or assumed per device kind
(`hardware.assumed_launch`). `launches` is one per op (none for a view) unless a profiled
backend counted its kernels. Both terms are floors: the gap to a measurement is what there is
to win, and `explain` names the reason class of a miss. The op's arithmetic
dtype comes from `DeviceSpec.math_dtype`: plain-typed weights at their type, quantized ones at
the device's `quant_math` (fp16 matrix units on GPUs, f32 for the numpy backend), everything
else at the activations' or KV cache's type. `--compute-dtype` overrides it for every op.
"""

from __future__ import annotations

from dataclasses import dataclass

from drift.analysis.cost import GroupCost, ModelCost, OpCost, StageCost
from drift.analysis.hardware import DeviceSpec
from drift.ir.ops import is_view

TOLERANCE = 0.25  # measured / predicted within [1 - TOLERANCE, 1 + TOLERANCE] is a match
LAUNCH_BOUND = 2.0  # roofline time under this many launch latencies: launch-bound


@dataclass(frozen=True)
class OpEstimate:
    op: OpCost
    math_dtype: str
    peak: float  # FLOP/s used for this op
    compute_s: float
    memory_s: float
    launches: float = 0.0  # kernels (fractional: a share of a kernel several ops run in)
    launch_s: float = 0.0  # launches x the device's launch latency

    @property
    def roofline_s(self) -> float:
        """The pure roofline: max(compute, memory), no launch cost."""
        return max(self.compute_s, self.memory_s)

    @property
    def seconds(self) -> float:
        """The prediction: the roofline plus the launch term."""
        return self.roofline_s + self.launch_s

    @property
    def bound(self) -> str:
        if self.roofline_s == 0:
            return "-"
        return "compute" if self.compute_s >= self.memory_s else "memory"


def estimate_op(op: OpCost, device: DeviceSpec, compute_dtype: str | None = None,
                launches: float | None = None) -> OpEstimate:
    """`launches`: kernels the op costs on the backend (counted by a profile); default one per
    op, none for a view (`DeviceSpec.launches`)."""
    dt = device.math_dtype(op.dtype, compute_dtype)
    peak = device.peak(dt)
    n = device.launches(op.node.op) if launches is None else launches
    return OpEstimate(op, dt, peak, op.flops / peak if op.flops else 0.0,
                      op.bytes / device.bandwidth, n, n * device.launch_s)


@dataclass
class StageEstimate:
    cost: StageCost
    device: DeviceSpec
    ops: list[OpEstimate]

    @property
    def seconds(self) -> float:
        return sum(o.seconds for o in self.ops)

    @property
    def roofline_s(self) -> float:
        """The stage without the launch term."""
        return sum(o.roofline_s for o in self.ops)

    @property
    def launch_s(self) -> float:
        return sum(o.launch_s for o in self.ops)

    @property
    def launches(self) -> float:
        return sum(o.launches for o in self.ops)

    @property
    def memory_s(self) -> float:
        """Time the stage's bytes alone take at full bandwidth."""
        return self.cost.bytes / self.device.bandwidth

    @property
    def bound_share(self) -> dict[str, float]:
        """Fraction of the predicted time spent in memory- and compute-bound ops."""
        total = self.seconds or 1.0
        out = {"memory": 0.0, "compute": 0.0}
        for o in self.ops:
            if o.bound in out:
                out[o.bound] += o.seconds / total
        return out

    def group_seconds(self, g: GroupCost) -> float:
        return sum(self.ops[i].seconds for i in g.indices)

    def group_roofline_s(self, g: GroupCost) -> float:
        return sum(self.ops[i].roofline_s for i in g.indices)

    def group_bound(self, g: GroupCost) -> str:
        c = sum(self.ops[i].compute_s for i in g.indices)
        m = sum(self.ops[i].memory_s for i in g.indices)
        if c == m == 0:
            return "-"
        return "compute" if c >= m else "memory"


def estimate_stage(cost: StageCost, device: DeviceSpec, compute_dtype: str | None = None,
                   launches: list[float] | None = None) -> StageEstimate:
    """`launches`: per op of `cost.ops`, kernels counted on a backend (None: the default)."""
    return StageEstimate(cost, device, [
        estimate_op(o, device, compute_dtype, launches[o.index] if launches else None)
        for o in cost.ops])


def _rate(bytes_per_s: float) -> str:
    return (f"{bytes_per_s / 1e12:.2f} TB/s" if bytes_per_s >= 1e12
            else f"{bytes_per_s / 1e9:.3g} GB/s")


def _us(s: float) -> str:
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    us = s * 1e6
    return f"{us:.3g} us" if us >= 0.01 or us == 0 else f"{us:.1e} us"


def explain(ests: list[OpEstimate], measured_s: float | None, device: DeviceSpec) -> str:
    """Why the measured time of an op (or a group of ops: `ests` summed) is outside
    [0.75, 1.25] of its prediction, as far as the numbers tell; "" when it is within, or
    nothing was measured. Reason classes, in the order they are tried:

    - "fused": measured nothing and launched nothing, so its work ran in a neighbour's kernel;
    - "launch-bound": the pure roofline is under LAUNCH_BOUND launch latencies per launch, so
      the fixed per-kernel cost (and what a one-program kernel does in that time) dominates;
    - "below copy bandwidth: X achieved" / "above copy bandwidth: X achieved" for
      memory-bound ops, "compute: X % of peak" for compute-bound ones.
    """
    if measured_s is None:
        return ""
    pred = sum(e.seconds for e in ests)
    roof = sum(e.roofline_s for e in ests)
    launches = sum(e.launches for e in ests)
    launch_s = sum(e.launch_s for e in ests)
    if measured_s <= 0:
        if pred <= 0:
            return ""
        if all(is_view(getattr(getattr(e.op, "node", None), "op", "")) for e in ests):
            return "view: no kernel (a pointer into its input)"
        if launches == 0:
            return "fused: no kernel of its own (its time is counted in a neighbour's kernel)"
        return "measured nothing"
    if pred <= 0:
        return "predicted nothing: no bytes, no FLOPs, no launch"
    ratio = measured_s / pred
    if 1 - TOLERANCE <= ratio <= 1 + TOLERANCE:
        return ""
    nbytes = sum(e.op.bytes for e in ests)
    compute = sum(e.compute_s for e in ests)
    memory = sum(e.memory_s for e in ests)
    if launches > 0 and roof < LAUNCH_BOUND * launch_s:
        per = measured_s / launches
        return (f"launch-bound: {_us(per)} per launch measured (roofline "
                f"{_us(roof / launches)} < {LAUNCH_BOUND:g} x {_us(device.launch_s)} latency)")
    if memory >= compute:
        achieved = nbytes / measured_s
        of = f"{100 * achieved / device.bandwidth:.0f} % of {_rate(device.bandwidth)}"
        if ratio > 1:
            gemv = device.extra.get("gemv_gbs")
            ref = (f"; the probe's f16 GEMV streams {_rate(gemv * 1e9)}"
                   if gemv and any(getattr(e.op, "weight_bytes", 0) for e in ests) else "")
            return f"below copy bandwidth: {_rate(achieved)} achieved, {of}{ref}"
        if achieved > device.bandwidth:
            return f"above copy bandwidth: {_rate(achieved)} achieved, {of} (data from cache?)"
        return (f"faster than roofline + launch: {_rate(achieved)} achieved, {of} (the launch "
                "overlaps the previous kernel)")
    ideal = sum(e.op.flops / e.peak for e in ests if e.op.flops)
    dtypes = "/".join(sorted({e.math_dtype for e in ests if e.op.flops}))
    return f"compute: {100 * ideal / measured_s:.0f} % of peak ({dtypes})"


@dataclass
class ModelEstimate:
    cost: ModelCost
    device: DeviceSpec
    prefill: StageEstimate
    decode: StageEstimate

    @property
    def ttft_s(self) -> float:
        """Time to first token: the prefill call, which ends with the first token's logits."""
        return self.prefill.seconds

    @property
    def prefill_tok_s(self) -> float:
        return self.cost.prompt_len / self.ttft_s if self.ttft_s else float("inf")

    @property
    def decode_s(self) -> float:
        return self.decode.seconds

    @property
    def decode_tok_s(self) -> float:
        return 1.0 / self.decode_s if self.decode_s else float("inf")

    @property
    def request_s(self) -> float:
        return self.ttft_s + self.cost.gen_len * self.decode_s

    def energy_j_per_token(self) -> float | None:
        """Decode energy per token if the device ran at its TDP for the predicted time: an
        upper bound (memory-bound decode draws less than the board's limit)."""
        if not self.device.tdp_w:
            return None
        return self.device.tdp_w * self.decode_s


def estimate_model(cost: ModelCost, device: DeviceSpec,
                   compute_dtype: str | None = None) -> ModelEstimate:
    return ModelEstimate(cost, device, estimate_stage(cost.prefill, device, compute_dtype),
                         estimate_stage(cost.decode, device, compute_dtype))
