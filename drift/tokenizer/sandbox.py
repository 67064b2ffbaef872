"""The process chat templates run in: Jinja's immutable sandbox, bounded in time, memory and
output.

A template is code from the model file. The sandbox (set up as transformers does, see
`chat.py`) keeps it from reaching Python's internals, but not from looping for hours, folding a
constant of gigabytes at compile time, nesting until the parser's recursion fails, or growing
a string without end. No check inside one process stops all of those: a single C call
(`'a' * 10**10`, a filter with a huge width) cannot be interrupted, and a thread cannot be
killed. So templates compile and render in this small child process, which the parent kills
when a request runs past its time; its address space is capped (`RLIMIT_AS`), so a runaway
allocation is a MemoryError here, and the output is counted as it is produced.

Run as a script (`python -P sandbox.py`): it imports nothing of drift's, only jinja2 and the
standard library. Protocol on stdin/stdout, frames of an 8-byte little-endian length and a
body: the parent sends a pickled request {"source", "context" (None: compile only),
"max_chars"}; the child answers JSON {"text": ...} or {"error": ...}.
"""

from __future__ import annotations

import json
import pickle
import sys
from datetime import datetime
from typing import Any, ClassVar

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

MEMORY_BYTES = 1 << 30  # address space the child may add to what it holds at start
MAX_COMPILED = 16  # templates kept compiled


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks in
    transformers; rendering only needs the body."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


class _TemplateDict:
    """`dict(...)` for templates, without the attribute access a real type object gives."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore names, which lead to CPython internals."""

    def __init__(*args: Any, **kwargs: Any):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore attributes on a namespace ({name!r})"
            )


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters, which would change the prompt.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


class OutputTooLarge(Exception):
    pass


def render(template: jinja2.Template, context: dict[str, Any], max_chars: int) -> str:
    """The template's output, stopped as soon as it passes `max_chars`."""
    pieces, size = [], 0
    for piece in template.generate(**context):
        size += len(piece)
        if size > max_chars:
            raise OutputTooLarge(f"its output passes {max_chars} characters")
        pieces.append(piece)
    return "".join(pieces)


def answer(request: dict[str, Any], compiled: dict[str, jinja2.Template]) -> dict[str, str]:
    source = request["source"]
    template = compiled.get(source)
    if template is None:
        try:
            template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as e:
            return {"error": f"does not compile (line {e.lineno}): {_one_line(e)}"}
        except MemoryError:
            return {"error": "does not compile: it needs too much memory"}
        except RecursionError:
            return {"error": "does not compile: it nests too deeply"}
        except Exception as e:  # noqa: BLE001 -- whatever else the compiler raises on it
            return {"error": f"does not compile: {_one_line(e)}"}
        if len(compiled) >= MAX_COMPILED:
            compiled.pop(next(iter(compiled)))
        compiled[source] = template
    if request["context"] is None:
        return {"text": ""}
    try:
        return {"text": render(template, request["context"], request["max_chars"])}
    except MemoryError:
        return {"error": "failed: it needs too much memory"}
    except RecursionError:
        return {"error": "failed: it recurses too deeply"}
    except Exception as e:  # noqa: BLE001 -- whatever the file's template code raises
        return {"error": f"failed: {_one_line(e)}"}


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__


def _limit_memory() -> None:
    try:
        import resource

        with open("/proc/self/statm") as f:
            held = int(f.read().split()[0]) * resource.getpagesize()
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        soft = held + MEMORY_BYTES
        unlimited = hard == resource.RLIM_INFINITY
        resource.setrlimit(resource.RLIMIT_AS, (soft if unlimited else min(soft, hard), hard))
    except (ImportError, OSError, ValueError):  # not Linux: time and output bounds only
        pass


def _read_frame(stream) -> bytes | None:
    head = stream.read(8)
    if len(head) < 8:
        return None
    n = int.from_bytes(head, "little")
    body = stream.read(n)
    return body if len(body) == n else None


def serve() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which kills us
    _limit_memory()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    compiled: dict[str, jinja2.Template] = {}
    while (frame := _read_frame(stdin)) is not None:
        try:
            reply = answer(pickle.loads(frame), compiled)
            body = json.dumps(reply).encode()
        except MemoryError:
            body = json.dumps({"error": "failed: it needs too much memory"}).encode()
        stdout.write(len(body).to_bytes(8, "little") + body)
        stdout.flush()


if __name__ == "__main__":
    serve()
