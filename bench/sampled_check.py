"""Sampled decoding drawn on the device against the host's draw, on the same device's logits.

    python bench/sampled_check.py MODEL.gguf [--devices webgpu,opencl] [--steps 32] [--seeds 0,1,2]

For each device and seed, `drift run`'s default sampling (temperature 0.8, top-k 40, top-p
0.95, min-p 0.05) twice through `generate_tokens`: decoding ahead (the device's top-k, cut
and draw, given the generator's next uniform: `_SamplerKernels.submit`) and a step at a time
(DRIFT_DECODE_AHEAD=0: the device's top-k, the host's cut and draw in float64). The logits
are the same device's in both, so the tokens differ only where f32 rounding moves a cut or
the draw's boundary. Prints each pair of sequences' agreement; exits non-zero if they differ.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--devices", default="webgpu,opencl")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    if args.steps < 1:
        ap.error("--steps must be at least 1")

    from drift.runtime.engine import Engine
    from drift.runtime.generate import decodes_ahead, generate_tokens
    from drift.runtime.sampler import Sampler, SamplerConfig

    seeds = [int(s) for s in args.seeds.split(",") if s]
    differ = 0
    for device in [d for d in args.devices.split(",") if d]:
        engine = Engine(args.model, device=device, ctx=args.steps + 16)
        prompt = np.random.default_rng(0).integers(0, engine.config.vocab_size, 8).tolist()
        for seed in seeds:
            cfg = SamplerConfig(seed=seed)
            runs = {}
            for ahead in ("1", "0"):
                os.environ["DRIFT_DECODE_AHEAD"] = ahead
                loop = decodes_ahead(engine, engine.backend.sampler(cfg))
                runs[ahead] = (loop, list(generate_tokens(engine, prompt, Sampler(cfg),
                                                          args.steps)))
            (loop1, dev), (loop0, host) = runs["1"], runs["0"]
            same = sum(a == b for a, b in zip(dev, host))
            differ += dev != host
            print(f"{device} seed {seed}: device draw (ahead={loop1}) and host draw "
                  f"(ahead={loop0}) agree on {same}/{len(host)} tokens, "
                  f"{len(set(host))} distinct; first {dev[:8]}")
    os.environ.pop("DRIFT_DECODE_AHEAD", None)
    print("same tokens" if not differ else f"{differ} sequences differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
