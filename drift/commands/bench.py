"""`drift bench`: llama-bench's prefill and decode speeds, with MBU, MFU and memory; and
`drift make-random`: a GGUF with a published model's shapes and random weights.

    drift make-random llama-3.1-8b Q4_0 llama8b-q4_0.gguf
    drift bench llama8b-q4_0.gguf -p 512 -n 128 -r 5

pp<p> is one call over p prompt tokens from an empty cache; tg<n> is n single-token calls
from an empty cache (as llama-bench measures them), each returning its logits to the host.
MBU = bytes a decode step must move (the op registry's costs: weights once, the KV cache
read, activations) / time per token / the device's copy bandwidth. MFU = prefill FLOPs
(registry) / time / the device's dense matmul rate. Both ceilings are `drift probe`'s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from drift.commands._common import add_hybrid_arguments, engine_options
from drift.errors import InvalidArgumentError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure prefill and decode speed (llama-bench style)")
    p.add_argument("model", help="a .gguf path or a short model name")
    p.add_argument("-p", "--n-prompt", type=int, default=512, help="prompt tokens (pp)")
    p.add_argument("-n", "--n-gen", type=int, default=128, help="generated tokens (tg)")
    p.add_argument("-r", "--repetitions", type=int, default=5)
    p.add_argument("--device", default="auto", help="backend: cpu, cuda (triton), ...")
    add_hybrid_arguments(p)
    p.add_argument("--sample", action="store_true",
                   help="tg draws its tokens as `drift run` does by default (temperature 0.8, "
                        "top-k 40, top-p 0.95, min-p 0.05; seed 0), not greedy")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--no-ceilings", action="store_true",
                   help="no MBU/MFU (and no probe of the device's ceilings)")
    p.set_defaults(func=run_bench)

    m = sub.add_parser("make-random",
                       help="write a GGUF with a published model's shapes and random weights")
    m.add_argument("arch", help="model shape: llama-3.2-1b, llama-3.1-8b, ... (drift.models.presets)")
    m.add_argument("quant", help="weight type: Q4_0, Q8_0, Q4_K, Q6_K, F16, ...")
    m.add_argument("out", help="the .gguf file to write")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--workers", type=int, default=None, help="processes (default: CPUs, <= 16)")
    m.set_defaults(func=run_make_random)


# ---------------------------------------------------------------------------------------------
# make-random


def run_make_random(args: argparse.Namespace) -> int:
    from drift.formats.writer import write_random
    from drift.models.presets import preset

    t0 = time.perf_counter()

    def progress(name: str, i: int, n: int) -> None:
        if sys.stderr.isatty() or i == n or i % 50 == 0:
            print(f"\r{i}/{n} tensors ({name})".ljust(70), end="", file=sys.stderr, flush=True)

    path = write_random(preset(args.arch), args.quant, args.out, seed=args.seed,
                        workers=args.workers, progress=progress)
    size = path.stat().st_size
    print(file=sys.stderr)
    print(f"wrote {path} ({size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
    return 0


# ---------------------------------------------------------------------------------------------
# bench


def graph_cost(graph, kv_len: int) -> tuple[int, int]:
    """(FLOPs, bytes moved) of one call of `graph`, from the op registry."""
    from drift.ir.ops import cost_of

    flops = nbytes = 0
    for n in graph.nodes:
        ins = [graph.tensors[i] for i in n.inputs]
        outs = [graph.tensors[o] for o in n.outputs]
        c = cost_of(n.op, ins, outs, n.attrs, kv_len)
        flops += c.flops
        nbytes += c.bytes
    return flops, nbytes


def measure_ceilings(backend) -> dict:
    """The device's copy bandwidth (bytes read + written per second) and dense matmul rate
    (fp16 on a GPU, f32 on the CPU), as `drift probe` measured them on this machine; the
    first bench without a saved probe runs a quick one and saves it."""
    from drift.analysis.probe import saved_or_quick_probe

    probe, note = saved_or_quick_probe(backend.name)
    if note:
        print(f"note: {note}", file=sys.stderr)
    dtype = "f16" if probe.backend == "cuda" else "f32"
    return {"bandwidth": probe.copy_gbs * 1e9, "flops": probe.matmul_tflops[dtype] * 1e12,
            "flops_dtype": dtype, "probe": f"{probe.device_name}, {probe.when}"}


def _stats(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "median": statistics.median(xs), "samples": xs}


def memory_report(engine) -> dict:
    """What the backend holds, as allocated: weights in its kernels' layouts (a dequantized
    copy at its float size), KV cache, the largest program's arena, kernel workspaces."""
    held = engine.backend.held_bytes()
    return {"weights": held.weights, "kv_cache": held.state, "arena": held.arena,
            "scratch": held.scratch}


def stage_graph(engine, n_tokens: int):
    """The graph a call of n_tokens runs on this backend (after its passes), with each weight
    in the type the backend holds it in: what the kernels really read and compute."""
    from drift.analysis.cost import retype

    graph = engine.program(n_tokens).graph
    held = engine.backend.stored_dtypes()
    stored = {t.name: held[t.name] for t in graph.tensors.values()
              if t.name in held and held[t.name] != t.dtype}
    return retype(graph, stored) if stored else graph


def _tflops(x: float) -> str:
    return f"{x / 1e12:.1f}" if x >= 1e12 else f"{x / 1e12:.3f}"


def decode_loop(engine, config) -> str:
    """How the tg test's tokens are drawn (`generate_tokens`'s path on this backend)."""
    from drift.runtime.generate import decodes_ahead

    what = "argmax" if config.greedy else f"top-{config.top_k} sampling"
    pick = engine.backend.sampler(config)
    if pick is None:
        return f"logits to the host, {what} there"
    if decodes_ahead(engine, pick):
        return f"{what} on the device, each step queued before the last token is read"
    return f"{what} on the device, its token read back each step"


def bench_sampling(args: argparse.Namespace):
    """The tg test's sampler: greedy, or with --sample `drift run`'s defaults, seeded."""
    from drift.runtime.sampler import GREEDY, SamplerConfig

    return SamplerConfig(seed=0) if args.sample else GREEDY


def run_bench(args: argparse.Namespace) -> int:
    from drift.hub import resolve_model
    from drift.hybrid.backend import HybridBackend
    from drift.runtime.engine import Engine
    from drift.runtime.generate import generate_tokens
    from drift.runtime.sampler import Sampler

    p, n, reps = args.n_prompt, args.n_gen, args.repetitions
    if p < 1 or n < 1 or reps < 1:
        raise InvalidArgumentError("-p, -n and -r must be >= 1")
    path = resolve_model(args.model)
    t0 = time.perf_counter()
    engine = Engine(path, device=args.device, ctx=max(p, n) + 1, **engine_options(args))
    load_s = time.perf_counter() - t0
    cfg, sampling = engine.config, bench_sampling(args)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, cfg.vocab_size, p).tolist()

    def prefill() -> float:
        engine.reset()
        t = time.perf_counter()
        engine.forward(prompt, 0)
        return time.perf_counter() - t

    def generate(tokens: int = n) -> float:
        """n tokens (greedy, or sampled with --sample) from a one-token prompt (n calls of
        the model) through the loop `drift run` decodes with: the device's sampler where
        the backend has one (the token id comes back, not the logits), each step queued
        ahead where it can be."""
        engine.reset()
        t = time.perf_counter()
        got = sum(1 for _ in generate_tokens(engine, [int(prompt[0])], Sampler(sampling),
                                             tokens))
        assert got == tokens, "decode stopped early"
        return time.perf_counter() - t

    # warm-up: compiles both programs and the sampler's kernels (and captures the CUDA graphs)
    t_w = time.perf_counter()
    prefill()
    generate(3)
    warm_s = time.perf_counter() - t_w
    pp = [p / prefill() for _ in range(reps)]
    hybrid = engine.backend if isinstance(engine.backend, HybridBackend) else None
    cold_s = hybrid.cold_seconds if hybrid is not None else 0.0
    tg = [n / generate() for _ in range(reps)]
    if hybrid is not None:  # the CPU kernels' share of decode
        cold_ms_per_token = (hybrid.cold_seconds - cold_s) * 1e3 / (n * reps)

    pf_flops, pf_bytes = graph_cost(stage_graph(engine, p), p)
    dc_flops, dc_bytes = graph_cost(stage_graph(engine, 1), n // 2)  # the middle of the run
    memory = memory_report(engine)  # before the ceilings allocate their own buffers
    ceilings = None if args.no_ceilings else measure_ceilings(engine.backend)
    info = engine.backend.device()
    res = {
        "model": str(path.name), "arch": cfg.arch, "file_bytes": path.stat().st_size,
        "device": info.describe(), "backend": engine.backend.name,
        "kernel_table": info.extra.get("kernel_table"),
        "n_prompt": p, "n_gen": n, "repetitions": reps,
        "decode_loop": decode_loop(engine, sampling), "sampled": args.sample,
        "load_s": load_s, "warmup_s": warm_s,
        f"pp{p}": _stats(pp), f"tg{n}": _stats(tg),
        "decode_bytes_per_token": dc_bytes, "decode_flops_per_token": dc_flops,
        "prefill_flops": pf_flops, "prefill_bytes": pf_bytes,
        "memory": memory,
    }
    if hybrid is not None:
        res["hybrid"] = {"plan": hybrid.plan.describe(), "cpu_bytes": hybrid.cpu_bytes(),
                         "cold_active_fraction": hybrid.active_fraction(),
                         "cpu_ms_per_decode_token": cold_ms_per_token}
    tg_med, pp_med = statistics.median(tg), statistics.median(pp)
    if ceilings:
        res["ceilings"] = ceilings
        res["mbu"] = dc_bytes * tg_med / ceilings["bandwidth"]
        res["mfu"] = pf_flops * pp_med / p / ceilings["flops"]
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    size = f"{res['file_bytes'] / 2**30:.2f} GiB"
    print("| model | size | backend | test | t/s (mean ± sd) | median |")
    print("| --- | --- | --- | --- | --- | --- |")
    for test, xs in ((f"pp{p}", pp), (f"tg{n}", tg)):
        s = _stats(xs)
        print(f"| {path.name} | {size} | {engine.backend.name} | {test} | "
              f"{s['mean']:.2f} ± {s['sd']:.2f} | {s['median']:.2f} |")
    print(f"device: {info.describe()}; decode loop: {res['decode_loop']}")
    if "kernel_table" in info.extra:
        print(f"kernel table: {info.extra['kernel_table']}")
    print(f"decode: {dc_bytes / 1e9:.3f} GB/token (registry), "
          f"{dc_bytes * tg_med / 1e9:.1f} GB/s at the median", end="")
    if ceilings:
        print(f"; MBU {100 * res['mbu']:.1f}% of {ceilings['bandwidth'] / 1e9:.0f} GB/s "
              f"(measured copy)")
        print(f"prefill: {pf_flops / 1e12:.3f} TFLOP, {_tflops(pf_flops * pp_med / p)} "
              f"TFLOP/s at the median; MFU {100 * res['mfu']:.1f}% of "
              f"{_tflops(ceilings['flops'])} TFLOP/s ({ceilings['flops_dtype']} matmul, "
              "measured)")
    else:
        print()
    mem = res["memory"]
    line = ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in mem.items())
    print(f"memory: {line}")
    if hybrid is not None:
        h = res["hybrid"]
        print(f"hybrid: {h['plan']}; CPU holds {h['cpu_bytes'] / 2**20:.0f} MiB; last decode "
              f"computed {100 * h['cold_active_fraction']:.1f}% of the cold neurons; CPU "
              f"kernels {h['cpu_ms_per_decode_token']:.2f} ms of "
              f"{1e3 / statistics.median(tg):.2f} ms per decode token")
    return 0
