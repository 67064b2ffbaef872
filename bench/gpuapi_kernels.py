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

import kernel_constants  # (bench/, the script's folder)
from drift.backends import backend_class
from drift.backends.kernels import templates
from drift.backends.kernels.gpu import GPUBackend
from drift.ir import GraphBuilder
from drift.passes.storage import BLOCK_FIELDS, block_size

SHAPES = {  # (N, K) of a layer's matmuls: attention q/o, kv, ffn gate/up, ffn down, LM head
    "small": [(1024, 1024), (2816, 1024), (1024, 2816)],
    "1b": [(2048, 2048), (512, 2048), (8192, 2048), (2048, 8192), (128256, 2048)],
    "8b": [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336), (128256, 4096)],
}

# tile constants tried by --variants, one at a time (the first of each: the default): the
# templates' and the quant planes' tile (GPUBackend.kernel_tile_rows: 1 is the GEMV with a
# row's threads on consecutive words, GEMV_LANES the one with rows on lanes)
VARIANTS = {
    "GEMV_VEC_UNROLL": [templates.GEMV_VEC_UNROLL, 1, 4, 8],
    "GEMV_WG": [templates.GEMV_WG, 128, 512],
    "GEMV_MIN_STEPS": [templates.GEMV_MIN_STEPS, 2, 8],
    "GEMV_VEC": [templates.GEMV_VEC, 1],
    "kernel_tile_rows": [GPUBackend.kernel_tile_rows, 1],
    "GEMM_TILE": [templates.GEMM_TILE, (32, 32, 32, 4, 4), (64, 32, 32, 8, 4), (32, 64, 32, 4, 8),
                  (64, 64, 16, 8, 8)],
}
# ... and together: the GEMV of a row's threads on consecutive words, at its tile constants
COMBOS = [
    {"kernel_tile_rows": 1, "GEMV_ROW_TILE": 4},
    {"kernel_tile_rows": 1, "GEMV_VEC": 1},
    {"kernel_tile_rows": 1, "GEMV_VEC": 1, "GEMV_ROW_TILE": 4},
]


def random_blocks(qtype: str, n: int, k: int, rng) -> np.ndarray:
    E, B = block_size(qtype)
    raw = rng.integers(0, 256, (n, k // E, B), dtype=np.uint8)
    for name, off, _, _ in BLOCK_FIELDS[qtype]:
        if name in ("d", "dmin", "m"):
            h = (rng.standard_normal((n, k // E)) * 0.05).astype(np.float16)
            raw[..., off : off + 2] = h.view(np.uint8).reshape(n, k // E, 2)
    return raw.reshape(n, -1)


_BACKENDS: dict = {}
CHECK = False  # --check: each matmul's result against numpy, its error in the table
ERRORS: dict = {}  # (api, qtype, S, N, K) -> the largest error over the largest output
BLOCKS: dict = {}  # a weight's blocks, by name, for the check


def backend_for(api: str, int8: bool):
    """One backend per (api, int8) for the whole run, its weights loaded once: NVIDIA's
    OpenCL has crashed when a second context was made after the first was dropped."""
    key = (api, int8, GPUBackend.kernel_tile_rows)  # (the planes' tile: another upload)
    if key not in _BACKENDS:
        _BACKENDS[key] = backend_class(api)(int8_dot=int8)
    return _BACKENDS[key]


def time_matmul(api: str, qtype: str, S: int, N: int, K: int, reps: int, rng,
                int8: bool = False) -> tuple[float, float | None]:
    """Seconds per launch of the matmul kernel of x (S, K) @ w (N, K)^T (int8: x quantized
    to int8 blocks first, by a kernel not timed: the int8-x GEMV alone): on the host over
    `reps` launches in one submission (bounded below by the API's launch cost), and the
    median of the device's own timestamps of each (None where it gives none)."""
    be = backend_for(api, int8)
    name = f"w_{qtype}_{N}_{K}"
    if not be.has_weight(name):
        blocks = random_blocks(qtype, N, K, rng)
        be.load_raw(name, (N, K), qtype, blocks)
        if CHECK:
            BLOCKS[name] = blocks
    b = GraphBuilder("mm")
    x = b.input("x", (S, K), "f32")
    b.output(b.op("matmul", b.op("quantize_q8", x) if int8 else x,
                  b.weight(name, (N, K), qtype)))
    prog = be.compile(b.finish())
    feeds = {"x": rng.standard_normal((S, K)).astype(np.float32)}
    got = prog.run(feeds)[prog.graph.outputs[0]]  # warm: compiled, bound, first touch
    if CHECK:  # against gguf-py's dequantization of the same blocks, float32 numpy
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        w = dequantize(BLOCKS[name], GGMLQuantizationType[qtype])
        ref = feeds["x"] @ w.T
        ERRORS[(api, qtype, S, N, K)] = float(np.abs(got - ref).max() / np.abs(ref).max())
    writes = prog._writes(feeds)
    timed = prog.launches[-1:]  # the matmul's
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        be.rt.run(timed * reps, writes, [])
        be.rt.sync()
        best = min(best, (time.perf_counter() - t0) / reps)
    timing = be.rt.timed(timed * reps, writes)
    device = float(np.median(timing.seconds)) if timing is not None else None
    return best, device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--apis", default="webgpu,opencl")
    p.add_argument("--types", default="Q4_0,Q8_0")
    p.add_argument("--shapes", default="small", choices=sorted(SHAPES))
    p.add_argument("--rows", default="1,64", help="S values: 1 is decode, more is prefill")
    p.add_argument("--check", action="store_true",
                   help="each result against gguf-py's dequantization and numpy (max error "
                        "over the largest output, a last column)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--x", default="f32", help="x as f32 and/or int8 blocks (S = 1 only): "
                   "f32,int8")
    p.add_argument("--variants", action="store_true",
                   help="every value of each tile constant in VARIANTS, one at a time")
    p.add_argument("--set", default="", metavar="K=V,..",
                   help="constants for the whole run instead (a fresh process per setting: "
                   "NVIDIA's OpenCL has crashed on a second backend in one process)")
    a = p.parse_args()
    global CHECK
    CHECK = a.check
    rng = np.random.default_rng(0)
    try:
        fixed = kernel_constants.parse(kernel_constants.items(a.set))
    except ValueError as e:
        p.error(f"--set: {e}")
    settings: list[tuple[str, dict]] = [(a.set or "default", fixed)]
    if a.variants:
        settings += [(f"{k}={v}", {k: v}) for k, vs in VARIANTS.items() for v in vs[1:]]
        settings += [(",".join(f"{k}={v}" for k, v in c.items()), c) for c in COMBOS]
    print("| api | variant | type | S | N | K | us/launch | device us | weight MB "
          "| GB/s (device) | GFLOP/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for api in a.apis.split(","):
        if not backend_class(api).available():
            print(f"| {api} | (no device) |")
            continue
        for label, setting in settings:
            saved = kernel_constants.apply(setting)
            try:
                for qtype in a.types.split(","):
                    for S in (int(s) for s in a.rows.split(",")):
                        gemv = S <= templates.GEMV_ROWS
                        if setting and a.variants and not any(k.startswith("GEMV") == gemv
                                               or k == "kernel_tile_rows" for k in setting):
                            continue  # the constants do not touch this stage's kernel
                        for N, K in SHAPES[a.shapes]:
                            for xk in a.x.split(","):
                                if xk == "int8" and S != 1:
                                    continue
                                row(api, label, qtype, S, N, K, xk, a.reps, rng)
            finally:
                kernel_constants.apply(saved)


def row(api, label, qtype, S, N, K, xk, reps, rng) -> None:
    t, dev = time_matmul(api, qtype, S, N, K, reps, rng, xk == "int8")
    E, B = block_size(qtype)
    mb = N * K // E * B / 1e6
    td = dev or t
    print(f"| {api} | {label} x {xk} | {qtype} | {S} | {N} | {K} | {t * 1e6:.1f} "
          f"| {dev * 1e6 if dev else float('nan'):.1f} | {mb:.1f} | {mb / 1e3 / td:.1f} "
          f"| {2 * S * N * K / td / 1e9:.1f} |"
          + (f" {ERRORS.get((api, qtype, S, N, K), float('nan')):.2e} |" if CHECK else ""),
          flush=True)


if __name__ == "__main__":
    main()
