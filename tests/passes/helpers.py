"""Running graphs in tests: plainly (each node's reference in order, no passes: the definition
of what a graph computes) and through the numpy backend (fusion, storages, arena)."""

from __future__ import annotations

import numpy as np

from drift.backends.cpu import CPUBackend
from drift.ir import REGISTRY, Graph, Role, storage_name
from drift.passes import Capabilities

NP = {"f32": np.float32, "f16": np.float16, "i32": np.int32}


def random_weights(graph: Graph, seed: int = 0, scale: float = 0.2) -> dict[str, np.ndarray]:
    """Float weights for every weight of a graph; 1-D ones (norms, biases) near one."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in graph.by_role(Role.WEIGHT):
        w = rng.standard_normal(t.shape) * scale
        if len(t.shape) == 1:
            w = 1.0 + w
        out[t.name] = w.astype(np.float32)
    return out


def random_feeds(graph: Graph, seed: int = 1, vocab: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in graph.inputs:
        t = graph.tensors[name]
        if t.dtype == "i32":
            feeds[name] = rng.integers(0, vocab, t.shape).astype(np.int32)
        else:
            feeds[name] = rng.standard_normal(t.shape).astype(NP[t.dtype])
    return feeds


def run_plain(graph: Graph, weights: dict, feeds: dict, state: dict | None = None) -> dict:
    env: dict = dict(weights)
    env.update(feeds)
    state = state if state is not None else {}
    for t in graph.by_role(Role.KV):
        if t.name == storage_name(t.name):
            env[t.name] = state.setdefault(t.name, np.zeros(t.shape, NP[t.dtype]))
    for n in graph.nodes:
        outs = REGISTRY[n.op].reference([env[i] for i in n.inputs], n.attrs)
        env.update(zip(n.outputs, outs))
    return {o: np.array(env[o]) for o in graph.outputs}


def backend_for(weights: dict, **kw) -> CPUBackend:
    b = CPUBackend(**kw)
    b.load_arrays(weights)
    return b


def run_backend(graph: Graph, weights: dict, feeds: dict, **kw) -> dict:
    return backend_for(weights, **kw).compile(graph).run(feeds)


# Capabilities that exercise every storage on small tensors: channel slices for rank >= 3,
# several objects past 256 bytes.
TIGHT = Capabilities(alignment=64, channel_slices=True, max_object_bytes=256)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
