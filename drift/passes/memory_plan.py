"""Memory planning: every arena tensor becomes a view of one arena at a planned offset.

Sizes are those of the storages the layout pass chose (padding included); lifetimes come from
the execution order (`lifetimes.py`); a strategy (`strategies.py`) places the buffers. The
backend allocates one arena of `arena_bytes` and binds each tensor to its offset, so two
tensors alive at the same step must never overlap: `check_plan` says so, and the numpy
backend running from the arena makes a wrong plan a wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from drift.ir import Graph
from drift.ir.ops import is_view
from drift.passes.context import PassContext
from drift.passes.lifetimes import (
    Buffer,
    buffers,
    in_arena,
    inplace_candidates,
    lower_bound,
)
from drift.passes.pipeline import Pass
from drift.passes.strategies import STRATEGIES, plan_offsets


@dataclass(frozen=True)
class MemoryPlan:
    strategy: str
    alignment: int
    arena_bytes: int
    offsets: dict[str, int]  # tensor -> byte offset in the arena
    sizes: dict[str, int]  # tensor -> bytes its storage takes
    views: frozenset[str]  # outputs of views: their memory is their input's, never written
    inplace: tuple[tuple[str, str], ...]  # (output, input) pairs sharing memory in place
    buffers: tuple[Buffer, ...]
    buffer_offsets: dict[int, int]
    naive_bytes: int
    lower_bound: int

    def summary(self) -> str:
        return (f"{self.strategy} {self.arena_bytes} bytes (naive {self.naive_bytes}, "
                f"lower bound {self.lower_bound}; {len(self.buffers)} buffers for "
                f"{len(self.offsets)} tensors, {len(self.inplace)} in place)")


def plan_memory(graph: Graph, sizes: dict[str, int], strategy: str = "greedy_by_size",
                alignment: int = 64, inplace: bool = True, same_layout=None) -> MemoryPlan:
    bufs = buffers(graph, sizes, inplace, same_layout or (lambda a, b: True), alignment)
    offsets_by_buf, total = plan_offsets(bufs, strategy)
    # naive: every tensor its own memory, in place or not (views are no tensors of their own)
    _, naive_total = plan_offsets(buffers(graph, sizes, False, alignment=alignment), "naive")
    offsets = {m: offsets_by_buf[b.id] + off for b in bufs for m, off in b.members}
    where = {m: (b.id, off) for b in bufs for m, off in b.members}
    arena = set(in_arena(graph))
    views = frozenset(n.outputs[0] for n in graph.nodes
                      if is_view(n.op) and n.inputs[0] in arena and n.outputs[0] in arena)
    pairs = []
    for n in graph.nodes:
        for o, k in inplace_candidates(n, graph):
            out, x = n.outputs[o], n.inputs[k]
            if out in where and x in where and where[out] == where[x]:
                pairs.append((out, x))
    return MemoryPlan(strategy, alignment, total, offsets, dict(sizes), views, tuple(pairs),
                      tuple(bufs), offsets_by_buf, naive_total, lower_bound(bufs))


def check_plan(plan: MemoryPlan) -> None:
    """No two buffers alive at one step overlap in the arena, and each fits in it."""
    bufs = sorted(plan.buffers, key=lambda b: plan.buffer_offsets[b.id])
    for b in bufs:
        at = plan.buffer_offsets[b.id]
        assert at % plan.alignment == 0 and at >= 0, f"buffer {b.id} at {at}"
        assert at + b.size <= plan.arena_bytes, f"buffer {b.id} ends past the arena"
    for i, a in enumerate(bufs):
        a0 = plan.buffer_offsets[a.id]
        for b in bufs[i + 1:]:
            b0 = plan.buffer_offsets[b.id]
            if b0 >= a0 + a.size:
                break  # sorted by offset: no later buffer can overlap a
            assert not a.overlaps(b), (
                f"buffers {a.members[0][0]} [{a.first}, {a.last}] and {b.members[0][0]} "
                f"[{b.first}, {b.last}] overlap in time and in the arena")


def run(graph: Graph, ctx: PassContext) -> Graph:
    if ctx.strategy not in STRATEGIES:
        raise KeyError(f"unknown memory strategy {ctx.strategy!r}")
    storages = ctx.storages
    names = in_arena(graph)
    sizes = {n: storages[n].nbytes for n in names}
    ctx.plan = plan_memory(graph, sizes, ctx.strategy, ctx.caps.alignment, ctx.caps.inplace,
                           lambda a, b: storages[a] == storages[b])
    ctx.log.append(ctx.plan.summary())
    return graph


PASS = Pass("memory_plan", run)
