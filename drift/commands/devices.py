"""`drift devices`: every adapter on every API, with the properties drift specializes on."""

from __future__ import annotations

import argparse
import importlib
import json

# API -> module with an `adapters()` listing (the portable GPU APIs enumerate several)
_ENUMERATED = {"webgpu": "drift.backends.webgpu", "opencl": "drift.backends.opencl"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="list the adapters of every GPU API and what drift reads")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_devices)


def list_devices() -> list[dict]:
    from drift.backends import BACKENDS, backend_class

    rows: list[dict] = []
    for api in BACKENDS:
        try:
            if api in _ENUMERATED:
                rows += importlib.import_module(_ENUMERATED[api]).adapters()
                continue
            cls = backend_class(api)
            if not cls.available():
                continue
            info = cls().device()
            rows.append({"api": api, "name": info.name, "type": info.kind,
                         "compute_units": info.compute_units, "memory": info.memory_bytes,
                         **{k: v for k, v in info.extra.items() if isinstance(v, (str, int))}})
        except Exception as e:  # a missing library or driver: say so, list the rest
            rows.append({"api": api, "name": f"unavailable ({type(e).__name__}: {e})"[:120]})
    return rows


def cmd_devices(args: argparse.Namespace) -> int:
    rows = list_devices()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("api", "device", "type", "what drift specializes on")
    for r in rows:
        props = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("api", "name", "type"))
        table.add_row(r["api"], r["name"], str(r.get("type", "")), props)
    Console().print(table)
    return 0
