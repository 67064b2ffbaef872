"""`drift calibrate MODEL`: per-layer, per-neuron FFN activity on a calibration text, saved
beside the model cache for hybrid placement (see `drift/hybrid/calibrate.py`)."""

from __future__ import annotations

import argparse
import sys

from drift.errors import InvalidArgumentError

DEFAULT_WINDOW = 512


def register(sub: argparse._SubParsersAction) -> None:
    from drift.hybrid.calibrate import DEFAULT_TOKENS

    p = sub.add_parser("calibrate", help="record how active each FFN neuron is (hybrid placement)",
                       description="Run the model on a calibration text and record per layer "
                                   "and FFN neuron |act(gate)*up|: its mean, the fraction of "
                                   "tokens above the layer's thresholds for sparsity "
                                   "0.3/0.5/0.7/0.9, and those thresholds.")
    p.add_argument("model", nargs="?", default=None,
                   help="a .gguf path or a short name (default smollm2-135m)")
    p.add_argument("--text", default=None, metavar="FILE",
                   help="UTF-8 calibration text (default: Python's pydoc topics)")
    p.add_argument("--tokens", type=int, default=DEFAULT_TOKENS,
                   help="calibration tokens (default: %(default)s)")
    p.add_argument("--ctx", type=int, default=None,
                   help=f"window length (default: min({DEFAULT_WINDOW}, the model's context))")
    p.add_argument("--device", default="auto", help="backend (default: auto)")
    p.add_argument("--out", default=None, help="output .npz (default: "
                   "$DRIFT_HOME/calibration/<sha256 of the model>.npz)")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from drift.commands.perplexity import read_text
    from drift.hub import resolve_model
    from drift.hybrid.calibrate import ActivationEngine, calibrate, calibration_path, default_text
    from drift.tokenizer import Tokenizer

    if args.tokens < 1:
        raise InvalidArgumentError(f"--tokens must be >= 1, got {args.tokens}")
    if args.ctx is not None and args.ctx < 2:
        raise InvalidArgumentError(f"--ctx must be >= 2, got {args.ctx}")
    text = read_text(args.text) if args.text else default_text()
    path = resolve_model(args.model, progress=True if sys.stderr.isatty() else "lines")
    from drift.formats.gguf import open_gguf
    from drift.models import config_from_gguf

    f = open_gguf(path)
    cfg = config_from_gguf(f.metadata, {n: t.shape for n, t in f.tensors.items()}, path.name)
    window = args.ctx if args.ctx is not None else min(DEFAULT_WINDOW, cfg.ctx_train)
    tok = Tokenizer.from_gguf(f.metadata)
    ids = tok.encode(text, add_bos=False, parse_special=False)
    if len(ids) < args.tokens:
        print(f"[the text has {len(ids)} tokens; calibrating on all of them]", file=sys.stderr)
    bos = tok.bos_id if tok.add_bos else None
    engine = ActivationEngine(path, device=args.device, ctx=window)
    with Progress(TextColumn("calibrating"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("tokens"), TimeElapsedColumn(), console=Console(stderr=True),
                  transient=True) as bar:
        task = bar.add_task("cal", total=min(len(ids), args.tokens))
        cal = calibrate(engine, ids, args.tokens, window, bos,
                        lambda done, total: bar.update(task, completed=done, total=total))
    default_out = calibration_path(path)
    out = args.out or default_out
    cal.meta = {"model": path.name, "source": args.text or "pydoc_data.topics",
                "sha256": default_out.stem, "window": str(window)}
    saved = cal.save(out)
    L, F = cal.mean_abs.shape
    print(f"{path.name}: {cal.n_tokens} tokens, {L} layers x {F} neurons -> {saved}")
    for k, s in enumerate(cal.sparsities):
        t = cal.thresholds[:, k]
        hot = (cal.active_frac[:, :, k] > 0.5).mean()
        print(f"  sparsity {s:.1f}: threshold {t.min():.4g} .. {t.max():.4g} over layers; "
              f"{100 * hot:.1f}% of neurons active on > half the tokens")
    return 0
