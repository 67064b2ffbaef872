"""Energy counters: NVML's total-energy counter on NVIDIA GPUs, RAPL on the CPU.

Both are cumulative counters, so energy over a span is the difference of two readings; the
meter reads them around a measured phase and divides by the tokens it produced. Where no
counter can be read the reason is kept, so a report says "not available: <why>" rather than
a zero.

The counters advance in steps (NVML's total energy on an H100 every few tens of ms; RAPL
about every ms): over a 45 ms decode phase an NVML reading can be 0 J. `Meter.window` repeats
a step (a decode step, a prefill call) until at least `min_s` have passed, and starts and
stops on a change of the counter's value, so the window holds whole counter intervals and
the energy is the counter's own difference over it, not one interval more or less.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class EnergyCounter(Protocol):
    name: str

    def read_j(self) -> float:
        """Joules since an arbitrary origin; only differences mean anything."""


class RaplCounter:
    """Sum of the package domains of /sys/class/powercap/intel-rapl:* (AMD Zen exposes its
    package counters under the same name). Sub-domains (core, uncore, dram: `intel-rapl:0:1`)
    are parts of a package, so only top-level ones are summed. Each counter wraps at its
    max_energy_range_uj; a reading is unwrapped against the previous one."""

    name = "RAPL (CPU package)"

    def __init__(self, domains: list[str]):
        self.domains = domains
        self._last = [self._raw(d) for d in domains]
        self._total = [0.0 for _ in domains]

    @staticmethod
    def _raw(domain: str) -> int:
        with open(os.path.join(domain, "energy_uj")) as f:
            return int(f.read())

    def read_j(self) -> float:
        for k, d in enumerate(self.domains):
            now = self._raw(d)
            delta = now - self._last[k]
            if delta < 0:  # wrapped
                with open(os.path.join(d, "max_energy_range_uj")) as f:
                    delta += int(f.read())
            self._total[k] += delta
            self._last[k] = now
        return sum(self._total) / 1e6


class NvmlCounter:
    name = "NVML total energy (GPU board)"

    def __init__(self, index: int = 0):
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.read_j()  # fails here on GPUs without the counter (pre-Volta)

    def read_j(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1e3  # mJ


def rapl_domains(root: str = "/sys/class/powercap") -> list[str]:
    return sorted(d for d in glob.glob(os.path.join(root, "intel-rapl:*"))
                  if os.path.basename(d).count(":") == 1)


def find_counter(kind: str, gpu_index: int = 0,
                 powercap_root: str = "/sys/class/powercap") -> tuple[EnergyCounter | None, str]:
    """(counter, "") or (None, why not) for a "gpu" or "cpu" device."""
    if kind == "gpu":
        try:
            return NvmlCounter(gpu_index), ""
        except ImportError:
            return None, "pynvml (nvidia-ml-py) is not installed"
        except Exception as e:  # noqa: BLE001  NVMLError_*: no driver, no counter on this GPU
            return None, f"NVML: {e}"
    domains = rapl_domains(powercap_root)
    if not domains:
        return None, f"no RAPL counters under {powercap_root} (not exposed on this machine)"
    try:
        return RaplCounter(domains), ""
    except PermissionError:
        return None, "RAPL energy_uj is not readable (root only since Linux 5.10)"
    except OSError as e:
        return None, f"RAPL: {e}"


@dataclass(frozen=True)
class EnergyReading:
    joules: float | None
    tokens: int
    source: str  # counter name, or "not available: <why>"
    window_s: float | None = None  # wall time the joules were read over
    steps: int = 0  # calls in the window

    @property
    def watts(self) -> float | None:
        if self.joules is None or not self.window_s:
            return None
        return self.joules / self.window_s

    def describe(self) -> str:
        if self.joules is None:
            return self.source
        w = f"{self.joules:.3g} J over {self.window_s:.2f} s" if self.window_s else \
            f"{self.joules:.3g} J"
        if self.steps:
            w += f", {self.steps} calls, {self.tokens} tokens"
        if self.watts is not None:
            w += f", mean {self.watts:.0f} W"
        return w

    @property
    def j_per_token(self) -> float | None:
        if self.joules is None or not self.tokens:
            return None
        return self.joules / self.tokens


class Meter:
    """Reads a counter around a span: `with meter.span(tokens) as r: ...; r.reading`."""

    def __init__(self, kind: str):
        self.counter, self.why = find_counter(kind)

    @property
    def source(self) -> str:
        return self.counter.name if self.counter else f"not available: {self.why}"

    def start(self) -> float | None:
        return self.counter.read_j() if self.counter else None

    def stop(self, start: float | None, tokens: int) -> EnergyReading:
        if self.counter is None or start is None:
            return EnergyReading(None, tokens, self.source)
        return EnergyReading(self.counter.read_j() - start, tokens, self.source)

    def window(self, step: Callable[[], object], tokens_per_step: int, min_s: float = 1.0,
               clock: Callable[[], float] = time.perf_counter, max_s: float | None = None
               ) -> EnergyReading:
        """Energy of `step` (which must return only when its work is done) repeated until at
        least `min_s` have passed. The window opens on the first change of the counter while
        the steps run, and closes on the first change after `min_s`, so it spans whole counter
        intervals. The run-in before the first change is capped at `max_s` (default
        2 x min_s + 1 s); a counter that never moves reads "not available"."""
        if self.counter is None:
            return EnergyReading(None, 0, self.source)
        read = self.counter.read_j
        cap = max_s if max_s is not None else 2 * min_s + 1.0
        # run-in: steps until the counter moves, so the window opens on an interval's edge
        t_in = clock()
        e0 = read()
        while True:
            step()
            e = read()
            if e != e0:
                e0, t0 = e, clock()
                break
            if clock() - t_in > cap:  # never moved: measure from here anyway
                e0, t0 = e, clock()
                break
        n = 0
        while True:
            step()
            n += 1
            t = clock()
            if t - t0 >= min_s:
                e1 = read()
                if e1 != e0 or t - t0 >= min_s + cap:
                    break
        elapsed = t - t0
        joules = e1 - e0
        if joules <= 0:
            return EnergyReading(None, n * tokens_per_step,
                                 f"not available: {self.counter.name} did not advance over "
                                 f"{elapsed:.2f} s of {n} calls", elapsed, n)
        return EnergyReading(joules, n * tokens_per_step, self.counter.name, elapsed, n)
