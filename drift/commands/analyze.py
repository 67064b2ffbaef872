"""`drift analyze`, `drift profile` and `drift probe`: what a model costs, what a device could
do with it, and what this machine does.

    drift analyze llama-3.1-8b --quant Q4_K_M --device-spec rtx4090
    drift analyze model.gguf --device-spec local --html report.html
    drift profile model.gguf --prompt-len 64 --decode-tokens 16 --csv ops.csv
    drift probe
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from drift.commands._common import add_hybrid_arguments, engine_options
from drift.errors import DriftError, InvalidArgumentError
from drift.passes import memory_report

PLAIN_KV = ("f32", "f16", "bf16")
MATH_DTYPES = ("f32", "f16", "bf16", "int8")


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--csv", metavar="PATH", default=None,
                   help="write one row per op to PATH ('-' for stdout)")
    p.add_argument("--html", metavar="PATH", default=None,
                   help="write a self-contained HTML report (tables and plots)")
    p.add_argument("--plot-dir", metavar="DIR", default=None,
                   help="write roofline.png and breakdown.png into DIR")
    p.add_argument("--all-ops", action="store_true",
                   help="list every op group in the terminal (default: the 12 slowest)")


def register(sub: argparse._SubParsersAction) -> None:
    # "resolve": the memory report's flags (--prompt-len, --act-dtype, --kv-dtype; it leaves
    # --ctx, --quant and --json to us) are the same options as ours, with the same defaults;
    # its definitions, added last, win, so a flag means one thing on both paths.
    an = sub.add_parser(
        "analyze", conflict_handler="resolve",
        help="FLOPs, bytes, KV cache and roofline predictions for a model on a device",
        description="Cost of a model op by op from drift's IR, and its roofline on a device "
                    "of the table (or this machine's, measured by `drift probe`).")
    an.add_argument("model", nargs="?", default=None,
                    help="a .gguf file or a preset shape (llama-3.1-8b, smollm2-135m, ...)")
    an.add_argument("--quant", default=None,
                    help="assumed quantization recipe (Q4_K_M, Q4_0, Q8_0, F16, ...); for a "
                         "preset the default is Q4_K_M, for a file its own types")
    an.add_argument("--device-spec", default=None,
                    help="device of the table (rtx4090, h100, m2-max, ...; --list-devices) "
                         "or 'local' (measured by drift probe); default: every device, briefly")
    an.add_argument("--device", default="auto", help="backend whose probe 'local' means")
    an.add_argument("--prompt-len", type=int, default=512, help="prefill tokens (default 512)")
    an.add_argument("--gen-len", type=int, default=128,
                    help="decode steps of a request (default 128)")
    an.add_argument("--ctx", type=int, default=None,
                    help="context of the decode step (default prompt-len + gen-len/2)")
    an.add_argument("--kv-dtype", default="f16", choices=PLAIN_KV,
                    help="KV cache type (default f16, as llama.cpp)")
    an.add_argument("--act-dtype", default="f16", choices=PLAIN_KV,
                    help="activation type (default f16, as GPU kernels keep them; the numpy "
                         "backend runs f32)")
    an.add_argument("--compute-dtype", default=None, choices=MATH_DTYPES,
                    help="peak to use for every op (default: per op, from its dtypes)")
    an.add_argument("--fuse", action="store_true",
                    help="cost the graphs after the fusion passes (what the engine runs)")
    an.add_argument("--list-devices", action="store_true", help="print the device table")
    an.add_argument("--memory", action="store_true",
                    help="the memory report (weights, KV, arena plans) instead")
    _add_output_arguments(an)
    memory_report.add_memory_arguments(an)  # --prompt-len, --ctx, ... shared with the costs
    an.set_defaults(func=cmd_analyze)

    pr = sub.add_parser(
        "profile", help="measured time per op next to the roofline, MBU/MFU, energy",
        description="Run prefill and greedy decode on a backend, time every IR op, and put "
                    "each next to its roofline prediction.")
    pr.add_argument("model", nargs="?", default=None, help="a .gguf file or a model name")
    pr.add_argument("--device", default="auto", help="backend: cpu, cuda, ...")
    add_hybrid_arguments(pr)
    pr.add_argument("--ctx", type=int, default=None,
                    help="KV cache size (default prompt-len + decode-tokens)")
    pr.add_argument("--prompt-len", type=int, default=32, help="prefill tokens (default 32)")
    pr.add_argument("--decode-tokens", type=int, default=8, help="decode steps (default 8)")
    pr.add_argument("--repeat", type=int, default=3, help="prefill repetitions (default 3)")
    pr.add_argument("--device-spec", default="local",
                    help="roofline to compare with (default: this machine, probed)")
    pr.add_argument("--energy-window", type=float, default=1.0, metavar="SECONDS",
                    help="repeat the prefill call and a decode step for at least this long to "
                         "read the energy counters (default 1; 0: read them around the timed "
                         "phases only)")
    pr.add_argument("--json-out", metavar="PATH", default=None,
                    help="also write the JSON to PATH (with the tables on the terminal)")
    _add_output_arguments(pr)
    pr.set_defaults(func=cmd_profile)

    pb = sub.add_parser("probe", help="measure this machine's bandwidth and matmul rates",
                        description="Measure copy bandwidth, GEMV bandwidth and matmul rate per "
                                    "dtype on a backend; saved for --device-spec local.")
    pb.add_argument("--device", default="auto", help="cpu (numpy) or cuda (torch)")
    pb.add_argument("--quick", action="store_true", help="smaller sizes, about a second")
    pb.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pb.set_defaults(func=cmd_probe)


# ---------------------------------------------------------------------------------------------
# analyze


def _positive(args: argparse.Namespace, *names: str) -> None:
    for n in names:
        v = getattr(args, n, None)
        if v is not None and v < 1:
            raise InvalidArgumentError(f"--{n.replace('_', '-')} must be >= 1, got {v}")


def _check_output_paths(args: argparse.Namespace) -> None:
    """Checked before any work, so that a typo in a path does not throw a long profile away."""
    for flag in ("csv", "html", "json_out"):
        path = getattr(args, flag, None)
        if not path or path == "-":
            continue
        folder = Path(path).expanduser().absolute().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise InvalidArgumentError(
                f"--{flag.replace('_', '-')} {path}: {folder} is not a folder drift can write to")
    plot_dir = getattr(args, "plot_dir", None)
    if plot_dir and Path(plot_dir).exists() and not Path(plot_dir).is_dir():
        raise InvalidArgumentError(f"--plot-dir {plot_dir}: exists and is not a folder")


def cmd_analyze(args: argparse.Namespace) -> int:
    from drift.analysis.hardware import DEVICES, device_spec
    from drift.commands._common import model_file_for_analysis

    if args.memory:
        model_file_for_analysis(args)  # a short name: the downloaded file, as for `run`
        return int(memory_report.run_memory_report(args) or 0)
    if args.list_devices:
        return _list_devices(args)
    _check_output_paths(args)
    model_file_for_analysis(args)  # a short name: the downloaded file, as for `run`
    from drift.analysis import report
    from drift.analysis.cost import model_cost
    from drift.analysis.roofline import estimate_model
    from drift.analysis.source import resolve

    _positive(args, "prompt_len", "gen_len", "ctx")
    # Validate every cheap argument before the (possibly slow) graph building.
    device = device_spec(args.device_spec, args.device) if args.device_spec else None
    spec = resolve(args.model, args.quant)
    cost = model_cost(spec.label, spec.quant, spec.config, spec.weight_dtypes, args.prompt_len,
                      args.gen_len, args.ctx, args.kv_dtype, args.act_dtype,
                      _fusion() if args.fuse else None)
    est = estimate_model(cost, device, args.compute_dtype) if device else None

    if args.csv:
        report.write_csv(report.op_rows(cost.prefill, est.prefill if est else None)
                         + report.op_rows(cost.decode, est.decode if est else None), args.csv)
    top = None if args.all_ops else 12
    tables = [report.model_table(cost, device), report.stage_table(cost, est)]
    if est is None:
        tables.append(_all_devices_table(cost, DEVICES, args.compute_dtype))
    tables += [report.group_table(cost.prefill, est.prefill if est else None, top=top),
               report.group_table(cost.decode, est.decode if est else None, top=top),
               report.kv_table(cost)]
    images = _analysis_plots(args, cost, est)
    if args.html:
        report.html_report(f"drift analyze {spec.label}", tables, images, args.html,
                           footer=_sources(est.device if est else None))
    if args.json:
        out = report.analysis_dict(cost, est)
        if est is None:
            out["devices"] = [_device_row(cost, d, args.compute_dtype) for d in DEVICES]
        print(json.dumps(out, indent=1, default=_json_default))
    elif args.csv != "-":
        report.print_tables(tables)
        for p in images if args.plot_dir else []:
            print(f"wrote {p}")
        if args.html:
            print(f"wrote {args.html}")
    return 0


def _fusion():
    """Graph -> fused graph, through the same pass pipeline backends compile with."""
    from drift.passes import PassContext, run_pipeline

    return lambda g: run_pipeline(g, PassContext(fuse=True)).graph


def _json_default(x):
    if isinstance(x, float):
        return None
    return str(x)


def _device_row(cost, d, compute_dtype):
    from drift.analysis.roofline import estimate_model

    e = estimate_model(cost, d, compute_dtype)
    return {"key": d.key, "ttft_s": e.ttft_s, "decode_tok_s": e.decode_tok_s,
            "prefill_bound": max(e.prefill.bound_share, key=e.prefill.bound_share.get),
            "decode_bound": max(e.decode.bound_share, key=e.decode.bound_share.get)}


def _all_devices_table(cost, devices, compute_dtype):
    from drift.analysis.report import Table, fmt_time

    rows = []
    fits_note = False
    for d in devices:
        r = _device_row(cost, d, compute_dtype)
        need = cost.weight_bytes + dict(cost.kv_by_ctx).get(cost.ctx, 0)
        fits = need <= d.memory_gb * 1e9
        fits_note |= not fits
        rows.append([d.key, d.name, fmt_time(r["ttft_s"]),
                     f"{cost.prompt_len / r['ttft_s']:,.0f}", f"{r['decode_tok_s']:,.1f}",
                     r["decode_bound"], "" if fits else "no"])
    return Table("roofline on every device of the table (--device-spec KEY for op detail)",
                 ["key", "device", "TTFT", "prefill tok/s", "decode tok/s", "decode bound",
                  "fits"], rows,
                 "floors: no engine beats them; 'fits' compares weights + KV with the device's "
                 "memory" if fits_note else "floors: no engine beats them",
                 numeric={2, 3, 4})


def _sources(device) -> str:
    if device is None:
        return "Device figures: see drift/analysis/hardware.py for each entry's source."
    return f"{device.name}: {device.source}" + (f" ({device.note})" if device.note else "")


def _analysis_plots(args, cost, est) -> list[Path]:
    if not (args.plot_dir or args.html):
        return []
    from drift.analysis import plots, report
    from drift.analysis.hardware import device_spec
    from drift.analysis.roofline import estimate_model

    if est is None:  # a roofline needs a device: the measured one if any, else an H100
        try:
            dev = device_spec("local", args.device)
        except DriftError:  # no probe saved (or none possible for this device)
            dev = device_spec("h100-sxm")
        est = estimate_model(cost, dev, args.compute_dtype)
    out = Path(args.plot_dir) if args.plot_dir else Path(tempfile.mkdtemp(prefix="drift-plots-"))
    title = f"{cost.label} {cost.quant}: prefill {cost.prompt_len} tokens, decode at {cost.ctx}"
    pts = report.roof_points(cost.prefill, est.prefill) + report.roof_points(cost.decode,
                                                                             est.decode)
    roof = plots.roofline_png(out / "roofline.png", est.device, pts, title)
    bars = plots.breakdown_png(out / "breakdown.png",
                               {"prefill": report.time_bars(cost.prefill, est.prefill),
                                "decode": report.time_bars(cost.decode, est.decode)},
                               f"{title}: predicted time per op group on {est.device.name}")
    return [roof, bars]


def _list_devices(args) -> int:
    from drift.analysis.hardware import DEVICES
    from drift.analysis.report import Table, device_dict, print_tables

    if args.json:
        print(json.dumps([device_dict(d) for d in DEVICES], indent=1))
        return 0
    rows = [[d.key, d.name, f"{d.bandwidth_gbs:g}", f"{d.fp32_tflops:g}", f"{d.fp16_tflops:g}",
             f"{d.int8_tops:g}" if d.int8_tops else "-", f"{d.ridge('f16'):.0f}",
             d.note or ""] for d in DEVICES]
    print_tables([Table("devices (sources: drift/analysis/hardware.py; docs/analysis.md)",
                        ["key", "name", "GB/s", "f32 TFLOP/s", "f16 TFLOP/s", "int8 TOP/s",
                         "f16 ridge FLOP/B", "note"], rows, numeric={2, 3, 4, 5, 6})])
    return 0


# ---------------------------------------------------------------------------------------------
# profile


def _open_engine(args: argparse.Namespace):
    """A path opens directly; anything else goes through the hub (`load_engine`)."""
    import os

    from drift.models.presets import PRESETS

    if args.model and os.path.exists(args.model):
        from drift.runtime.engine import Engine

        return Engine(args.model, device=args.device, ctx=args.ctx, **engine_options(args))
    if args.model in PRESETS and not args.model.endswith(".gguf"):
        try:
            import drift.hub  # noqa: F401  (a short name the hub may fetch)
        except ImportError:
            raise InvalidArgumentError(
                f"{args.model} is a shape without weights: profile needs a .gguf file "
                "(`drift make-random` writes one with a preset's shapes)") from None
    from drift.commands._common import load_engine

    return load_engine(args, progress=sys.stderr.isatty())


def cmd_profile(args: argparse.Namespace) -> int:
    from drift.analysis import plots, report
    from drift.analysis.hardware import device_spec
    from drift.analysis.probe import ProbeMissingError, saved_or_quick_probe
    from drift.analysis.profile import profile_engine

    _positive(args, "prompt_len", "decode_tokens", "repeat", "ctx")
    _check_output_paths(args)
    if args.energy_window < 0:
        raise InvalidArgumentError(f"--energy-window must be >= 0, got {args.energy_window}")
    if args.ctx is None:
        args.ctx = args.prompt_len + args.decode_tokens
    if args.prompt_len + args.decode_tokens > args.ctx:
        raise InvalidArgumentError(
            f"--prompt-len {args.prompt_len} + --decode-tokens {args.decode_tokens} exceed "
            f"--ctx {args.ctx}")
    if not args.device_spec.lower().startswith("local"):
        device = device_spec(args.device_spec)  # a bad name fails before loading the model
    engine = _open_engine(args)
    notes = []
    # the roofline of the device that runs the graph (hybrid: its GPU backend's)
    from drift.hybrid.backend import HybridBackend

    runs_on = engine.backend.gpu if isinstance(engine.backend, HybridBackend) else engine.backend
    probed = runs_on.name
    if args.device_spec.lower().startswith("local"):
        try:
            device = device_spec(args.device_spec, probed)
        except ProbeMissingError:
            _, note = saved_or_quick_probe(probed)
            notes.append(note)
            device = device_spec(args.device_spec, probed)
    label = Path(args.model).stem if args.model else engine.path.stem
    result = profile_engine(engine, label, args.prompt_len, args.decode_tokens, args.repeat,
                            energy_window=args.energy_window)
    result.notes += notes

    if args.csv:
        report.write_csv(report.profile_dict(result, device)["ops"], args.csv)
    tables = report.profile_tables(result, device, None if args.all_ops else 12)
    images: list[Path] = []
    if args.plot_dir or args.html:
        out = (Path(args.plot_dir) if args.plot_dir
               else Path(tempfile.mkdtemp(prefix="drift-plots-")))
        pe, de = report.profile_estimates(result, device)
        title = (f"{label} on {result.device_name} [{result.backend}]: prefill "
                 f"{result.prompt_len} tokens, {result.decode_tokens} decode steps")
        pts = (report.roof_points(result.prefill.cost, pe, result.prefill.op_s)
               + report.roof_points(result.decode.cost, de, result.decode.op_s)
               + [report.stage_point(ms.cost, ms.seconds)
                  for ms in (result.prefill, result.decode)])
        images = [plots.roofline_png(out / "roofline.png", device, pts, title),
                  plots.breakdown_png(out / "breakdown.png", {
                      "prefill": report.time_bars(result.prefill.cost, pe, result.prefill.op_s),
                      "decode": report.time_bars(result.decode.cost, de, result.decode.op_s)},
                      f"{title}: time per op group, measured and predicted")]
    if args.html:
        report.html_report(f"drift profile {label}", tables, images, args.html,
                           footer="; ".join(result.notes + [_sources(device)]))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report.profile_dict(result, device), indent=1,
                                                  default=_json_default))
    if args.json:
        print(json.dumps(report.profile_dict(result, device), indent=1, default=_json_default))
    elif args.csv != "-":
        report.print_tables(tables)
        for n in result.notes:
            print(f"note: {n}")
        for p in images if args.plot_dir else []:
            print(f"wrote {p}")
        if args.html:
            print(f"wrote {args.html}")
    return 0


# ---------------------------------------------------------------------------------------------
# probe


def cmd_probe(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from drift.analysis.probe import run_probe, save_probe
    from drift.analysis.report import Table, print_tables

    result = run_probe(args.device, quick=args.quick)
    path = save_probe(result)
    if args.json:
        print(json.dumps(asdict(result) | {"path": str(path)}, indent=1))
        return 0
    rows = [["copy (read + write)", f"{result.copy_gbs:.1f} GB/s"],
            ["GEMV weight stream", f"{result.gemv_gbs:.1f} GB/s"]]
    if result.launch_us is not None:
        rows.append(["launch (per kernel)" if result.backend != "cpu" else "dispatch (per op)",
                     f"{result.launch_us:.2f} us"])
    rows += [[f"matmul {dt}", f"{v * 1e3:.1f} GFLOP/s" if v < 1 else f"{v:.1f} TFLOP/s"]
             for dt, v in result.matmul_tflops.items()]
    print_tables([Table(f"{result.device_name} [{result.backend}]", ["ceiling", "measured"],
                        rows, f"saved to {path}; use --device-spec local"
                        + (f"; launch: {result.launch_what}" if result.launch_what else ""),
                        numeric={1})])
    return 0
