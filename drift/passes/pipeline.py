"""The pass pipeline: a flat list, read top to bottom, one pass per file.

A pass is `Graph -> Graph` with a `PassContext` (the backend's capabilities, and the analyses
passes leave for later ones). `run_pipeline` validates the graph after every pass and, given a
directory, writes the graph after each one (`drift compile MODEL --dump DIR`), so a wrong
rewrite is found by diffing two files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from drift.ir import Graph
from drift.passes.context import Capabilities, PassContext


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[Graph, PassContext], Graph]
    fusion: bool = False  # skipped when compiling without fusion


def _pipeline() -> list[Pass]:
    from drift.passes import (
        fuse_add_norm,
        fuse_elementwise,
        fuse_gate_up,
        fuse_lm_head,
        fuse_quantize,
        fuse_rope,
        fuse_rope_kv,
        fuse_stack,
        layout,
        memory_plan,
        quantize_activations,
    )

    return [
        # --- fusion: chains of ops become the fused ops of drift/ir/ops_fused.py. A rule
        # fires only where the backend runs its op (Capabilities.fused_ops). Order matters
        # where two rules want the same node: the more specific rule runs first.
        fuse_gate_up.PASS,  # gate & up projections + SwiGLU/GeGLU: x read once
        fuse_stack.PASS,  # matmuls of one x (Q/K/V, gate/up): one matmul over adjacent rows
        fuse_rope.PASS,  # RoPE + the reshape into heads (+ QK-norm), K straight into the cache
        fuse_rope_kv.PASS,  # decode: RoPE of q and k + both cache writes, one kernel
        fuse_lm_head.PASS,  # final norm + LM head
        fuse_add_norm.PASS,  # residual add + the next RMSNorm: two outputs
        # --- int8 dot products: decode matmuls read x as int8 blocks, quantized by the op
        # that wrote x
        quantize_activations.PASS,
        fuse_quantize.PASS,
        fuse_elementwise.PASS,  # what is left: elementwise chains, as epilogues where possible
        # --- tensor virtualization: the physical storage of every tensor
        layout.PASS,
        # --- memory: lifetimes in execution order -> offsets in one arena
        memory_plan.PASS,
    ]


@dataclass
class Compiled:
    graph: Graph
    ctx: PassContext

    @property
    def storages(self):
        return self.ctx.storages

    @property
    def plan(self):
        return self.ctx.plan


def run_pipeline(graph: Graph, ctx: PassContext | None = None, dump_dir: str | Path | None = None,
                 passes: list[Pass] | None = None) -> Compiled:
    ctx = ctx or PassContext(Capabilities())
    passes = _pipeline() if passes is None else passes
    dump = Path(dump_dir) if dump_dir is not None else None
    if dump is not None:
        dump.mkdir(parents=True, exist_ok=True)
        (dump / "00_input.txt").write_text(dump_graph(graph, ctx) + "\n")
    for i, p in enumerate(passes, 1):
        if p.fusion and not ctx.fuse:
            ctx.log.append(f"{p.name}: skipped (fusion off)")
            continue
        t0, before, n_log = time.perf_counter(), len(graph.nodes), len(ctx.log)
        graph = p.run(graph, ctx)
        graph.validate()
        # One log line per pass: what it reported, node counts, time.
        said = "; ".join(ctx.log[n_log:])
        ms = (time.perf_counter() - t0) * 1e3
        ctx.log[n_log:] = [f"{p.name}: {said} [{before} -> {len(graph.nodes)} nodes, {ms:.0f} ms]"]
        if dump is not None:
            (dump / f"{i:02d}_{p.name}.txt").write_text(dump_graph(graph, ctx) + "\n")
    return Compiled(graph, ctx)


def dump_graph(graph: Graph, ctx: PassContext | None = None) -> str:
    """The graph as text, one node per line; once known, each tensor's storage and offset."""
    from drift.ir import Role

    meta = {k: v for k, v in graph.meta.items() if isinstance(v, (str, int, float, bool))}
    lines = [f"graph {graph.name} {meta}"]
    storages = ctx.storages if ctx else {}
    plan = ctx.plan if ctx else None

    def where(name: str) -> str:
        parts = []
        if name in storages:
            parts.append(str(storages[name]))
        if plan is not None and name in plan.offsets:
            parts.append(f"@{plan.offsets[name]}")
        return f"  [{' '.join(parts)}]" if parts else ""

    for role in Role:
        if role == Role.ACTIVATION:
            continue
        for t in graph.by_role(role):
            lines.append(f"  {t}{where(t.name)}")
    for n in graph.nodes:
        lines.append(f"  {n}")
        for out in n.outputs:
            spec = graph.tensors[out]
            if spec.role == Role.ACTIVATION and (storages or plan):
                lines.append(f"      {spec}{where(out)}")
    lines.append(f"  return {', '.join(graph.outputs)}")
    if plan is not None:
        lines.append(f"  arena: {plan.summary()}")
    return "\n".join(lines)
