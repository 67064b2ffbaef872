"""`drift pull NAME` and `drift list`: the model cache."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    pull = sub.add_parser("pull", help="fetch a known model into the cache")
    pull.add_argument("names", nargs="+", metavar="NAME", help="short name, e.g. smollm2-135m")
    pull.set_defaults(func=cmd_pull)
    ls = sub.add_parser("list", help="known models and whether they are downloaded")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)


def cmd_pull(args: argparse.Namespace) -> int:
    from drift.hub import pull

    for name in args.names:
        path = pull(name, progress=True if sys.stderr.isatty() else "lines")
        print(path)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from drift.hub import list_models

    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table("name", "size", "downloaded", "path")
    for r in rows:
        name = r["name"] + (" (default)" if r.get("default") else "")
        table.add_row(name, f"{r['size'] / 2**20:.0f} MiB", "yes" if r["present"] else "no",
                      r["path"])
    Console().print(table)
    return 0
