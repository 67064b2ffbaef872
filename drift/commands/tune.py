"""`drift tune`: measure this GPU's fastest kernel configurations, once, and keep them.

    drift tune                      # the default shapes (Llama 3.1 8B, Llama 3.2 1B)
    drift tune model.gguf --budget 300
    drift tune --show               # which table this device runs, measuring nothing

The sweep (`drift.backends.triton.sweep`) writes `$DRIFT_HOME/tuned/<device>.json` (default
`~/.cache/drift/tuned/`), merged with what earlier runs measured for other shapes; the Triton
backend reads it at start, over the table shipped for this GPU or for the shipped GPU most
like it (`device.tables_for`).
"""

from __future__ import annotations

import argparse
import sys

from drift.errors import DeviceError, InvalidArgumentError

DEFAULT_BUDGET_S = 120.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="measure the fastest kernel configurations of this GPU "
                                    "(kept per device in the user cache)")
    p.add_argument("model", nargs="?", default=None,
                   help="a .gguf path or a short model name whose matmul shapes to measure "
                        "(default: the shapes of Llama 3.1 8B and Llama 3.2 1B)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, metavar="SECONDS",
                   help=f"time for the sweep (default {DEFAULT_BUDGET_S:.0f}), shared among the "
                        "shapes; shapes not reached keep the defaults")
    p.add_argument("--out", default=None,
                   help="write the table here instead of $DRIFT_HOME/tuned/<device>.json")
    p.add_argument("--show", action="store_true",
                   help="print which measured table this device uses, and measure nothing")
    p.set_defaults(func=run_tune)


def _device():
    try:
        from drift.backends.triton import TritonBackend
    except ImportError as e:
        raise DeviceError(f"drift tune needs torch and triton ({e}): pip install "
                          "'drift[triton]'") from None
    if not TritonBackend.available():
        raise DeviceError("drift tune times the Triton kernels on a GPU and found none (CUDA "
                          "or ROCm through torch); TRITON_INTERPRET=1 DRIFT_TRITON_CPU=1 runs "
                          "it on the CPU, for testing only")
    from drift.backends.triton.device import read_device, tune

    dev, info = read_device()
    return dev, info, tune(info)


def run_tune(args: argparse.Namespace) -> int:
    if not args.budget > 0:
        raise InvalidArgumentError(f"--budget must be > 0 seconds, got {args.budget}")
    from rich.console import Console

    dev, info, tu = _device()
    err = Console(stderr=True, highlight=False)
    if args.show:
        return _show(info, tu)

    from drift.backends.triton import sweep as sw

    if args.model:
        from drift.hub import resolve_model

        path = resolve_model(args.model)
        gemv, gemm = sw.model_shapes(path)
        what = f"on the shapes of {path.name}"
        if not gemv and not gemm:
            raise InvalidArgumentError(f"{path.name} has no quantized matrices: nothing to tune")
    else:
        gemv, gemm = list(sw.DEFAULT_GEMV_SHAPES), list(sw.DEFAULT_GEMM_SHAPES)
        what = "on the default shapes (Llama 3.1 8B, Llama 3.2 1B)"
    if info.extra.get("interpreter"):
        err.print("drift tune: the Triton interpreter (CPU): these times say nothing about a "
                  "GPU", style="yellow")
    table = _sweep(sw, dev, info, tu, gemv, gemm, args.budget, err)
    path = sw.write_table(info, table["best"], table["rows"], what, args.out)
    _summary(table["rows"], table["best"], info)
    n, shapes = len(table["best"]), len(gemv) + len(gemm)
    print(f"wrote {path}: {n} entries over {table['measured']} of {shapes} shapes "
          f"{what}, in {table['seconds']:.0f} s"
          + (f" ({table['failed']} configurations did not compile)" if table["failed"] else ""))
    if info.extra.get("interpreter"):
        print("(the interpreter itself runs fixed small tiles and reads no table)")
    elif not args.out:
        from drift.backends.triton.device import tune

        print(f"this device now runs: {tune(info).table_source or 'the defaults'}")
    return 0


def _sweep(sw, dev, info, tu, gemv, gemm, budget_s, err) -> dict:
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    sweep = sw.Sweep(tu, dev, log=lambda s: None)
    total = len(gemv) * sweep.gemv_jobs() + len(gemm) * sweep.gemm_jobs()
    bar = Progress(TextColumn("tune {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn(f"of {budget_s:.0f} s"), console=err,
                   disable=not sys.stderr.isatty())
    t0 = time.perf_counter()
    with bar:
        task = bar.add_task(info.name, total=total)
        best = sw.run_sweep(sweep, gemv, gemm, budget_s,
                            advance=lambda n=1: bar.advance(task, n))
    measured = {(r["qtype"], r["N"], r["K"], "M" in r) for r in sweep.rows}
    return {"best": best, "rows": sweep.rows, "failed": sweep.failed,
            "measured": len(measured), "seconds": time.perf_counter() - t0}


def _summary(rows: list[dict], best: dict, info) -> None:
    """Per entry: the default configuration's time (measured first) against the best."""
    from rich.console import Console
    from rich.table import Table

    first: dict[tuple, dict] = {}
    fastest: dict[tuple, dict] = {}
    for r in rows:
        key = (r["kernel"], r["qtype"], r["N"], r["K"])
        first.setdefault(key, r)
        if key not in fastest or r["us"] < fastest[key]["us"]:
            fastest[key] = r
    t = Table(title=f"drift tune: {info.name}")
    for col in ("kernel", "quant", "N x K", "default us", "best us", "speed-up", "best config"):
        t.add_column(col, justify="left" if col in ("kernel", "quant", "best config") else "right")
    for key, r in fastest.items():
        d = first[key]
        t.add_row(key[0], key[1], f"{key[2]} x {key[3]}", f"{d['us']:.1f}", f"{r['us']:.1f}",
                  f"{d['us'] / r['us']:.2f}x" if r["us"] else "-",
                  ",".join(str(c) for c in r["cfg"]))
    Console().print(t)


def _show(info, tu) -> int:
    from drift.backends.triton.device import table_file, user_tuned_dir

    print(f"device: {info.describe()}")
    if info.extra.get("interpreter"):
        print("the Triton interpreter runs fixed small tiles and reads no table")
        return 0
    cap = ".".join(str(c) for c in info.extra.get("capability", ()))
    print(f"compute capability {cap}, {info.extra.get('sm_count')} SMs, "
          f"{info.extra.get('shared_memory', 0) // 1024} KiB shared memory per block")
    print(f"table: {tu.table_source or 'none (the defaults)'}; {len(tu.table)} entries")
    print(f"drift tune writes: {user_tuned_dir() / table_file(info.name)}")
    return 0
