"""Decode GEMV and prefill GEMM variants on the GPU, on random planes of the 8B shapes.

    python bench/sweep_kernels.py [--out tuned.json] [--quick]

Prints a table per shape (median over CUDA-graph replays, weights rotated among enough
copies that L2 never holds them) and writes the best configuration per (kernel, kind, N, K)
as JSON: drift/backends/triton/tuned/<device>.json is this file, read by `Tuning`.

Predictions (H100, 3.0 TB/s copy): a GEMV's floor is its plane bytes / 3.0 TB/s, e.g. Q4_0
28672 x 4096 (stacked gate+up) 66 MB -> 22 us; a prefill GEMM's floor is 2MNK / ~680 TFLOP/s,
e.g. 512 x 14336 x 4096 -> 89 us, plus for the dequantized variant 0.56+2 B per weight / 3.0
TB/s (14336 x 4096: 49 us).
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace

import torch

from drift.backends.triton import launch
from drift.backends.triton.device import read_device, tune
from drift.backends.triton.weights import QWeight

L2_ROTATE_BYTES = 400 * 2**20


def random_weight(kind: str, N: int, K: int, gen) -> QWeight:
    dev = "cuda"
    s = (torch.rand(N, K // 32, device=dev, generator=gen) * 0.02 + 0.001).half()
    if kind == "Q4_0":
        q = torch.randint(0, 256, (N, K // 2), device=dev, dtype=torch.uint8, generator=gen)
        return QWeight((N, K), 1, q, s, None, 32, 16, 8, "Q4_0")
    q = torch.randint(-127, 128, (N, K), device=dev, dtype=torch.int8, generator=gen)
    return QWeight((N, K), 2, q, s, None, 32, 16, 0, "Q8_0")


def w_bytes(kind: str, N: int, K: int) -> int:
    return N * K * (18 if kind == "Q4_0" else 34) // 32


def graph_time(fn_list, reps: int = 20) -> float:
    """Seconds per call: the calls captured in one CUDA graph, replayed, median of reps."""
    for f in fn_list:
        f()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in fn_list:
            f()
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3 / len(fn_list))
    return statistics.median(ts)


def sweep_gemv(tu, kind, N, K, gen, configs, rows):
    copies = []
    one = None
    while True:
        w = random_weight(kind, N, K, gen)
        one = w.nbytes
        copies.append(w)
        if len(copies) * one >= L2_ROTATE_BYTES or len(copies) >= 64:
            break
    x = torch.randn(1, K, device="cuda")
    out = torch.empty(1, N, device="cuda")
    qx = launch.QuantizedX(K, "cuda")
    floor = one / 3.0e12
    res = []

    def rec(name, cfg, fns):
        try:
            t = graph_time(fns)
        except Exception as e:  # noqa: BLE001  a config that does not compile (shared memory)
            print(f"  {kind} {N}x{K} {name} {cfg}: {type(e).__name__}")
            return
        res.append((t, name, cfg))
        rows.append({"kernel": name, "kind": kind, "N": N, "K": K, "cfg": cfg, "us": t * 1e6,
                     "GBps": one / t / 1e9, "floor_us": floor * 1e6})

    # reference: the float GEMV as shipped, and cuBLAS fp16 GEMV over the same N x K
    rec("float_gemv", [tu.gemv_rows(N), tu.gemv_bk, tu.gemv_warps_for(K)],
        [lambda w=w: launch.matmul(x, w, out, tu) for w in copies])
    for cfg in configs:
        bn, bw, warps, stages, x2 = cfg
        t2 = replace(tu, qgemv_bn=bn, qgemv_bw=bw, qgemv_warps=warps, qgemv_stages=stages,
                     x2=x2)
        cfg = (*t2.qgemv(N, K), x2)  # as the launcher runs it (fewer rows where N is small)
        rec("int_gemv", list(cfg), [lambda w=w, t2=t2: launch.gemv_q8x(qx, w, out, t2)
                                    for w in copies])
    rec("quantize_x", [tu.qx_blocks], [lambda: launch.quantize_x(x, qx, tu)] * 8)
    return res


def sweep_gemm(tu, kind, M, N, K, gen, rows):
    w = random_weight(kind, N, K, gen)
    x = torch.randn(M, K, device="cuda")
    out = torch.empty(M, N, device="cuda")
    scratch = torch.empty(N * K, dtype=torch.float16, device="cuda")
    flops = 2 * M * N * K
    res = []

    def rec(name, cfg, fns):
        try:
            t = graph_time(fns, reps=10)
        except Exception as e:  # noqa: BLE001  as above
            print(f"  gemm {kind} {M}x{N}x{K} {name} {cfg}: {type(e).__name__}: {str(e)[:80]}")
            return
        res.append((t, name, cfg))
        rows.append({"kernel": name, "kind": kind, "M": M, "N": N, "K": K, "cfg": cfg,
                     "us": t * 1e6, "TFLOPs": flops / t / 1e12})

    rec("inreg_gemm", list(tu.gemm_tiles(M, N)),
        [lambda: launch.matmul(x, w, out, tu)] * 4)
    for dbn, dbb in ((16, 256), (8, 512), (32, 256), (16, 512), (64, 128), (4, 1024)):
        t2 = replace(tu, dequant_bn=dbn, dequant_bb=dbb)
        rec("dequant", [dbn, dbb], [lambda t2=t2: launch.dequant(w, scratch, t2)] * 4)
    for cfg in [(128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (128, 128, 64, 4, 4),
                (128, 128, 32, 4, 4), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4),
                (64, 256, 64, 8, 3)]:
        bm, bn, bk, wp, st = cfg
        t2 = replace(tu, dense_min_m=1, dense_bm=bm, dense_bn=bn, dense_bk=bk, dense_warps=wp,
                     dense_stages=st)
        rec("dequant_dense", list(cfg), [lambda t2=t2: launch.matmul(x, w, out, t2, scratch)] * 4)
    xh = x.half()
    wd = launch.dequant(w, scratch, tu)
    rec("cublas_fp16", [], [lambda: torch.matmul(xh, wd.t())] * 4)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="sweep.json")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    _, info = read_device()
    tu = replace(tune(info), table={})  # measure the configurations asked for, not the table
    gen = torch.Generator(device="cuda")
    gen.manual_seed(0)
    rows: list[dict] = []
    best: dict[str, list] = {}
    configs = [(bn, bw, wp, 1, True) for bn, bw, wp in (
        (4, 64, 2), (4, 128, 2), (4, 128, 4), (4, 256, 4), (8, 64, 2), (8, 64, 4), (8, 128, 4),
        (8, 128, 8), (8, 256, 8), (16, 64, 4), (16, 128, 4), (16, 128, 8), (2, 128, 2),
        (2, 256, 4), (4, 512, 4), (4, 512, 8), (2, 512, 4), (8, 512, 8))]
    shapes = [("Q4_0", 28672, 4096), ("Q4_0", 4096, 14336), ("Q4_0", 6144, 4096),
              ("Q4_0", 4096, 4096), ("Q4_0", 128256, 4096), ("Q8_0", 28672, 4096),
              ("Q8_0", 4096, 14336), ("Q8_0", 6144, 4096), ("Q8_0", 4096, 4096),
              ("Q4_0", 3072, 2048), ("Q4_0", 16384, 2048), ("Q4_0", 2048, 8192),
              ("Q4_0", 2048, 2048), ("Q4_0", 128256, 2048)]
    if args.quick:
        configs = configs[:4]
        shapes = shapes[:2]
    print("== decode GEMV (us, GB/s of the plane bytes; floor at 3.0 TB/s)")
    for kind, N, K in shapes:
        res = sweep_gemv(tu, kind, N, K, gen, configs, rows)
        ints = sorted(r for r in res if r[1] == "int_gemv")
        if ints:  # the best with deeper pipelines and with one x level
            bn, bw, wp, _, _ = ints[0][2]
            more = [(bn, bw, wp, 2, True), (bn, bw, wp, 3, True), (bn, bw, wp, 1, False)]
            res += sweep_gemv(tu, kind, N, K, gen, more, rows)
            ints = sorted(r for r in res if r[1] == "int_gemv" and r[2][4])
            best[f"qgemv {kind} {N} {K}"] = ints[0][2][:4]
        for r in [x for x in rows if x.get("N") == N and x.get("K") == K and "M" not in x
                  and x["kind"] == kind]:
            pass
        fl = [x for x in rows if x.get("N") == N and x.get("K") == K and "M" not in x
              and x["kind"] == kind]
        bi = min((x for x in fl if x["kernel"] == "int_gemv" and x["cfg"][4]),
                 key=lambda x: x["us"], default=None)
        f0 = next((x for x in fl if x["kernel"] == "float_gemv"), None)
        if bi is None or f0 is None:
            print(f"{kind} {N}x{K}: no result")
            continue
        x1 = [x for x in fl if x["kernel"] == "int_gemv" and not x["cfg"][4]]
        print(f"{kind} {N:>6}x{K:<5} floor {fl[0]['floor_us']:7.1f} us | float "
              f"{f0['us']:7.1f} us {f0['GBps']:5.0f} GB/s | int8x2 best {bi['us']:7.1f} us "
              f"{bi['GBps']:5.0f} GB/s {bi['cfg']}"
              + (f" | x1 {x1[0]['us']:.1f} us" if x1 else ""), flush=True)
    print("== prefill GEMM, M = 512 (us, TFLOP/s)")
    gshapes = [("Q4_0", 14336, 4096), ("Q4_0", 4096, 14336), ("Q4_0", 4096, 4096),
               ("Q4_0", 1024, 4096), ("Q8_0", 14336, 4096)]
    if args.quick:
        gshapes = gshapes[:1]
    for kind, N, K in gshapes:
        res = sweep_gemm(tu, kind, 512, N, K, gen, rows)
        d = sorted(r for r in res if r[1] == "dequant_dense")
        if d:
            best[f"dense {kind} {N} {K}"] = d[0][2]
        line = " | ".join(f"{name} {t * 1e6:.1f} us {2 * 512 * N * K / t / 1e12:.0f}"
                          for t, name, cfg in sorted(res)
                          if name not in ("dequant_dense", "dequant"))
        dqs = sorted(r for r in res if r[1] == "dequant")
        dq = dqs[0][0] if dqs else 0
        if dqs:
            best[f"dequant {kind} {N} {K}"] = dqs[0][2]
            line += f" | dequant best {dq * 1e6:.1f} us {dqs[0][2]} ({(N * K * 2 + w_bytes(kind, N, K)) / dq / 1e9:.0f} GB/s)"
        if d:
            line += f" | best dequant+dense {d[0][0] * 1e6:.1f} us {d[0][2]} (dequant {dq * 1e6:.1f} us)"
        print(f"{kind} {N}x{K}: {line}", flush=True)
    with open(args.out, "w") as f:
        json.dump({"device": info.name, "best": best, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
