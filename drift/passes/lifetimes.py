"""Which tensors share memory by construction, and when each block of memory is in use.

Before any strategy places anything, tensors are grouped into buffers:

- a view (reshape, last_row) is its input's memory at an offset: same buffer;
- the outputs of an op with adjacent outputs (`stacked_matmul`) lie back to back in one
  buffer, so one kernel can write them as one (a decode GEMV over stacked weights);
- an elementwise op may write its output over an input that dies at that op (in place):
  same buffer, when both have the same storage, so every element lands where it was read.

A buffer is in use from the step that writes its first member to the last step that reads
any member; graph outputs stay in use to the end (the runtime copies them out after the
last step). Weights and the KV cache are not in the arena: weights are read-only and loaded
once, the cache persists across calls (its in-place updates, `k_cache.3'`, are one storage).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from drift.ir import REGISTRY, Graph, Node, Role
from drift.ir.ops_fused import program_steps

ARENA_ROLES = (Role.INPUT, Role.ACTIVATION, Role.OUTPUT)


@dataclass(frozen=True)
class Buffer:
    id: int
    size: int  # bytes, aligned
    first: int  # step that writes it first (graph inputs: 0)
    last: int  # last step that reads it (graph outputs: len(nodes))
    members: tuple[tuple[str, int], ...]  # (tensor, byte offset inside the buffer)

    def overlaps(self, other: Buffer) -> bool:
        return self.first <= other.last and other.first <= self.last


def in_arena(graph: Graph) -> list[str]:
    return [t.name for t in graph.tensors.values() if t.role in ARENA_ROLES]


def tensor_lifetimes(graph: Graph) -> dict[str, tuple[int, int]]:
    """(first, last) step of each arena tensor, from the execution order."""
    life: dict[str, list[int]] = {name: [0, 0] for name in in_arena(graph)}
    for i, n in enumerate(graph.nodes):
        for out in n.outputs:
            if out in life:
                life[out] = [i, i]
        for x in n.inputs:
            if x in life:
                life[x][1] = max(life[x][1], i)
    end = len(graph.nodes)
    for o in graph.outputs:
        if o in life:
            life[o][1] = end
    return {k: (a, b) for k, (a, b) in life.items()}


def view_offset(node: Node, graph: Graph) -> int:
    """Byte offset of a view's output inside its input (row-major storage)."""
    if node.op == "last_row":
        x = graph.tensors[node.inputs[0]]
        return (x.shape[0] - 1) * x.nbytes // x.shape[0]
    return 0


def inplace_candidates(node: Node, graph: Graph) -> list[tuple[int, int]]:
    """(output index, input index) pairs where the op may write the output over the input:
    each output element depends only on the input element at the same index, which is read
    before it is written."""
    t = graph.tensors
    if node.op == "add_rms_norm":
        return [(0, 0), (0, 1)]  # the sum over either addend; rows are read, then written
    if node.op == "fused_elementwise":
        steps = program_steps(node.attrs)
        anchored = not REGISTRY[steps[0][0]].elementwise
        anchor_args = set(steps[0][1]) if anchored else set()
        out = t[node.outputs[0]]
        return [(0, i) for i, x in enumerate(node.inputs)
                if f"x{i}" not in anchor_args and t[x].shape == out.shape
                and t[x].dtype == out.dtype]
    d = REGISTRY[node.op]
    if d.elementwise and len(node.outputs) == 1:
        out = t[node.outputs[0]]
        return [(0, i) for i, x in enumerate(node.inputs)
                if t[x].shape == out.shape and t[x].dtype == out.dtype]
    return []


def buffers(
    graph: Graph,
    sizes: dict[str, int],
    inplace: bool = True,
    same_layout: Callable[[str, str], bool] = lambda a, b: True,
    alignment: int = 1,
) -> list[Buffer]:
    """Group the arena tensors into buffers (views and in-place outputs join their input's)."""
    life = tensor_lifetimes(graph)
    group: dict[str, list[tuple[str, int]]] = {name: [(name, 0)] for name in life}
    where: dict[str, tuple[str, int]] = {name: (name, 0) for name in life}  # -> (root, offset)

    def group_last(root: str) -> int:
        return max(life[m][1] for m, _ in group[root])

    def join(out: str, into: str, offset: int) -> None:
        root, base = where[into]
        for m, off in group.pop(out):
            where[m] = (root, base + offset + off)
            group[root].append((m, base + offset + off))

    for i, n in enumerate(graph.nodes):
        d = REGISTRY[n.op]
        if d.view and n.inputs[0] in life and n.outputs[0] in life:
            join(n.outputs[0], n.inputs[0], view_offset(n, graph))
            continue
        if d.adjacent_outputs and all(o in life for o in n.outputs):
            at = sizes[n.outputs[0]]
            for o in n.outputs[1:]:
                join(o, n.outputs[0], at)
                at += sizes[o]
            continue
        if not inplace:
            continue
        taken: set[str] = set()
        for o, k in inplace_candidates(n, graph):
            out, x = n.outputs[o], n.inputs[k]
            if out not in life or x not in life or out not in group or out in taken:
                continue
            root, _ = where[x]
            if root in taken or root == where[out][0]:
                continue
            if group_last(root) == i and sizes[out] == sizes[x] and same_layout(out, x):
                join(out, x, 0)
                taken.update((out, root))
    out_bufs = []
    for k, (root, members) in enumerate(group.items()):
        size = max(off + sizes[m] for m, off in members)
        size = -(-size // alignment) * alignment
        first = min(life[m][0] for m, _ in members)
        out_bufs.append(Buffer(k, size, first, group_last(root), tuple(members)))
    return out_bufs


def lower_bound(bufs: list[Buffer]) -> int:
    """The most bytes alive at one step: no placement of these buffers can use less."""
    if not bufs:
        return 0
    end = max(b.last for b in bufs) + 2
    delta = [0] * (end + 1)
    for b in bufs:
        delta[b.first] += b.size
        delta[b.last + 1] -= b.size
    best = acc = 0
    for d in delta:
        acc += d
        best = max(best, acc)
    return best
