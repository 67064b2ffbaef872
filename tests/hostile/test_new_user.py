"""What a new user trips over (issue 11): a full context is reported, Ctrl-C ends a reply
and not the chat, --help shows the defaults, setup installs what the README's commands need."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import drift
from drift.commands import generate as generate_cmd

from . import tiny

ROOT = Path(__file__).resolve().parents[2]


def test_full_context_is_the_finish_reason_and_said_on_stderr(tmp_path: Path) -> None:
    path = tiny.write(tmp_path / "m.gguf", {"tokenizer.ggml.eos_token_id": tiny.DROP})
    llm = drift.load(path, device="cpu", ctx=12)
    llm.generate("hello", max_tokens=100, temperature=0.0, stream=False)
    assert llm.last_stats.finish_reason == "context"
    proc = subprocess.run([sys.executable, "-m", "drift", "run", str(path), "--device", "cpu",
                           "--ctx", "12", "-n", "100", "--temp", "0", "--raw", "-q", "hello"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "context of 12 tokens is full" in proc.stderr, proc.stderr


def test_ctrl_c_ends_the_reply_not_the_chat(tmp_path: Path, monkeypatch, capsys) -> None:
    llm = drift.load(tiny.write(tmp_path / "m.gguf"), device="cpu")

    def interrupted(*args, **kwargs):
        yield "partial"
        raise KeyboardInterrupt

    monkeypatch.setattr("drift.runtime.generate.stream", interrupted)
    ids = llm.encode_prompt("hi")
    assert generate_cmd._stream_out(llm, ids, generate_cmd.SamplerConfig(), 8, [],
                                    interruptible=True) == "partial"
    assert llm.last_stats.finish_reason == "interrupted"
    assert "[interrupted]" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):  # drift run: Ctrl-C still ends the program
        generate_cmd._stream_out(llm, ids, generate_cmd.SamplerConfig(), 8, [])


def test_an_unfinished_step_leaves_no_stale_cache(tmp_path: Path, monkeypatch) -> None:
    llm = drift.load(tiny.write(tmp_path / "m.gguf"), device="cpu")
    llm.engine.prefill([1, 2, 3, 4])
    program = llm.engine.program(1)
    monkeypatch.setattr(program, "run", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        llm.engine.forward([9], 2)
    assert llm.engine.cached_tokens == [1, 2]


def test_help_shows_the_sampling_defaults() -> None:
    from drift.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = sub.choices["run"].format_help()
    for default in ("(default: 256)", "(default: 0.8)", "(default: 40)", "(default: 0.95)",
                    "(default: 0.05)"):
        assert default in text


def test_setup_installs_the_analysis_extra() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'extras="analysis"' in setup and '-e ".[${extras}]"' in setup


def test_short_name_says_when_the_preset_is_used(tmp_path: Path) -> None:
    env = dict(os.environ, DRIFT_HOME=str(tmp_path))  # nothing downloaded
    proc = subprocess.run([sys.executable, "-m", "drift", "analyze", "smollm2-135m", "--json"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "preset shapes are used" in proc.stderr
