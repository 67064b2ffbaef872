"""CPU figures for BENCHMARKS.md: load time (file to first token ready) and decode speed.

    python bench/cpu_generation.py [MODEL] [--runs 5] [--tokens 64]

"Load" is what a user waits for before the first prompt token is processed: opening the GGUF,
building the tokenizer and the template, dequantizing the weights, compiling the decode graph.
Decode tok/s is measured over `--tokens` greedy steps after a short prompt, median of runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="?", default="smollm2-135m")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--tokens", type=int, default=64)
    args = p.parse_args()

    from drift.api import LLM
    from drift.hub import resolve_model
    from drift.runtime.engine import Engine

    path = resolve_model(args.model)
    loads, prefills, decodes = [], [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        llm = LLM(Engine(path, device="cpu", ctx=512))
        llm.engine.program(1)  # the decode graph, compiled: the first token is ready to run
        loads.append(time.perf_counter() - t0)
        ids = llm.encode_prompt("The history of the printing press begins")
        t = time.perf_counter()
        logits = llm.engine.prefill(ids)
        prefills.append(len(ids) / (time.perf_counter() - t))
        tok, pos = int(np.argmax(logits)), len(ids)
        t = time.perf_counter()
        for _ in range(args.tokens):
            logits = llm.engine.forward([tok], pos)
            tok, pos = int(np.argmax(logits)), pos + 1
        decodes.append(args.tokens / (time.perf_counter() - t))
    result = {
        "model": path.name,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "runs": args.runs,
        "load_s": loads,
        "prefill_tok_s": prefills,
        "decode_tok_s": decodes,
        "median_load_s": statistics.median(loads),
        "median_decode_tok_s": statistics.median(decodes),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
