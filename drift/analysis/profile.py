"""`drift profile`: measured time per IR op next to the roofline's prediction.

Per-op timing comes from the backend (drift/backends/base.py): `Program.profile(feeds)` runs
the call once, like `run`, and returns each node of the program's (passed, fused) graph with
its seconds, in execution order; it updates the KV cache exactly as `run` does, since the
profiler interleaves both. The numpy backend times each reference call through its own arena
readers and writers; the Triton backend records CUDA events between its launches inside one
captured graph. `Backend.stored_dtypes()` names weights held in another type than the file's
(the numpy backend's dequantized copies), so bytes, predictions and MBU count what the
kernels really read. `reference_walk` below is the plain reference walk over a CPU program's
graph (intermediates as arrays, no storages): an independent check of the program.

The measurement
---------------
1. Prefill of a fixed prompt, once to warm up and `repeat` times timed (each call rewrites the
   same cache rows): the median wall time is the time to first token.
2. `decode_tokens` greedy decode steps after it (the first one also run once untimed, to
   warm up): each step's wall time is an inter-token latency. Both phases are timed through
   `Program.run`, the path `generate` takes.
3. The same prefill and decode steps again through the per-op path (the same positions and
   tokens, so the cache ends as it was): per node, the median over repetitions / steps.
4. Energy (NVML, RAPL): where a counter is readable, the prefill call and then the last
   decode step are repeated until `energy_window` seconds have passed (`Meter.window`: the
   counters advance in steps of up to ~0.1 s, too coarse for a 45 ms decode phase); with
   `energy_window=0` the counters are read around phases 1 and 2 instead.
5. Kernels per node, for the launch term of the prediction: `Program.launch_counts()` where the
   backend counts them (Triton: its launch-enter hook over one eager call; numpy: one
   dispatch per node); else one per node that took time.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drift.analysis.cost import StageCost, retype, stage_cost
from drift.analysis.energy import EnergyReading, Meter
from drift.errors import UnsupportedError
from drift.ir import Graph, Node, Role, run_reference
from drift.ir.tensor import NUMPY_DTYPES


def reference_walk(program: Any, feeds: dict[str, np.ndarray]) -> list[tuple[Node, float]]:
    """Run a CPU program's graph node by node, timing each reference call."""
    graph, backend = program.graph, program.backend
    env: dict[str, Any] = dict(backend.weights)
    env.update(backend.state)
    for name in graph.inputs:
        spec = graph.tensors[name]
        env[name] = np.asarray(feeds[name], dtype=NUMPY_DTYPES[spec.dtype]).reshape(spec.shape)
    clock = time.perf_counter
    out: list[tuple[Node, float]] = []
    for node in graph.nodes:
        args = [env[i] for i in node.inputs]
        t0 = clock()
        results = run_reference(node.op, args, node.attrs)
        out.append((node, clock() - t0))
        for name, value in zip(node.outputs, results, strict=True):
            env[name] = value
    return out


def stored_dtypes(backend: Any, graph: Graph) -> dict[str, str]:
    """Weights the backend holds in another type than the graph says: name -> stored dtype."""
    held = backend.stored_dtypes()
    return {t.name: held[t.name] for t in graph.by_role(Role.WEIGHT)
            if t.name in held and held[t.name] != t.dtype}


def profile_call(program: Any, feeds: dict[str, np.ndarray]) -> list[tuple[Node, float]]:
    """Per-node seconds of one call, from the program's own `profile` (UnsupportedError where
    the backend cannot time its kernels)."""
    return program.profile(feeds)


@dataclass
class MeasuredStage:
    # At the kv_len the measurement saw (the middle step for decode), over the weights as the
    # backend stores them.
    cost: StageCost
    wall_s: list[float]  # per call, through Program.run
    op_s: list[float] | None  # per node of cost.graph, median over calls; None: no timing
    energy: EnergyReading
    launches: list[float] | None = None  # kernels per node of cost.graph; None: the default

    @property
    def seconds(self) -> float:
        return statistics.median(self.wall_s)

    @property
    def op_total_s(self) -> float | None:
        return sum(self.op_s) if self.op_s is not None else None


@dataclass
class ProfileResult:
    label: str
    backend: str
    device_name: str
    prompt_len: int
    decode_tokens: int
    prefill: MeasuredStage
    decode: MeasuredStage
    notes: list[str] = field(default_factory=list)
    launch_source: str = ""  # how the kernels per node were counted

    @property
    def ttft_s(self) -> float:
        return self.prefill.seconds

    @property
    def itl_s(self) -> list[float]:
        return self.decode.wall_s

    @property
    def decode_tok_s(self) -> float:
        return 1.0 / statistics.mean(self.itl_s)


def _median_per_node(runs: list[list[tuple[Node, float]]], graph_nodes: list[Node]) -> list[float]:
    """Per graph node, the median of its times; 0 for nodes a backend fused away."""
    index = {id(n): i for i, n in enumerate(graph_nodes)}
    samples: list[list[float]] = [[] for _ in graph_nodes]
    for run in runs:
        for node, s in run:
            k = index.get(id(node))
            if k is None:  # a backend may hand back equal, not identical, nodes
                k = graph_nodes.index(node)
            samples[k].append(s)
    return [statistics.median(s) if s else 0.0 for s in samples]



def launch_counts(program: Any, op_s: list[float] | None = None
                  ) -> tuple[list[float] | None, str]:
    """(kernels per node of program.graph, how they were counted); where the backend cannot
    count them, one per node that took time (or per non-view op, without timings)."""
    counts = program.launch_counts()
    if counts is not None:
        return [float(c) for c in counts], "counted by the backend"
    why = "the backend does not count its kernels"
    if op_s is None:
        return None, f"assumed one per non-view op ({why})"
    return ([1.0 if s > 0 else 0.0 for s in op_s],
            f"assumed one per node that took time ({why})")


def profile_engine(engine: Any, label: str, prompt_len: int = 32, decode_tokens: int = 8,
                   repeat: int = 3, seed: int = 0, energy_window: float = 1.0) -> ProfileResult:
    """Measure prefill and decode of `engine` (an Engine), op by op."""
    cfg = engine.config
    if prompt_len + decode_tokens > engine.ctx:
        raise UnsupportedError(  # the command sizes ctx; this guards direct callers
            f"prompt {prompt_len} + {decode_tokens} decode tokens exceed the context {engine.ctx}"
        )
    rng = np.random.default_rng(seed)
    prompt = [int(t) for t in rng.integers(0, cfg.vocab_size, prompt_len)]
    positions = np.arange(prompt_len, dtype=np.int32)
    device = engine.backend.device()
    meter = Meter(device.kind)
    notes = [] if meter.counter else [f"energy: {meter.source}"]

    prefill_prog = engine.program(prompt_len)  # compile outside the timed spans
    decode_prog = engine.program(1)
    feeds = {"tokens": np.asarray(prompt, dtype=np.int32), "positions": positions}

    # 1. prefill through run, after one untimed call: a GPU backend JIT-compiles its kernels
    # and captures its CUDA graph on the first call. (Repeats rewrite the same cache rows.)
    prefill_prog.run(feeds)
    window = energy_window > 0 and meter.counter is not None
    e0 = None if window else meter.start()
    prefill_wall = []
    logits = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        logits = prefill_prog.run(feeds)["logits"]
        prefill_wall.append(time.perf_counter() - t0)
    prefill_energy = None if window else meter.stop(e0, repeat * prompt_len)

    # 2. greedy decode through run
    tok = int(np.argmax(logits.reshape(-1)))
    decode_prog.run({"tokens": np.array([tok], np.int32),  # warm, as for prefill; the first
                     "positions": np.array([prompt_len], np.int32)})  # timed step redoes it
    steps: list[tuple[int, int]] = []  # (token, position)
    decode_wall = []
    e0 = None if window else meter.start()
    for k in range(decode_tokens):
        pos = prompt_len + k
        steps.append((tok, pos))
        t0 = time.perf_counter()
        out = decode_prog.run({"tokens": np.array([tok], np.int32),
                               "positions": np.array([pos], np.int32)})["logits"]
        decode_wall.append(time.perf_counter() - t0)
        tok = int(np.argmax(out.reshape(-1)))
    decode_energy = None if window else meter.stop(e0, decode_tokens)
    if window:
        # 4. energy over windows the counters resolve: the prefill call again, then the last
        # decode step again (the same token at the same position rewrites the same cache row)
        prefill_energy = meter.window(lambda: prefill_prog.run(feeds), prompt_len,
                                      energy_window)
        last_tok, last_pos = steps[-1]
        last = {"tokens": np.array([last_tok], np.int32),
                "positions": np.array([last_pos], np.int32)}
        decode_energy = meter.window(lambda: decode_prog.run(last), 1, energy_window)
    engine.cached_tokens = prompt + [t for t, _ in steps]

    # 3. the same calls op by op, where the backend can time its ops
    try:
        prefill_runs = [profile_call(prefill_prog, feeds) for _ in range(repeat)]
        decode_runs = [profile_call(decode_prog, {"tokens": np.array([t], np.int32),
                                                  "positions": np.array([p], np.int32)})
                       for t, p in steps]
    except UnsupportedError as e:  # stage times, MBU/MFU and energy still stand
        prefill_runs = decode_runs = None
        notes.append(f"per-op times not available: {e}")

    pg, dg = prefill_prog.graph, decode_prog.graph
    stored = stored_dtypes(engine.backend, dg)
    if stored:
        logical = stage_cost(dg, prompt_len + 1).weight_bytes
        pg, dg = retype(pg, stored), retype(dg, stored)
        as_stored = stage_cost(dg, prompt_len + 1).weight_bytes
        kinds = ", ".join(sorted(set(stored.values())))
        notes.append(f"the backend holds {len(stored)} weights as {kinds} (dequantized): a decode "
                     f"step reads {as_stored / 2**20:.1f} MiB of weights, not the file's "
                     f"{logical / 2**20:.1f} MiB; bytes, predictions and MBU count what it holds")
    mid = steps[len(steps) // 2][1] + 1 if steps else prompt_len + 1
    p_op = _median_per_node(prefill_runs, pg.nodes) if prefill_runs else None
    d_op = _median_per_node(decode_runs, dg.nodes) if decode_runs else None
    # 5. kernels per node (an eager call with the last decode step's inputs: the same rows)
    p_launch, launch_source = launch_counts(prefill_prog, p_op)
    d_launch, _ = launch_counts(decode_prog, d_op)
    prefill = MeasuredStage(stage_cost(pg, prompt_len), prefill_wall, p_op, prefill_energy,
                            p_launch)
    decode = MeasuredStage(stage_cost(dg, mid), decode_wall, d_op, decode_energy, d_launch)
    return ProfileResult(label, engine.backend.name, device.name, prompt_len, decode_tokens,
                         prefill, decode, notes, launch_source)
