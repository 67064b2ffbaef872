"""Logical tensors: what a tensor is, apart from where and how it is stored.

A `TensorSpec` names a shape, an element type and a role. Which physical object realises it
(a strided buffer, channel slices, quantized block planes) is decided later by the layout
pass and the backend; nothing here knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from math import prod

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType


class Role(str, Enum):
    WEIGHT = "weight"  # read-only, loaded from the model file
    INPUT = "input"  # fed by the runtime each call (token ids, positions)
    ACTIVATION = "activation"  # produced and consumed within one call: the arena holds these
    KV = "kv"  # persists across calls: the KV cache
    OUTPUT = "output"  # returned to the runtime (logits)


# Plain element types; weights may also carry a GGML quant type name ("Q4_0", "Q6_K", ...).
PLAIN_DTYPES = {"f32": 4, "f16": 2, "bf16": 2, "i32": 4, "f64": 8}
# numpy's name for each plain type: the one table every backend and pass converts through
NUMPY_DTYPES = {"f32": "float32", "f16": "float16", "f64": "float64", "i32": "int32"}
# Activations quantized for int8 dot products (drift/ir/ops_quant.py): bytes per block of 32.
# q8x: per block two int8 levels (xq, xr), a scale and the block's scaled sum (f32 each);
# q8x1: one level (prefill's int8 GEMM).
ACT_QUANT_DTYPES = {"q8x": 32 + 32 + 4 + 4, "q8x1": 32 + 4 + 4}


def is_quantized(dtype: str) -> bool:
    """A weight in a GGML block type (activations quantized for int8 dot are not weights:
    see `is_quantized_activation`)."""
    return dtype not in PLAIN_DTYPES and dtype not in ACT_QUANT_DTYPES


def is_quantized_activation(dtype: str) -> bool:
    return dtype in ACT_QUANT_DTYPES


def nbytes_of(dtype: str, shape: tuple[int, ...]) -> int:
    """Bytes a tensor of this dtype and shape takes when stored densely (quant blocks included)."""
    n = prod(shape)
    if dtype in PLAIN_DTYPES:
        return n * PLAIN_DTYPES[dtype]
    if dtype in ACT_QUANT_DTYPES:
        return n // 32 * ACT_QUANT_DTYPES[dtype]
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[dtype]]
    return n // block * size


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    role: Role

    @property
    def nbytes(self) -> int:
        return nbytes_of(self.dtype, self.shape)

    @property
    def numel(self) -> int:
        return prod(self.shape)

    def __str__(self) -> str:
        dims = "x".join(str(d) for d in self.shape) or "scalar"
        return f"{self.name}: {self.dtype}[{dims}] ({self.role.value})"
