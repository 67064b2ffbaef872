"""Where a step's time goes on the GPU, and which tile sizes the matrix kernels want.

    python bench/profile_ops.py MODEL.gguf [--sweep] [--out DIR]

1. Per-op time of one decode step and one 512-token prefill (each launch timed alone with
   CUDA events, eager), summed by op and weight shape, with GB/s and TFLOP/s.
2. Decode step: CUDA-graph replay alone vs a whole Engine.forward (the host's share).
3. --sweep: GEMV (Q4_0 decode) and GEMM (prefill) tile configurations on the model's own
   weights, median of triton.testing.do_bench.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import statistics
import time

import numpy as np
import torch
import triton
from triton.testing import do_bench


def events_time(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) * 1e3)  # us
    return statistics.median(ts)


def per_op(engine, S: int, reps: int) -> list[dict]:
    from drift.ir.ops import cost_of

    prog = engine.program(S)
    g = prog.graph
    feeds = {"tokens": np.arange(S, dtype=np.int32) + 100,
             "positions": np.arange(S, dtype=np.int32)}
    prog.run(feeds)  # compiles (and captures)
    rows = collections.defaultdict(lambda: [0.0, 0, 0, 0])
    for node, step in zip(g.nodes, prog.steps):
        if node.op in ("reshape", "last_row"):
            continue
        us = events_time(step, reps)
        key = node.op
        if node.op == "matmul":
            w = g.tensors[node.inputs[1]]
            key = f"matmul {w.dtype} {w.shape[0]}x{w.shape[1]}"
        c = cost_of(node.op, [g.tensors[i] for i in node.inputs],
                    [g.tensors[o] for o in node.outputs], node.attrs, S)
        r = rows[key]
        r[0] += us
        r[1] += 1
        r[2] += c.bytes
        r[3] += c.flops
    out = []
    total = sum(r[0] for r in rows.values())
    for key, (us, n, nbytes, flops) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
        out.append({"op": key, "calls": n, "us": round(us, 1), "share": round(us / total, 3),
                    "GB/s": round(nbytes / us / 1e3, 1), "TFLOP/s": round(flops / us / 1e6, 2)})
    print(f"-- S={S}: sum of launches {total:.0f} us")
    for r in out[:12]:
        print(f"  {r['op']:<34} x{r['calls']:<4} {r['us']:>9.1f} us {100 * r['share']:5.1f}%  "
              f"{r['GB/s']:>7.1f} GB/s {r['TFLOP/s']:>7.2f} TFLOP/s")
    return out


def sweep(engine) -> dict:
    from drift.backends.triton.matmul import gemm_kernel, gemv_kernel

    W = engine.backend.weights
    res = {"gemv": [], "gemm": []}
    names = ["blk.0.ffn_gate.weight", "blk.0.ffn_down.weight", "blk.0.attn_k.weight"]
    for name in names:
        w = W[name]
        N, K = w.shape
        x = torch.randn(1, K, device="cuda")
        y = torch.empty(1, N, device="cuda")
        q, s, m = w.args()
        best = None
        configs = [(bn, bk, warps, st) for bn in (2, 4, 8) for bk in (512, 1024, 2048)
                   for warps in (2, 4) for st in (1, 3)]
        for bn, bk, warps, st in configs:
            bkk = bk // 2 if w.kind == 1 else bk
            if bkk < w.pair:
                continue
            try:
                fn = functools.partial(gemv_kernel[(triton.cdiv(N, bn),)], x, q, s, m, y, N, K,
                                       *w.strides(), **w.meta(), BN=bn, BK=bkk,
                                       num_warps=warps, num_stages=st)
                us = do_bench(fn, warmup=5, rep=20, return_mode="median") * 1e3
            except Exception as e:  # noqa: BLE001 - a config the compiler refuses: skip it
                print(f"  gemv {name} {bn} {bk} {warps}: {type(e).__name__}")
                continue
            gbs = w.nbytes / us / 1e3
            res["gemv"].append({"w": name, "BN": bn, "BK": bk, "warps": warps, "stages": st,
                                "us": us, "GB/s": gbs})
            if best is None or us < best[0]:
                best = (us, bn, bk, warps, st, gbs)
        print(f"  gemv {name} {N}x{K} {w.qtype}: best {best[0]:.1f} us BN={best[1]} "
              f"BK={best[2]} warps={best[3]} stages={best[4]} -> {best[5]:.0f} GB/s")
    w = W["blk.0.ffn_gate.weight"]
    N, K = w.shape
    M = 512
    x = torch.randn(M, K, device="cuda")
    y = torch.empty(M, N, device="cuda")
    q, s, m = w.args()
    best = None
    for bm, bn, bk, warps, stages in [(128, 256, 64, 8, 3), (128, 256, 32, 8, 4),
                                      (128, 256, 64, 8, 2), (64, 128, 64, 4, 3),
                                      (128, 128, 64, 4, 3)]:
        try:
            fn = functools.partial(gemm_kernel[(triton.cdiv(M, bm), triton.cdiv(N, bn))],
                                   x, q, s, m, y, M, N, K, *w.strides(), **w.meta(), BM=bm,
                                   BN=bn, BK=bk, num_warps=warps, num_stages=stages)
            us = do_bench(fn, warmup=5, rep=30, return_mode="median") * 1e3
        except Exception as e:  # noqa: BLE001 - a config the compiler refuses: skip it
            print(f"  gemm {bm} {bn} {bk} {warps} {stages}: {type(e).__name__}")
            continue
        tf = 2 * M * N * K / us / 1e6
        res["gemm"].append({"BM": bm, "BN": bn, "BK": bk, "warps": warps, "stages": stages,
                            "us": us, "TFLOP/s": tf})
        print(f"  gemm {M}x{N}x{K} BM={bm} BN={bn} BK={bk} w={warps} s={stages}: "
              f"{us:.0f} us {tf:.1f} TFLOP/s")
    xh = x.half()
    wf = torch.randn(N, K, device="cuda", dtype=torch.float16)
    us = do_bench(lambda: xh @ wf.T, warmup=5, rep=30, return_mode="median") * 1e3
    print(f"  cuBLAS fp16 {M}x{N}x{K} (dense, for scale): {us:.0f} us "
          f"{2 * M * N * K / us / 1e6:.1f} TFLOP/s")
    res["cublas_us"] = us
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from drift.backends.triton import TritonBackend
    from drift.runtime.engine import Engine

    eng = Engine(args.model, backend=TritonBackend(), ctx=640)
    report = {"model": args.model, "prefill": per_op(eng, 512, 3)}
    eng.program(1).run({"tokens": np.array([5], np.int32), "positions": np.array([0], np.int32)})
    # host share of a decode step
    prog = eng.program(1)
    replay = events_time(prog.cuda_graph.replay, 50) if prog.cuda_graph else float("nan")
    t0 = time.perf_counter()
    for i in range(50):
        eng.forward([5], i)
    fwd = (time.perf_counter() - t0) / 50 * 1e6
    print(f"-- decode: graph replay {replay:.0f} us, Engine.forward {fwd:.0f} us")
    report["replay_us"], report["forward_us"] = replay, fwd
    if args.sweep:
        report["sweep"] = sweep(eng)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
