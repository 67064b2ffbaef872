"""What every pass is given besides the graph: the backend's capabilities, and a place to leave
the analyses later passes and the backend read (the storage of each tensor, the arena plan)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from drift.passes.memory_plan import MemoryPlan
    from drift.passes.storage import Storage


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
    inplace: an elementwise op may write its output over an input that dies there.
    """

    alignment: int = 64
    channel_slices: bool = False
    max_object_bytes: int = 0
    quant_planes: bool = False
    quant_tile_rows: int = 16
    inplace: bool = True


@dataclass
class PassContext:
    caps: Capabilities = field(default_factory=Capabilities)
    fuse: bool = True  # False: the fusion passes are skipped (the fused-vs-unfused tests)
    strategy: str = "greedy_by_size"  # memory planning strategy
    # Filled in by the passes, read by later passes and by the backend:
    storages: dict[str, Storage] = field(default_factory=dict)  # by the layout pass
    plan: MemoryPlan | None = None  # by the memory planning pass
    log: list[str] = field(default_factory=list)  # one line per pass: what it changed
