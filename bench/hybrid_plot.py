"""Decode tok/s against GPU memory for hybrid execution: drift's neuron placement (by CPU
sparsity), drift's layer offload, and llama.cpp (ANCHORS.md), from a CSV of measured figures.

    python bench/hybrid_plot.py bench/results/hybrid_h200.csv docs/hybrid-h200.png

CSV columns: engine, placement, gpu_gb, pp, tg (one row per measured configuration; engine
"target" rows are the issue's goal, drawn dotted).
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    src, out = sys.argv[1], sys.argv[2]
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with open(src, newline="") as f:
        for row in csv.DictReader(f):
            series[f"{row['engine']}: {row['placement']}"].append(
                (float(row["gpu_gb"]), float(row["tg"])))
    fig, ax = plt.subplots(figsize=(11, 4.6))
    for name, pts in sorted(series.items()):
        pts.sort()
        style = {"llama.cpp": "--", "target": ":"}.get(name.split(":")[0], "-")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=name,
                color="gray" if style == ":" else None)
    ax.set_xlabel("GPU memory budget (GB; llama.cpp: weights on the GPU)")
    ax.set_ylabel("decode tok/s (tg32)")
    ax.set_title("Llama-3.1-8B Q4_0, one H200 + 16 CPU cores, part on the CPU", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside: no line hidden
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
