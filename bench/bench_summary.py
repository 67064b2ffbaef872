"""One line per `drift bench --json` file: medians, MBU/MFU, memory against the peak."""
import json
import sys

for path in sys.argv[1:]:
    try:
        with open(path) as f:
            r = json.load(f)
    except (OSError, ValueError) as e:
        print(f"{path}: {e}")
        continue
    pp = next(k for k in r if k.startswith("pp"))
    tg = next(k for k in r if k.startswith("tg"))
    m = r["memory"]
    planned = sum(v for k, v in m.items() if k != "torch_max_allocated")
    peak = m.get("torch_max_allocated", 0)
    print(f"{r['model']}: {pp} median {r[pp]['median']:.0f} (mean {r[pp]['mean']:.0f} ± "
          f"{r[pp]['sd']:.0f}); {tg} median {r[tg]['median']:.1f} (mean {r[tg]['mean']:.1f} ± "
          f"{r[tg]['sd']:.1f}); MBU {100 * r.get('mbu', 0):.1f}% MFU {100 * r.get('mfu', 0):.1f}%")
    print("  memory MiB", {k: round(v / 2**20) for k, v in m.items()},
          f"planned {planned / 2**20:.0f}, peak/planned {peak / max(planned, 1):.3f}")
