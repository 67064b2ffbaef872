"""Energy counters: NVML's total-energy counter on NVIDIA GPUs, RAPL on the CPU.

Both are cumulative counters, so energy over a span is the difference of two readings; the
meter reads them around a measured phase and divides by the tokens it produced. Where no
counter can be read the reason is kept, so a report says "not available: <why>" rather than
a zero.
"""

from __future__ import annotations

import glob
import os
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
