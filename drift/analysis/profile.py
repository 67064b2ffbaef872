"""`drift profile`: measured time per IR op next to the roofline's prediction.

Per-op timing protocol (for backend authors)
--------------------------------------------
A compiled `Program` may offer

    def profile(self, feeds: dict[str, np.ndarray]) -> list[tuple[Node, float]]

running the call once, like `run`, and returning each node of `self.graph` it executed with its
seconds, in execution order. A GPU backend records a pair of CUDA events around each kernel
launch of one call, synchronises once at the end and reads `start.elapsed_time(end)` per node
(fused kernels report the node they were fused into; the nodes they swallowed are left out).
It must update the KV cache exactly as `run` does: the profiler interleaves both.

A backend that stores a weight in another type than the IR names (dequantized, repacked) may
also offer `stored_dtypes() -> dict[str, str]` (tensor name -> IR dtype of what it holds), so
bytes, predictions and MBU count what its kernels really read. For the numpy backend this is
read off its `weights` dict: a float array is that float type, a lazy matrix its quant type.

The numpy backend needs no such method: `reference_walk` below executes the CPU program's
(compiled, fused) graph itself, node by node through the registry's references, against the
backend's `weights` and `state`, with a clock around each call. numpy is synchronous, so each
interval is that op's whole cost. One difference from `CPUProgram.run`: the walk keeps
intermediates as plain arrays, where `run` reads and writes them through the storages and
arena the layout and memory passes chose; the per-op times leave that translation out, the
stage times (through `run`) include it. A `CPUProgram.profile` built on its own readers and
writers would close the gap, and would be picked up here unchanged.

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
5. Kernels per node, for the launch term of the prediction: `Program.launch_counts()` where a
   backend offers it; on CUDA, the Triton launches of each bound step of an eager call
   (Triton's launch-enter hook), a stacked GEMV's launches shared among its members as its
   time is; on the numpy backend one dispatch per node; else one per node that took time.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from drift.analysis.cost import StageCost, retype, stage_cost
from drift.analysis.energy import EnergyReading, Meter
from drift.errors import UnsupportedError
from drift.ir import Graph, Node, Role, run_reference

_NP_DTYPES = {"f32": "float32", "f16": "float16", "f64": "float64", "i32": "int32"}
_IR_DTYPES = {np.dtype(v): k for k, v in _NP_DTYPES.items()}


@runtime_checkable
class ProfilableProgram(Protocol):
    def profile(self, feeds: dict[str, np.ndarray]) -> list[tuple[Node, float]]: ...


def reference_walk(program: Any, feeds: dict[str, np.ndarray]) -> list[tuple[Node, float]]:
    """Run a CPU program's graph node by node, timing each reference call."""
    graph, backend = program.graph, program.backend
    env: dict[str, Any] = dict(backend.weights)
    env.update(backend.state)
    for name in graph.inputs:
        spec = graph.tensors[name]
        env[name] = np.asarray(feeds[name], dtype=_NP_DTYPES[spec.dtype]).reshape(spec.shape)
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
    if hasattr(backend, "stored_dtypes"):
        held = backend.stored_dtypes()
    else:
        weights = getattr(backend, "weights", None)
        held = {}
        if isinstance(weights, dict):
            for name, value in weights.items():
                if isinstance(value, np.ndarray) and value.dtype in _IR_DTYPES:
                    held[name] = _IR_DTYPES[value.dtype]
    return {t.name: held[t.name] for t in graph.by_role(Role.WEIGHT)
            if t.name in held and held[t.name] != t.dtype}


def profile_call(program: Any, feeds: dict[str, np.ndarray]) -> list[tuple[Node, float]]:
    """Per-node seconds of one call, by the program's own `profile` or the reference walk."""
    if isinstance(program, ProfilableProgram):
        return program.profile(feeds)
    backend = getattr(program, "backend", None)
    # Only the numpy backend's weights are what the references take (arrays, lazy matrices);
    # a GPU backend's weights dict holds device buffers.
    if getattr(backend, "name", None) == "cpu" and hasattr(program, "graph"):
        return reference_walk(program, feeds)
    raise UnsupportedError(
        f"{type(program).__name__} has no per-op timing: a backend offers it through "
        "Program.profile(feeds) -> [(node, seconds)] (see drift/analysis/profile.py)"
    )


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



@contextlib.contextmanager
def _triton_launch_counter():
    """A one-element list counting Triton kernel launches while the context is open."""
    import triton

    box = [0]

    def hook(*args, **kwargs) -> None:
        box[0] += 1

    chain = getattr(getattr(getattr(triton, "knobs", None), "runtime", None),
                    "launch_enter_hook", None)
    if chain is not None and hasattr(chain, "add"):  # Triton >= 3.4: a HookChain
        chain.add(hook)
        try:
            yield box
        finally:
            chain.remove(hook)
        return
    from triton.compiler import CompiledKernel  # older Triton: one hook attribute

    old = CompiledKernel.launch_enter_hook
    CompiledKernel.launch_enter_hook = hook
    try:
        yield box
    finally:
        CompiledKernel.launch_enter_hook = old


def _share_stacks(program: Any, counts: list[float]) -> list[float]:
    """A Triton decode program runs stacked matmuls (q/k/v, gate/up) as one GEMV launched by
    the first member and spreads its time over the members by `program.share`; spread its
    launches the same way."""
    share = getattr(program, "share", None)
    if not share:
        return counts
    nodes, env = program.graph.nodes, program.env
    base = {i: id(env[nodes[i].inputs[1]].base) for i in share}
    total: dict[int, float] = {}
    for i, b in base.items():
        total[b] = total.get(b, 0.0) + counts[i]
    return [total[base[i]] * share[i] if i in share else c for i, c in enumerate(counts)]


def launch_counts(program: Any, op_s: list[float] | None = None
                  ) -> tuple[list[float] | None, str]:
    """(kernels per node of program.graph, how they were counted); (None, why) where they
    could not be: the prediction then takes the default, one per non-view op."""
    nodes = program.graph.nodes
    if hasattr(program, "launch_counts"):
        return [float(c) for c in program.launch_counts()], "counted by the backend"
    backend = getattr(program, "backend", None)
    if getattr(backend, "name", None) == "cpu":
        return [1.0] * len(nodes), "one dispatch per node (the numpy op-by-op walk)"
    steps = getattr(program, "steps", None)
    device = getattr(program, "device", None)
    if steps is not None and len(steps) == len(nodes) and getattr(device, "type", "") == "cuda":
        try:
            import torch

            counts: list[float] = []
            with _triton_launch_counter() as box:
                for step in steps:
                    n0 = box[0]
                    step()
                    counts.append(float(box[0] - n0))
            torch.cuda.synchronize(device)
            if sum(counts) > 0:
                return (_share_stacks(program, counts),
                        "counted: Triton launches of each step of an eager call")
        except Exception as e:  # noqa: BLE001  no Triton, another hook API: say so below
            why = f"Triton launch hook: {e}"
        else:
            why = "the Triton launch hook saw no launch"
    else:
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
