"""One test per class of hostile input (issue 11): every bad value gets one bounded line of
DriftError (or, from the Python API, a TypeError/ValueError naming the argument)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as T
from gguf import GGUFWriter

import drift
from drift.errors import (MAX_MESSAGE, DriftError, ModelFileError, NumericalError,
                          TemplateError)
from drift.formats.gguf import open_gguf
from drift.models import config_from_gguf
from drift.runtime.sampler import Sampler, SamplerConfig
from drift.tokenizer import ChatTemplate, Tokenizer
from drift.tokenizer import chat as chat_module

from . import tiny


def load_config(path: Path):
    f = open_gguf(path)
    return config_from_gguf(f.metadata, {n: t.shape for n, t in f.tensors.items()}, path.name)


# -- 1. metadata values are checked for type and range ------------------------------------------

METADATA_CASES = {
    "zero heads": ({"llama.attention.head_count": 0}, "head_count=0"),
    "zero kv heads": ({"llama.attention.head_count_kv": 0}, "head_count_kv=0"),
    "kv heads not dividing": ({"llama.attention.head_count_kv": 3}, "head_count_kv=3"),
    "huge block count": ({"llama.block_count": 2**31}, "block_count=2147483648"),
    "block count beyond the tensors": ({"llama.block_count": 3}, "holds tensors for 2 blocks"),
    "negative block count": ({"llama.block_count": (-1, T.INT32)}, "block_count=-1"),
    "width as a float": ({"llama.embedding_length": 32.0}, "embedding_length=32.0"),
    "width as a string": ({"llama.embedding_length": "32"}, "embedding_length='32'"),
    "width as a bool": ({"llama.embedding_length": True}, "embedding_length=True"),
    "NaN epsilon": ({"llama.attention.layer_norm_rms_epsilon": math.nan}, "epsilon=nan"),
    "zero epsilon": ({"llama.attention.layer_norm_rms_epsilon": 0.0}, "epsilon=0.0"),
    "infinite rope base": ({"llama.rope.freq_base": math.inf}, "freq_base=inf"),
    "negative rope base": ({"llama.rope.freq_base": -1.0}, "freq_base=-1.0"),
    "zero rope dims": ({"llama.rope.dimension_count": 0}, "dimension_count=0"),
    "odd rope dims": ({"llama.rope.dimension_count": 7}, "dimension_count=7"),
    "rope dims past the head": ({"llama.rope.dimension_count": 64}, "dimension_count=64"),
    "zero context": ({"llama.context_length": 0}, "context_length=0"),
    "huge vocab": ({"llama.vocab_size": 2**40}, "vocab_size=1099511627776"),
    "rope scaling type": ({"llama.rope.scaling.type": 5}, "rope.scaling.type=5"),
    "rope scaling factor": ({"llama.rope.scaling.type": "linear",
                             "llama.rope.scaling.factor": 0.0}, "scaling.factor=0.0"),
}


@pytest.mark.parametrize("case", METADATA_CASES)
def test_bad_metadata_value_names_key_and_value(case: str, tmp_path: Path) -> None:
    changes, fragment = METADATA_CASES[case]
    path = tiny.write(tmp_path / "m.gguf", changes)
    with pytest.raises(ModelFileError) as err:
        load_config(path)
    assert fragment in str(err.value)


def test_tiny_model_loads_as_written(tmp_path: Path) -> None:
    cfg = load_config(tiny.write(tmp_path / "m.gguf"))
    assert (cfg.n_layers, cfg.n_heads, cfg.head_dim) == (tiny.LAYERS, tiny.H, tiny.D // tiny.H)


# -- 2. tokenizer metadata ----------------------------------------------------------------------

TOKENIZER_CASES = {
    "merge without a space": ({"tokenizer.ggml.merges": ["Ġt"]}, "merges[0]='Ġt'"),
    "merge with two spaces": ({"tokenizer.ggml.merges": ["a b c"]}, "merges[0]='a b c'"),
    "merge of numbers": ({"tokenizer.ggml.merges": [1, 2]}, "merges[0]=1"),
    "merge outside the vocabulary": ({"tokenizer.ggml.merges": ["zz qq"]}, "out of vocabulary"),
    "eos out of range": ({"tokenizer.ggml.eos_token_id": 10**6}, "eos_token_id=1000000"),
    "bos negative": ({"tokenizer.ggml.bos_token_id": (-1, T.INT32)}, "bos_token_id=-1"),
    "eos a string": ({"tokenizer.ggml.eos_token_id": "2"}, "eos_token_id='2'"),
    "tokens of numbers": ({"tokenizer.ggml.tokens": [1, 2, 3]}, "tokens[0]=1"),
    "token types short": ({"tokenizer.ggml.token_type": [1, 1]}, "token_type has 2 items"),
    "token types of strings": ({"tokenizer.ggml.token_type": ["x"] * 267}, "token_type[0]='x'"),
    "pre not a string": ({"tokenizer.ggml.pre": [1, 2]}, "tokenizer.ggml.pre=[1, 2]"),
}


@pytest.mark.parametrize("case", TOKENIZER_CASES)
def test_bad_tokenizer_metadata_names_key(case: str) -> None:
    changes, fragment = TOKENIZER_CASES[case]
    md = tiny.metadata() | {k: v[0] if isinstance(v, tuple) else v for k, v in changes.items()}
    with pytest.raises(ModelFileError) as err:
        Tokenizer.from_gguf(md)
    assert fragment in str(err.value)


# -- 3. numerical faults at run time ------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("config", [SamplerConfig(temperature=0.0), SamplerConfig(seed=1),
                                    SamplerConfig(top_k=0, top_p=1.0, min_p=0.0, seed=1)])
def test_sampler_stops_on_logits_it_cannot_draw_from(bad: float, config: SamplerConfig) -> None:
    logits = np.zeros(100, np.float32)
    if bad == -np.inf:
        logits[:] = bad  # -inf is a fine logit unless every one is
    else:
        logits[37] = bad
    with pytest.raises(NumericalError, match="logits"):
        Sampler(config)(logits)


def test_some_minus_inf_logits_are_fine() -> None:
    logits = np.full(10, -np.inf)
    logits[3] = 1.0
    assert Sampler(SamplerConfig(seed=0))(logits) == 3


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_nan_weights_stop_generation(tmp_path: Path, temperature: float) -> None:
    norm = np.full(tiny.D, np.nan, np.float32)
    path = tiny.write(tmp_path / "nan.gguf", tensor_changes={"output_norm.weight": norm})
    llm = drift.load(path, device="cpu")
    with pytest.raises(NumericalError, match="NaN logits"):
        llm.generate("hello", max_tokens=4, temperature=temperature, stream=False)


# -- 4. chat templates --------------------------------------------------------------------------

HOSTILE_TEMPLATES = {
    "nested loops": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}"
                    "{% endfor %}",
    "string growth": "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}",
    "huge constant": "{{ 'a' * 10**10 }}",
    "huge filter width": "{{ 'a' | center(10**10) }}",
    "huge format width": "{{ '{:>9999999999}'.format(1) }}",
    "deep nesting": "{% if 1 %}" * 3000 + "{% endif %}" * 3000,
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "syntax error": "{% for %}",
    "unknown filter": "{{ 1 | no_such_filter }}",
    "escape attempt": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "mutation": "{{ messages.append(1) }}",
    "undefined": "{{ messages[9].content.x }}",
}


@pytest.mark.parametrize("case", HOSTILE_TEMPLATES)
def test_hostile_template_is_one_bounded_error(case: str, monkeypatch) -> None:
    monkeypatch.setattr(chat_module, "TIMEOUT_S", 1.0)
    with pytest.raises(TemplateError) as err:
        ChatTemplate(HOSTILE_TEMPLATES[case], {}).render([{"role": "user", "content": "hi"}])
    assert "\n" not in str(err.value) and len(str(err.value)) <= MAX_MESSAGE


def test_sandbox_recovers_after_a_runaway_template(monkeypatch) -> None:
    monkeypatch.setattr(chat_module, "TIMEOUT_S", 0.5)
    with pytest.raises(TemplateError, match="did not finish"):
        ChatTemplate(HOSTILE_TEMPLATES["nested loops"], {}).render([])
    assert ChatTemplate("{{ messages[0].content }}!", {}).render([{"role": "u", "content": "a"}]) \
        == "a!"


def test_template_output_is_capped() -> None:
    template = ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}", {})
    with pytest.raises(TemplateError, match="output passes 100 characters"):
        chat_module.SANDBOX.run(template.source, {"messages": [{"content": "x" * 101}]},
                                "chat template", max_chars=100)


# -- 5. prompts that are not valid UTF-8 ----------------------------------------------------------


def test_lone_surrogates_are_replaced(tmp_path: Path) -> None:
    tok = Tokenizer.from_gguf(tiny.metadata())
    assert tok.encode("a\udcff\ud800b") == tok.encode("a\ufffd\ufffdb")


def _drift_cli(*args: str | bytes, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", LC_ALL="C.UTF-8")
    return subprocess.run([sys.executable, "-m", "drift", *args], capture_output=True,
                          input=stdin, timeout=120, env=env)


def test_invalid_utf8_prompt_from_argv_and_stdin(tmp_path: Path) -> None:
    path = str(tiny.write(tmp_path / "m.gguf"))
    for args, stdin in [((b"caf\xe9 \xff",), None), (("-",), b"caf\xe9 \xff\n")]:
        proc = _drift_cli("run", path, "--device", "cpu", "-n", "2", "--raw", "-q", *args,
                          stdin=stdin)
        assert proc.returncode == 0, proc.stderr.decode()
        assert b"Traceback" not in proc.stderr


# -- 6. messages are bounded ----------------------------------------------------------------------


def test_huge_value_gives_a_short_message(tmp_path: Path) -> None:
    path = tiny.write(tmp_path / "m.gguf", {"llama.attention.head_count": "x" * 700_000})
    with pytest.raises(ModelFileError) as err:
        load_config(path)
    assert len(str(err.value)) <= MAX_MESSAGE and "head_count" in str(err.value)
    assert len(str(DriftError("y" * 10**6))) <= MAX_MESSAGE


# -- 7. the Python API checks its arguments -------------------------------------------------------


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory):
    return drift.load(tiny.write(tmp_path_factory.mktemp("api") / "m.gguf"), device="cpu")


API_CASES = {
    "generate(None)": (lambda llm: llm.generate(None), TypeError, "prompt"),
    "generate(bytes)": (lambda llm: llm.generate(b"x"), TypeError, "prompt"),
    "max_tokens str": (lambda llm: llm.generate("x", max_tokens="8"), TypeError, "max_tokens"),
    "max_tokens float": (lambda llm: llm.generate("x", max_tokens=8.0), TypeError, "max_tokens"),
    "max_tokens < 0": (lambda llm: llm.generate("x", max_tokens=-1), ValueError, "max_tokens"),
    "temperature str": (lambda llm: llm.generate("x", temperature="0"), TypeError,
                        "temperature"),
    "temperature < 0": (lambda llm: llm.generate("x", temperature=-1), ValueError,
                        "temperature"),
    "top_k float": (lambda llm: llm.generate("x", top_k=4.5), TypeError, "top_k"),
    "top_p > 1": (lambda llm: llm.generate("x", top_p=2.0), ValueError, "top-p"),
    "seed str": (lambda llm: llm.generate("x", seed="1"), TypeError, "seed"),
    "stop int": (lambda llm: llm.generate("x", stop=1), TypeError, "stop"),
    "stream str": (lambda llm: llm.generate("x", stream="no"), TypeError, "stream"),
    "chat(str)": (lambda llm: llm.chat("hi"), TypeError, "messages"),
    "chat(None)": (lambda llm: llm.chat(None), TypeError, "messages"),
    "chat([])": (lambda llm: llm.chat([]), ValueError, "messages"),
    "chat([str])": (lambda llm: llm.chat(["hi"]), TypeError, "messages[0]"),
    "chat no role": (lambda llm: llm.chat([{"content": "hi"}]), ValueError, "messages[0]"),
    "chat content int": (lambda llm: llm.chat([{"role": "user", "content": 1}]), TypeError,
                         "content"),
    "load(int)": (lambda llm: drift.load(3), TypeError, "model"),
    "load ctx str": (lambda llm: drift.load("x.gguf", ctx="4"), TypeError, "ctx"),
    "load ctx 0": (lambda llm: drift.load("x.gguf", ctx=0), ValueError, "ctx"),
    "load device int": (lambda llm: drift.load("x.gguf", device=0), TypeError, "device"),
}


@pytest.mark.parametrize("case", API_CASES)
def test_api_names_the_bad_argument(llm, case: str) -> None:
    call, error, name = API_CASES[case]
    with pytest.raises(error, match=name.replace("[", r"\[").replace("]", r"\]")):
        call(llm)


def test_api_still_generates(llm) -> None:
    out = llm.generate("hello", max_tokens=3, temperature=np.float32(0), top_k=np.int64(5),
                       stop="never", stream=False)
    assert isinstance(out, str) and llm.last_stats.generated_tokens <= 3


# -- 8. the reader: dimensions past the address space ---------------------------------------------


def test_empty_tensor_with_huge_dimensions(tmp_path: Path) -> None:
    path = tmp_path / "dims.gguf"
    w = GGUFWriter(path, "llama")
    w.add_tensor_info("x.weight", (2**40, 2**30, 0), np.dtype(np.float32), 0, Q.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with pytest.raises(ModelFileError, match="too large"):
        open_gguf(path)


# -- the CLI: one bad file of each class, a short answer on stderr --------------------------------

CLI_CASES = {
    "metadata": ({"llama.block_count": 2**31}, None),
    "tokenizer": ({"tokenizer.ggml.merges": ["Ġt"]}, None),
    "template": ({"tokenizer.chat_template": "{{ 'a' * 10**10 }}"}, None),
    "numerical": ({}, {"output_norm.weight": np.full(tiny.D, np.nan, np.float32)}),
}


@pytest.mark.parametrize("case", CLI_CASES)
@pytest.mark.parametrize("greedy", [True, False])
def test_cli_on_hostile_files(case: str, greedy: bool, tmp_path: Path) -> None:
    changes, tensors = CLI_CASES[case]
    path = tiny.write(tmp_path / f"{case}.gguf", changes, tensors)
    proc = _drift_cli("run", str(path), "--device", "cpu", "-n", "4",
                      "--temp", "0" if greedy else "0.8", "hello")
    stderr = proc.stderr.decode()
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and "Traceback" not in stderr, stderr
    assert 1 <= len(lines) <= 3 and lines[-1].startswith("drift: error:"), stderr
