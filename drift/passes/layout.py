"""Tensor virtualization: the physical storage of every tensor, from the backend's
capabilities (`Capabilities`). Kernels address tensors logically; the storage chosen here is
what their accessors expand into (see `storage.py`).

    weights       quantized: the GPU kernels' planes (`kernel_planes`), or tiled scale/quant
                  planes (`quant_planes`), as the backend converts them at load, else GGUF's
                  blocks; plain: a buffer
    KV cache      a buffer, (C, Hkv, Dh) row-major
    views         a view (reshape, last_row) and its input share memory, so both are plain
                  row-major buffers; so are outputs laid back to back (stacked_matmul)
    int8 blocks   activations quantized for int8 dot products (q8x, q8x1): their planes
    rank >= 3     4-wide channel slices (PHWC4) where the device has them (images)
    too large     several objects, where the device limits one object's size
    otherwise     a buffer
"""

from __future__ import annotations

from collections import Counter

from drift.ir import REGISTRY, Graph, Role, is_quantized
from drift.ir.tensor import is_quantized_activation
from drift.passes.context import Capabilities, PassContext
from drift.passes.pipeline import Pass
from drift.passes.storage import (
    ChannelSlices4,
    MultiObject,
    Q8Blocks,
    Storage,
    StridedBuffer,
    itemsize,
    weight_storage,
)


def choose_storages(graph: Graph, caps: Capabilities) -> dict[str, Storage]:
    linked = set()
    for n in graph.nodes:
        d = REGISTRY[n.op]
        if d.view:
            linked.update((n.inputs[0], n.outputs[0]))
        elif d.adjacent_outputs:
            linked.update(n.outputs)
    a = caps.alignment
    out: dict[str, Storage] = {}
    for t in graph.tensors.values():
        if is_quantized_activation(t.dtype):
            out[t.name] = Q8Blocks(t.shape, t.dtype, a)
        elif t.role == Role.WEIGHT:
            out[t.name] = weight_storage(t.shape, t.dtype, caps.quant_planes,
                                         caps.quant_tile_rows, a, caps.kernel_planes)
        elif t.role == Role.KV or t.name in linked or is_quantized(t.dtype):
            out[t.name] = StridedBuffer(t.shape, t.dtype, None, a)
        elif caps.max_object_bytes and t.nbytes > caps.max_object_bytes:
            out[t.name] = MultiObject(t.shape, t.dtype,
                                      caps.max_object_bytes // itemsize(t.dtype), a)
        elif caps.channel_slices and len(t.shape) >= 3:
            out[t.name] = ChannelSlices4(t.shape, t.dtype, a)
        else:
            out[t.name] = StridedBuffer(t.shape, t.dtype, None, a)
    return out


def run(graph: Graph, ctx: PassContext) -> Graph:
    ctx.storages = choose_storages(graph, ctx.caps)
    kinds = Counter(type(s).__name__ for n, s in ctx.storages.items()
                    if graph.tensors[n].role != Role.WEIGHT)
    ctx.log.append(", ".join(f"{k} x{v}" for k, v in sorted(kinds.items())))
    return graph


PASS = Pass("layout", run)
