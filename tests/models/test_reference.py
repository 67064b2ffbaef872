"""Both reference models against Hugging Face transformers on the same GGUF (fp32, CPU).

The engine runs the numpy backend through the IR; transformers dequantizes the same file with
gguf-py and runs its own modelling code: an independent reference. Prompts are tokenized with
transformers' tokenizer so these tests do not depend on drift's.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from drift.runtime.engine import Engine  # noqa: E402

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a land far away, there lived a dragon who",
]
REL_TOL = 1e-3


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def pair(reference_model_path):
    """(drift engine, transformers model, transformers tokenizer) for one model file."""
    d, name = str(reference_model_path.parent), reference_model_path.name
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=name,
                                                              dtype=torch.float32)
    model.eval()
    engine = Engine(reference_model_path, device="cpu", ctx=256)
    return engine, model, tok


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()  # (S, V)


@pytest.mark.slow
def test_prefill_logits_match_transformers(pair):
    engine, model, tok = pair
    for prompt in PROMPTS:
        ids = tok(prompt)["input_ids"]
        engine.reset()
        ours = engine.prefill(ids)
        ref = hf_logits(model, ids)[-1]
        assert rel_err(ours, ref) <= REL_TOL, prompt


@pytest.mark.slow
def test_stepwise_decode_logits_match_transformers(pair):
    """Prefill a few tokens, then one token per call over the KV cache: each step's logits
    equal transformers' logits at that position of the whole sequence."""
    engine, model, tok = pair
    ids = tok(PROMPTS[2])["input_ids"]
    ref = hf_logits(model, ids)
    engine.reset()
    engine.forward(ids[:3], 0)
    for i in range(3, len(ids)):
        ours = engine.forward([ids[i]], i)
        assert rel_err(ours, ref[i]) <= REL_TOL, f"position {i}"


@pytest.mark.slow
def test_greedy_32_tokens_identical(pair):
    engine, model, tok = pair
    ids = tok(PROMPTS[0])["input_ids"]
    # drift: prefill then decode one token at a time through the cache
    engine.reset()
    logits = engine.prefill(ids)
    ours = []
    for _ in range(32):
        ours.append(int(np.argmax(logits)))
        logits = engine.forward([ours[-1]], len(ids) + len(ours) - 1)
    # transformers: the plain greedy loop, recomputing the whole sequence each step
    seq = list(ids)
    theirs = []
    for _ in range(32):
        theirs.append(int(np.argmax(hf_logits(model, seq)[-1])))
        seq.append(theirs[-1])
    assert ours == theirs, (tok.decode(ours), tok.decode(theirs))
