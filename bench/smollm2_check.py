"""Greedy tokens of a model on other backends (triton by default) against the numpy backend.

    python bench/smollm2_check.py MODEL.gguf [--text "..."] [--repeat R] [--steps 8]

Prints per step the two greedy tokens and the relative difference of the logits, and exits
non-zero if the tokens differ. Without a GPU set TRITON_INTERPRET=1 DRIFT_TRITON_CPU=1 (the
kernels then run under Triton's interpreter).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--text", default="The capital of France is")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1,
                    help="the prompt this many times over (a long prefill runs the GEMMs)")
    ap.add_argument("--devices", default="triton",
                    help="backends compared with the numpy one, comma-separated")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.repeat < 1 or args.steps < 1:
        ap.error("--repeat and --steps must be at least 1")

    from drift.runtime.engine import Engine

    names = [d for d in args.devices.split(",") if d]
    cpu = Engine(args.model, device="cpu", ctx=256)
    engines = {"cpu": cpu} | {d: Engine(args.model, device=d, ctx=256) for d in names}
    vocab = cpu.file.metadata.get("tokenizer.ggml.tokens", [])
    index = {t: i for i, t in enumerate(vocab)}
    # Whole words looked up in the vocabulary (GPT-2 byte-level: a leading space is "Ġ"):
    # no tokenizer needed, and the ids are the file's own.
    words = args.text.split(" ")
    pieces = [words[0]] + ["Ġ" + w for w in words[1:]]
    if all(p in index for p in pieces):
        prompt = [index[p] for p in pieces]
    else:
        prompt = [int(i) % cpu.config.vocab_size for i in (17, 1000, 2000, 3000, 4000)]
    prompt = prompt * args.repeat
    out = {n: [] for n in engines}
    errs = {d: [] for d in names}
    t0 = time.perf_counter()
    logits = {n: eng.prefill(prompt) for n, eng in engines.items()}
    for step in range(args.steps):
        for n in engines:
            out[n].append(int(np.argmax(logits[n])))
        a = logits["cpu"]
        for d in names:
            errs[d].append(float(np.linalg.norm(a - logits[d]) / np.linalg.norm(a)))
        print(f"step {step}: " + " ".join(f"{n} {out[n][-1]}" for n in engines)
              + " | rel diff " + " ".join(f"{d} {errs[d][-1]:.2e}" for d in names), flush=True)
        if step + 1 < args.steps:
            for n, eng in engines.items():
                # every backend continues from the numpy backend's token: no cascade of a flip
                logits[n] = np.asarray(eng.forward([out["cpu"][-1]], len(prompt) + step))
    same = {d: out[d] == out["cpu"] for d in names}
    text = "".join(vocab[i] for i in out["cpu"]).replace("Ġ", " ") if vocab else ""
    print(f"prompt {prompt}")
    for n in engines:
        print(f"{n:7s}{out[n]}" + (f" {text!r}" if n == "cpu" else ""))
    for d in names:
        print(f"{d}: max logits rel diff over {args.steps} steps: {max(errs[d]):.2e}; "
              f"same greedy tokens: {same[d]}")
    print(f"{time.perf_counter() - t0:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"prompt": prompt, "tokens": out, "errors": errs, "same": same}, f)
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
