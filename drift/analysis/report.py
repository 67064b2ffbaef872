"""Tables from an analysis or a profile, rendered to the terminal (rich), JSON, CSV and a
self-contained HTML page (PNG figures embedded as base64).

Reports are built once as plain `Table`s; each renderer only formats them, so the terminal,
the CSV and the HTML always show the same numbers.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drift.analysis.cost import KV, WEIGHT_PREFIX, ModelCost, StageCost
from drift.analysis.hardware import DeviceSpec
from drift.analysis.plots import RoofPoint, TimeBar
from drift.analysis.profile import ProfileResult
from drift.analysis.roofline import (
    TOLERANCE,
    ModelEstimate,
    StageEstimate,
    estimate_stage,
    explain,
)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""
    numeric: set[int] = field(default_factory=set)  # right-aligned columns


# ---------------------------------------------------------------------------------------------
# formatting


def _sig3(v: float) -> str:
    """Three significant digits without exponents: 1.21, 12.1, 121, 1008."""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def fmt_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{_sig3(n / scale)} {unit}"
    return f"{n:.0f} B"


def fmt_si(x: float, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    for p, s in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= s:
            return f"{x / s:.3g} {p}{unit}"
    return f"{x:.3g} {unit}".strip()


def fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{_sig3(s)} s"
    if s >= 1e-3:
        return f"{_sig3(s * 1e3)} ms"
    return f"{_sig3(s * 1e6)} us"


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _intensity(x: float) -> str:
    return "-" if not x else (f"{x:.3g}" if x < 1e4 else f"{x:.3e}")


# ---------------------------------------------------------------------------------------------
# analyze


def model_table(c: ModelCost, device: DeviceSpec | None) -> Table:
    cfg = c.config
    shape = (f"{c.label} ({cfg.arch}, {cfg.n_layers} layers, d={cfg.d_model}, "
             f"heads {cfg.n_heads}/{cfg.n_kv_heads}x{cfg.head_dim}, vocab {cfg.vocab_size})")
    weights = (f"{c.quant}: {c.params / 1e9:.3f} B parameters, {fmt_bytes(c.weight_bytes)} "
               f"({8 * c.weight_bytes / c.params:.2f} bits/weight)")
    stages = (f"prefill {c.prompt_len} tokens; decode at context {c.ctx}; "
              f"request = prefill + {c.gen_len} decode steps")
    rows: list[list[Any]] = [
        ["model", shape],
        ["weights", weights],
        ["weights by type", ", ".join(f"{k} {fmt_bytes(v)}"
                                      for k, v in c.weight_bytes_by_dtype().items())],
        ["KV cache", f"{c.kv_dtype}, {fmt_bytes(c.kv_bytes_per_token)} per token"],
        ["stages", stages],
    ]
    if device:
        peaks = (f"{device.name}: {device.bandwidth_gbs:.4g} GB/s, f32 {device.fp32_tflops:.3g}"
                 f" / f16 {device.fp16_tflops:.3g} TFLOP/s ({device.key})")
        rows.append(["device", peaks])
    return Table("model", ["", ""], rows)


def stage_table(c: ModelCost, est: ModelEstimate | None) -> Table:
    cols = ["stage", "tokens", "keys", "FLOPs", "MACs", "weights read", "KV read+written",
            "activations", "FLOP/byte"]
    if est:
        cols += ["roofline", "launches", "predicted", "bound (time share)", "rate"]
    rows = []
    for s, e in ((c.prefill, est.prefill if est else None), (c.decode, est.decode if est else None)):
        row: list[Any] = [s.stage, s.n_tokens, s.kv_len, fmt_si(s.flops), fmt_si(s.macs),
                          fmt_bytes(s.weight_bytes), fmt_bytes(s.kv_bytes),
                          fmt_bytes(s.act_bytes), _intensity(s.intensity)]
        if e:
            share = e.bound_share
            bound = max(share, key=share.get)
            rate = (f"{s.n_tokens / e.seconds:,.0f} tok/s" if e.seconds else "-")
            row += [fmt_time(e.roofline_s), f"{e.launches:.0f} x {fmt_time(e.device.launch_s)}",
                    fmt_time(e.seconds), f"{bound} ({fmt_pct(share[bound])})", rate]
        rows.append(row)
    t = c.request_totals()
    row = ["request", t["tokens"], "", fmt_si(t["flops"]), fmt_si(t["macs"]), "", "", "",
           _intensity(t["flops"] / t["bytes"]) if t["bytes"] else "-"]
    if est:
        row += ["", "", fmt_time(est.request_s), "", f"{t['tokens'] / est.request_s:,.0f} tok/s"]
    rows.append(row)
    note = ""
    if est:
        note = (f"time to first token {fmt_time(est.ttft_s)}; decode {est.decode_tok_s:,.1f} "
                f"tok/s ({fmt_time(est.decode_s)} per token) on {est.device.name}; predicted = "
                f"roofline + launches x {fmt_time(est.device.launch_s)} "
                f"({est.device.launch_note})")
        j = est.energy_j_per_token()
        if j is not None:
            note += f"; at most {j:.3g} J per decoded token at the {est.device.tdp_w:.0f} W TDP"
    return Table("stages", cols, rows, note, numeric=set(range(1, len(cols))))


def group_table(stage: StageCost, est: StageEstimate | None, measured: list[float] | None = None,
                device: DeviceSpec | None = None, top: int | None = None) -> Table:
    """Ops summed by label over the layers; with measurements, MBU and MFU per group."""
    cols = ["op", "n", "FLOPs", "weights", "KV", "act", "FLOP/byte", "dtype"]
    if est:
        cols += ["bound", "roofline", "launches", "predicted", "share"]
    if measured is not None:
        cols += ["measured", "meas/pred", "MBU", "MFU", "why not within 25%"]
    groups = stage.groups()
    total_pred = est.seconds if est else 0.0
    rows = []
    order = groups
    if est:
        order = sorted(groups, key=lambda g: -est.group_seconds(g))
    for g in order[:top] if top else order:
        row: list[Any] = [g.label, g.count, fmt_si(g.flops), fmt_bytes(g.weight_bytes),
                          fmt_bytes(g.kv_bytes), fmt_bytes(g.act_bytes), _intensity(g.intensity),
                          "/".join(g.dtypes)]
        if est:
            p = est.group_seconds(g)
            n = sum(est.ops[i].launches for i in g.indices)
            row += [est.group_bound(g), fmt_time(est.group_roofline_s(g)), f"{n:.3g}",
                    fmt_time(p), fmt_pct(p / total_pred if total_pred else 0)]
        if measured is not None:
            m = sum(measured[i] for i in g.indices)
            pred = est.group_seconds(g) if est else 0.0
            mbu, mfu = _utilisation(g.bytes, g.flops, m, est, g.indices, device)
            why = explain([est.ops[i] for i in g.indices], m, device) if est and device else ""
            row += [fmt_time(m), f"{m / pred:.2f}" if pred else "-", fmt_pct(mbu), fmt_pct(mfu),
                    why]
        rows.append(row)
    hidden = len(groups) - len(rows)
    note = f"{hidden} more op groups in --csv / --json" if hidden > 0 else ""
    if est:
        pre = f"predicted = roofline + launches x {fmt_time(est.device.launch_s)} " \
              f"({est.device.launch_note})"
        note = f"{pre}; {note}" if note else pre
    return Table(f"{stage.stage}: ops summed over layers", cols, rows, note,
                 numeric=set(range(1, len(cols))) - {7, 8, len(cols) - 1}
                 if measured is not None else set(range(1, len(cols))) - {7, 8})


def _utilisation(nbytes: int, flops: int, seconds: float, est: StageEstimate | None,
                 indices: tuple[int, ...], device: DeviceSpec | None):
    """MBU: bytes / time / bandwidth. MFU: flops / time / the peak each op's dtype gets."""
    if not seconds or device is None:
        return None, None
    mbu = nbytes / seconds / device.bandwidth
    if est:
        ideal = sum(est.ops[i].op.flops / est.ops[i].peak for i in indices if est.ops[i].op.flops)
    else:
        ideal = flops / device.peak("f32")
    mfu = ideal / seconds if flops else None
    return mbu, mfu


def kv_table(c: ModelCost) -> Table:
    rows = [[ctx, fmt_bytes(b), fmt_bytes(b + c.weight_bytes)] for ctx, b in c.kv_by_ctx]
    return Table(f"KV cache ({c.kv_dtype}) against context", ["context", "KV cache",
                 "weights + KV"], rows, "sliding-window layers still allocate the full context "
                 "in drift's graphs", numeric={0, 1, 2})


def op_rows(stage: StageCost, est: StageEstimate | None,
            measured: list[float] | None = None, device: DeviceSpec | None = None
            ) -> list[dict[str, Any]]:
    """One dict per node: the CSV and JSON per-op records."""
    rows = []
    for o in stage.ops:
        r: dict[str, Any] = {
            "stage": stage.stage, "index": o.index, "layer": o.layer, "op": o.node.op,
            "label": o.label, "outputs": " ".join(o.node.outputs), "flops": o.flops,
            "macs": o.macs, "weight_bytes": o.weight_bytes, "kv_bytes": o.kv_bytes,
            "activation_bytes": o.act_bytes, "bytes": o.bytes,
            "intensity": o.intensity if math.isfinite(o.intensity) else None, "dtype": o.dtype,
        }
        if est:
            e = est.ops[o.index]
            r |= {"math_dtype": e.math_dtype, "bound": e.bound, "roofline_s": e.roofline_s,
                  "launches": e.launches, "launch_s": e.launch_s, "predicted_s": e.seconds}
        if measured is not None:
            m = measured[o.index]
            mbu, mfu = _utilisation(o.bytes, o.flops, m, est, (o.index,), device)
            r |= {"measured_s": m, "mbu": mbu, "mfu": mfu}
            if est and device:
                ratio = m / est.ops[o.index].seconds if est.ops[o.index].seconds else None
                r |= {"meas_over_pred": ratio,
                      "within_25pct": ratio is not None
                      and 1 - TOLERANCE <= ratio <= 1 + TOLERANCE,
                      "why": explain([est.ops[o.index]], m, device)}
        rows.append(r)
    return rows


def _stage_dict(s: StageCost, e: StageEstimate | None) -> dict[str, Any]:
    d: dict[str, Any] = {"stage": s.stage, "n_tokens": s.n_tokens, "kv_len": s.kv_len,
                         "flops": s.flops, "macs": s.macs, "bytes": s.bytes,
                         "bytes_by_class": s.bytes_by_class(), "intensity": s.intensity}
    if e:
        d |= {"predicted_s": e.seconds, "roofline_s": e.roofline_s, "launches": e.launches,
              "launch_s": e.launch_s, "memory_floor_s": e.memory_s,
              "bound_share": e.bound_share}
    return d


def device_dict(d: DeviceSpec) -> dict[str, Any]:
    return {"key": d.key, "name": d.name, "bandwidth_gbs": d.bandwidth_gbs,
            "fp32_tflops": d.fp32_tflops, "fp16_tflops": d.fp16_tflops,
            "bf16_tflops": d.bf16_tflops, "int8_tops": d.int8_tops, "tdp_w": d.tdp_w,
            "launch_us": d.launch_s * 1e6, "launch_source": d.launch_note,
            "source": d.source, "note": d.note}


def analysis_dict(c: ModelCost, est: ModelEstimate | None, with_ops: bool = True
                  ) -> dict[str, Any]:
    d: dict[str, Any] = {
        "model": c.label, "arch": c.config.arch, "quant": c.quant, "params": c.params,
        "weight_bytes": c.weight_bytes, "weight_bytes_by_dtype": c.weight_bytes_by_dtype(),
        "kv_dtype": c.kv_dtype, "kv_bytes_per_token": c.kv_bytes_per_token,
        "kv_bytes_by_ctx": [{"ctx": k, "bytes": b} for k, b in c.kv_by_ctx],
        "prompt_len": c.prompt_len, "gen_len": c.gen_len, "decode_ctx": c.ctx,
        "prefill": _stage_dict(c.prefill, est.prefill if est else None),
        "decode": _stage_dict(c.decode, est.decode if est else None),
        "request": c.request_totals(),
    }
    if est:
        d["device"] = device_dict(est.device)
        d["prediction"] = {"ttft_s": est.ttft_s, "prefill_tok_s": est.prefill_tok_s,
                           "decode_s": est.decode_s, "decode_tok_s": est.decode_tok_s,
                           "request_s": est.request_s,
                           "decode_j_per_token_at_tdp": est.energy_j_per_token()}
    if with_ops:
        d["ops"] = (op_rows(c.prefill, est.prefill if est else None)
                    + op_rows(c.decode, est.decode if est else None))
    return d


def roof_points(stage: StageCost, est: StageEstimate, measured: list[float] | None = None
                ) -> list[RoofPoint]:
    pts = []
    for g in stage.groups():
        if not g.flops or not g.bytes:
            continue
        p = est.group_seconds(g)
        if p:
            pts.append(RoofPoint(g.label, stage.stage, g.intensity, g.flops / p, p, False))
        if measured is not None:
            m = sum(measured[i] for i in g.indices)
            if m:
                pts.append(RoofPoint(g.label, stage.stage, g.intensity, g.flops / m, m, True))
    return pts


def stage_point(stage: StageCost, seconds: float) -> RoofPoint:
    """A whole measured call on the roofline: the stage's FLOPs over its wall time."""
    return RoofPoint(f"{stage.stage} (whole call)", stage.stage, stage.intensity,
                     stage.flops / seconds if seconds else 0.0, seconds, True, whole=True)


def time_bars(stage: StageCost, est: StageEstimate, measured: list[float] | None = None
              ) -> list[TimeBar]:
    return [TimeBar(g.label, est.group_seconds(g),
                    sum(measured[i] for i in g.indices) if measured is not None else None)
            for g in stage.groups()]


# ---------------------------------------------------------------------------------------------
# profile


def profile_estimates(r: ProfileResult, device: DeviceSpec
                      ) -> tuple[StageEstimate, StageEstimate]:
    """The predictions for a profile's two stages, with the kernels the backend launched."""
    return (estimate_stage(r.prefill.cost, device, launches=r.prefill.launches),
            estimate_stage(r.decode.cost, device, launches=r.decode.launches))


def _within(ms, e) -> str:
    """How many ops that took time (ran a kernel of their own, or a share of one) are within
    25 % of their prediction."""
    if ms.op_s is None:
        return "-"
    timed = [(m, o.seconds) for m, o in zip(ms.op_s, e.ops, strict=True)
             if m > 0 and o.seconds > 0]
    ok = sum(1 for m, p in timed if 1 - TOLERANCE <= m / p <= 1 + TOLERANCE)
    return f"{ok}/{len(timed)}"


def profile_tables(r: ProfileResult, device: DeviceSpec, top: int | None = 12) -> list[Table]:
    pe, de = profile_estimates(r, device)
    rows = []
    for ms, e in ((r.prefill, pe), (r.decode, de)):
        s = ms.cost
        wall = ms.seconds
        mbu = s.bytes / wall / device.bandwidth if wall else None
        ideal = sum(o.op.flops / o.peak for o in e.ops if o.op.flops)
        energy = ms.energy.j_per_token
        rows.append([s.stage, s.n_tokens, s.kv_len, fmt_time(e.roofline_s), f"{e.launches:.0f}",
                     fmt_time(e.seconds), fmt_time(wall),
                     fmt_time(ms.op_total_s), f"{wall / e.seconds:.2f}" if e.seconds else "-",
                     _within(ms, e), fmt_pct(mbu), fmt_pct(ideal / wall if wall else None),
                     f"{energy:.3g} J" if energy is not None else "n/a"])
    itl = sorted(r.itl_s)
    note = (f"time to first token {fmt_time(r.ttft_s)} ({r.prompt_len} tokens); inter-token "
            f"latency mean {fmt_time(sum(itl) / len(itl))}, p50 {fmt_time(itl[len(itl) // 2])}, "
            f"max {fmt_time(itl[-1])}; {r.decode_tok_s:.1f} tok/s. predicted = roofline + "
            f"launches x {fmt_time(device.launch_s)} ({device.launch_note}); launches "
            f"{r.launch_source or 'assumed one per non-view op'}. Energy: "
            + (r.prefill.energy.source
               if r.prefill.energy.joules is None and r.decode.energy.joules is None
               and r.prefill.energy.source == r.decode.energy.source
               else f"prefill {r.prefill.energy.describe()}; decode "
                    f"{r.decode.energy.describe()}"))
    summary = Table(f"{r.label} on {r.device_name} [{r.backend}], roofline of {device.name}",
                    ["stage", "tokens", "keys", "roofline", "launches", "predicted", "measured",
                     "sum of ops", "meas/pred", "timed ops within 25%", "MBU", "MFU",
                     "energy/token"],
                    rows, note, numeric=set(range(1, 13)))
    return [summary,
            group_table(r.prefill.cost, pe, r.prefill.op_s, device, top),
            group_table(r.decode.cost, de, r.decode.op_s, device, top)]


def profile_dict(r: ProfileResult, device: DeviceSpec) -> dict[str, Any]:
    pe, de = profile_estimates(r, device)

    def stage(ms, e):
        d = _stage_dict(ms.cost, e)
        d |= {"measured_s": ms.seconds, "wall_s": ms.wall_s, "op_sum_s": ms.op_total_s,
              "mbu": ms.cost.bytes / ms.seconds / device.bandwidth,
              "mfu": sum(o.op.flops / o.peak for o in e.ops if o.op.flops) / ms.seconds,
              "energy_j": ms.energy.joules, "energy_j_per_token": ms.energy.j_per_token,
              "energy_source": ms.energy.source, "energy_window_s": ms.energy.window_s,
              "energy_calls": ms.energy.steps, "energy_tokens": ms.energy.tokens,
              "power_w": ms.energy.watts, "ops_within_25pct": _within(ms, e)}
        return d

    return {"model": r.label, "backend": r.backend, "device_name": r.device_name,
            "device_spec": device_dict(device), "prompt_len": r.prompt_len,
            "decode_tokens": r.decode_tokens, "ttft_s": r.ttft_s, "itl_s": r.itl_s,
            "decode_tok_s": r.decode_tok_s, "prefill": stage(r.prefill, pe),
            "decode": stage(r.decode, de), "notes": r.notes,
            "launch_source": r.launch_source,
            "ops": op_rows(r.prefill.cost, pe, r.prefill.op_s, device)
            + op_rows(r.decode.cost, de, r.decode.op_s, device)}


# ---------------------------------------------------------------------------------------------
# renderers


def print_tables(tables: list[Table], console=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table as RichTable

    # A pipe or file has no width to respect: do not wrap cells at rich's default of 80.
    console = console or Console(width=None if sys.stdout.isatty() else 200)
    for t in tables:
        # Names like "[cpu]" are text, not rich markup.
        rt = RichTable(title=escape(t.title), title_justify="left", show_header=any(t.columns),
                       caption=escape(t.note) if t.note else None, caption_justify="left")
        for k, c in enumerate(t.columns):
            rt.add_column(escape(c), justify="right" if k in t.numeric else "left",
                          overflow="fold")
        for row in t.rows:
            rt.add_row(*(escape(str(v)) for v in row))
        console.print(rt)


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    if not rows:
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    if path == "-":
        print(buf.getvalue(), end="")
    else:
        Path(path).write_text(buf.getvalue())


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:3px 8px}th{background:#f3f3f3;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
p.note{color:#555;font-size:.85em;margin:.2em 0 1em}img{max-width:100%;border:1px solid #ddd}
"""


def html_report(title: str, tables: list[Table], images: list[Path], path: str,
                footer: str = "") -> None:
    """One file with everything inline: tables as HTML, PNGs as data: URIs."""
    head = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>")
    parts = [head]
    for t in tables:
        parts.append(f"<h2>{html.escape(t.title)}</h2><table>")
        if any(t.columns):
            parts.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
                         + "</tr>")
        for row in t.rows:
            cells = "".join(f"<td{' class=n' if k in t.numeric else ''}>"
                            f"{html.escape(str(v))}</td>" for k, v in enumerate(row))
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</table>")
        if t.note:
            parts.append(f"<p class='note'>{html.escape(t.note)}</p>")
    for img in images:
        data = base64.b64encode(Path(img).read_bytes()).decode("ascii")
        parts.append(f"<h2>{html.escape(Path(img).stem.replace('_', ' '))}</h2>"
                     f"<img alt='{html.escape(Path(img).name)}' src='data:image/png;base64,{data}'>")
    if footer:
        parts.append(f"<p class='note'>{html.escape(footer)}</p>")
    parts.append("</body></html>")
    Path(path).write_text("\n".join(parts))


__all__ = ["KV", "WEIGHT_PREFIX", "Table", "analysis_dict", "fmt_bytes", "fmt_si", "fmt_time",
           "group_table", "html_report", "kv_table", "model_table", "op_rows", "print_tables",
           "profile_dict", "profile_estimates", "profile_tables", "roof_points", "stage_table", "time_bars",
           "write_csv"]
