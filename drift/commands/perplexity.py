"""`drift perplexity MODEL --text FILE`: sliding-window perplexity of a text (see
`drift/runtime/perplexity.py` for the definition). The figure on stdout, progress on stderr."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from drift.commands._common import add_hybrid_arguments, engine_options
from drift.errors import InvalidArgumentError

DEFAULT_PPL_CTX = 512


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("perplexity", help="perplexity of a text (sliding windows)",
                       description="Sliding-window perplexity (the Hugging Face definition): "
                                   "windows of --ctx tokens advanced by --stride, each token "
                                   "scored once, in the first window that scores it.")
    p.add_argument("model", nargs="?", default=None,
                   help="a .gguf path or a short name (default smollm2-135m)")
    p.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text file ('-': stdin)")
    p.add_argument("--ctx", type=int, default=None,
                   help=f"window length in tokens (default: min({DEFAULT_PPL_CTX}, the "
                        "model's context))")
    p.add_argument("--stride", type=int, default=None,
                   help="window advance in tokens (default: ctx/2)")
    p.add_argument("--device", default="auto", help="backend (default: auto)")
    add_hybrid_arguments(p)
    p.set_defaults(func=cmd_perplexity)


def read_text(spec: str) -> str:
    if spec == "-":
        text = sys.stdin.buffer.read().decode("utf-8", "replace")
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise InvalidArgumentError(f"--text {spec}: no such file")
        text = path.read_bytes().decode("utf-8", "replace")
    if not text.strip():
        raise InvalidArgumentError(f"--text {spec}: the text is empty")
    return text


def cmd_perplexity(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from drift.hub import resolve_model
    from drift.runtime.engine import Engine
    from drift.runtime.perplexity import check_window, perplexity
    from drift.tokenizer import Tokenizer

    if args.ctx is not None:
        check_window(args.ctx, args.stride if args.stride is not None else max(1, args.ctx // 2))
    elif args.stride is not None and args.stride < 1:
        raise InvalidArgumentError(f"--stride must be >= 1, got {args.stride}")
    text = read_text(args.text)  # bad input fails before the model loads
    path = resolve_model(args.model, progress=True if sys.stderr.isatty() else "lines")
    from drift.formats.gguf import open_gguf
    from drift.models import config_from_gguf

    f = open_gguf(path)
    cfg = config_from_gguf(f.metadata, {n: t.shape for n, t in f.tensors.items()}, path.name)
    ctx = args.ctx if args.ctx is not None else min(DEFAULT_PPL_CTX, cfg.ctx_train)
    stride = args.stride if args.stride is not None else max(1, ctx // 2)
    check_window(ctx, stride)
    ids = Tokenizer.from_gguf(f.metadata).encode(text, parse_special=False)
    if len(ids) < 2:
        raise InvalidArgumentError(f"--text {args.text}: {len(ids)} token(s); perplexity needs >= 2")
    engine = Engine(path, device=args.device, ctx=ctx, **engine_options(args))
    console = Console(stderr=True)
    with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("ppl", total=None)
        result = perplexity(engine, ids, ctx, stride,
                            lambda done, total: bar.update(task, completed=done, total=total))
    print(f"perplexity {result.perplexity:.4f}  ({result.n_scored} tokens scored, "
          f"NLL {result.nll_per_token:.5f}/token, {result.n_windows} windows of {ctx}, "
          f"stride {stride})")
    print(f"[{engine.backend.name}] {path.name}: {len(ids)} tokens", file=sys.stderr)
    return 0
