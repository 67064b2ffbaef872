"""Which release of an OpenCL backend crashes a process (NVIDIA's OpenCL segfaults when a
backend is dropped in-process, BENCHMARKS.md "fifth run"): each variant in a child process,
its exit status printed.

    python bench/opencl_release.py            # every variant, one line each
    python bench/opencl_release.py VARIANT    # one, in this process
    OPENCL_RELEASE_MODEL=m.gguf python bench/opencl_release.py   # also the model variants

The model variants: an Engine that prefills and decodes, then is dropped (`engine`); the same
after a longer prompt has grown the arena (`engine-grow`: the old arena's sub-buffers
released by `forget`); `drift bench` through `drift.cli.main`, returning normally
(`cli-bench`). Each prints a line at every stage, so the last line says how far it got.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import numpy as np

VARIANTS = ("make", "run", "run-pyopencl-launches", "run-keep-runtime", "two-runs")
MODEL_VARIANTS = ("engine", "engine-grow", "cli-bench")
_kept = []


def _matmul(be, rng):
    from drift.ir import GraphBuilder

    b = GraphBuilder("mm")
    b.output(b.op("matmul", b.input("x", (1, 256), "f32"), b.weight("w", (64, 256), "f32")))
    be.load_arrays({"w": rng.standard_normal((64, 256)).astype(np.float32)})
    prog = be.compile(b.finish())
    prog.run({"x": rng.standard_normal((1, 256)).astype(np.float32)})
    return prog


def model_variant(name: str, model: str) -> None:
    if name == "cli-bench":
        from drift.cli import main

        rc = main(["bench", model, "-p", "64", "-n", "4", "-r", "1", "--device", "opencl",
                   "--no-ceilings"])
        print(f"{name}: main returned {rc}", flush=True)
        return
    from drift.runtime.engine import Engine

    eng = Engine(model, device="opencl", ctx=512)
    eng.prefill([1, 2, 3, 4])
    eng.forward([5], 4)
    print(f"{name}: ran", flush=True)
    if name == "engine-grow":
        eng.reset()
        eng.prefill(list(range(1, 300)))
        print(f"{name}: grown", flush=True)
    del eng
    gc.collect()
    print(f"{name}: released", flush=True)


def variant(name: str) -> None:
    from drift.backends import backend_class

    if name in MODEL_VARIANTS:
        return model_variant(name, os.environ["OPENCL_RELEASE_MODEL"])

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
    model_variants = MODEL_VARIANTS if os.environ.get("OPENCL_RELEASE_MODEL") else ()
    for v in (*VARIANTS, *model_variants):
        p = subprocess.run([sys.executable, __file__, v], capture_output=True, text=True)
        print(f"{v}: rc={p.returncode} {p.stdout.strip().splitlines()[-1:] or ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
