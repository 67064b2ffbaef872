"""Which release of an OpenCL backend crashes a process (NVIDIA's OpenCL segfaults when a
backend is dropped in-process, BENCHMARKS.md "fifth run"): each variant in a child process,
its exit status printed.

    python bench/opencl_release.py            # every variant, one line each
    python bench/opencl_release.py VARIANT    # one, in this process
"""

from __future__ import annotations

import gc
import subprocess
import sys

import numpy as np

VARIANTS = ("make", "run", "run-pyopencl-launches", "run-keep-runtime", "two-runs")
_kept = []


def _matmul(be, rng):
    from drift.ir import GraphBuilder

    b = GraphBuilder("mm")
    b.output(b.op("matmul", b.input("x", (1, 256), "f32"), b.weight("w", (64, 256), "f32")))
    be.load_arrays({"w": rng.standard_normal((64, 256)).astype(np.float32)})
    prog = be.compile(b.finish())
    prog.run({"x": rng.standard_normal((1, 256)).astype(np.float32)})
    return prog


def variant(name: str) -> None:
    from drift.backends import backend_class

    rng = np.random.default_rng(0)
    for _ in range(2 if name == "two-runs" else 1):
        be = backend_class("opencl")()
        if name == "run-pyopencl-launches":
            be.rt.loop = None
            be.rt.enqueue = None
        if name != "make":
            prog = _matmul(be, rng)
            del prog
        if name == "run-keep-runtime":
            _kept.append(be.rt)
        del be
        gc.collect()
        print(f"{name}: released", flush=True)


def main() -> int:
    if len(sys.argv) > 1:
        variant(sys.argv[1])
        return 0
    for v in VARIANTS:
        p = subprocess.run([sys.executable, __file__, v], capture_output=True, text=True)
        print(f"{v}: rc={p.returncode} {p.stdout.strip().splitlines()[-1:] or ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
