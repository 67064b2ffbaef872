"""Time the portable backends' matmul kernels alone (issue 9): one matmul node of random
quantized blocks, launched `--reps` times in one submission (so the API's submit cost is paid
once), on whatever webgpu / opencl device is found. Prints one table row per (api, type,
S, N, K): microseconds per launch, the weight bytes it reads, and those bytes over the time.

    python bench/gpuapi_kernels.py                       # small shapes, both APIs (CPU drivers)
    python bench/gpuapi_kernels.py --shapes 8b --reps 50  # Llama-3.1-8B's matmuls (the H200)
    python bench/gpuapi_kernels.py --variants             # also the GEMV/GEMM tile sizes below

On lavapipe / PoCL the figures are CPU time: only their ratios between kernel variants mean
anything.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from drift.backends import backend_class
from drift.backends.kernels import templates
from drift.ir import GraphBuilder
from drift.passes.storage import BLOCK_FIELDS, block_size

SHAPES = {  # (N, K) of a layer's matmuls: attention q/o, kv, ffn gate/up, ffn down, LM head
    "small": [(1024, 1024), (2816, 1024), (1024, 2816)],
    "1b": [(2048, 2048), (512, 2048), (8192, 2048), (2048, 8192), (128256, 2048)],
    "8b": [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336), (128256, 4096)],
}

# templates' tile constants tried by --variants (the first of each: the defaults)
VARIANTS = {
    "GEMV_WORDS": [templates.GEMV_WORDS, 2, 8, 16],
    "GEMV_ROW_TILE": [templates.GEMV_ROW_TILE, 1, 4],
    "GEMV_UNROLL": [templates.GEMV_UNROLL, 1, 8],
    "GEMM_TILE": [templates.GEMM_TILE, (64, 32, 32, 8, 4), (32, 64, 32, 4, 8), (64, 64, 16, 8, 8)],
}


def random_blocks(qtype: str, n: int, k: int, rng) -> np.ndarray:
    E, B = block_size(qtype)
    raw = rng.integers(0, 256, (n, k // E, B), dtype=np.uint8)
    for name, off, _, _ in BLOCK_FIELDS[qtype]:
        if name in ("d", "dmin", "m"):
            h = (rng.standard_normal((n, k // E)) * 0.05).astype(np.float16)
            raw[..., off : off + 2] = h.view(np.uint8).reshape(n, k // E, 2)
    return raw.reshape(n, -1)


def time_matmul(api: str, qtype: str, S: int, N: int, K: int, reps: int, rng,
                int8: bool = False) -> float:
    """Seconds per launch of the matmul kernel of x (S, K) @ w (N, K)^T (int8: x quantized
    to int8 blocks first, by a kernel not timed: the int8-x GEMV alone)."""
    be = backend_class(api)(int8_dot=int8)
    be.load_raw("w", (N, K), qtype, random_blocks(qtype, N, K, rng))
    b = GraphBuilder("mm")
    x = b.input("x", (S, K), "f32")
    b.output(b.op("matmul", b.op("quantize_q8", x) if int8 else x, b.weight("w", (N, K), qtype)))
    prog = be.compile(b.finish())
    feeds = {"x": rng.standard_normal((S, K)).astype(np.float32)}
    prog.run(feeds)  # warm: compiled, bound, first touch (and x's int8 blocks written)
    writes = prog._writes(feeds)
    timed = prog.launches[-1:]  # the matmul's
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        be.rt.run(timed * reps, writes, [])
        be.rt.sync()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--apis", default="webgpu,opencl")
    p.add_argument("--types", default="Q4_0,Q8_0")
    p.add_argument("--shapes", default="small", choices=sorted(SHAPES))
    p.add_argument("--rows", default="1,64", help="S values: 1 is decode, more is prefill")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--x", default="f32", help="x as f32 and/or int8 blocks (S = 1 only): "
                   "f32,int8")
    p.add_argument("--variants", action="store_true",
                   help="every value of each tile constant in VARIANTS, one at a time")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    settings = [("default", None, None)]
    if a.variants:
        settings += [(f"{k}={v}", k, v) for k, vs in VARIANTS.items() for v in vs[1:]]
    print("| api | variant | type | S | N | K | us/launch | weight MB | GB/s | GFLOP/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for api in a.apis.split(","):
        if not backend_class(api).available():
            print(f"| {api} | (no device) |")
            continue
        for label, key, value in settings:
            saved = getattr(templates, key) if key else None
            if key:
                setattr(templates, key, value)
            try:
                for qtype in a.types.split(","):
                    for S in (int(s) for s in a.rows.split(",")):
                        if key and key.startswith("GEMV") != (S <= templates.GEMV_ROWS):
                            continue  # the constant does not touch this stage's kernel
                        for N, K in SHAPES[a.shapes]:
                          for xk in a.x.split(","):
                            if xk == "int8" and S != 1:
                                continue
                            t = time_matmul(api, qtype, S, N, K, a.reps, rng, xk == "int8")
                            E, B = block_size(qtype)
                            mb = N * K // E * B / 1e6
                            print(f"| {api} | {label} x {xk} | {qtype} | {S} | {N} | {K} "
                                  f"| {t * 1e6:.0f} | {mb:.1f} | {mb / 1e3 / t:.1f} "
                                  f"| {2 * S * N * K / t / 1e9:.1f} |", flush=True)
            finally:
                if key:
                    setattr(templates, key, saved)


if __name__ == "__main__":
    main()
