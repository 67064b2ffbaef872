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


def load_engine(args: argparse.Namespace, progress: bool = True):
    """Resolve the model argument (fetching a short name on first use) and open it."""
    from drift.hub import resolve_model
    from drift.runtime.engine import Engine

    if args.ctx is not None and args.ctx < 1:
        raise InvalidArgumentError(f"--ctx must be >= 1, got {args.ctx}")
    path = resolve_model(args.model, progress=progress)
    return Engine(path, device=args.device, ctx=args.ctx)


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
