"""Hardware/software co-design analysis: what a model costs (FLOPs, MACs, bytes by class, KV
cache), what a device could do with it (roofline), and what this machine does (profile,
probe, energy). Every cost comes from the op registry through the engine's own graphs.

    from drift.analysis import resolve, model_cost, device_spec, estimate_model
    spec = resolve("llama-3.1-8b", "Q4_K_M")
    cost = model_cost(spec.label, spec.quant, spec.config, spec.weight_dtypes, 512, 128)
    est = estimate_model(cost, device_spec("rtx4090"))
    est.ttft_s, est.decode_tok_s
"""

from drift.analysis.cost import ModelCost, OpCost, StageCost, model_cost, op_costs, stage_cost
from drift.analysis.hardware import DEVICES, DeviceSpec, device_spec
from drift.analysis.roofline import ModelEstimate, estimate_model, estimate_op, estimate_stage
from drift.analysis.source import ModelSpec, resolve

__all__ = [
    "DEVICES", "DeviceSpec", "ModelCost", "ModelEstimate", "ModelSpec", "OpCost", "StageCost",
    "device_spec", "estimate_model", "estimate_op", "estimate_stage", "model_cost", "op_costs",
    "resolve", "stage_cost",
]
