"""PNG figures: the roofline with the model's ops on it, and where the time goes.

matplotlib runs on its Agg backend (no display needed) and is imported only here, so the
tables and JSON work where it is not installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from drift.analysis.hardware import DeviceSpec
from drift.errors import DriftError


@dataclass(frozen=True)
class RoofPoint:
    label: str  # op group, e.g. "matmul ffn_up"
    stage: str  # "prefill" | "decode"
    intensity: float  # FLOP/byte
    flops_per_s: float  # attained (predicted or measured)
    seconds: float  # the group's time: marker area
    measured: bool
    whole: bool = False  # a whole measured call (stage FLOPs / wall time): a star, fixed size


@dataclass(frozen=True)
class TimeBar:
    label: str
    predicted_s: float
    measured_s: float | None


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DriftError("plots need matplotlib: pip install 'drift[analysis]'") from None
    return plt


_STAGE_COLOR = {"prefill": "tab:blue", "decode": "tab:orange"}


def _short(label: str) -> str:
    """A plot label: "matmul ffn_up" -> "ffn_up"; a fused op over several weights
    ("qkv_matmul attn_q/attn_k/attn_v") -> its op name."""
    op, _, what = label.partition(" ")
    if not what:
        return op
    return op if "/" in what else (what if op == "matmul" else label)


def roofline_png(path: Path, device: DeviceSpec, points: list[RoofPoint], title: str,
                 dtypes: tuple[str, ...] = ("f32", "f16", "int8")) -> Path:
    """Log-log roofline: memory slope and one flat roof per dtype; ops as points."""
    plt = _pyplot()
    pts = [p for p in points if p.intensity > 0 and p.flops_per_s > 0]
    fig, ax = plt.subplots(figsize=(10, 6.5), dpi=110)
    xs = [p.intensity for p in pts] or [1.0]
    lo, hi = min(xs + [0.1]) / 3, max(xs + [device.ridge("f16") * 4]) * 3
    by_peak: dict[float, list[str]] = {}
    for d in dtypes:  # dtypes sharing a rate share a roof and its label
        by_peak.setdefault(device.peak(d), []).append(d)
    peaks = sorted(((p, "/".join(ds)) for p, ds in by_peak.items()), reverse=True)
    bw = device.bandwidth
    grid = [lo * (hi / lo) ** (k / 200) for k in range(201)]
    for k, (peak, d) in enumerate(peaks):
        style = "-" if k == 0 else "--"
        ax.plot(grid, [min(peak, x * bw) for x in grid], style, color="0.35", lw=1.3)
        ax.annotate(f"{d} peak {peak / 1e12:.3g} TFLOP/s", (hi, peak), xytext=(-4, 3),
                    textcoords="offset points", ha="right", fontsize=8, color="0.25")
    ax.annotate(f"memory {bw / 1e9:.4g} GB/s", (lo * 1.5, lo * 1.5 * bw), xytext=(2, 6),
                textcoords="offset points", fontsize=8, color="0.25", rotation=0)
    total = sum(p.seconds for p in pts if not p.whole) or 1.0
    labelled: set[tuple[str, bool]] = set()
    for p in [p for p in pts if p.whole]:
        color = _STAGE_COLOR.get(p.stage, "tab:gray")
        ax.scatter([p.intensity], [p.flops_per_s], s=220, marker="*", color=color,
                   edgecolors="black", linewidths=0.8, zorder=5)
        ax.annotate(p.label, (p.intensity, p.flops_per_s), xytext=(8, 4),
                    textcoords="offset points", fontsize=8, fontweight="bold", color=color)
    for p in [p for p in pts if not p.whole]:
        color = _STAGE_COLOR.get(p.stage, "tab:gray")
        key = (p.stage, p.measured)
        ax.scatter([p.intensity], [p.flops_per_s], s=20 + 800 * p.seconds / total,
                   marker="o" if p.measured else "^", alpha=0.6, color=color,
                   edgecolors="black" if p.measured else "none", linewidths=0.6,
                   label=f"{p.stage} {'measured' if p.measured else 'predicted'}"
                   if key not in labelled else None)
        labelled.add(key)
    # Name the few groups that take most time, so the plot reads without the table; groups
    # that land on one spot (ffn_gate and ffn_up have the same shape) share one label.
    clusters: list[tuple[RoofPoint, list[str]]] = []
    for p in sorted((p for p in pts if not p.whole), key=lambda p: -p.seconds)[:10]:
        for head, names in clusters:
            if (abs(math.log10(head.intensity / p.intensity)) < 0.12
                    and abs(math.log10(head.flops_per_s / p.flops_per_s)) < 0.12):
                if p.label not in names:
                    names.append(p.label)
                break
        else:
            clusters.append((p, [p.label]))
    for k, (head, names) in enumerate(clusters[:7]):
        short = [_short(n) for n in dict.fromkeys(names)]
        text = ", ".join(short[:2]) + (f" +{len(short) - 2}" if len(short) > 2 else "")
        ax.annotate(text, (head.intensity, head.flops_per_s), xytext=(6, -12 - 9 * (k % 2)),
                    textcoords="offset points", fontsize=7, color="0.15",
                    arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5})
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ymax = peaks[0][0] * 3
    ymin = min([p.flops_per_s for p in pts] + [lo * bw]) / 3
    ax.set_ylim(ymin, ymax)
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("attained FLOP/s")
    ax.set_title(f"{title}\n{device.name}", fontsize=10)
    ax.grid(True, which="both", alpha=0.2)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def breakdown_png(path: Path, stages: dict[str, list[TimeBar]], title: str,
                  top: int = 12) -> Path:
    """Per stage, horizontal bars of time per op group: predicted, and measured if any."""
    plt = _pyplot()
    names = [s for s, bars in stages.items() if bars]
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 6), dpi=110,
                             squeeze=False)
    for ax, stage in zip(axes[0], names, strict=True):
        bars = sorted(stages[stage], key=lambda b: -max(b.predicted_s, b.measured_s or 0))[:top]
        bars.reverse()  # largest on top
        y = list(range(len(bars)))
        has_meas = any(b.measured_s is not None for b in bars)
        h = 0.4 if has_meas else 0.7
        pred = [b.predicted_s * 1e3 for b in bars]
        ax.barh([v + (h / 2 if has_meas else 0) for v in y], pred, height=h,
                color="tab:gray", label="predicted (roofline)")
        if has_meas:
            meas = [(b.measured_s or 0) * 1e3 for b in bars]
            ax.barh([v - h / 2 for v in y], meas, height=h,
                    color=_STAGE_COLOR.get(stage, "tab:blue"), label="measured")
        ax.set_yticks(y)
        ax.set_yticklabels([b.label for b in bars], fontsize=8)
        ax.set_xlabel("ms per call")
        ax.set_title(stage, fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
