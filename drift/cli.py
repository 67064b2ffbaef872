"""The `drift` command.

Each module in `drift/commands/` contributes subcommands through `register(subparsers)`, so a
new command is a new file. A `DriftError` (the user's mistake) becomes one line on stderr and
a non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

import drift.commands
from drift import __version__
from drift.errors import DriftError


class _Parser(argparse.ArgumentParser):
    """argparse, but a refused argument is one line, like every other mistake (the usage is
    what --help shows); its subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="drift",
        description="Run large generative models on the GPU you already have.",
    )
    parser.add_argument("--version", action="version", version=f"drift {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(drift.commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # shared helpers, not commands
            continue
        module = importlib.import_module(f"drift.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # argparse takes positionals in one run, so `drift run MODEL --temp 0 "prompt"` would leave
    # the prompt over; commands with a variadic positional (`args`) collect such leftovers.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if isinstance(getattr(args, "args", None), list) and not any(
            e.startswith("-") and e != "-" for e in extra
        ):
            args.args += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except DriftError as e:
        print(f"drift: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # `drift run ... | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0


def entry() -> None:
    """The `drift` script and `python -m drift`: main(), then the exit. A process that opened
    an OpenCL runtime ends at once (os._exit), its output flushed, without releasing its
    objects or the interpreter's teardown: on NVIDIA's OpenCL a process ended in a
    segmentation fault there, after drift bench's results, whatever order drift released its
    objects in (the operating system frees a process's device memory anyway)."""
    rc = main()
    opencl = sys.modules.get("drift.backends.opencl")
    if opencl is not None and opencl.runtimes_opened():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    entry()
