"""What every pass is given besides the graph: the backend's capabilities, and a place to leave
the analyses later passes and the backend read (the storage of each tensor, the arena plan)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from drift.passes.memory_plan import MemoryPlan
    from drift.passes.storage import Storage


# The fused ops the numpy backend runs (every pass's default): the passes' classic rewrites.
REFERENCE_FUSIONS = frozenset({
    "ffn_gate_up", "stacked_matmul", "rope_heads", "rope_kv_write", "rms_norm_matmul",
    "add_rms_norm", "fused_elementwise"})


@dataclass(frozen=True)
class Capabilities:
    """What a backend's device offers, as far as the passes care.

    alignment: arena offsets and sizes are multiples of it (a cache line on CPUs; GPUs want
        their buffers' minimum offset alignment, 256 on most).
    channel_slices: rank >= 3 activations may live as 4-wide channel slices (PHWC4): what
        images and textures hold, and what vectorised channel loops read best.
    max_object_bytes: the largest single physical object (an image's size limit); larger
        tensors are spread over several objects. 0: no limit.
    quant_planes: quantized weights are converted at load into separate scale and quant
        planes, tiled by `quant_tile_rows` rows, rather than kept as GGUF's interleaved blocks.
    kernel_planes: quantized weights are converted at load into the GPU kernels' planes
        (`KernelPlanes`: quants per row, f16 scales and mins per group).
    inplace: an elementwise op may write its output over an input that dies there.
    fused_ops: the fused ops (drift/ir/ops_fused.py, ops_quant.py) the backend has kernels
        for; a fusion rule fires only when its op is here. The default is what the numpy
        backend runs.
    decode_fused_ops: those of `fused_ops` whose kernels take one token only: fused in decode
        graphs (S = 1), left apart in prefill.
    int8_dot: the device has fast int8 dot products (dp4a, dot4I8Packed, OpenCL's integer
        dot): decode matmuls over the weight types in `int8_weights` read x quantized to int8
        blocks (the quantize pass).
    int8_weights: weight types the backend's int8-x GEMV reads.
    int8_gemm: prefill matmuls (more than `gemv_rows` rows of x) over the weight types in
        `int8_gemm_weights` read x quantized to one-level int8 blocks (q8x1), for the
        backend's int8 GEMM (the quantize pass).
    gemv_rows: rows of x up to which the backend runs a matmul as a GEMV.
    weight_types: weight types the backend's kernels read at all (empty: any).
    subgroup_size: lanes of a subgroup / warp / wavefront (0: unknown); recorded for kernel
        variants, read by no pass yet. (The largest binding is `max_object_bytes`: a tensor
        above it is split into several objects.)
    """

    alignment: int = 64
    channel_slices: bool = False
    max_object_bytes: int = 0
    quant_planes: bool = False
    quant_tile_rows: int = 16
    kernel_planes: bool = False
    inplace: bool = True
    fused_ops: frozenset[str] = REFERENCE_FUSIONS
    decode_fused_ops: frozenset[str] = frozenset()
    int8_dot: bool = False
    int8_weights: frozenset[str] = frozenset()
    int8_gemm: bool = False
    int8_gemm_weights: frozenset[str] = frozenset()
    gemv_rows: int = 4
    weight_types: frozenset[str] = frozenset()
    subgroup_size: int = 0

    def fuses(self, op: str, n_tokens: int) -> bool:
        """Whether a rule making `op` may fire in a graph of `n_tokens` tokens."""
        if op not in self.fused_ops:
            return False
        return op not in self.decode_fused_ops or n_tokens == 1


@dataclass
class PassContext:
    caps: Capabilities = field(default_factory=Capabilities)
    fuse: bool = True  # False: the fusion passes are skipped (the fused-vs-unfused tests)
    strategy: str = "greedy_by_size"  # memory planning strategy
    # Filled in by the passes, read by later passes and by the backend:
    storages: dict[str, Storage] = field(default_factory=dict)  # by the layout pass
    plan: MemoryPlan | None = None  # by the memory planning pass
    log: list[str] = field(default_factory=list)  # one line per pass: what it changed
