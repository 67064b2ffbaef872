"""Greedy tokens of a model on the triton backend against the numpy backend.

    python bench/smollm2_check.py MODEL.gguf [--prompt-tokens 1,2,3] [--steps 8]

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
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from drift.backends.triton import TritonBackend
    from drift.runtime.engine import Engine

    cpu = Engine(args.model, device="cpu", ctx=256)
    tri = Engine(args.model, backend=TritonBackend(), ctx=256)
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
    rows = []
    out = {"cpu": [], "triton": []}
    logits = {}
    t0 = time.perf_counter()
    for name, eng in (("cpu", cpu), ("triton", tri)):
        logits[name] = [eng.prefill(prompt)]
    for step in range(args.steps):
        for name, eng in (("cpu", cpu), ("triton", tri)):
            out[name].append(int(np.argmax(logits[name][-1])))
        a, b = logits["cpu"][-1], logits["triton"][-1]
        err = float(np.linalg.norm(a - b) / np.linalg.norm(a))
        rows.append((step, out["cpu"][-1], out["triton"][-1], err))
        print(f"step {step}: cpu {out['cpu'][-1]} triton {out['triton'][-1]} "
              f"logits rel diff {err:.2e}", flush=True)
        if step + 1 < args.steps:
            for name, eng in (("cpu", cpu), ("triton", tri)):
                # both continue from the numpy backend's token, so one flip does not cascade
                logits[name].append(eng.forward([out["cpu"][-1]], len(prompt) + step))
    same = out["cpu"] == out["triton"]
    print(f"max logits rel diff over {len(rows)} steps: {max(r[3] for r in rows):.2e}")
    text = "".join(vocab[i] for i in out["cpu"]).replace("Ġ", " ") if vocab else ""
    print(f"prompt {prompt}\ncpu    {out['cpu']} {text!r}\ntriton {out['triton']}\n"
          f"same greedy tokens: {same}; {time.perf_counter() - t0:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"prompt": prompt, "rows": rows, "same": same}, f)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
