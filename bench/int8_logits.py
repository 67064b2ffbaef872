"""Logits of the prefill paths against the numpy backend, on a prompt long enough for the
tensor-core GEMMs (issue 4: within 1e-2).

    python bench/int8_logits.py MODEL.gguf [--prompt-len 128] [--steps 4] [--paths dense,i8,i8x2]

For each path (DRIFT_TRITON_PREFILL, forced for every quantized matmul of >= 64 rows) the
relative difference of the logits after the prompt and after each greedy decode step (both
engines fed the numpy backend's token), and whether the greedy tokens agree.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--paths", default="dense,i8,i8x2")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from drift.backends.triton import TritonBackend
    from drift.runtime.engine import Engine

    cpu = Engine(args.model, device="cpu", ctx=args.prompt_len + args.steps + 8)
    prompt = [int(i) for i in np.random.default_rng(0).integers(1, cpu.config.vocab_size,
                                                               args.prompt_len)]
    ref = [cpu.prefill(prompt)]
    toks = []
    for s in range(args.steps):
        toks.append(int(np.argmax(ref[-1])))
        ref.append(cpu.forward([toks[-1]], len(prompt) + s))
    result = {}
    for path in args.paths.split(","):
        os.environ["DRIFT_TRITON_PREFILL"] = path
        eng = Engine(args.model, backend=TritonBackend(), ctx=args.prompt_len + args.steps + 8)
        got = [eng.prefill(prompt)]
        for s in range(args.steps):
            got.append(eng.forward([toks[s]], len(prompt) + s))
        errs = [float(np.linalg.norm(a - b) / np.linalg.norm(a)) for a, b in zip(ref, got)]
        same = [int(np.argmax(a)) == int(np.argmax(b)) for a, b in zip(ref, got)]
        result[path] = {"errs": errs, "same_tokens": same}
        print(f"{os.path.basename(args.model)} {path}: logits rel diff after the prompt "
              f"{errs[0]:.2e}, max over {len(errs)} {max(errs):.2e}; same greedy tokens "
              f"{all(same)}", flush=True)
        del eng
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"prompt_len": args.prompt_len, "result": result}, f)


if __name__ == "__main__":
    main()
