"""Why is the int8 GEMM slow? Per tile configuration and scale layout (ST: scales stored
(K/32, N) so a block's scale vector is one contiguous load), time at M = 512 and the
compiled kernel's registers, spills and PTX instruction mix per K loop.

    python bench/int8_diag.py [--out diag.json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from int8_prefill import exact_weight, graph_time, random_weight  # noqa: E402

from drift.backends.triton import launch  # noqa: E402
from drift.backends.triton.device import read_device, tune  # noqa: E402

CFGS = [(64, 128, 64, 4, 4, 8), (128, 128, 64, 8, 3, 8), (64, 128, 32, 4, 4, 8),
        (64, 64, 64, 4, 4, 8), (64, 256, 64, 8, 3, 8), (128, 64, 32, 4, 4, 8)]
OPS = ["wgmma.mma_async", "mma.sync", "ld.global", "ld.shared", "st.shared", "ldmatrix",
       "cp.async", "cvt.", "fma.rn.f32", "add.s32", "bar.sync", "ld.local", "st.local"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="diag.json")
    args = ap.parse_args()
    _, info = read_device()
    tu = tune(info)
    gen = torch.Generator(device="cuda")
    gen.manual_seed(1)
    M, rows = 512, []
    for kind, N, K in (("Q8_0", 14336, 4096), ("Q4_0", 14336, 4096), ("Q8_0", 4096, 14336)):
        w = random_weight(kind, N, K, gen)
        x = torch.randn(M, K, device="cuda", generator=gen)
        ref = x.double() @ exact_weight(w, N, K).T
        out = torch.empty(M, N, device="cuda")
        scratch = torch.empty(N * K, dtype=torch.float16, device="cuda")
        for unpack in ((False, True) if kind == "Q4_0" else (False,)):
            for st in (False, True):
                t2 = replace(tu, i8_scales_t=st)
                for cfg in CFGS:
                    name = f"{kind} {N}x{K} {'i8s' if unpack else 'i8'} st={int(st)} {cfg}"
                    try:
                        def fn(cfg=cfg, t2=t2, unpack=unpack):
                            launch.matmul_i8(x, w, out, t2, scratch, unpack, cfg)
                        fn()
                        torch.cuda.synchronize()
                        h = launch.LAST_I8
                        err = float((out.double() - ref).norm() / ref.norm())
                        t = graph_time([fn] * 4)
                    except Exception as e:  # noqa: BLE001
                        print(f"{name}: {type(e).__name__}: {str(e)[:100]}", flush=True)
                        continue
                    ptx = h.asm.get("ptx", "")
                    mix = {op: len(re.findall(re.escape(op), ptx)) for op in OPS}
                    row = {"name": name, "us": t * 1e6, "TOPs": 2 * M * N * K / t / 1e12,
                           "err": err, "n_regs": h.n_regs, "n_spills": h.n_spills,
                           "shared": h.metadata.shared, "ptx": mix}
                    rows.append(row)
                    print(f"{name}: {t * 1e6:7.1f} us {row['TOPs']:4.0f} TOP/s err {err:.1e} "
                          f"regs {h.n_regs} spills {h.n_spills} smem {h.metadata.shared} "
                          f"ptx {' '.join(f'{k}={v}' for k, v in mix.items() if v)}",
                          flush=True)
                    if cfg == CFGS[0] and not unpack:
                        Path(args.out).with_suffix(f".{kind}.st{int(st)}.ptx").write_text(ptx)
        torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
