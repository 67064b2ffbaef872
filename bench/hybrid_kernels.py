"""The hybrid CPU kernels alone (drift/backends/cpu/kernels.c), on this machine's memory: one
decode token through the cold FFNs of `--layers` layers of Llama-3.1-8B shapes (D 4096, F'
cold neurons, Q4_0 gate/up, Q8_0 transposed down), layers visited in turn as a decode does, so
the weights stream from DRAM, not from cache.

    python bench/hybrid_kernels.py [--layers 32] [--cold 9000] [--sparsity 0 0.7 0.9] [--gate-given]
    OMP_NUM_THREADS=8 python bench/hybrid_kernels.py ...     (threads: OpenMP's)
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    from gguf import GGMLQuantizationType as Q

    from drift.backends.cpu.native import ColdFFN, RowPlanes, library
    from drift.formats import quants

    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--cold", type=int, default=9000, help="cold neurons per layer")
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--sparsity", type=float, nargs="*", default=[0.0, 0.7, 0.9])
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--gate-given", action="store_true",
                    help="the gate computed elsewhere (the GPU): the CPU reads up and down only")
    ap.add_argument("--layout", choices=("records", "planes"), default="records",
                    help="a neuron's up and down rows in one record (the default), or planes")
    ap.add_argument("--prefetch", nargs="*", default=[None], metavar="ROWS,LEVEL",
                    help="the skipping loops' prefetch settings to time in turn (as "
                         "DRIFT_CPU_PREFETCH; default: the kernels' own)")
    ap.add_argument("--same-x", action="store_true",
                    help="every token the same x (the same active rows: a warm cache)")
    a = ap.parse_args()
    lib = library()
    assert lib is not None, "the C kernels did not build"
    rng = np.random.default_rng(0)
    D, F = a.dim, a.cold
    base = rng.standard_normal((F, D)).astype(np.float32) * 0.02
    raw4, raw8 = quants.quantize(base, Q.Q4_0), quants.quantize(base, Q.Q8_0)
    layers = []
    for _ in range(a.layers):  # distinct copies: each layer's bytes come from DRAM
        g = RowPlanes.from_blocks(raw4.copy(), "Q4_0", (F, D))
        u = RowPlanes.from_blocks(raw4[::-1].copy(), "Q4_0", (F, D))
        d = RowPlanes.from_blocks(raw8.copy(), "Q8_0", (F, D))
        layers.append(ColdFFN(None if a.gate_given else g, u, d, "swiglu", 0.0,
                              records=a.layout == "records"))
    # a fresh x per token (another set of active rows each time, as in decoding), or one
    xs = rng.standard_normal((1 if a.same_x else a.tokens + 1, D)).astype(np.float32)
    gates = xs @ base.T
    act = np.abs(gates[0] / (1 + np.exp(-gates[0])))
    print(f"threads {lib.n_threads()}; {a.layers} layers x {F} cold neurons, "
          f"{sum(f.nbytes for f in layers) / 1e9:.2f} GB of planes, layout {a.layout}, "
          f"{'the same x' if a.same_x else 'a fresh x'} each token")
    for setting in a.prefetch:
        if setting is not None:
            rows, level = (int(v) for v in setting.split(","))
            lib.set_prefetch(rows, level)
            print(f"prefetch {rows} rows ahead, level {level}")
        measure(a, layers, xs, gates, act, F)


def measure(a, layers, xs, gates, act, F) -> None:
    for s in a.sparsity:
        thr = float(np.quantile(act, s)) if s > 0 else 0.0
        for f in layers:
            f.threshold = thr
        ts = []
        for i in range(a.tokens + 1):
            x = xs[i % len(xs)][None]
            g_in = gates[i % len(xs)][None] if a.gate_given else None
            t0 = time.perf_counter()
            for f in layers:
                f(x, g_in)
            ts.append(time.perf_counter() - t0)
        t = float(np.median(ts[1:]))
        kept = layers[0].last_active / F
        nbytes = sum((0 if f.gate is None else f.gate.nbytes)
                     + kept * (f.up.nbytes + f.down.nbytes) for f in layers)
        print(f"sparsity {s:.1f}: {t * 1e3:7.2f} ms per token, {1e3 * t / a.layers:.3f} ms per "
              f"layer, {kept:.1%} kept, {nbytes / 1e9:.3f} GB read, {nbytes / t / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
