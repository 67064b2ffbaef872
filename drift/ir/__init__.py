"""The IR: logical tensors, graphs of ops, and the op registry they draw on."""

from drift.ir.graph import Attrs, Graph, GraphBuilder, Node, storage_name
from drift.ir.ops import REGISTRY, Cost, cost_of, infer, run_reference
from drift.ir.tensor import Role, TensorSpec, is_quantized, nbytes_of

__all__ = [
    "REGISTRY",
    "Attrs",
    "Cost",
    "Graph",
    "GraphBuilder",
    "Node",
    "Role",
    "TensorSpec",
    "cost_of",
    "infer",
    "is_quantized",
    "nbytes_of",
    "run_reference",
    "storage_name",
]

from drift.ir import (  # noqa: F401  (register their ops)
    ops_diffusion,
    ops_fused,
    ops_hybrid,
    ops_quant,
)
