"""The roofline: how long each op takes at best on a device, and what bounds it.

    t(op) = max(flops / peak(dtype of its arithmetic), bytes / bandwidth)

summed over the ops of a stage, with no overlap between ops and no launch overhead: a floor
no engine beats, which is what makes the gap to a measurement meaningful. The op's arithmetic
dtype comes from `DeviceSpec.math_dtype`: plain-typed weights at their type, quantized ones at
the device's `quant_math` (fp16 matrix units on GPUs, f32 for the numpy backend), everything
else at the activations' or KV cache's type. `--compute-dtype` overrides it for every op.
"""

from __future__ import annotations

from dataclasses import dataclass

from drift.analysis.cost import GroupCost, ModelCost, OpCost, StageCost
from drift.analysis.hardware import DeviceSpec


@dataclass(frozen=True)
class OpEstimate:
    op: OpCost
    math_dtype: str
    peak: float  # FLOP/s used for this op
    compute_s: float
    memory_s: float

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def bound(self) -> str:
        if self.seconds == 0:
            return "-"
        return "compute" if self.compute_s >= self.memory_s else "memory"


def estimate_op(op: OpCost, device: DeviceSpec, compute_dtype: str | None = None) -> OpEstimate:
    dt = device.math_dtype(op.dtype, compute_dtype)
    peak = device.peak(dt)
    return OpEstimate(op, dt, peak, op.flops / peak if op.flops else 0.0,
                      op.bytes / device.bandwidth)


@dataclass
class StageEstimate:
    cost: StageCost
    device: DeviceSpec
    ops: list[OpEstimate]

    @property
    def seconds(self) -> float:
        return sum(o.seconds for o in self.ops)

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

    def group_bound(self, g: GroupCost) -> str:
        c = sum(self.ops[i].compute_s for i in g.indices)
        m = sum(self.ops[i].memory_s for i in g.indices)
        if c == m == 0:
            return "-"
        return "compute" if c >= m else "memory"


def estimate_stage(cost: StageCost, device: DeviceSpec,
                   compute_dtype: str | None = None) -> StageEstimate:
    return StageEstimate(cost, device, [estimate_op(o, device, compute_dtype) for o in cost.ops])


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
