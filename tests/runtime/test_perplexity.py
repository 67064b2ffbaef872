"""drift perplexity: the windowing, the command's errors, and SmolLM2's figure against
transformers (same token ids, same windows, fp32 on the CPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from drift.cli import main
from drift.runtime.perplexity import perplexity, token_nll, windows

TEXT = (
    "The river rises in the hills to the north of the town and runs south through a wide "
    "valley of farms and orchards. In the spring, when the snow melts, it floods the lower "
    "fields, and the farmers move their animals to higher ground. The town was built where "
    "the valley narrows, at the first place the river could be crossed on foot in summer. A "
    "wooden bridge stood there for three hundred years before the stone one that carries the "
    "road today. The market is held in the square beside the church every Saturday morning, "
    "and people come from the villages around to sell vegetables, cheese, bread and honey. "
    "In the evening the square is quiet again, and the only sound is the water under the "
    "bridge and the bells of the church striking the hours."
)


def test_windows_score_every_token_once():
    for n, ctx, stride in [(200, 64, 32), (64, 64, 64), (10, 64, 32), (130, 64, 64), (101, 8, 3)]:
        spans = windows(n, ctx, stride)
        scored = []
        for begin, end, k in spans:
            assert end - begin <= ctx and 1 <= k < end - begin + 1
            scored += range(end - k, end)
        assert scored == list(range(1, n))


def test_token_nll_is_log_softmax():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 11)).astype(np.float32) * 4
    t = rng.integers(0, 11, 5)
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(token_nll(x, t), -np.log(p[np.arange(5), t]), rtol=1e-5)


def _hf_perplexity(model, ids: list[int], ctx: int, stride: int) -> float:
    import torch

    nll, count = 0.0, 0
    for begin, end, k in windows(len(ids), ctx, stride):
        x = torch.tensor([ids[begin:end]])
        with torch.no_grad():
            logits = model(x).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        n = end - begin
        for p in range(n - k - 1, n - 1):
            nll -= float(logp[p, ids[begin + p + 1]])
            count += 1
    return math.exp(nll / count)


def test_smollm2_perplexity_matches_transformers(smollm2_path):
    transformers = pytest.importorskip("transformers")
    import torch

    from drift.runtime.engine import Engine
    from drift.tokenizer import Tokenizer

    engine = Engine(smollm2_path, device="cpu", ctx=64)
    ids = Tokenizer.from_gguf(engine.file.metadata).encode(TEXT, parse_special=False)
    assert 150 <= len(ids) <= 260
    ours = perplexity(engine, ids, 64, 32)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_path.parent), gguf_file=smollm2_path.name, dtype=torch.float32)
    theirs = _hf_perplexity(model.eval(), ids, 64, 32)
    print(f"SmolLM2 ppl over {ours.n_scored} tokens: drift {ours.perplexity:.5f}, "
          f"transformers {theirs:.5f}")
    assert ours.n_scored == len(ids) - 1
    assert ours.perplexity == pytest.approx(theirs, rel=1e-3)


@pytest.mark.parametrize("extra, message", [
    (["--ctx", "1"], "--ctx must be >= 2"),
    (["--ctx", "16", "--stride", "17"], "--stride must be in [1, --ctx=16]"),
    (["--ctx", "16", "--stride", "0"], "--stride must be in"),
])
def test_bad_window_is_one_line(tmp_path, capsys, extra, message):
    text = tmp_path / "t.txt"
    text.write_text("hello world")
    assert main(["perplexity", "nowhere.gguf", "--text", str(text)] + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err


def test_missing_or_empty_text_is_one_line(tmp_path, capsys):
    assert main(["perplexity", "nowhere.gguf", "--text", str(tmp_path / "none.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no such file" in err and "\n" not in err
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n")
    assert main(["perplexity", "nowhere.gguf", "--text", str(empty)]) == 2
    assert "empty" in capsys.readouterr().err


def test_missing_model_is_one_line(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello world")
    assert main(["perplexity", str(tmp_path / "none.gguf"), "--text", str(text)]) != 0
    err = capsys.readouterr().err.strip()
    assert "no such file" in err and "\n" not in err
