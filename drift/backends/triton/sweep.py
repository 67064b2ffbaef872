"""`drift tune`: the kernel sweep that measures this device's table (`device.tables_for`).

Per weight shape (quant, N, K) it times, in the configurations the launcher runs:

- the decode GEMV on int8 x (`gemv_q8x`): rows per program x words per step x warps, then
  the best with 2 and 3 pipeline stages -> "qgemv Q N K": [BN, BW, warps, stages];
- the prefill weight's dequantization into the scratch -> "dequant Q N K": [BN, BB];
- dequantize + the dense fp16 GEMM at M = 512 -> "dense Q N K": [BM, BN, BK, warps, stages].

Decode GEMVs run over the stacked Q/K/V and gate/up (weights.STACKS), prefill GEMMs over
each member, so `model_shapes` gives both lists for a model file. The weights are random
planes of the real shapes. On CUDA each configuration's calls are captured in one CUDA graph
and replayed (median of the replays), the weight rotated among copies larger than L2 so that
it streams from memory as in a decode step: timing a GEMV alone on one copy (a first-use
autotuner tried on the H100) picked configurations that lost inside the captured step
(docs/triton.md). Under the interpreter the times are the CPU's: the sweep runs there only
to be tested.

The time budget is shared out among the shapes still to measure; a shape whose share runs
out keeps the best of what was measured (its default configuration is measured first), and
shapes not reached get no entry (the defaults), so a short budget gives a partial table,
never a wrong one.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from drift.backends.base import DeviceInfo
from drift.backends.triton import launch
from drift.backends.triton.device import (
    TABLE_FORMAT,
    Tuning,
    read_table,
    table_file,
    user_tuned_dir,
)
from drift.backends.triton.weights import QWeight, convert, stackable

# (rows per program, int32 words of a row per step, warps) of the int8-x GEMV, stages 1
GEMV_CONFIGS = ((4, 64, 2), (4, 128, 2), (4, 128, 4), (4, 256, 4), (8, 64, 2), (8, 64, 4),
                (8, 128, 4), (8, 128, 8), (8, 256, 8), (16, 64, 4), (16, 128, 4),
                (16, 128, 8), (2, 128, 2), (2, 256, 4), (4, 512, 4), (4, 512, 8),
                (2, 512, 4), (8, 512, 8))
GEMV_STAGES = (2, 3)  # tried on the best of GEMV_CONFIGS
# (rows, bytes or elements) per dequant program
DEQUANT_CONFIGS = ((16, 256), (8, 512), (32, 256), (16, 512), (64, 128), (4, 1024))
# (BM, BN, BK, warps, stages) of the dense GEMM after dequantization
DENSE_CONFIGS = ((128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (128, 128, 64, 4, 4),
                 (128, 128, 32, 4, 4), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4),
                 (64, 256, 64, 8, 3))
PREFILL_M = 512  # the dense table applies from M = 256 (Tuning.dense_tiles)

# Llama-3.1-8B and Llama-3.2-1B (Q4_0, and the 8B in Q8_0): decode sees the stacks
# (QKV 6144 / 3072, gate+up 28672 / 16384), prefill the members
DEFAULT_GEMV_SHAPES = (
    ("Q4_0", 28672, 4096), ("Q4_0", 4096, 14336), ("Q4_0", 6144, 4096), ("Q4_0", 4096, 4096),
    ("Q4_0", 128256, 4096), ("Q8_0", 28672, 4096), ("Q8_0", 4096, 14336),
    ("Q8_0", 6144, 4096), ("Q8_0", 4096, 4096), ("Q4_0", 3072, 2048), ("Q4_0", 16384, 2048),
    ("Q4_0", 2048, 8192), ("Q4_0", 2048, 2048), ("Q4_0", 128256, 2048))
DEFAULT_GEMM_SHAPES = (("Q4_0", 14336, 4096), ("Q4_0", 4096, 14336), ("Q4_0", 4096, 4096),
                       ("Q4_0", 1024, 4096), ("Q8_0", 14336, 4096))

L2_ROTATE_BYTES = 400 * 2**20  # weight copies per measurement: at least this many bytes
FLOAT_TYPES = ("F32", "F16", "BF16")

Shape = tuple[str, int, int]  # (quant type name, N, K)


# ---------------------------------------------------------------------------------------------
# shapes


def _stack_groups(path, infos) -> list[list]:
    """The weight groups the passes stack for this model's decode graph (what the backend
    loads as one matrix), among `infos`."""
    from drift.backends.base import weight_stacks
    from drift.backends.triton import triton_capabilities
    from drift.formats.gguf import open_gguf
    from drift.models import build_graph, config_from_gguf
    from drift.passes import PassContext, run_pipeline
    from drift.runtime.engine import gguf_dtype

    f = open_gguf(path)
    cfg = config_from_gguf(f.metadata, {n: t.shape for n, t in f.tensors.items()}, str(path))
    dtypes = {n: gguf_dtype(t.qtype.name) for n, t in f.tensors.items()}
    graph = build_graph(cfg, dtypes, 1, min(256, cfg.ctx_train), kv_dtype="f16")
    lowered = run_pipeline(graph, PassContext(triton_capabilities(True))).graph
    by_name = {i.name: i for i in infos}
    groups = [[by_name[n] for n in g] for g in weight_stacks(lowered)
              if all(n in by_name for n in g)]
    return [g for g in groups if stackable(g)]


def model_shapes(path: str | os.PathLike) -> tuple[list[Shape], list[Shape]]:
    """(decode GEMV shapes, prefill GEMM shapes) of a model file's quantized matmuls, as the
    backend runs them: decode over the stacks, prefill over their members; the token
    embedding counts only when it is also the output matrix (no output.weight)."""
    from drift.formats.gguf import GGUFFile

    infos = [i for i in GGUFFile(path).tensors.values()
             if len(i.shape) == 2 and i.name.endswith(".weight")]
    has_output = any(i.name == "output.weight" for i in infos)
    infos = [i for i in infos if i.name != "token_embd.weight" or not has_output]
    infos = [i for i in infos if i.qtype.name not in FLOAT_TYPES]
    stacked: dict[str, list] = {}
    for group in _stack_groups(path, infos):
        stacked[group[0].name] = group
        for m in group[1:]:
            stacked[m.name] = []
    gemv, gemm = [], []
    for i in infos:
        shape = (i.qtype.name, int(i.shape[0]), int(i.shape[1]))
        if shape not in gemm:
            gemm.append(shape)
        group = stacked.get(i.name)
        if group == []:  # a later member: the stack counted at its first
            continue
        if group:
            shape = (i.qtype.name, sum(int(m.shape[0]) for m in group), int(i.shape[1]))
        if shape not in gemv:
            gemv.append(shape)
    return gemv, gemm


# ---------------------------------------------------------------------------------------------
# random planes


def random_weight(qtype: str, N: int, K: int, dev: torch.device,
                  gen: torch.Generator) -> QWeight:
    """A (N, K) weight of `qtype` in kernel layout with random planes: the layout (kind,
    group, nibble runs, offset, mins) from converting one all-zero row of that type."""
    from gguf import GGMLQuantizationType as Q

    from drift.formats.quants import block_shape

    t = Q[qtype]
    elements, nbytes = block_shape(t)
    proto = convert(torch.zeros((1, K // elements * nbytes), dtype=torch.uint8), t, (1, K))
    if proto.kind == 0:
        raise ValueError(f"{qtype} is not quantized: nothing to tune")
    if proto.kind == 1:
        q = torch.randint(0, 256, (N, K // 2), dtype=torch.uint8, device=dev, generator=gen)
    else:
        q = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=dev, generator=gen)
    ng = K // proto.group
    s = (torch.rand(N, ng, device=dev, generator=gen) * 0.02 + 0.001).half()
    m = (None if proto.mins is None
         else (-torch.rand(N, ng, device=dev, generator=gen) * 0.02).half())
    return QWeight((N, K), proto.kind, q, s, m, proto.group, proto.pair, proto.offset, qtype)


# ---------------------------------------------------------------------------------------------
# timing


def graph_time(fns: Sequence[Callable[[], object]], reps: int = 20) -> float:
    """Seconds per call: the calls captured in one CUDA graph, replayed, median of reps."""
    for f in fns:
        f()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in fns:
            f()
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3 / len(fns))
    return statistics.median(ts)


def host_time(fns: Sequence[Callable[[], object]], reps: int = 1) -> float:
    """Seconds per call by the host's clock, after one warm-up (compiling) call of each (the
    interpreter, where there is no device to time)."""
    for f in fns:
        f()
    t0 = time.perf_counter()
    for _ in range(reps):
        for f in fns:
            f()
    return (time.perf_counter() - t0) / reps / len(fns)


# ---------------------------------------------------------------------------------------------
# the sweep


def _unique(seq):
    out = []
    for s in seq:
        if tuple(s) not in out:
            out.append(tuple(s))
    return out


@dataclass
class Budget:
    """Seconds left, shared out among the shapes still to measure."""

    seconds: float
    start: float = 0.0

    def __post_init__(self) -> None:
        self.start = time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def share(self, shapes_left: int) -> float:
        """The deadline (perf_counter) of the next shape."""
        return time.perf_counter() + max(0.0, self.left()) / max(1, shapes_left)


class Sweep:
    """Times configurations on one device. `timer(fns)` -> seconds per call; `rotate_bytes`:
    the weight copies of a measurement add up to at least this (beyond L2)."""

    gemv_configs = GEMV_CONFIGS
    gemv_stages = GEMV_STAGES
    dequant_configs = DEQUANT_CONFIGS
    dense_configs = DENSE_CONFIGS

    def __init__(self, tu: Tuning, dev: torch.device, timer=None, rotate_bytes: int | None = None,
                 log: Callable[[str], None] = lambda s: None, seed: int = 0):
        cuda = dev.type == "cuda"
        self.tu = replace(tu, table={})  # measure the configurations asked for, not a table
        self.dev = dev
        self.timer = timer or (graph_time if cuda else host_time)
        self.rotate = (L2_ROTATE_BYTES if cuda else 0) if rotate_bytes is None else rotate_bytes
        self.log = log
        self.gen = torch.Generator(device=dev)
        self.gen.manual_seed(seed)
        self.rows: list[dict] = []  # every measurement, for the JSON
        self.failed = 0

    def _time(self, row: dict, fns) -> float | None:
        try:
            t = self.timer(fns)
        except Exception as e:  # noqa: BLE001  a configuration the compiler refuses (shared memory)
            self.failed += 1
            self.log(f"{row['kernel']} {row['qtype']} {row['N']}x{row['K']} {row['cfg']}: "
                     f"{type(e).__name__}")
            return None
        row["us"] = round(t * 1e6, 3)
        self.rows.append(row)
        return t

    def gemv(self, qtype: str, N: int, K: int, deadline: float, step=lambda: None) -> list | None:
        """The fastest int8-x GEMV configuration found before `deadline` ([BN, BW, warps,
        stages] as the launcher runs it), None if the shape does not take that GEMV."""
        copies = [random_weight(qtype, N, K, self.dev, self.gen)]
        if not self.tu.int_gemv or not launch.int_gemv_ok(K, copies[0]):
            return None  # decode runs the float GEMV, which has no table
        while len(copies) * copies[0].nbytes < self.rotate and len(copies) < 64:
            copies.append(random_weight(qtype, N, K, self.dev, self.gen))
        x = torch.randn(1, K, device=self.dev, generator=self.gen)
        out = torch.empty(1, N, device=self.dev)
        qx = launch.QuantizedX.alloc(K, self.dev)
        launch.quantize_x(x, qx, self.tu)
        tried: dict[tuple, float] = {}

        def run(t2: Tuning) -> None:
            cfg = t2.qgemv(N, K, qtype)  # as the launcher runs it (fewer rows where N is small)
            if cfg in tried or (tried and time.perf_counter() > deadline):
                return  # the default (first) runs whatever the time
            row = {"kernel": "qgemv", "qtype": qtype, "N": N, "K": K, "cfg": list(cfg),
                   "GBps": 0.0}
            t = self._time(row, [lambda w=w: launch.gemv_q8x(qx, w, out, t2) for w in copies])
            tried[cfg] = t if t is not None else float("inf")
            if t is not None:
                row["GBps"] = round(copies[0].nbytes / t / 1e9, 1)
            step()

        run(self.tu)  # the default first: a budget cut short still has it to beat
        for bn, bw, warps in self.gemv_configs:
            run(replace(self.tu, qgemv_bn=bn, qgemv_bw=bw, qgemv_warps=warps, qgemv_stages=1))
        if tried:
            bn, bw, warps, _ = min(tried, key=tried.get)
            for st in self.gemv_stages:
                run(replace(self.tu, qgemv_bn=bn, qgemv_bw=bw, qgemv_warps=warps,
                            qgemv_stages=st))
        ok = {c: t for c, t in tried.items() if t != float("inf")}
        return list(min(ok, key=ok.get)) if ok else None

    def gemm(self, qtype: str, N: int, K: int, deadline: float, m: int = PREFILL_M,
             step=lambda: None) -> tuple[list | None, list | None]:
        """(fastest dequant [BN, BB], fastest dequant + dense GEMM [BM, BN, BK, warps,
        stages]) found before `deadline` at M = m."""
        w = random_weight(qtype, N, K, self.dev, self.gen)
        x = torch.randn(m, K, device=self.dev, generator=self.gen)
        out = torch.empty(m, N, device=self.dev)
        scratch = torch.empty(N * K, dtype=torch.float16, device=self.dev)
        calls = 4 if self.dev.type == "cuda" else 1

        def best(kernel: str, cfgs, tuned) -> list | None:
            times = {}
            for cfg in cfgs:
                if time.perf_counter() > deadline and times:
                    break
                t2 = tuned(cfg)
                row = {"kernel": kernel, "qtype": qtype, "M": m, "N": N, "K": K,
                       "cfg": list(cfg)}
                fn = ((lambda t2=t2: launch.dequant(w, scratch, t2)) if kernel == "dequant"
                      else (lambda t2=t2: launch.matmul(x, w, out, t2, scratch)))
                t = self._time(row, [fn] * calls)
                if t is not None:
                    times[tuple(cfg)] = t
                    if kernel == "dense":
                        row["TFLOPs"] = round(2 * m * N * K / t / 1e12, 2)
                step()
            return list(min(times, key=times.get)) if times else None

        tu = self.tu
        dq = best("dequant", _unique([(tu.dequant_bn, tu.dequant_bb), *self.dequant_configs]),
                  lambda c: replace(tu, dequant_bn=c[0], dequant_bb=c[1]))
        dense = best("dense", _unique([tu.dense_tiles(m, N, K), *self.dense_configs]),
                     lambda c: replace(tu, dense_min_m=1, dense_bm=c[0], dense_bn=c[1],
                                       dense_bk=c[2], dense_warps=c[3], dense_stages=c[4]))
        return dq, dense


    def gemv_jobs(self) -> int:
        """Measurements of one GEMV shape at most (the progress bar's steps)."""
        return 1 + len(self.gemv_configs) + len(self.gemv_stages)

    def gemm_jobs(self) -> int:
        return 2 + len(self.dequant_configs) + len(self.dense_configs)


def run_sweep(sweep: Sweep, gemv_shapes: Sequence[Shape], gemm_shapes: Sequence[Shape],
              budget_s: float, advance=lambda n=1: None, m: int | None = None) -> dict:
    """The table's "best" entries for the shapes, measured within about budget_s seconds
    (a shape begun runs its default configuration, and the measurement under way when the
    time runs out ends; shapes not begun keep the defaults). `advance(n)` is called after
    each measurement (n = 1) and with the measurements a shape skipped when its time ran out,
    for a progress bar of sweep.gemv_jobs() per GEMV shape + sweep.gemm_jobs() per GEMM
    shape."""
    gemv_shapes, gemm_shapes = _unique(gemv_shapes), _unique(gemm_shapes)
    m = m or PREFILL_M
    budget = Budget(budget_s)
    best: dict[str, list] = {}
    jobs = [("gemv", s) for s in gemv_shapes] + [("gemm", s) for s in gemm_shapes]
    for i, (what, (qtype, N, K)) in enumerate(jobs):
        if budget.left() <= 0:  # the rest keep the defaults
            advance(sweep.gemv_jobs() if what == "gemv" else sweep.gemm_jobs())
            continue
        deadline = budget.share(len(jobs) - i)
        done = [0]

        def step() -> None:
            done[0] += 1
            advance(1)

        if what == "gemv":
            cfg = sweep.gemv(qtype, N, K, deadline, step)
            if cfg:
                best[f"qgemv {qtype} {N} {K}"] = cfg
            advance(max(0, sweep.gemv_jobs() - done[0]))
        else:
            dq, dense = sweep.gemm(qtype, N, K, deadline, m, step)
            if dq:
                best[f"dequant {qtype} {N} {K}"] = dq
            if dense:
                best[f"dense {qtype} {N} {K}"] = dense
            advance(max(0, sweep.gemm_jobs() - done[0]))
    return best


def table_path(info: DeviceInfo) -> Path:
    return user_tuned_dir() / table_file(info.name)


def write_table(info: DeviceInfo, best: dict, rows: list[dict], what: str,
                path: Path | None = None) -> Path:
    """Merge `best` into the device's table in the user cache (entries of earlier runs for
    other shapes stay) and write it atomically; returns its path."""
    from drift import __version__

    path = Path(path) if path else table_path(info)
    old = read_table(path) or {}
    table = {
        "device": info.name,
        "format": TABLE_FORMAT,
        "vendor": info.extra.get("vendor", ""),
        "capability": list(info.extra.get("capability") or ()),
        "sm_count": info.extra.get("sm_count", 0),
        "shared_memory": info.extra.get("shared_memory", 0),
        "source": (f"drift tune ({__version__}) {what}, "
                   f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: the "
                   "fastest configuration per (kernel, quant, N, K) as the launcher runs it"),
        "best": {**old.get("best", {}), **best},
        "rows": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n")
    os.replace(tmp, path)
    return path
