"""Seeded mutation fuzzing (issue 11): GGUF header, metadata and tensor-info bytes, metadata
values of every type, and chat templates. Every case must load and generate, or fail with one
bounded line of DriftError: no other exception, no hang (an alarm per case), no allocation
beyond a cap (RLIMIT_AS for the duration)."""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import random
import resource
import signal
import struct
from pathlib import Path

import pytest
from gguf import GGUFValueType as T

from drift.api import LLM
from drift.errors import MAX_MESSAGE, DriftError
from drift.formats.gguf import _Header, open_gguf
from drift.models import config_from_gguf
from drift.runtime.engine import Engine
from drift.tokenizer import ChatTemplate, Tokenizer
from drift.tokenizer import chat as chat_module
from drift.tokenizer.chat import FALLBACK_TEMPLATES

from . import tiny

CASES = int(os.environ.get("DRIFT_FUZZ_CASES", "3000"))  # per loop; CI runs the default
CASE_SECONDS = 20  # an alarm past this is a hang
MEMORY_CAP = 2 << 30  # bytes of address space the loop may add
INTERESTING = [0, 1, 2, 3, 7, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1]


class Hang(Exception):
    pass


@contextlib.contextmanager
def bounded():
    """RLIMIT_AS at what the process holds plus MEMORY_CAP; SIGALRM ready to stop a case."""
    with open("/proc/self/statm") as f:
        held = int(f.read().split()[0]) * resource.getpagesize()
    old_limit = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (held + MEMORY_CAP, old_limit[1]))

    def alarm(*_):
        raise Hang()

    old_handler = signal.signal(signal.SIGALRM, alarm)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_handler)
        resource.setrlimit(resource.RLIMIT_AS, old_limit)


def exercise(path: Path, generate: bool) -> None:
    """What `drift run` does with a file, short of the CLI."""
    f = open_gguf(path)
    config_from_gguf(f.metadata, {n: t.shape for n, t in f.tensors.items()}, path.name)
    Tokenizer.from_gguf(f.metadata)
    template = ChatTemplate.from_metadata(f.metadata)
    if template is not None:
        template.render([{"role": "user", "content": "hi"}])
    if generate:
        llm = LLM(Engine(path, device="cpu"))
        llm.generate("hi there", max_tokens=2, temperature=0.0, stream=False)
        llm.generate("hi", max_tokens=2, temperature=0.9, seed=1, stream=False)


def run_cases(make, n: int, generate_every: int = 1) -> dict[str, int]:
    """Runs `make(rng, i) -> Path`, then `exercise`; returns outcome counts, failing on any
    exception that is not a one-line DriftError."""
    rng = random.Random(11)
    failures: list[str] = []
    outcomes = {"ok": 0, "error": 0}
    with bounded():
        for i in range(n):
            path = make(rng, i)
            signal.alarm(CASE_SECONDS)
            try:
                exercise(path, generate=i % generate_every == 0)
                outcomes["ok"] += 1
            except DriftError as e:
                outcomes["error"] += 1
                message = str(e)
                if "\n" in message or len(message) > MAX_MESSAGE:
                    failures.append(f"case {i}: unbounded message {message[:200]!r}")
            except Exception as e:  # noqa: BLE001 -- what the test is looking for
                failures.append(f"case {i}: {type(e).__name__}: {str(e)[:200]}")
            finally:
                signal.alarm(0)
            path.unlink(missing_ok=True)
    assert not failures, f"{len(failures)} of {n} cases: " + " | ".join(failures[:5])
    return outcomes


def header_end(path: Path) -> int:
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        header = _Header(buf, str(path))
        end = header.pos
        del header
    return end


def mutate_bytes(rng: random.Random, data: bytes, lo: int, hi: int) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(lo, hi)
        kind = rng.random()
        if kind < 0.4:
            out[at] = rng.randrange(256)
        elif kind < 0.6:
            out[at] ^= 1 << rng.randrange(8)
        elif kind < 0.8 and at + 8 <= len(out):
            struct.pack_into("<Q", out, at, rng.choice(INTERESTING))
        elif at + 4 <= len(out):
            struct.pack_into("<I", out, at, rng.choice(INTERESTING) & 0xFFFFFFFF)
    if rng.random() < 0.05:
        out = out[: rng.randrange(lo, len(out))]
    return bytes(out)


def test_fuzzed_bytes_of_a_tiny_model(tmp_path: Path) -> None:
    clean = tiny.write(tmp_path / "clean.gguf")
    data, end = clean.read_bytes(), header_end(clean)

    def make(rng: random.Random, i: int) -> Path:
        path = tmp_path / f"b{i}.gguf"
        path.write_bytes(mutate_bytes(rng, data, 24, end))
        return path

    outcomes = run_cases(make, CASES, generate_every=5)
    assert outcomes["error"] > CASES // 2  # the mutations reach the checks


VALUES = [0, 1, -1, 3, 2**31, 2**32 - 1, 2**63 - 1, -(2**63), math.nan, math.inf, -math.inf,
          0.0, 1e-30, 1e30, -2.5, "", "x", "x" * 5000, True, False, [1, 2], ["a b"], [1.5]]


def test_fuzzed_metadata_values(tmp_path: Path) -> None:
    """Every key of the tiny model (and some it lacks) set to values of every type and range."""
    keys = list(tiny.metadata()) + ["llama.attention.key_length", "llama.rope.scaling.type",
                                    "llama.rope.scaling.factor", "tokenizer.ggml.unknown_token_id",
                                    "tokenizer.ggml.scores", "general.alignment"]

    def make(rng: random.Random, i: int) -> Path:
        changes = {}
        for _ in range(rng.randint(1, 2)):
            value = rng.choice(VALUES)
            if isinstance(value, int) and not isinstance(value, bool) and -128 <= value < 128 \
                    and rng.random() < 0.5:  # the same number as another integer type
                signed = [T.INT8, T.INT32, T.INT64]
                value = (value, rng.choice(signed if value < 0 else signed + [T.UINT8, T.UINT64]))
            changes[rng.choice(keys)] = value if rng.random() < 0.9 else tiny.DROP
        return tiny.write(tmp_path / f"v{i}.gguf", changes)

    run_cases(make, max(CASES // 3, 50), generate_every=2)


FRAGMENTS = [
    "{{", "}}", "{%", "%}", "{#", "#}", "{% for m in messages %}", "{% endfor %}", "{% if 1 %}",
    "{% endif %}", "{% else %}", "{{ messages }}", "{{ m.content }}", "|tojson", "|upper", "~",
    "+", "*", "**", "'", '"', "(", ")", "[", "]", ".__class__", "{{ raise_exception('x') }}",
    "{% set ns = namespace(a=1) %}", "{{ ns.a }}", "{% break %}", "loop.index", "none",
    "{{ range(10) | list }}", "{{ 'ab' * 3 }}", "{{ 9 ** 9 ** 9 }}", "{{ 'a' | center(10**9) }}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "{% generation %}", "{% endgeneration %}",
    "{{ dict(a=1) }}", "{{ strftime_now('%Y') }}", "\x00", "\udcff", "é", "\n",
]
SLOW = "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}"


def mutate_template(rng: random.Random, source: str) -> str:
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(source) + 1)
        kind = rng.random()
        if kind < 0.3:
            source = source[:at] + source[at + rng.randint(1, 20):]
        elif kind < 0.5:
            width = rng.randint(1, 40)
            source = source[:at] + source[at:at + width] * rng.randint(2, 4) + source[at:]
        elif kind < 0.995:
            source = source[:at] + rng.choice(FRAGMENTS) + source[at:]
        else:
            source = source[:at] + SLOW + source[at:]
    return source


def test_fuzzed_chat_templates(monkeypatch) -> None:
    monkeypatch.setattr(chat_module, "TIMEOUT_S", 0.5)
    sources = [tiny.TEMPLATE, FALLBACK_TEMPLATES["gemma3"]]
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "ok?"}]
    rng = random.Random(11)
    failures, errors = [], 0
    with bounded():
        for i in range(CASES):
            source = mutate_template(rng, rng.choice(sources))
            signal.alarm(CASE_SECONDS)
            try:
                ChatTemplate(source, {"bos_token": "<s>"}).render(messages, rng.random() < 0.5)
            except DriftError as e:
                errors += 1
                if "\n" in str(e) or len(str(e)) > MAX_MESSAGE:
                    failures.append(f"case {i}: unbounded message")
            except Exception as e:  # noqa: BLE001
                failures.append(f"case {i}: {type(e).__name__}: {str(e)[:200]} in {source!r:.200}")
            finally:
                signal.alarm(0)
    assert not failures, f"{len(failures)} of {CASES}: " + " | ".join(failures[:5])
    assert errors > CASES // 10


@pytest.mark.slow
def test_fuzzed_header_of_smollm2(smollm2_path: Path, tmp_path: Path) -> None:
    """The real file's header and tensor infos mutated; the tensor data left sparse (zeros)."""
    size, end = smollm2_path.stat().st_size, header_end(smollm2_path)
    with open(smollm2_path, "rb") as f:
        head = f.read(end + 64)

    def make(rng: random.Random, i: int) -> Path:
        path = tmp_path / f"s{i}.gguf"
        with open(path, "wb") as out:
            out.write(mutate_bytes(rng, head, 24, end))
            out.truncate(size)
        return path

    run_cases(make, max(CASES // 15, 20), generate_every=10**9)
