"""`drift compile MODEL [--dump DIR]`: run the pass pipeline on a model's graphs and show what
each pass did; with --dump, write the graph after every pass (DIR/<graph>/NN_<pass>.txt), so
a wrong rewrite is found by diffing two files.

MODEL is a .gguf path, a preset (llama-3.1-8b, ...: shapes only, no weights needed) or sd-1.4.
Nothing is loaded but the file's header: compiling needs shapes, not weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from drift.commands._common import add_model_arguments, model_file_for_analysis
from drift.errors import InvalidArgumentError


def register(subparsers) -> None:
    p = subparsers.add_parser("compile", help="run the passes on a model's graphs; dump them",
                              description=__doc__.split("\n\n")[0])
    add_model_arguments(p)
    p.add_argument("--dump", metavar="DIR", default=None,
                   help="write the graph after each pass into DIR/<graph>/")
    p.add_argument("--prompt-len", type=int, default=8, metavar="S",
                   help="tokens of the prefill graph (8)")
    p.add_argument("--quant", default=None, help="weight type assumed for a preset (Q4_0)")
    p.add_argument("--no-fuse", action="store_true", help="skip the fusion passes")
    p.add_argument("--strategy", default="greedy_by_size", help="memory planning strategy")
    p.set_defaults(func=run)


def capabilities_for(device: str | None):
    """The capabilities the passes plan for: the numpy backend's; the Triton backend's
    (`cuda`: the device's own where one is present, else an NVIDIA GPU's, with int8 dot); or
    a generic GPU's (images with 4-wide texels, quantized weights converted to planes)."""
    from dataclasses import replace

    from drift.backends import ALIASES, BACKENDS, backend_class
    from drift.backends.cpu import CPU_CAPABILITIES
    from drift.passes.memory_report import REPORT_CAPS

    name = ALIASES.get(device, device)
    if name not in (None, "auto", "gpu") and name not in BACKENDS:
        raise InvalidArgumentError(
            f"--device {device!r}: one of auto, gpu (a generic GPU), {', '.join(BACKENDS)}")
    if name in (None, "auto", "cpu"):
        return CPU_CAPABILITIES
    if name == "triton":
        from drift.backends.triton import triton_capabilities

        cls = backend_class("triton")
        return cls().capabilities() if cls.available() else triton_capabilities(True)
    return replace(REPORT_CAPS, alignment=256, quant_planes=True)


def graphs_for(args: argparse.Namespace) -> dict:
    from drift.models import build_graph
    from drift.models.stable_diffusion import sd_graphs
    from drift.passes.memory_report import is_sd, resolve_llm

    if not args.model:
        raise InvalidArgumentError("name a model: a .gguf path, a preset or sd-1.4")
    if is_sd(args.model):
        return sd_graphs()
    model_file_for_analysis(args)
    _, cfg, dtypes = resolve_llm(args.model, args.quant)
    ctx = args.ctx or min(4096, cfg.ctx_train)
    if not 1 <= args.prompt_len <= ctx:
        raise InvalidArgumentError(f"--prompt-len must be in [1, {ctx}]")
    return {f"prefill{args.prompt_len}": build_graph(cfg, dtypes, args.prompt_len, ctx),
            "decode": build_graph(cfg, dtypes, 1, ctx)}


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from drift.passes import PassContext, run_pipeline
    from drift.passes.strategies import STRATEGIES

    if args.strategy not in STRATEGIES:
        raise InvalidArgumentError(f"--strategy: one of {', '.join(STRATEGIES)}")
    caps = capabilities_for(args.device)
    con = Console()
    table = Table(title=f"{args.model}: passes", title_justify="left")
    for col in ("graph", "nodes", "arena", "naive"):
        table.add_column(col, justify="left" if col == "graph" else "right")
    for name, graph in graphs_for(args).items():
        ctx = PassContext(caps, fuse=not args.no_fuse, strategy=args.strategy)
        dump = Path(args.dump) / name if args.dump else None
        compiled = run_pipeline(graph, ctx, dump_dir=dump)
        plan = compiled.plan
        table.add_row(name, f"{len(graph.nodes)} -> {len(compiled.graph.nodes)}",
                      f"{plan.arena_bytes / 2**20:,.2f} MiB",
                      f"{plan.naive_bytes / 2**20:,.2f} MiB")
        con.print(f"[bold]{name}[/bold]")
        for line in ctx.log:
            con.print(f"  {line}", highlight=False)
    con.print(table)
    if args.dump:
        con.print(f"graphs after each pass in {args.dump}/")
    return 0
