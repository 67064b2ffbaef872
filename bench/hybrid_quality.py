"""Dense against hybrid perplexity on a real model (issue 10's quality target: at most 1 %
worse than dense), at GPU budgets of 25 / 50 / 75 % of the FFN bytes and CPU sparsities.

    python bench/hybrid_quality.py MODEL [--tokens 3000] [--ctx 512] [--sparsity 0.5 0.7 0.9]
        [--placement gates-first cpu-gate]

Calibrates on the first --cal-tokens tokens of Python's pydoc topics (drift calibrate's
default text) and scores a held-out stretch of the same text after them. The split runs on
the numpy backend (ffn_cold through its reference: the plan's numerics, Q8_0 down and the
thresholds, without a GPU); placement by the MILP on the calibration's activation frequency
at the sparsity (mean |act(gate) * up| when dense).
"""

from __future__ import annotations

import argparse
import time

from drift.backends.cpu import CPUBackend
from drift.hybrid.backend import (
    ACTIVATION_MARGIN,
    HybridBackend,
    ffn_bytes,
    fixed_gpu_bytes,
    plan_for_budget,
)
from drift.hybrid.calibrate import ActivationEngine, calibrate, default_text
from drift.runtime.engine import Engine
from drift.runtime.perplexity import perplexity
from drift.tokenizer import Tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=3000, help="scored tokens")
    ap.add_argument("--cal-tokens", type=int, default=2048)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--budgets", type=float, nargs="*", default=[0.25, 0.5, 0.75])
    ap.add_argument("--sparsity", type=float, nargs="*", default=[0.0, 0.5, 0.7, 0.9])
    ap.add_argument("--predictor", type=int, nargs="*", default=[0],
                    help="gate predictor ranks (0: none); with one, the cold FFN runs on the "
                         "compiled CPU kernels, which count the gate rows read and the recall")
    ap.add_argument("--placement", nargs="*", default=["gates-first"],
                    choices=["gates-first", "cpu-gate"],
                    help="the budget buys every gate first (--offload neurons, the default) or "
                         "hot neurons only (--offload neurons-cpu-gate)")
    a = ap.parse_args()
    dense = Engine(a.model, device="cpu", ctx=a.ctx)
    tok = Tokenizer.from_gguf(dense.file.metadata)
    ids = tok.encode(default_text(), add_bos=False, parse_special=False)
    cal_ids, held = ids[: a.cal_tokens], ids[a.cal_tokens + 512 : a.cal_tokens + 512 + a.tokens]
    t0 = time.perf_counter()
    cal = calibrate(ActivationEngine(a.model, device="cpu", ctx=a.ctx), cal_ids, a.cal_tokens,
                    a.ctx, tok.bos_id if tok.add_bos else None)
    print(f"{dense.path.name}: calibrated on {cal.n_tokens} tokens in "
          f"{time.perf_counter() - t0:.0f} s; scoring {len(held)} held-out tokens, ctx {a.ctx}")
    stride = a.ctx // 2
    base = perplexity(dense, held, a.ctx, stride).perplexity
    print("| budget (of FFN bytes) | placement | sparsity | predictor rank | GPU neurons | "
          "gates on the GPU | cold gate rows read | recall | perplexity | vs dense |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| dense | - | - | - | 100% | - | - | - | {base:.4f} | - |")
    cfg, f = dense.config, dense.file
    fixed = fixed_gpu_bytes(f, cfg, a.ctx, "f32") + ACTIVATION_MARGIN
    runs = [(b, place, s, rank) for b in a.budgets for place in a.placement
            for s in a.sparsity for rank in (a.predictor if s else [0])
            if not (rank and place == "gates-first")]  # the predictor stands in for CPU gates
    for b, place, s, rank in runs:
        plan = plan_for_budget(f, cfg, fixed + int(b * ffn_bytes(f)), a.ctx, "f32",
                               cal, s or None, predictor=rank,
                               gates_first=place == "gates-first")
        backend = HybridBackend(CPUBackend(), plan, cpu_kernels=bool(rank))
        e = Engine(a.model, ctx=a.ctx, backend=backend)
        ppl = perplexity(e, held, a.ctx, stride).perplexity
        share = sum(plan.n_gpu) / (cfg.d_ff * cfg.n_layers)
        stats = backend.predictor_stats() if rank else None
        read, recall = (f"{stats[0]:.1%}", f"{stats[1]:.1%}") if stats else ("100%", "-")
        gates = sum(plan.gate_on_gpu(l) for l in range(plan.n_layers))
        if gates:  # the GPU computes those layers' gates: nothing for the CPU to read
            read, recall = f"{1 - gates / plan.n_layers:.0%} of layers", "100%"
        print(f"| {b:.0%} | {place} | {s:.1f} | {rank or '-'} | {share:.1%} | "
              f"{gates}/{plan.n_layers} | {read} | {recall} | {ppl:.4f} | "
              f"{100 * (ppl / base - 1):+.2f}% |", flush=True)


if __name__ == "__main__":
    main()
