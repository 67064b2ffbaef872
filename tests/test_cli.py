"""The CLI end to end, as a user runs it: real processes, real files.

Every user mistake must give one clear line on stderr, a non-zero exit and no traceback.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest


def drift(*args: str, stdin: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "drift", *args], capture_output=True, text=True,
                          input=stdin, timeout=timeout, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("drift: error:"), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --- generation --------------------------------------------------------------------------


@pytest.mark.slow
def test_run_default_model_answers_paris(smollm2_path):
    """The README's main job: the default model, chat template, greedy."""
    proc = drift("run", "--temp", "0", "-n", "12", "What is the capital of France?")
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    assert "decode" in proc.stderr and "tok/s" in proc.stderr  # figures go to stderr only
    assert "tok/s" not in proc.stdout


@pytest.mark.slow
def test_run_raw_continues_prompt_as_given(smollm2_path):
    proc = drift("run", str(smollm2_path), "--raw", "--temp", "0", "-n", "4", "-q",
                 "The capital of France is")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("Paris"), proc.stdout
    assert proc.stderr.strip() == ""


@pytest.mark.slow
def test_chat_answers_each_turn(smollm2_path):
    proc = drift("chat", str(smollm2_path), "--temp", "0", "-n", "8",
                 stdin="My name is Ada.\n/reset\nWhat is two plus two?\n/exit\nignored\n")
    assert proc.returncode == 0, proc.stderr
    assert len([line for line in proc.stdout.splitlines() if line.strip()]) >= 2, proc.stdout


@pytest.mark.slow
def test_chat_history_is_kept_and_its_prefix_reused(smollm2_path):
    """The second turn's prompt holds the first turn and its answer, and the KV cache already
    holds that prefix, so only the new turn is computed."""
    import drift

    llm = drift.load(str(smollm2_path), device="cpu")
    messages = [{"role": "user", "content": "My name is Ada."}]
    answer = llm.chat(messages, temperature=0, max_tokens=8, stream=False)
    first_prompt = llm.last_stats.prompt_tokens
    messages += [{"role": "assistant", "content": answer},
                 {"role": "user", "content": "What is my name?"}]
    assert "My name is Ada." in llm.render_chat(messages)
    llm.chat(messages, temperature=0, max_tokens=8, stream=False)
    assert llm.last_stats.reused_tokens >= first_prompt


# --- bad input ---------------------------------------------------------------------------


def test_missing_file():
    assert_one_line_error(drift("run", "/nonexistent/model.gguf", "hi"), "no such file")


def test_not_a_gguf_file(tmp_path):
    f = tmp_path / "notes.gguf"
    f.write_text("these are not weights\n" * 10)
    assert_one_line_error(drift("run", str(f), "hi"), "not a GGUF file")


def test_truncated_gguf(tmp_path, smollm2_path):
    f = tmp_path / "truncated.gguf"
    with open(smollm2_path, "rb") as src:
        f.write_bytes(src.read(3_000_000))  # the header and a little of the tensor data
    assert_one_line_error(drift("run", str(f), "hi"), "truncated")


def test_header_with_absurd_counts_fails_fast(tmp_path):
    f = tmp_path / "absurd.gguf"
    f.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**62, 2**61) + bytes(64))
    proc = drift("run", str(f), "hi", timeout=30)
    assert_one_line_error(proc, "absurd.gguf")


def _mutated_copy(src: Path, dst: Path, old: bytes, new: bytes) -> Path:
    data = bytearray(src.read_bytes())
    i = data.find(old)
    assert i >= 0
    data[i : i + len(old)] = new
    dst.write_bytes(bytes(data))
    return dst


def test_unsupported_architecture(tmp_path, smollm2_path):
    key = b"general.architecture" + struct.pack("<IQ", 8, 5)  # type string, length 5
    f = _mutated_copy(smollm2_path, tmp_path / "mamba.gguf", key + b"llama", key + b"mamba")
    assert_one_line_error(drift("run", str(f), "hi"), "architecture 'mamba' is not supported")


def test_unsupported_quant_type(tmp_path, smollm2_path):
    name = b"blk.0.attn_q.weight"
    info = struct.pack("<Q", len(name)) + name + struct.pack("<IQQ", 2, 576, 576)
    q4_1, iq4_nl = struct.pack("<I", 3), struct.pack("<I", 20)  # same 32-element blocks
    f = _mutated_copy(smollm2_path, tmp_path / "iq.gguf", info + q4_1, info + iq4_nl)
    assert_one_line_error(drift("run", str(f), "hi"), "blk.0.attn_q.weight", "IQ4_NL")


def test_prompt_longer_than_context(smollm2_path):
    proc = drift("run", str(smollm2_path), "--raw", "--ctx", "16", "word " * 40)
    assert_one_line_error(proc, "context holds 16")


@pytest.mark.parametrize("flags,fragment", [
    (["--top-p", "2"], "top-p"),
    (["--temp", "-1"], "temperature"),
    (["--top-k", "-5"], "top-k"),
    (["--min-p", "1.5"], "min-p"),
    (["--repeat-penalty", "0"], "repeat-penalty"),
    (["-n", "-3"], "max-tokens"),
    (["--ctx", "0"], "ctx"),
])
def test_invalid_sampler_values(flags, fragment):
    assert_one_line_error(drift("run", *flags, "hi"), fragment)


def test_unknown_model_name():
    assert_one_line_error(drift("run", "no-such-model", "hi"), "unknown model")


def test_unknown_device(smollm2_path):
    assert_one_line_error(drift("run", str(smollm2_path), "--device", "tpu", "hi"), "tpu")


@pytest.mark.parametrize("name, value, device", [
    ("DRIFT_DECODE_AHEAD", "yes", "cpu"),
    ("DRIFT_WGSL_CHECKS", "off", "webgpu"),
])
def test_a_bad_setting_in_the_environment_is_one_line(smollm2_path, monkeypatch, name, value,
                                                      device):
    """The environment's switches (decode ahead, WGSL's run-time checks) refuse a value they
    do not know: one line naming it, a non-zero exit."""
    if device == "webgpu":
        from drift.backends.webgpu import WebGPUBackend

        if not WebGPUBackend.available():
            pytest.skip("no webgpu device (scripts/test.sh installs lavapipe)")
    monkeypatch.setenv(name, value)
    proc = drift("run", str(smollm2_path), "--device", device, "--temp", "0", "-n", "2", "hi")
    assert_one_line_error(proc, f"{name}={value!r}", "0 or 1")


def test_list_shows_known_models():
    proc = drift("list", "--json")
    assert proc.returncode == 0 and "smollm2-135m" in proc.stdout


@pytest.mark.parametrize("args, needle", [
    (("run", "--temp"), "--temp: expected one argument"),
    (("bench", "m.gguf", "--offload", "sideways"), "invalid choice: 'sideways'"),
    (("run", "--no-such-flag", "hi"), "unrecognized arguments"),
])
def test_a_refused_argument_is_one_line(args, needle):
    """argparse's own refusals too: one line (the usage is what --help prints), exit 2."""
    proc = drift(*args)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert needle in proc.stderr


def test_no_command_prints_usage():
    proc = drift()
    assert proc.returncode == 2 and "usage" in proc.stderr


@pytest.fixture(autouse=True)
def _no_stray_downloads(monkeypatch, tmp_path):
    """The CLI tests must never fetch: point pip at nothing if something tries."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)
