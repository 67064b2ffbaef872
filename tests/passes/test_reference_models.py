"""The reference models through the numpy backend's full pipeline: fused graphs against unfused
ones (same greedy tokens, logits within 1e-5), both from planned arenas and virtualized
storages, and against Hugging Face transformers on the same GGUF (fp32)."""

from __future__ import annotations

import numpy as np
import pytest

from drift.backends.cpu import CPUBackend, LazyQuantMatrix
from drift.passes.storage import ChannelSlices4, MultiObject, QuantBlockPlanes
from drift.runtime.engine import Engine

from .helpers import rel_err

PROMPTS = {  # token ids, so these tests need no tokenizer
    "SmolLM2-135M-Instruct.Q4_1.gguf": [1, 504, 3458, 282, 4649, 314],  # The capital of France is
    "gemma-3-270m-q4_k_m.gguf": [2, 818, 5279, 529, 7001, 563],
}
STEPS = 16


def greedy(engine: Engine, ids: list[int], steps: int = STEPS):
    """Prefill, then one token per call through the cache: tokens and each step's logits."""
    engine.reset()
    logits = engine.forward(ids, 0)
    tokens, all_logits = [], [logits]
    for _ in range(steps):
        tokens.append(int(np.argmax(logits)))
        logits = engine.forward([tokens[-1]], len(ids) + len(tokens) - 1)
        all_logits.append(logits)
    return tokens, all_logits


@pytest.fixture(scope="module")
def runs(reference_model_path):
    """The same engine compiled fused, then unfused (same weights, same cache)."""
    engine = Engine(reference_model_path, ctx=128, backend=CPUBackend())
    ids = PROMPTS[reference_model_path.name]
    out = {}
    for fuse in (True, False):
        engine.backend.fuse = fuse
        engine._programs.clear()
        out[fuse] = greedy(engine, ids)
        out[fuse, "program"] = engine.program(1)
    return engine, ids, out


@pytest.mark.slow
def test_fused_and_unfused_agree(runs):
    _, _, out = runs
    (tok_f, log_f), (tok_u, log_u) = out[True], out[False]
    assert tok_f == tok_u
    for i, (a, b) in enumerate(zip(log_f, log_u)):
        assert rel_err(a, b) <= 1e-5, f"step {i}"


@pytest.mark.slow
def test_programs_run_from_a_planned_arena_through_storages(runs):
    engine, _, out = runs
    for fuse in (True, False):
        prog = out[fuse, "program"]
        kinds = {type(s) for s in prog.storages.values()}
        assert ChannelSlices4 in kinds and MultiObject in kinds  # the translations are exercised
        assert prog.plan.arena_bytes < prog.plan.naive_bytes
        assert prog.plan.inplace
        ops = {n.op for n in prog.graph.nodes}
        assert ("stacked_matmul" in ops) == fuse and ("ffn_gate_up" in ops) == fuse
    # the arena holds activations only: weights stay where they were loaded (float copies, or
    # the file's blocks: NativeQuantMatrix planes, the default for SmolLM2's Q4_1)
    held = engine.backend.held_bytes()
    assert engine.backend.arena.nbytes == held.arena < held.weights / 100

    def arrays(w):
        if isinstance(w, np.ndarray):
            return [w]
        p = getattr(w, "planes", None)
        return [] if p is None else [a for a in (p.qs, p.d, p.m) if a is not None]

    assert not any(np.shares_memory(engine.backend.arena, a)
                   for w in engine.backend.weights.values() for a in arrays(w))


@pytest.fixture(scope="module")
def hf_logits(runs, reference_model_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    _, ids, out = runs
    seq = ids + out[True][0]
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(reference_model_path.parent), gguf_file=reference_model_path.name,
        dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([seq])).logits[0].float().numpy()  # (S, V)


@pytest.mark.slow
def test_matches_transformers_step_by_step(runs, hf_logits):
    """Each step's logits (prefill, then decode through the cache) against transformers'
    logits at that position of the whole sequence, and the greedy tokens."""
    _, ids, out = runs
    tokens, logits = out[True]
    n = len(ids)
    for i, ours in enumerate(logits[:-1]):
        assert rel_err(ours, hf_logits[n - 1 + i]) <= 1e-5, f"step {i}"
    assert tokens == [int(np.argmax(hf_logits[n - 1 + i])) for i in range(STEPS)]


@pytest.mark.slow
def test_quantized_weights_in_planes(smollm2_path, runs):
    """Weights kept quantized (past the dequantization budget) are converted at load into tiled
    scale/quant planes and dequantized from them slab by slab, or (Q4_0/Q4_1/Q8_0, a C
    compiler here) kept in their blocks for the compiled GEMV: same logits either way."""
    from drift.backends.cpu import NativeQuantMatrix
    from drift.backends.cpu.native import library

    engine, ids, out = runs
    if engine.path != smollm2_path:
        pytest.skip("one model is enough for the planes")
    for native in (False, True):
        lazy = Engine(smollm2_path, ctx=128, backend=CPUBackend(dequant_budget=0, native=native))
        w = lazy.backend.weights["blk.0.ffn_up.weight"]  # Q4_1
        if native and library() is not None:
            assert isinstance(w, NativeQuantMatrix)
        else:
            assert isinstance(w, LazyQuantMatrix) and isinstance(w.storage, QuantBlockPlanes)
        assert lazy.backend.capabilities().quant_planes
        tokens, logits = greedy(lazy, ids, steps=2)
        assert tokens == out[True][0][:2]
        for a, b in zip(logits, out[True][1]):
            assert rel_err(a, b) <= 1e-5
