"""Decode attention alone on the portable GPU backends: the one-workgroup kernel against
split-K (issue 9).

A program of one attention node (S query rows at positions pos .. pos + S - 1 over a cache of
`--ctx` rows, filled with random keys and values; Llama-3.1-8B's heads by default) is timed
for each variant `G/T`: split-K aiming at G workgroups with tiles of T keys
(`templates.ATTN_SPLIT_GROUPS`, `ATTN_SPLIT_TILE`), G = 0 the one-workgroup kernel. Each
variant is checked against numpy first; then, per position, the device time of its launches
(timestamps, median over `--reps` calls) and the wall time of a call (output read back).

    python bench/gpuapi_attention.py --device opencl --ctx 4096 --pos 392,1024,4000
    python bench/gpuapi_attention.py --device webgpu --heads 32 --kv-heads 8 --head-dim 64
    python bench/gpuapi_attention.py --device opencl --set ATTN_RUN_LANES=1 --variants 1024/64

`--set` fixes kernel constants for the run (`kernel_constants.py`), one setting a process:
ATTN_RUN_LANES=1 is the split kernel of one key a thread, else the split by runs of that many
lanes a key (`templates._attend_runs`; ATTN_RUN_WG, ATTN_RUN_KEYS its workgroup and its keys
a step).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import kernel_constants  # (bench/, the script's folder)
from drift.backends import backend_class
from drift.backends.kernels import templates
from drift.ir import REGISTRY, GraphBuilder


def graph(S, H, Hkv, Dh, C, window):
    b = GraphBuilder("attention")
    q, pos = b.input("q", (S, H, Dh), "f32"), b.input("pos", (S,), "i32")
    kc, vc = b.state("kc", (C, Hkv, Dh), "f32"), b.state("vc", (C, Hkv, Dh), "f32")
    b.output(b.op("attention", q, kc, vc, pos, scale=Dh ** -0.5, window=window))
    return b.finish()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", required=True, choices=("webgpu", "opencl"))
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--rows", type=int, default=1, help="query rows S (decode: 1)")
    p.add_argument("--ctx", type=int, default=4096, help="cache rows")
    p.add_argument("--pos", default="392,4000", help="positions of the first row, commas")
    p.add_argument("--window", type=int, default=0)
    p.add_argument("--variants", default="0/0,1024/64,512/64,2048/64,1024/32,1024/128",
                   help="G/T pairs: split-K over G workgroups, tiles of T keys; 0/0: one "
                        "workgroup per (query, head)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--set", default="", metavar="K=V,..", help="kernel constants for the run")
    a = p.parse_args()
    try:
        fixed = kernel_constants.parse(kernel_constants.items(a.set))
    except ValueError as e:
        p.error(f"--set: {e}")
    kernel_constants.apply(fixed)

    S, H, Hkv, Dh, C = a.rows, a.heads, a.kv_heads, a.head_dim, a.ctx
    positions = [min(int(x), C - S) for x in a.pos.split(",")]
    be = backend_class(a.device)()
    print(f"# {be.device().describe()}: S={S} H={H} Hkv={Hkv} D={Dh} cache={C} "
          f"window={a.window} {a.set}")
    rng = np.random.default_rng(0)
    cache = {n: rng.standard_normal((C, Hkv, Dh)).astype(np.float32) for n in ("kc", "vc")}
    attrs = {"scale": Dh ** -0.5, "window": a.window}
    defaults = templates.ATTN_SPLIT_GROUPS, templates.ATTN_SPLIT_TILE
    print("| variant | splits | launches | pos | device us | wall us |")
    print("| --- | --- | --- | --- | --- | --- |")
    for variant in a.variants.split(","):
        groups, tile = (int(x) for x in variant.split("/"))
        templates.ATTN_SPLIT_GROUPS = groups
        templates.ATTN_SPLIT_TILE = tile or defaults[1]
        try:
            g = graph(S, H, Hkv, Dh, C, a.window)
            prog = be.compile(g)
            node = next(n for n in g.nodes if n.op == "attention")
            splits = templates.attention_splits(node, (S, H, Dh), (C, Hkv, Dh))
        finally:
            templates.ATTN_SPLIT_GROUPS, templates.ATTN_SPLIT_TILE = defaults
        for name, data in cache.items():  # the cache as if a prompt had filled it
            be.rt.write(be.state[name][1], 0, data.view(np.uint8).reshape(-1))
        label = "one workgroup" if splits == 1 else f"split {groups}/{tile}"
        for at in positions:
            feeds = {"q": rng.standard_normal((S, H, Dh)).astype(np.float32),
                     "pos": np.arange(at, at + S, dtype=np.int32)}
            want = REGISTRY["attention"].reference(
                [feeds["q"], cache["kc"], cache["vc"], feeds["pos"]], attrs)[0]
            got = prog.run(feeds)[g.outputs[0]]
            err = float(np.abs(got - want).max())
            assert err < 1e-3, f"{label} at {at}: off by {err}"
            walls = []
            for _ in range(a.reps):
                t0 = time.perf_counter()
                prog.run(feeds)
                walls.append(time.perf_counter() - t0)
            timings = [prog.timed(feeds) for _ in range(a.reps)]
            dev = (f"{statistics.median(sum(t.seconds) for t in timings) * 1e6:.1f}"
                   if timings[0] is not None else "n/a")
            print(f"| {label} | {splits} | {len(prog.launches)} | {at} | {dev} "
                  f"| {statistics.median(walls) * 1e6:.1f} |")


if __name__ == "__main__":
    main()
