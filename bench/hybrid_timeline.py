"""Where a hybrid decode token's time goes: the host's time in each item of the program's
replay (the CUDA graph segments between host calls, each host call's send and receive, and
inside a receive its wait, the CPU kernel and the copy back), and the GPU's time in each
segment (CUDA events around it).

    python bench/hybrid_timeline.py MODEL --gpu-mem 2.98G --sparsity 0.9 [--tokens 16]

Prints per-token medians summed over the layers: what the 30-odd round trips to the CPU cost
beyond the CPU kernels themselves.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict


def main() -> None:
    import numpy as np
    import torch

    from drift.backends.triton.program import HostCall
    from drift.commands._common import parse_size
    from drift.runtime.engine import Engine

    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--gpu-mem", required=True)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--offload", default="neurons")
    ap.add_argument("--tokens", type=int, default=16)
    a = ap.parse_args()
    engine = Engine(a.model, device="cuda", ctx=a.tokens + 8, gpu_mem=parse_size(a.gpu_mem),
                    sparsity=a.sparsity, offload=a.offload)
    for i in range(3):  # compile, capture
        engine.forward([1], i)
    program = engine.program(1)
    items = program.cuda_graph
    assert items is not None, "the decode program was not captured"
    # the captured graphs (copies and events inside) against the eager launches: same logits
    tokens = [5, 17, 2, 99, 31, 8]
    captured = [engine.forward([tok], 3 + i) for i, tok in enumerate(tokens)]
    program.cuda_graph, cuda_graphs = None, engine.backend.gpu.cuda_graphs
    engine.backend.gpu.cuda_graphs = False
    eager = [engine.forward([tok], 3 + i) for i, tok in enumerate(tokens)]
    program.cuda_graph, engine.backend.gpu.cuda_graphs = items, cuda_graphs
    diff = max(float(np.abs(c - e).max() / np.abs(e).max()) for c, e in zip(captured, eager))
    same = [int(np.argmax(c)) for c in captured] == [int(np.argmax(e)) for e in eager]
    print(f"captured against eager over {len(tokens)} tokens: max logits rel diff {diff:.2e}, "
          f"same greedy tokens: {same}")
    hybrid = engine.backend
    acc: dict[str, float] = defaultdict(float)
    events: list = []

    def timed(item):  # the replay list's item, timed (run() calls every callable item)
        if not callable(item):  # a CUDA graph segment
            def replay():
                h0 = time.perf_counter()
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
                item.replay()
                e1.record()
                events.append((e0, e1))
                acc["graph replay (host)"] += time.perf_counter() - h0
            return replay
        call = getattr(item, "__self__", None)
        kind = item.__name__ if isinstance(call, HostCall) else "host item"

        def host():
            h0 = time.perf_counter()
            if kind in ("receive", "compute") and call.event is not None:
                call.event.synchronize()
                acc[f"{kind}: waiting for the GPU"] += time.perf_counter() - h0
            h1 = time.perf_counter()
            item()
            acc[f"{kind} (host)"] += time.perf_counter() - h1
        return host

    program.cuda_graph = [timed(item) for item in items]
    sums: dict[str, list[float]] = defaultdict(list)
    for t in range(a.tokens):
        acc.clear()
        events.clear()
        torch.cuda.synchronize()
        cold0 = hybrid.cold_seconds
        t0 = time.perf_counter()
        engine.forward([1 + t], 3 + t)
        torch.cuda.synchronize()
        acc["token (wall)"] = time.perf_counter() - t0
        acc["CPU kernels (inside receive)"] = hybrid.cold_seconds - cold0
        acc["graph segments (GPU, events)"] = sum(e0.elapsed_time(e1) for e0, e1 in events) / 1e3
        acc["segments"] = len(events)
        for k, v in acc.items():
            sums[k].append(v)
    print(f"{a.model}: --gpu-mem {a.gpu_mem} --sparsity {a.sparsity}; {a.tokens} decode tokens, "
          f"medians per token")
    for k, v in sums.items():
        m = statistics.median(v)
        print(f"  {k:32s} {m:9.0f}" if k == "segments" else f"  {k:32s} {m * 1e3:9.3f} ms")


if __name__ == "__main__":
    main()
