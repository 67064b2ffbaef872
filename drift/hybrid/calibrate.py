"""Calibration: how often and how strongly each FFN neuron is active, per layer.

A gated FFN computes down(act(gate(x)) * up(x)); neuron j of a layer is column j of
m = act(gate(x)) * up(x) (S, F), the swiglu/geglu node's output. |m[:, j]| is what neuron j
contributes (times down's column j), so it is the quantity hot/cold splits and magnitude
sparsity (CATS, TEAL) threshold.

How the activations are captured: the model's own graph, with each layer's swiglu/geglu output
renamed `ffn_act.{i}` and made a graph output (`expose_ffn_activations`), compiled by the
backend like any graph (`ActivationEngine`, an Engine whose `graph` is that). No hook in a
backend and no second forward implementation: the passes keep graph outputs (a fused gate+up
kernel still writes its activation), the backend copies outputs to the host, and the numbers are
those of the real forward.

Per layer l and neuron j, over the N calibration tokens (each window's BOS position left out:
its activations are outliers, the attention-sink token):

- `mean_abs[l, j]`: mean |m|;
- `thresholds[l, k]`: the sparsities[k]-quantile of |m| over the layer's N*F values, so that
  zeroing |m| <= threshold drops that fraction of the layer's neuron-token products;
- `active_frac[l, j, k]`: the fraction of tokens where |m| > thresholds[l, k] (the neuron's
  activation frequency at that sparsity: PowerInfer's hotness).

The exact quantile needs all values: they are held as float32, N * layers * F * 4 bytes (2048
tokens of SmolLM2: 377 MB; of an 8B Llama: 3.8 GB - lower --tokens there).

Saved as `$DRIFT_HOME/calibration/<sha256 of the model file>.npz`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from drift.errors import InvalidArgumentError, ModelFileError
from drift.ir import Graph, Node, Role, TensorSpec
from drift.runtime.engine import PREFILL_CHUNK, Engine

SPARSITIES = (0.3, 0.5, 0.7, 0.9)
GATED_ACTS = ("swiglu", "geglu")
DEFAULT_TOKENS = 2048


def act_name(layer: int) -> str:
    return f"ffn_act.{layer}"


def gate_name(layer: int) -> str:
    return f"ffn_gate.{layer}"


def expose_ffn_activations(graph: Graph) -> Graph:
    """`graph` with the i-th gated activation's output named `ffn_act.{i}` and its gate
    projection's output `ffn_gate.{i}`, both returned (acts first, then gates)."""
    rename: dict[str, str] = {}
    gates: dict[str, str] = {}
    for n in graph.nodes:
        if n.op in GATED_ACTS:
            gates[n.inputs[0]] = gate_name(len(rename))
            rename[n.outputs[0]] = act_name(len(rename))
    if not rename:
        raise InvalidArgumentError(f"{graph.name}: no gated FFN (swiglu/geglu) to calibrate")
    order = list(rename.values()) + list(gates.values())
    rename.update(gates)
    tensors = {}
    for name, t in graph.tensors.items():
        if name in rename:
            t = TensorSpec(rename[name], t.shape, t.dtype, Role.OUTPUT)
        tensors[t.name] = t
    r = lambda names: tuple(rename.get(x, x) for x in names)
    nodes = [Node(n.op, r(n.inputs), r(n.outputs), n.attrs) for n in graph.nodes]
    out = Graph(graph.name, tensors, nodes, list(graph.inputs),
                list(r(graph.outputs)) + order, dict(graph.meta))
    out.validate()
    return out


class ActivationEngine(Engine):
    """An Engine whose graphs also return each layer's FFN activation act(gate)*up (S, F)."""

    def graph(self, n_tokens: int, all_logits: bool = False) -> Graph:
        return expose_ffn_activations(super().graph(n_tokens, all_logits))

    def ffn_activations(self, tokens: list[int], start: int = 0) -> list[np.ndarray]:
        """Per layer, m (len(tokens), F) of `tokens` at positions start.. (the cache as run)."""
        return self.ffn_activity(tokens, start)[0]

    def ffn_activity(self, tokens: list[int], start: int = 0
                     ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per layer, m and act(gate) (len(tokens), F) of `tokens` at positions start..."""
        from drift.ir.ops_hybrid import ACTS

        act = ACTS[self.config.ffn_act]
        L = self.config.n_layers
        parts = []
        for s in range(0, len(tokens), PREFILL_CHUNK):
            out = self.run(tokens[s : s + PREFILL_CHUNK], start + s)
            parts.append([np.asarray(out[act_name(i)], np.float32) for i in range(L)]
                         + [act(np.asarray(out[gate_name(i)], np.float32)) for i in range(L)])
        cat = [np.concatenate([p[i] for p in parts]) for i in range(2 * L)]
        return cat[:L], cat[L:]


@dataclass
class Calibration:
    mean_abs: np.ndarray  # (L, F) float32
    active_frac: np.ndarray  # (L, F, K) float32
    thresholds: np.ndarray  # (L, K) float32
    sparsities: np.ndarray  # (K,)
    n_tokens: int
    meta: dict[str, str] = field(default_factory=dict)  # model, sha256, source
    # (L, K): the sparsities' quantiles of |act(gate)|, what the CPU's skip test reads (it
    # knows the gate before it reads up); None in files from before it was recorded
    gate_thresholds: np.ndarray | None = None

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part.npz")
        np.savez(tmp, mean_abs=self.mean_abs, active_frac=self.active_frac,
                 thresholds=self.thresholds, sparsities=self.sparsities,
                 n_tokens=np.int64(self.n_tokens),
                 **({} if self.gate_thresholds is None
                    else {"gate_thresholds": self.gate_thresholds}),
                 meta_keys=np.array(list(self.meta), dtype=str),
                 meta_values=np.array(list(self.meta.values()), dtype=str))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        try:
            z = np.load(path)
            return cls(z["mean_abs"], z["active_frac"], z["thresholds"], z["sparsities"],
                       int(z["n_tokens"]), dict(zip(z["meta_keys"].tolist(),
                                                    z["meta_values"].tolist())),
                       z["gate_thresholds"] if "gate_thresholds" in z.files else None)
        except (OSError, KeyError, ValueError) as e:
            raise ModelFileError(f"{path}: not a drift calibration file ({e})") from None


def statistics(acts: list[np.ndarray], sparsities=SPARSITIES,
               gates: list[np.ndarray] | None = None) -> Calibration:
    """The statistics of per-layer activations m (N, F) (and of act(gate), given)."""
    s = np.asarray(sparsities, dtype=np.float64)
    L, F = len(acts), acts[0].shape[1]
    mean_abs = np.empty((L, F), np.float32)
    thresholds = np.empty((L, len(s)), np.float32)
    active = np.empty((L, F, len(s)), np.float32)
    for i, m in enumerate(acts):
        a = np.abs(m)
        mean_abs[i] = a.mean(axis=0)
        thresholds[i] = np.quantile(a, s, method="inverted_cdf")
        for k, t in enumerate(thresholds[i]):
            active[i, :, k] = (a > t).mean(axis=0)
    gate_t = None
    if gates is not None:
        gate_t = np.stack([np.quantile(np.abs(g), s, method="inverted_cdf")
                           for g in gates]).astype(np.float32)
    return Calibration(mean_abs, active, thresholds, s, int(acts[0].shape[0]),
                       gate_thresholds=gate_t)


def default_text() -> str:
    """The standard library's pydoc topics: a sizeable English text every Python has."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def calibrate(engine: ActivationEngine, ids: list[int], n_tokens: int, window: int,
              bos: int | None, progress: Callable[[int, int], None] | None = None,
              sparsities=SPARSITIES) -> Calibration:
    """Run `ids` (without BOS) in windows of `window` positions from position 0, each led by
    `bos` when given, and gather the statistics of the first `n_tokens` non-BOS positions."""
    lead = [] if bos is None else [bos]
    step = window - len(lead)
    if step < 1:
        raise InvalidArgumentError(f"--ctx {window} leaves no room for calibration tokens")
    ids = ids[:n_tokens]
    if not ids:
        raise InvalidArgumentError("the calibration text has no tokens")
    L = engine.config.n_layers
    per_layer: list[list[np.ndarray]] = [[] for _ in range(2 * L)]
    for s in range(0, len(ids), step):
        chunk = ids[s : s + step]
        acts, gates = engine.ffn_activity(lead + chunk, 0)
        for i, m in enumerate(acts + gates):
            per_layer[i].append(m[len(lead):])
        if progress:
            progress(s + len(chunk), len(ids))
    cat = [np.concatenate(p) for p in per_layer]
    return statistics(cat[:L], sparsities, gates=cat[L:])


def calibration_path(model_path: str | os.PathLike) -> Path:
    """Where the calibration of a model file lives: keyed by the file's sha256."""
    from drift.hub import _sha256, models_dir

    return models_dir().parent / "calibration" / f"{_sha256(Path(model_path))}.npz"
