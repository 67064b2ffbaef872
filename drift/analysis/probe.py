"""`drift probe`: this machine's ceilings, measured on the backend drift would use.

Published peaks are what a device could do; the roofline worth comparing an engine against is
what the same device does for a plain copy and for the vendor's own matmul. For each backend:

- copy bandwidth: bytes read + written per second by a large device-to-device copy (the
  ANCHORS.md convention);
- GEMV bandwidth: weight bytes per second of a matrix-vector product, decode's inner loop;
- matmul rate per dtype: FLOP/s of a square matmul in the library's best kernel (numpy's BLAS
  on the CPU, cuBLAS through torch on CUDA);
- launch latency: the fixed cost of one kernel whatever its size. On CUDA, N launches of a
  one-program Triton kernel that stores one float, captured in one CUDA graph and replayed
  (how drift's Triton backend runs a step): replay time / N. On the CPU, the per-op dispatch
  of the numpy backend's op-by-op walk: `run_reference` of an add on one-element arrays.

Results go to `$DRIFT_HOME/probe/<backend>.json` (default `~/.cache/drift`) and become a
`DeviceSpec` named `local`: `drift analyze MODEL --device-spec local`.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from drift.errors import DeviceError

PROBE_VERSION = 1


def drift_home() -> Path:
    return Path(os.environ.get("DRIFT_HOME", Path.home() / ".cache" / "drift"))


def probe_dir() -> Path:
    return drift_home() / "probe"


class ProbeMissingError(DeviceError):
    """--device-spec local before `drift probe` ran for that backend."""


@dataclass
class ProbeResult:
    backend: str  # "cpu" (numpy) or "cuda" (torch)
    device_name: str
    copy_gbs: float  # bytes read + written, GB/s
    gemv_gbs: float  # weight bytes streamed by a matrix-vector product, GB/s
    matmul_tflops: dict[str, float]  # dtype -> TFLOP/s (TOP/s for int8)
    memory_gb: float
    when: str
    host: str
    details: dict = field(default_factory=dict)  # sizes and timings, for the record
    version: int = PROBE_VERSION
    launch_us: float | None = None  # fixed cost per kernel / dispatched op; None: not probed
    launch_what: str = ""  # how it was measured

    def to_device_spec(self):
        from drift.analysis.hardware import DeviceSpec

        m = self.matmul_tflops
        f32 = m.get("f32", 0.0)
        # Where the library has no fast path (numpy's f16 and int8 are plain loops), the
        # backend would not use that dtype: model its ops at the f32 rate it does reach.
        f16 = max(m.get("f16", 0.0), f32) if self.backend == "cpu" else m.get("f16", f32)
        launch = (f"drift probe, {self.when}: {self.launch_what}" if self.launch_us is not None
                  else "")
        return DeviceSpec(
            key=f"local:{self.backend}", name=f"{self.device_name} (measured)",
            vendor="local", kind="local", memory_gb=self.memory_gb,
            bandwidth_gbs=self.copy_gbs, fp32_tflops=f32, fp16_tflops=f16,
            bf16_tflops=m.get("bf16") or None,
            int8_tops=(m.get("int8") or None) if self.backend != "cpu" else None, tdp_w=None,
            source=f"drift probe, {self.when}, {self.host}",
            note=f"GEMV streams {self.gemv_gbs:.1f} GB/s",
            quant_math="f32" if self.backend == "cpu" else "f16",
            launch_us=self.launch_us if self.launch_us is not None
            else _ASSUMED_LOCAL_LAUNCH_US[self.backend],
            launch_source=launch or (f"assumed: {_ASSUMED_LOCAL_LAUNCH_US[self.backend]:g} us "
                                     "(this probe predates the launch measurement: run `drift "
                                     "probe` again)"),
            views_dispatch=self.backend == "cpu",
            extra={"gemv_gbs": self.gemv_gbs},
        )


# For a probe saved before the launch measurement existed.
_ASSUMED_LOCAL_LAUNCH_US = {"cpu": 1.0, "cuda": 1.0}


def numpy_dispatch_s(n: int = 2000, rounds: int = 5) -> float:
    """Seconds per op of the numpy backend's op-by-op walk on an op with no work: the
    registry dispatch (`run_reference`) of an add on one-element arrays, plus the walk's own
    bookkeeping (environment lookups, a clock read either side). Best of `rounds`."""
    from drift.ir import run_reference

    a = np.ones(1, dtype=np.float32)
    env = {"a": a, "b": a}
    clock = time.perf_counter
    best = float("inf")
    for _ in range(rounds):
        t0 = clock()
        for _ in range(n):
            args = [env["a"], env["b"]]
            c0 = clock()
            out = run_reference("add", args, {})
            env["t"] = clock() - c0
            env["c"] = out[0]
        best = min(best, (clock() - t0) / n)
    return best


def cuda_launch_s(n: int = 1000, reps: int = 5) -> tuple[float, str]:
    """Seconds per kernel of `n` launches of a one-program kernel in one CUDA graph, replayed:
    the median over `reps` replays. A Triton kernel where Triton is there (what the backend
    launches), else torch's fill_ of one element."""
    import torch

    dev = torch.device("cuda")
    buf = torch.zeros(1, dtype=torch.float32, device=dev)
    try:
        from drift.analysis._tiny_kernel import tiny_kernel

        def launch() -> None:
            tiny_kernel[(1,)](buf)

        what = "Triton kernel, 1 program, 1 store"
    except ImportError:
        def launch() -> None:
            buf.fill_(1.0)

        what = "torch fill_ of 1 element"
    launch()  # compile
    torch.cuda.synchronize(dev)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(n):
            launch()
    g.replay()
    torch.cuda.synchronize(dev)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / n)
    times.sort()
    return times[len(times) // 2], f"{n} launches of a {what} in one CUDA graph, replayed"


def _best(fn: Callable[[], None], min_time: float, max_reps: int = 50) -> float:
    """Best wall time of `fn` over repetitions lasting at least `min_time` in all."""
    fn()  # warm: page faults, BLAS thread start, kernel selection
    best, spent, reps = float("inf"), 0.0, 0
    while (spent < min_time or reps < 3) and reps < max_reps:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, reps = min(best, dt), spent + dt, reps + 1
    return best


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe_numpy(quick: bool = False) -> ProbeResult:
    t = 0.05 if quick else 0.3
    n_copy = (32 if quick else 256) * 2**20 // 4  # f32 elements: far past the caches
    a = np.ones(n_copy, dtype=np.float32)
    b = np.empty_like(a)
    copy_s = _best(lambda: np.copyto(b, a), t)
    rows, cols = (2048, 4096) if quick else (4096, 8192)
    w = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32)
    x = np.ones(cols, dtype=np.float32)
    gemv_s = _best(lambda: w @ x, t)
    details = {"copy_bytes": 2 * a.nbytes, "gemv_shape": [rows, cols]}
    matmul = {}
    # BLAS sizes for f32/f64; numpy's f16 and int8 matmuls are unvectorised loops, so a small
    # size already takes long enough to time.
    sizes = {"f32": 1024 if quick else 2048, "f64": 512 if quick else 1024, "f16": 128,
             "int8": 128}
    np_types = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "int8": np.int8}
    for dt, n in sizes.items():
        m1 = np.ones((n, n), dtype=np_types[dt])
        m2 = np.ones((n, n), dtype=np_types[dt])
        s = _best(lambda a=m1, b=m2: a @ b, t)
        matmul[dt] = 2 * n**3 / s / 1e12
        details[f"matmul_{dt}_n"] = n
    from drift.backends.cpu import _total_memory

    dispatch = numpy_dispatch_s(500 if quick else 2000)
    return ProbeResult("cpu", f"{_cpu_name()} x{os.cpu_count()} (numpy)", 2 * a.nbytes / copy_s / 1e9,
                       w.nbytes / gemv_s / 1e9, matmul, _total_memory() / 1e9, _now(),
                       platform.node(), details, launch_us=dispatch * 1e6,
                       launch_what="numpy op dispatch: run_reference of an add on 1-element "
                                   "arrays, with the per-op walk's bookkeeping")


def probe_torch_cuda(quick: bool = False) -> ProbeResult:
    try:
        import torch
    except ImportError:
        raise DeviceError("probe on cuda needs torch") from None
    if not torch.cuda.is_available():
        raise DeviceError("probe on cuda: torch sees no GPU")
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    torch.backends.cuda.matmul.allow_tf32 = False  # measure fp32, not TF32

    def timed(fn: Callable[[], object], reps: int) -> float:
        fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        best = float("inf")
        for _ in range(3):
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3 / reps)
        return best

    n_copy = (256 if quick else 1024) * 2**20 // 2
    a = torch.ones(n_copy, dtype=torch.float16, device=dev)
    b = torch.empty_like(a)
    copy_s = timed(lambda: b.copy_(a), 5 if quick else 20)
    w = torch.randn(14336, 4096, dtype=torch.float16, device=dev)  # Llama-3.1-8B ffn_up
    x = torch.randn(4096, 1, dtype=torch.float16, device=dev)
    gemv_s = timed(lambda: w @ x, 20 if quick else 100)
    n = 4096 if quick else 8192
    matmul = {}
    for name, dt in (("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)):
        m1 = torch.randn(n, n, dtype=dt, device=dev)
        m2 = torch.randn(n, n, dtype=dt, device=dev)
        matmul[name] = 2 * n**3 / timed(lambda a=m1, b=m2: a @ b, 3 if quick else 10) / 1e12
    try:
        i1 = torch.randint(-8, 8, (n, n), dtype=torch.int8, device=dev)
        # cuBLASLt's int8 kernels want B column-major; a row-major B takes a path 7x slower
        # (H100: 130 vs 970 TOP/s), which is not the ceiling an int8 kernel would see.
        i2 = torch.randint(-8, 8, (n, n), dtype=torch.int8, device=dev).t().contiguous().t()
        matmul["int8"] = 2 * n**3 / timed(lambda: torch._int_mm(i1, i2), 3 if quick else 10) / 1e12
    except (RuntimeError, AttributeError):  # no int8 GEMM on this GPU / torch
        pass
    try:
        launch_s, launch_what = cuda_launch_s(200 if quick else 1000)
    except Exception as e:  # noqa: BLE001  the other ceilings stand; the spec assumes one
        launch_s, launch_what = None, f"not measured: {type(e).__name__}: {e}"
    return ProbeResult("cuda", props.name, 2 * a.numel() * 2 / copy_s / 1e9,
                       w.numel() * 2 / gemv_s / 1e9, matmul, props.total_memory / 1e9, _now(),
                       platform.node(), {"matmul_n": n, "copy_bytes": 4 * a.numel()},
                       launch_us=launch_s * 1e6 if launch_s else None, launch_what=launch_what)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def probe_backend(device: str | None) -> str:
    """The probe kind a --device value stands for: numpy on the CPU, torch on CUDA."""
    from drift.backends import ALIASES, best_available

    name = best_available() if device in (None, "auto") else ALIASES.get(device, device)
    if name in ("cpu", "numpy"):
        return "cpu"
    if name in ("cuda", "triton"):
        return "cuda"
    raise DeviceError(f"drift probe has no measurement for device {device!r} yet (cpu, cuda)")


def run_probe(device: str | None = None, quick: bool = False) -> ProbeResult:
    kind = probe_backend(device)
    return probe_numpy(quick) if kind == "cpu" else probe_torch_cuda(quick)


def save_probe(result: ProbeResult) -> Path:
    path = probe_dir() / f"{result.backend}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(result), indent=2))
    tmp.replace(path)  # a reader never sees half a file
    return path


def saved_or_quick_probe(device: str | None) -> tuple[ProbeResult, str | None]:
    """This machine's saved probe for the backend `device` stands for; without one, a quick
    probe measured now and saved. The second value says so, for the caller's notes."""
    kind = probe_backend(device)
    try:
        return load_probe(kind), None
    except ProbeMissingError:
        result = run_probe(kind, quick=True)
        path = save_probe(result)
        return result, f"no probe saved for {kind}: measured one (--quick) into {path}"


def load_probe(backend: str) -> ProbeResult:
    path = probe_dir() / f"{backend}.json"
    if not path.exists():
        raise ProbeMissingError(
            f"no measured ceilings for {backend} at {path}: run `drift probe --device {backend}`"
        )
    try:
        data = json.loads(path.read_text())
        if data.get("version") != PROBE_VERSION:
            raise ValueError(f"version {data.get('version')}")
        return ProbeResult(**data)
    except (ValueError, TypeError) as e:
        raise ProbeMissingError(f"{path}: unreadable probe ({e}); run `drift probe` again")
