"""Where a decode token's (or a prompt's) time goes on the portable GPU backends (issue 9).

Compiles the decode program (1 token at position `--pos`, so the attention reads `--pos` + 1
cached keys) of a GGUF model on `--device webgpu|opencl`, or with `--tokens N` the program
that prefills N tokens at positions `--pos` .. `--pos` + N - 1, and reports, per call:

    wall          host time of one call as `drift bench` makes it (logits read back, argmax on
                  the host), of one with the argmax on the device (4 bytes back), and of an
                  empty submission (the API's round trip alone)
    device        every launch timed by the device's own clock in one submission (OpenCL
                  profiling events; WebGPU timestamp queries, between the dispatches of one
                  pass where the adapter has 'timestamp-query-inside-passes'): their sum,
                  the span from the first start to the last end, the host time to record them
    per op kind   dispatches and summed device time (split-K attention: two a layer)
    per kernel    each distinct kernel source (the same op on every layer compiles once):
                  launches, device time, and the bytes the op registry says it moves over
                  that time (for the matmuls: their weights, so GB/s against the copy rate;
                  a node of two launches: its bytes on the first), and the FLOPs over
                  that time (TFLOP/s: what a prefill's GEMMs reach)

    python bench/gpuapi_profile.py /tmp/m/llama-3.1-8b-Q4_0.gguf --device opencl
    python bench/gpuapi_profile.py MODEL --device webgpu --pos 16 --reps 1   # CPU drivers
    python bench/gpuapi_profile.py MODEL --device webgpu --pos 0 --tokens 512   # a prefill

The cache is left as zeros unless `--prefill` (then the first `--pos` positions are a real
prompt's): the attention's work does not depend on the values. Medians over `--reps`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from math import prod

import numpy as np

import kernel_constants  # (bench/, the script's folder)
from drift.backends import backend_class
from drift.backends.kernels.gpu import GreedySampler, TopKSampler
from drift.ir import Role
from drift.ir.ops import cost_of
from drift.runtime.engine import Engine


def node_label(graph, n) -> str:
    """What distinguishes one node's kernel: the op and the shapes (and weight types) it
    runs on."""
    t = graph.tensors
    weights = [t[i] for i in n.inputs if t[i].role == Role.WEIGHT]
    if n.op in ("matmul", "ffn_gate_up", "stacked_matmul") and weights:
        w = weights[0]
        rows = prod(t[n.inputs[0]].shape[:-1])
        if n.op == "stacked_matmul":  # the weights' rows, one matrix
            n_rows = "+".join(str(x.shape[0]) for x in weights[: n.attrs["n"]])
        else:
            n_rows = f"{len(weights)}x{w.shape[0]}" if len(weights) > 1 else str(w.shape[0])
        return f"{n.op} {w.dtype} {n_rows}x{w.shape[1]} S={rows}"
    if n.op == "attention":
        q, k = t[n.inputs[0]], t[n.inputs[1]]
        return f"attention H={q.shape[1]} Hkv={k.shape[1]} D={q.shape[2]} cache={k.shape[0]}"
    shapes = " ".join("x".join(map(str, t[i].shape)) for i in n.inputs
                      if t[i].role != Role.WEIGHT)
    return f"{n.op} {shapes}"


def device_properties(backend) -> str:
    """What the next kernel variants would specialize on (subgroups, f16, int8 dot)."""
    rt = backend.rt
    if hasattr(rt, "adapter"):  # webgpu
        info = {k: v for k, v in rt.adapter.info.items() if "size" in k or k == "vendor"}
        return f"{info}; features {sorted(rt.adapter.features)}"
    d = rt.dev
    return (f"{d.version}; max work-group {d.max_work_group_size}; local memory "
            f"{d.local_mem_size}; extensions {d.extensions}")


def median(xs):
    return statistics.median(xs) if xs else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--device", required=True, choices=("webgpu", "opencl"))
    p.add_argument("--pos", type=int, default=384, help="cached tokens before the decoded one")
    p.add_argument("--tokens", type=int, default=1,
                   help="tokens a call runs: 1 is decode, more a prefill's program (no "
                        "sampler: its logits are read back)")
    p.add_argument("--reps", type=int, default=10, help="timed calls per measurement")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--prefill", action="store_true",
                   help="fill the cache with a real prompt of --pos tokens first")
    p.add_argument("--sample", action="store_true",
                   help="the sampler's kernels are drift run's top-40 sampling decoding ahead "
                        "(top-k, then the draw feeding the next step), not the argmax")
    p.add_argument("--top", type=int, default=40, help="kernels listed, slowest first")
    p.add_argument("--pass-per-dispatch", action="store_true",
                   help="webgpu: time each dispatch in a compute pass of its own, even where "
                        "timestamps inside passes exist")
    p.add_argument("--set", default="", metavar="K=V,..",
                   help="kernel constants for the run (bench/kernel_constants.py)")
    a = p.parse_args()
    try:
        kernel_constants.apply(kernel_constants.parse(kernel_constants.items(a.set)))
    except ValueError as e:
        p.error(f"--set: {e}")
    if a.tokens < 1:
        p.error("--tokens must be at least 1")

    t0 = time.perf_counter()
    backend = backend_class(a.device)()
    if a.pass_per_dispatch and getattr(backend.rt, "timestamps", None):
        backend.rt.timestamps = "pass-per-dispatch"
    engine = Engine(a.model, backend=backend, ctx=a.pos + a.tokens + 8)
    cfg = engine.config
    print(f"# {a.model} on {a.device}: {backend.device().describe()}"
          + (f"; set {a.set}" if a.set else ""))
    print(f"load {time.perf_counter() - t0:.1f} s; {cfg.n_layers} layers, vocab "
          f"{cfg.vocab_size}")
    print(f"subgroup shuffle lanes (probed): {backend.rt.renderer.subgroup_lanes or 'none'}")
    print(f"device properties: {device_properties(backend)}")
    rng = np.random.default_rng(0)
    if a.prefill:
        t1 = time.perf_counter()
        engine.prefill(rng.integers(0, cfg.vocab_size, a.pos).tolist())
        backend.synchronize()
        print(f"prefill {a.pos} tokens: {time.perf_counter() - t1:.2f} s (with compilation)")
    t1 = time.perf_counter()
    prog = engine.program(a.tokens)
    feeds = {"tokens": rng.integers(0, cfg.vocab_size, a.tokens).astype(np.int32),
             "positions": np.arange(a.pos, a.pos + a.tokens, dtype=np.int32)}
    prog.run(feeds)
    if a.tokens > 1:  # a prefill: its logits read back, no sampler
        sampler, argmax_launches = None, []
    elif a.sample:
        from drift.runtime.sampler import SamplerConfig

        sampler = TopKSampler(backend, SamplerConfig(seed=0))
    else:
        sampler = GreedySampler(backend)
    if sampler is not None:
        out = prog.run(feeds, to_host=False)
        sampler(out["logits"])  # the argmax kernels compiled and bound
        # the kernels decode ahead runs: the token stored into the next step's input too
        argmax_launches = sampler.launches(prog.run(feeds, to_host=False)["logits"], prog)
    backend.flush()
    what = "decode" if a.tokens == 1 else f"{a.tokens}-token prefill"
    print(f"{what} program: compiled and first run in {time.perf_counter() - t1:.1f} s")
    for _ in range(a.warmup):
        prog.run(feeds)

    # -- wall time per token, three ways
    def wall(fn) -> float:
        xs = []
        for _ in range(a.reps):
            t = time.perf_counter()
            fn()
            xs.append(time.perf_counter() - t)
        return median(xs)

    def greedy():
        if sampler is None:
            prog.run(feeds, to_host=False)
            backend.synchronize()
        else:
            sampler(prog.run(feeds, to_host=False)["logits"])

    rt = backend.rt
    writes = prog._writes(feeds)
    host_logits = wall(lambda: prog.run(feeds))
    device_argmax = wall(greedy)
    empty = wall(lambda: rt.run([], writes, [(backend.arena, 0, 4)]))

    # -- device time per launch
    nodes = prog.launch_nodes()
    assert len(nodes) == len(prog.launches)
    timings = [prog.timed(feeds, argmax_launches) for _ in range(a.reps)]
    if timings[0] is None:
        print(f"\nwall per call: {host_logits * 1e3:.3f} ms (logits to host), "
              f"{device_argmax * 1e3:.3f} ms (argmax on device), empty submission "
              f"{empty * 1e3:.3f} ms; {len(prog.launches)} dispatches")
        print(f"NO DEVICE TIMESTAMPS: {rt.timing_unavailable}; per-kernel times unavailable")
        return
    n_all = len(nodes) + len(argmax_launches)
    per_launch = [median([t.seconds[i] for t in timings]) for i in range(n_all)]
    span = median([t.span for t in timings])
    enqueue = median([t.enqueue for t in timings])
    timed_wall = median([t.wall for t in timings])
    gpu_sum = sum(per_launch)
    n_launch = len(per_launch)
    print(f"\ndevice timing: {timings[0].method}")
    print(f"\n| per call ({what}) | ms |")
    print("| --- | --- |")
    print(f"| wall, logits to host (as drift bench) | {host_logits * 1e3:.3f} |")
    print(f"| wall, argmax on device, 4 bytes back | {device_argmax * 1e3:.3f} |")
    print(f"| wall, empty submission (write + read 4 bytes) | {empty * 1e3:.3f} |")
    print(f"| wall of the timed submission | {timed_wall * 1e3:.3f} |")
    print(f"| host time recording/enqueueing its {n_launch} launches | {enqueue * 1e3:.3f} |")
    if hasattr(rt, "enqueue_path"):  # opencl: the timed call enqueues through pyopencl (its
        # events carry the times); a call's own enqueue (no events) timed alone
        launches = [*prog.launches, *argmax_launches]
        xs = []
        for _ in range(a.reps + 1):  # (the first makes the C loop's arrays)
            rt.run([], writes, [])  # the arena written first, as every call (PoCL)
            t = time.perf_counter()
            rt._enqueue_all(launches)
            xs.append(time.perf_counter() - t)
            rt.sync()
        print(f"| host time enqueueing them as a call does ({rt.enqueue_path}, no events) "
              f"| {median(xs[1:]) * 1e3:.3f} |")
    print(f"| device span, first start to last end | {span * 1e3:.3f} |")
    print(f"| device time, sum over launches | {gpu_sum * 1e3:.3f} |")
    print(f"| idle between launches (span - sum) | {(span - gpu_sum) * 1e3:.3f} |")

    # -- per op kind and per distinct kernel
    graph, kv_len = prog.graph, a.pos + a.tokens
    render = rt.renderer.render
    by_op: dict[str, list] = defaultdict(lambda: [0, 0.0])
    by_kernel: dict[str, dict] = {}
    for i, n in enumerate([*nodes, *[None] * len(argmax_launches)]):
        secs = per_launch[i]
        if n is None:
            stage = i - len(nodes) + 1
            op = "top-k sampling" if a.sample else "argmax"
            label, key, nbytes, flops = f"{op} (sampler) {stage}", f"{op}{stage}", 0, 0
        else:
            ins = [graph.tensors[x] for x in n.inputs]
            outs = [graph.tensors[x] for x in n.outputs]
            op, label = n.op, node_label(graph, n)
            stage = prog.sources[i].name.partition(":")[2]  # the matmuls' kernel, a stage
            label += f" [{stage}]" if stage else ""
            key = render(prog.sources[i])
            # a node of several launches (split-K attention): its bytes on its first
            first = i == 0 or nodes[i - 1] is not n
            cost = cost_of(n.op, ins, outs, n.attrs, kv_len)
            nbytes, flops = (cost.bytes, cost.flops) if first else (0, 0)
        by_op[op][0] += 1
        by_op[op][1] += secs
        k = by_kernel.setdefault(key, {"label": label, "n": 0, "s": 0.0, "bytes": 0,
                                          "flops": 0})
        k["n"] += 1
        k["s"] += secs
        k["bytes"] += nbytes
        k["flops"] += flops
    print("\n| op | dispatches | device us/call | share |")
    print("| --- | --- | --- | --- |")
    for op, (cnt, secs) in sorted(by_op.items(), key=lambda kv: -kv[1][1]):
        print(f"| {op} | {cnt} | {secs * 1e6:.1f} | {100 * secs / gpu_sum:.1f}% |")
    print(f"\n{len(by_kernel)} distinct kernels, slowest first (bytes: the op registry's "
          f"reads + writes; matmuls: mostly weights)")
    print("| kernel | launches | device us/call | us/launch | MB/launch | GB/s | TFLOP/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for k in sorted(by_kernel.values(), key=lambda k: -k["s"])[: a.top]:
        gbs = k["bytes"] / k["s"] / 1e9 if k["s"] > 0 else 0.0
        tflops = k["flops"] / k["s"] / 1e12 if k["s"] > 0 else 0.0
        print(f"| {k['label']} | {k['n']} | {k['s'] * 1e6:.1f} | {k['s'] / k['n'] * 1e6:.1f} "
              f"| {k['bytes'] / k['n'] / 1e6:.2f} | {gbs:.0f} | {tflops:.1f} |")
    total_bytes = sum(k["bytes"] for k in by_kernel.values())
    print(f"\nall kernels: {total_bytes / 1e9:.3f} GB/call over {gpu_sum * 1e3:.3f} ms of "
          f"device time = {total_bytes / gpu_sum / 1e9:.0f} GB/s; over the wall "
          f"{host_logits * 1e3:.3f} ms = {total_bytes / host_logits / 1e9:.0f} GB/s")


if __name__ == "__main__":
    main()
