"""The memory report: `drift analyze MODEL --memory` (and `python -m drift.passes.memory_report`).

For an LLM (a GGUF file, or a preset's published shape with an assumed quant type): weights
by quant type, the KV cache at the context, and the intermediates of one prefill call of S
tokens and of one decode call, naive against every planning strategy, for the graph before and
after fusion. For Stable Diffusion 1.4 (`sd-1.4`): the text encoder, UNet and VAE decoder,
naive and planned, next to ML Drift's published figures.

What counts as an intermediate: every tensor in the arena, i.e. all but weights and the KV
cache: activations, and the graph's inputs and outputs (the token ids, the latent, the image;
a few KiB to 1.5 MiB). Sizes are those of the storages the layout pass picks for a GPU with
images (4-wide channel slices, so 3 channels take 4), aligned to 64 bytes. Attention, with
and without a cache, is one op whose softmax is inside: its scores are never a tensor.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from drift.errors import InvalidArgumentError
from drift.ir import Graph, Role
from drift.passes.context import Capabilities, PassContext
from drift.passes.lifetimes import buffers, in_arena, lower_bound
from drift.passes.pipeline import _pipeline, run_pipeline
from drift.passes.strategies import STRATEGIES, plan_offsets

MiB = 2**20
REPORT_CAPS = Capabilities(alignment=64, channel_slices=True, max_object_bytes=0)
SD_NAMES = ("sd-1.4", "sd1.4", "sd14", "stable-diffusion-1.4", "stable-diffusion-v1-4")

# ML Drift (arXiv 2505.00232), Stable Diffusion 1.4 at 512x512, intermediate tensors:
# (naive, greedy by size) in "MB". Their totals, 4.31 GB -> 387 MB, are 4411 and 387 of these
# units: 4411 / 1024 = 4.31, so the units are MiB and GiB.
ML_DRIFT_SD_MIB = {"text_encoder": (62, 2), "unet": (2075, 65), "vae_decoder": (2274, 320)}
SD_LABELS = {"text_encoder": "text encoder", "unet": "UNet", "vae_decoder": "VAE decoder"}


# ---------------------------------------------------------------------------------------------
# numbers


def intermediates(graph: Graph, fuse: bool, caps: Capabilities = REPORT_CAPS) -> dict[str, int]:
    """Arena bytes of one graph under every strategy, and the lower bound, after the pipeline's
    fusion (or not) and layout passes."""
    passes = [p for p in _pipeline() if p.name != "memory_plan"]
    c = run_pipeline(graph, PassContext(caps, fuse=fuse), passes=passes)
    st = c.ctx.storages
    sizes = {n: st[n].nbytes for n in in_arena(c.graph)}
    def same(a: str, b: str) -> bool:
        return st[a] == st[b]
    bufs = buffers(c.graph, sizes, caps.inplace, same, caps.alignment)
    out = {name: plan_offsets(bufs, name)[1] for name in STRATEGIES}
    # naive: every tensor its own memory (views excepted: they are no tensor of their own)
    out["naive"] = plan_offsets(buffers(c.graph, sizes, False, same, caps.alignment), "naive")[1]
    out["lower_bound"] = lower_bound(bufs)
    out["tensors"] = len(sizes)
    return out


def component_memory(graph: Graph, caps: Capabilities = REPORT_CAPS) -> dict[str, dict[str, int]]:
    return {"unfused": intermediates(graph, False, caps), "fused": intermediates(graph, True, caps)}


def weights_by_type(graph: Graph) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for t in graph.by_role(Role.WEIGHT):
        row = out.setdefault(t.dtype, {"tensors": 0, "params": 0, "bytes": 0})
        row["tensors"] += 1
        row["params"] += t.numel
        row["bytes"] += t.nbytes
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["bytes"]))


def llm_report(label: str, cfg, weight_dtypes: dict[str, str], prompt_len: int, ctx: int,
               act_dtype: str, kv_dtype: str) -> dict[str, Any]:
    from drift.models import build_graph

    if prompt_len < 1 or prompt_len > ctx:
        raise InvalidArgumentError(f"--prompt-len must be in [1, ctx={ctx}], got {prompt_len}")
    stages = {}
    decode = None
    for stage, n in (("prefill", prompt_len), ("decode", 1)):
        g = build_graph(cfg, weight_dtypes, n, ctx, kv_dtype=kv_dtype, act_dtype=act_dtype)
        stages[stage] = {"tokens": n, **component_memory(g)}
        decode = g
    assert decode is not None
    kv = [t for t in decode.by_role(Role.KV) if not t.name.endswith("'")]
    return {
        "model": label, "arch": cfg.arch, "ctx": ctx, "act_dtype": act_dtype,
        "kv_dtype": kv_dtype, "weights": weights_by_type(decode),
        "kv_cache": {"bytes": sum(t.nbytes for t in kv), "tensors": len(kv),
                     "per_token": sum(t.nbytes for t in kv) // ctx},
        "intermediates": stages,
    }


def sd_report(batch: int, dtype: str) -> dict[str, Any]:
    """Each component's intermediates, unfused and fused; and, fused, with the attention matrix
    written as a tensor (`attention_scores`), which is what ML Drift's naive figures count."""
    from drift.models.stable_diffusion import sd_graphs

    graphs = sd_graphs(batch=batch, dtype=dtype)
    with_matrix = sd_graphs(batch=batch, dtype=dtype, attention_scores=True)
    comps = {}
    for name, g in graphs.items():
        comps[name] = component_memory(g)
        comps[name]["fused_attention_matrix"] = intermediates(with_matrix[name], True)
        comps[name]["weights"] = weights_by_type(g)
        comps[name]["ml_drift_mib"] = dict(zip(("naive", "greedy_by_size"),
                                               ML_DRIFT_SD_MIB[name]))
    return {"model": "sd-1.4", "resolution": 512, "batch": batch, "dtype": dtype,
            "components": comps}


# ---------------------------------------------------------------------------------------------
# where the model comes from


def _weight_dtypes_for(cfg, quant: str) -> dict[str, str]:
    """A quantization recipe in its simplest form: every matrix `quant`, vectors f32."""
    from drift.models.decoder import expected_tensors

    return {n: (quant if len(s) == 2 else "f32") for n, s in expected_tensors(cfg).items()}


def resolve_llm(model: str, quant: str | None):
    """(label, config, weight dtypes) of a GGUF path, a preset, or a name the hub knows."""
    from drift.models.presets import PRESETS, preset

    if quant is not None:
        from gguf import GGMLQuantizationType

        if quant.upper() not in GGMLQuantizationType.__members__ and quant not in ("f16", "f32"):
            raise InvalidArgumentError(f"unknown quant type {quant!r} (Q4_0, Q8_0, Q4_K, f16 ...)")
        quant = quant.upper() if quant.upper() in GGMLQuantizationType.__members__ else quant
        quant = {"F16": "f16", "F32": "f32"}.get(quant, quant)
    if model.lower() in PRESETS and not os.path.exists(model):
        cfg = preset(model.lower()).config()
        q = quant or "Q4_0"
        return f"{model.lower()} (preset, {q})", cfg, _weight_dtypes_for(cfg, q)
    path = model
    if not (os.path.exists(model) or model.endswith(".gguf")):
        try:
            from drift.hub import resolve_model
        except ImportError:
            raise InvalidArgumentError(f"{model!r} is not a file, a preset or sd-1.4")
        path = str(resolve_model(model, progress=False))
    from drift.formats.gguf import open_gguf
    from drift.models import config_from_gguf
    from drift.runtime.engine import gguf_dtype

    f = open_gguf(path)
    shapes = {n: t.shape for n, t in f.tensors.items()}
    cfg = config_from_gguf(f.metadata, shapes, os.path.basename(path))
    if quant:
        return f"{os.path.basename(path)} (as {quant})", cfg, _weight_dtypes_for(cfg, quant)
    return (os.path.basename(path), cfg,
            {n: gguf_dtype(t.qtype.name) for n, t in f.tensors.items()})


def is_sd(model: str | None) -> bool:
    return bool(model) and model.lower() in SD_NAMES


# ---------------------------------------------------------------------------------------------
# the command


def _has(parser: argparse.ArgumentParser, flag: str) -> bool:
    return flag in parser._option_string_actions


def add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the memory report; those the caller's parser already has (--ctx,
    --json, --quant from the model arguments or the analyze command) are left to it."""
    g = parser.add_argument_group("memory report (--memory)")
    g.add_argument("--prompt-len", type=int, default=512, metavar="S",
                   help="tokens of the prefill call whose intermediates are counted (512)")
    if not _has(parser, "--ctx"):
        g.add_argument("--ctx", type=int, default=None,
                       help="KV-cache positions (default: min(4096, the model's))")
    if not _has(parser, "--quant"):
        g.add_argument("--quant", default=None,
                       help="weight type assumed for a preset, or to re-type a file (Q4_0)")
    g.add_argument("--act-dtype", default="f16", choices=["f16", "f32"],
                   help="activation type (f16, as GPUs run; the numpy backend runs f32)")
    g.add_argument("--kv-dtype", default="f16", choices=["f16", "f32"], help="KV-cache type")
    g.add_argument("--batch", type=int, default=1, help="Stable Diffusion: images per call (1)")
    if not _has(parser, "--json"):
        g.add_argument("--json", action="store_true", help="print JSON instead of tables")


def run_memory_report(args: argparse.Namespace) -> int:
    model = getattr(args, "model", None)
    if not model:
        raise InvalidArgumentError("name a model: a .gguf path, a preset (llama-3.1-8b ...) "
                                   "or sd-1.4")
    as_json = bool(getattr(args, "json", False))
    if is_sd(model):
        report = sd_report(getattr(args, "batch", 1) or 1, getattr(args, "act_dtype", "f16"))
        print(json.dumps(report, indent=1)) if as_json else print_sd(report)
        return 0
    label, cfg, dtypes = resolve_llm(model, getattr(args, "quant", None))
    ctx = getattr(args, "ctx", None) or min(4096, cfg.ctx_train)
    report = llm_report(label, cfg, dtypes, getattr(args, "prompt_len", 512), ctx,
                        getattr(args, "act_dtype", "f16"), getattr(args, "kv_dtype", "f16"))
    print(json.dumps(report, indent=1)) if as_json else print_llm(report)
    return 0


# ---------------------------------------------------------------------------------------------
# tables


def _mib(n: float) -> str:
    v = n / MiB
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}" if v >= 1 else f"{v:,.2f}"


def _console():
    from rich.console import Console

    return Console(width=max(100, int(os.environ.get("COLUMNS", "120"))))


def print_llm(r: dict[str, Any]) -> None:
    from rich.table import Table

    con = _console()
    w = Table(title=f"{r['model']}: weights", title_justify="left")
    for col in ("type", "tensors", "parameters", "MiB"):
        w.add_column(col, justify="right" if col != "type" else "left")
    total = 0
    for dtype, row in r["weights"].items():
        w.add_row(dtype, str(row["tensors"]), f"{row['params']:,}", _mib(row["bytes"]))
        total += row["bytes"]
    w.add_row("total", "", f"{sum(x['params'] for x in r['weights'].values()):,}", _mib(total))
    con.print(w)
    kv = r["kv_cache"]
    con.print(f"KV cache at ctx {r['ctx']:,} ({r['kv_dtype']}): {_mib(kv['bytes'])} MiB "
              f"({kv['per_token'] / 1024:,.1f} KiB per token, {kv['tensors']} tensors)")
    st = r["intermediates"]
    t = Table(title=f"intermediates, MiB ({r['act_dtype']} activations; prefill of "
                    f"{st['prefill']['tokens']} tokens, decode of 1)", title_justify="left")
    t.add_column("strategy")
    for stage in ("prefill", "decode"):
        for kind in ("unfused", "fused"):
            t.add_column(f"{stage} {kind}", justify="right")
    for name in [*STRATEGIES, "lower_bound"]:
        t.add_row(name.replace("_", " "), *[_mib(st[s][k][name]) for s in ("prefill", "decode")
                                             for k in ("unfused", "fused")])
    t.add_row("tensors", *[str(st[s][k]["tensors"]) for s in ("prefill", "decode")
                           for k in ("unfused", "fused")])
    con.print(t)


def print_sd(r: dict[str, Any]) -> None:
    from rich.table import Table

    con = _console()
    comps = r["components"]
    names = list(comps)
    t = Table(title=f"Stable Diffusion 1.4, {r['resolution']}x{r['resolution']}, batch "
                    f"{r['batch']}, {r['dtype']} activations: intermediates, MiB",
              title_justify="left")
    t.add_column("strategy")
    for n in names:
        t.add_column(f"{SD_LABELS[n]}\nunfused", justify="right")
        t.add_column(f"{SD_LABELS[n]}\nfused", justify="right")
    t.add_column("total\nfused", justify="right")
    for s in [*STRATEGIES, "lower_bound"]:
        cells = []
        for n in names:
            cells += [_mib(comps[n]["unfused"][s]), _mib(comps[n]["fused"][s])]
        t.add_row(s.replace("_", " "), *cells, _mib(sum(comps[n]["fused"][s] for n in names)))
    t.add_row("tensors", *[str(comps[n][k]["tensors"]) for n in names
                           for k in ("unfused", "fused")], "")
    con.print(t)

    m = Table(title="against ML Drift (arXiv 2505.00232), MiB, fused graphs",
              title_justify="left")
    m.add_column("component")
    for col in ("ML Drift\nnaive", "drift naive\nattn matrix", "drift naive\nattn one op",
                "ML Drift\nby size", "drift by size\nattn one op", "drift by size\nattn matrix"):
        m.add_column(col, justify="right")
    keys = [("ml", "naive"), ("fused_attention_matrix", "naive"), ("fused", "naive"),
            ("ml", "greedy_by_size"), ("fused", "greedy_by_size"),
            ("fused_attention_matrix", "greedy_by_size")]
    tot = [0.0] * len(keys)
    for n in names:
        cells = []
        for i, (k, s) in enumerate(keys):
            v = comps[n]["ml_drift_mib"][s] * MiB if k == "ml" else comps[n][k][s]
            tot[i] += v
            cells.append(_mib(v))
        m.add_row(SD_LABELS[n], *cells)
    m.add_row("total", *[_mib(v) for v in tot])
    con.print(m)
    con.print(
        "Intermediates: every tensor but the weights (inputs and outputs included), batch "
        f"{r['batch']}, {r['dtype']}. 'attn one op': drift's graphs, where attention is one op "
        "and its (heads, L, L) matrix never a tensor; 'attn matrix': the same graphs with that "
        "matrix written once per attention (softmax applied as it is made), which is what "
        "ML Drift's naive figures are consistent with.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m drift.passes.memory_report",
                                description=__doc__.splitlines()[0])
    p.add_argument("model", help="a .gguf path, a preset (llama-3.1-8b, ...) or sd-1.4")
    add_memory_arguments(p)
    return run_memory_report(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
