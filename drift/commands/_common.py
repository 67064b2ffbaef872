"""Arguments and set-up shared by the commands that load a model."""

from __future__ import annotations

import argparse

from drift.errors import InvalidArgumentError


def add_model_arguments(p: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        p.add_argument("model", nargs="?", default=None,
                       help="a .gguf path, a short name (smollm2-135m, gemma3-270m) or "
                            "org/repo/file.gguf; default smollm2-135m")
    p.add_argument("--device", default="auto",
                   help="backend: cpu, cuda (triton), webgpu, opencl (default: auto, the best "
                        "one found)")
    p.add_argument("--ctx", type=int, default=None,
                   help="context size in tokens (default: min(4096, the model's))")
    add_hybrid_arguments(p)


def add_hybrid_arguments(p: argparse.ArgumentParser) -> None:
    """The GPU memory budget of hybrid execution (docs/hybrid.md)."""
    g = p.add_argument_group("hybrid CPU-GPU execution")
    g.add_argument("--gpu-mem", default=None, metavar="SIZE",
                   help="GPU memory to use, e.g. 2.2G or 800M: FFN neurons that do not fit run "
                        "on the CPU (default: all of the model when it fits, else what the GPU "
                        "has free)")
    g.add_argument("--sparsity", type=float, default=0.0,
                   help="hybrid: the CPU skips cold neurons whose |act(gate)| is under the "
                        "calibrated quantile (needs `drift calibrate`; default 0: dense)")
    g.add_argument("--predictor", type=int, default=0, metavar="RANK",
                   help="hybrid, with --sparsity: a rank-RANK factorization of each cold gate "
                        "picks the neurons whose gate the CPU computes at all (default 0: every "
                        "cold neuron's gate is computed)")
    g.add_argument("--offload", choices=("neurons", "neurons-cpu-gate", "layers"),
                   default="neurons",
                   help="hybrid placement: every layer's gate rows on the GPU first, then hot "
                        "neurons by calibration (neurons); hot neurons only, the CPU computing "
                        "its neurons' gates (neurons-cpu-gate, what --predictor works on); or "
                        "whole FFNs of the last layers on the CPU (layers, the baseline; "
                        "default: %(default)s)")


def parse_size(text: str) -> int:
    """'2.2G', '800M', '1.5GiB', '123456' -> bytes (K/M/G/T are powers of 1024)."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text), re.IGNORECASE)
    if m is None:
        raise InvalidArgumentError(f"--gpu-mem {text!r}: a size such as 2.2G, 800M or 5000000")
    scale = 1024 ** " kmgt".index(m.group(2).lower() or " ")
    value = float(m.group(1)) * scale
    if not value > 0 or value > 2**60:
        raise InvalidArgumentError(f"--gpu-mem {text!r}: must be > 0")
    return int(value)


def engine_options(args: argparse.Namespace) -> dict:
    """The Engine's hybrid options from the command line."""
    gpu_mem = getattr(args, "gpu_mem", None)
    sparsity = getattr(args, "sparsity", 0.0) or 0.0
    if not 0 <= sparsity < 1:
        raise InvalidArgumentError(f"--sparsity must be in [0, 1), got {sparsity}")
    predictor = getattr(args, "predictor", 0) or 0
    if predictor < 0:
        raise InvalidArgumentError(f"--predictor must be >= 0, got {predictor}")
    if predictor and not sparsity:
        raise InvalidArgumentError("--predictor picks neurons to skip: give --sparsity too")
    return {"gpu_mem": None if gpu_mem is None else parse_size(gpu_mem),
            "sparsity": sparsity, "offload": getattr(args, "offload", "neurons"),
            "predictor": predictor}


def load_engine(args: argparse.Namespace, progress: bool = True):
    """Resolve the model argument (fetching a short name on first use) and open it."""
    from drift.hub import resolve_model
    from drift.runtime.engine import Engine

    if args.ctx is not None and args.ctx < 1:
        raise InvalidArgumentError(f"--ctx must be >= 1, got {args.ctx}")
    path = resolve_model(args.model, progress=progress)
    return Engine(path, device=args.device, ctx=args.ctx, **engine_options(args))


def model_file_for_analysis(args: argparse.Namespace) -> None:
    """Make a short name mean for `compile` and `analyze` what it means for `run`: the
    downloaded file (its own quant types). Not downloaded (or with --quant), the preset of the
    same name is used, and stderr says so."""
    import sys

    from drift.hub import MODELS, models_dir
    from drift.models.presets import PRESETS

    name = args.model
    if name not in MODELS:
        return
    cached = models_dir() / MODELS[name].filename
    if cached.exists() and not getattr(args, "quant", None):
        args.model = str(cached)
    elif name.lower() in PRESETS:
        why = "--quant given" if cached.exists() else f"not downloaded (drift pull {name})"
        print(f"[{name}: {why}, so its preset shapes are used, not the file]", file=sys.stderr)
