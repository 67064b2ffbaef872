"""Peak resident memory of the numpy backend on a Llama-3.1-8B-shaped Q4_0 model.

    python bench/cpu_memory_8b.py [--path /tmp/llama-3.1-8b-q4_0.gguf] [--tokens 2]

Writes the random-weight file once (4.3 GiB; `drift make-random` does the same), then runs
`drift run` on it in a child process and reports the child's peak RSS. The target (issue 2):
under 12 GB, i.e. quantized weights stay quantized and are dequantized a slab at a time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--path", default="/tmp/llama-3.1-8b-q4_0.gguf")
    p.add_argument("--tokens", type=int, default=2)
    args = p.parse_args()
    path = Path(args.path)
    if not path.exists():
        from drift.formats.writer import write_random
        from drift.models.presets import preset

        t = time.perf_counter()
        write_random(preset("llama-3.1-8b"), "Q4_0", path)
        print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in "
              f"{time.perf_counter() - t:.0f} s", file=sys.stderr)
    cmd = [sys.executable, "-m", "drift", "run", str(path), "--device", "cpu", "--raw",
           "--temp", "0", "-n", str(args.tokens), "--ctx", "64", "Hello world"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({
        "command": " ".join(cmd[1:]),
        "returncode": proc.returncode,
        "stderr": proc.stderr.strip().splitlines()[-1:],
        "wall_s": round(wall, 1),
        "peak_rss_gb": round(peak / 1e9, 2),
        "file_gb": round(path.stat().st_size / 1e9, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
