"""Published peaks of the devices drift targets, and the one it runs on (`drift probe`).

Units: memory bandwidth in GB/s (10^9 bytes), rates in TFLOP/s or TOP/s (10^12), dense (no
2:4 sparsity), at the boost clock. `fp16` is the rate a matmul reaches with fp16 inputs and
fp32 accumulation (what cuBLAS and Triton use for LLM layers): on GeForce cards that is half
the fp16-accumulate figure marketing quotes. `int8` is the int8 dot-product / matrix rate,
None where the device has no faster int8 path than fp16.

Where a vendor publishes no figure (Apple after M2, Qualcomm, Arm), the entry is derived
from the shader count and clock, and `note` says so. Such rows are estimates: good for the
shape of a roofline, not for the third digit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from drift.errors import InvalidArgumentError
from drift.ir.ops import is_view

GB = 1e9
TFLOP = 1e12

# Assumed per-kernel cost where `drift probe` has not measured one: what the probe measures,
# an empty kernel's share of a run of launches, for the device's usual way of issuing work.
# These are typical figures, not datasheet ones (no vendor publishes a launch cost): about
# 1 us per kernel replayed from a CUDA graph on recent NVIDIA GPUs (the probe read 0.78 us on
# the H100 of BENCHMARKS.md); a few us per compute dispatch in one Metal command buffer or
# one Level Zero / Vulkan submission; of the order of 10 us on phone GPUs (OpenCL, Vulkan).
_ASSUMED_LAUNCH_US = {"NVIDIA": 1.0, "Apple": 5.0, "Intel": 5.0, "Qualcomm": 10.0, "Arm": 10.0}


class UnknownDeviceSpecError(InvalidArgumentError):
    """--device-spec names no device of the table."""


@dataclass(frozen=True)
class DeviceSpec:
    key: str  # what --device-spec takes
    name: str
    vendor: str
    kind: str  # "datacenter-gpu", "desktop-gpu", "laptop-soc", "mobile-gpu", "local"
    memory_gb: float  # device memory, or the SoC's unified memory at its largest
    bandwidth_gbs: float
    fp32_tflops: float
    fp16_tflops: float
    bf16_tflops: float | None
    int8_tops: float | None
    tdp_w: float | None
    source: str  # where the figures come from: a URL or a document's name
    note: str = ""
    aliases: tuple[str, ...] = ()
    # The arithmetic of a matmul over quantized weights: GPU kernels dequantize into fp16
    # tiles for the matrix units; the numpy backend dequantizes to f32.
    quant_math: str = "f16"
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    # The fixed cost of one kernel launch (one dispatched op on the CPU), in us,
    # whatever its size; None: the assumed default of the device's kind (`assumed_launch`).
    launch_us: float | None = None
    launch_source: str = ""  # "drift probe ..." when measured
    views_dispatch: bool = False  # every op, views too, costs a dispatch (numpy reference walk)

    @property
    def launch_s(self) -> float:
        """Seconds a kernel costs beyond its roofline time: measured by `drift probe`, else
        assumed from the device's kind (see `assumed_launch`)."""
        us = self.launch_us if self.launch_us is not None else assumed_launch(self)[0]
        return us * 1e-6

    @property
    def launch_note(self) -> str:
        if self.launch_us is not None:
            return self.launch_source or "measured"
        return assumed_launch(self)[1]

    def launches(self, op: str) -> int:
        """Kernels an op of the IR costs when no backend says better: one, none for a view
        (reshape, last_row), which GPU backends resolve to a pointer."""
        if is_view(op) and not self.views_dispatch:
            return 0
        return 1

    @property
    def bandwidth(self) -> float:
        """Bytes per second."""
        return self.bandwidth_gbs * GB

    def peak(self, dtype: str) -> float:
        """FLOP/s (or OP/s) for arithmetic on `dtype`: f32, f16, bf16, int8; f64 falls to f32
        (no entry of the table is a double-precision machine worth modelling)."""
        if dtype in ("f16",):
            return self.fp16_tflops * TFLOP
        if dtype == "bf16":
            return (self.bf16_tflops or self.fp16_tflops) * TFLOP
        if dtype == "int8":
            return (self.int8_tops or self.fp16_tflops) * TFLOP
        return self.fp32_tflops * TFLOP

    def ridge(self, dtype: str) -> float:
        """The arithmetic intensity (FLOP/byte) where the roofline turns from memory- to
        compute-bound for `dtype`."""
        return self.peak(dtype) / self.bandwidth

    def math_dtype(self, data_dtype: str, override: str | None = None) -> str:
        """Which peak an op whose operands are `data_dtype` runs at on this device."""
        if override:
            return override
        if data_dtype in ("f32", "f16", "bf16", "f64"):
            return "f32" if data_dtype == "f64" else data_dtype
        return self.quant_math  # a GGML quant type


_NV_H100 = "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet"
_NV_H200 = "https://www.nvidia.com/en-us/data-center/h200/"
_NV_A100 = ("https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
            "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf")
_NV_ADA = ("NVIDIA Ada GPU Architecture whitepaper v2.1, appendix A, table 2 (GeForce RTX "
           "4090): https://images.nvidia.com/aem-dam/Solutions/geforce/ada/"
           "nvidia-ada-gpu-architecture.pdf")
_NV_AMPERE = ("NVIDIA Ampere GA102 GPU Architecture whitepaper (per-SM rates of GA10x) and "
              "https://www.nvidia.com/en-us/geforce/graphics-cards/30-series/rtx-3060-3060ti/")
_APPLE = "Apple newsroom press releases for each chip (apple.com/newsroom)"
_APPLE_EST = ("memory bandwidth: Apple newsroom / tech specs; FP32: estimate, GPU cores x 128 "
              "FP32 lanes x 2 x clock (Apple publishes no TFLOPS after M2)")
_INTEL = ("https://www.intel.com/content/www/us/en/products/sku/229151/"
          "intel-arc-a770-graphics-16gb/specifications.html; XMX rate from Intel Architecture "
          "Day 2021 (Xe-HPG: 16 XMX engines per Xe-core, 128 FP16 FLOP/clk each)")
_QCOM = ("Qualcomm Snapdragon product briefs (memory: LPDDR5X speed x 64-bit bus); ALU count "
         "and clock from public die analyses: estimate")
_ARM = ("https://developer.arm.com/Processors/Mali-G715 (Valhall 4th gen: 128 FP32 FLOP/clk "
        "per core); Google Tensor G3 configuration MC7 at 890 MHz, LPDDR5X-8533: estimate")


def _apple(key: str, name: str, mem: float, bw: float, tflops: float, tdp: float | None,
           source: str = _APPLE, note: str = "") -> DeviceSpec:
    # Apple GPUs run fp16 at the fp32 rate (fp16 halves registers, not time) and have no int8
    # matrix path on the GPU (the Neural Engine is not reachable from Metal compute).
    return DeviceSpec(key, name, "Apple", "laptop-soc", mem, bw, tflops, tflops, tflops, None, tdp,
                      source, note)


DEVICES: tuple[DeviceSpec, ...] = (
    DeviceSpec("h100-sxm", "NVIDIA H100 SXM5 80GB", "NVIDIA", "datacenter-gpu", 80, 3350, 67,
               989.4, 989.4, 1978.9, 700, _NV_H100, aliases=("h100",)),
    DeviceSpec("h100-pcie", "NVIDIA H100 PCIe 80GB", "NVIDIA", "datacenter-gpu", 80, 2000, 51,
               756, 756, 1513, 350, _NV_H100),
    DeviceSpec("h200", "NVIDIA H200 SXM 141GB", "NVIDIA", "datacenter-gpu", 141, 4800, 67,
               989.4, 989.4, 1978.9, 700, _NV_H200, aliases=("h200-sxm",)),
    DeviceSpec("a100-40gb", "NVIDIA A100 SXM4 40GB", "NVIDIA", "datacenter-gpu", 40, 1555, 19.5,
               312, 312, 624, 400, _NV_A100, aliases=("a100-40",)),
    DeviceSpec("a100-80gb", "NVIDIA A100 SXM4 80GB", "NVIDIA", "datacenter-gpu", 80, 2039, 19.5,
               312, 312, 624, 400, _NV_A100, aliases=("a100", "a100-80")),
    DeviceSpec("rtx4090", "NVIDIA GeForce RTX 4090", "NVIDIA", "desktop-gpu", 24, 1008, 82.6,
               165.2, 165.2, 660.6, 450, _NV_ADA,
               note="fp16 with fp32 accumulate; 330.3 TFLOP/s with fp16 accumulate"),
    DeviceSpec("rtx3060", "NVIDIA GeForce RTX 3060 12GB", "NVIDIA", "desktop-gpu", 12, 360, 12.7,
               25.5, 25.5, 101.9, 170, _NV_AMPERE,
               note="tensor rates derived: 28 SMs x GA10x per-SM rate x 1.777 GHz boost"),
    _apple("m1", "Apple M1 (8-core GPU)", 16, 68.25, 2.6, None,
           note="bandwidth: LPDDR4X-4266 on a 128-bit bus"),
    _apple("m1-pro", "Apple M1 Pro (16-core GPU)", 32, 200, 5.2, None),
    _apple("m1-max", "Apple M1 Max (32-core GPU)", 64, 400, 10.4, None),
    _apple("m1-ultra", "Apple M1 Ultra (64-core GPU)", 128, 800, 21, None),
    _apple("m2", "Apple M2 (10-core GPU)", 24, 100, 3.6, None),
    _apple("m2-pro", "Apple M2 Pro (19-core GPU)", 32, 200, 6.8, None),
    _apple("m2-max", "Apple M2 Max (38-core GPU)", 96, 400, 13.6, None),
    _apple("m3", "Apple M3 (10-core GPU)", 24, 100, 3.6, None, _APPLE_EST,
           "FP32 estimated at about 1.4 GHz"),
    _apple("m3-pro", "Apple M3 Pro (18-core GPU)", 36, 150, 6.4, None, _APPLE_EST,
           "FP32 estimated at about 1.4 GHz"),
    _apple("m3-max", "Apple M3 Max (40-core GPU)", 128, 400, 14.2, None, _APPLE_EST,
           "FP32 estimated at about 1.4 GHz; the 30-core M3 Max has 300 GB/s"),
    _apple("m4", "Apple M4 (10-core GPU)", 32, 120, 4.3, None, _APPLE_EST,
           "FP32 estimated at about 1.7 GHz"),
    _apple("m4-pro", "Apple M4 Pro (20-core GPU)", 64, 273, 8.7, None, _APPLE_EST,
           "FP32 estimated at about 1.7 GHz"),
    _apple("m4-max", "Apple M4 Max (40-core GPU)", 128, 546, 17.4, None, _APPLE_EST,
           "FP32 estimated at about 1.7 GHz; the 32-core M4 Max has 410 GB/s"),
    DeviceSpec("arc-a770", "Intel Arc A770 16GB", "Intel", "desktop-gpu", 16, 560, 17.2, 137.6,
               137.6, 275.2, 225, _INTEL,
               note="rates at the 2.1 GHz graphics clock; XMX fp16/bf16 and int8 derived"),
    DeviceSpec("adreno-740", "Qualcomm Adreno 740 (Snapdragon 8 Gen 2)", "Qualcomm",
               "mobile-gpu", 16, 67.2, 2.1, 4.2, None, None, None, _QCOM,
               note="estimate: 1536 FP32 ALUs at 680 MHz, fp16 at twice the rate",
               aliases=("sd8gen2",)),
    DeviceSpec("adreno-750", "Qualcomm Adreno 750 (Snapdragon 8 Gen 3)", "Qualcomm",
               "mobile-gpu", 16, 76.8, 2.8, 5.6, None, None, None, _QCOM,
               note="estimate: 1536 FP32 ALUs at 903 MHz, fp16 at twice the rate",
               aliases=("sd8gen3",)),
    DeviceSpec("mali-g715", "Arm Mali-G715 MC7 (Google Tensor G3)", "Arm", "mobile-gpu", 12,
               68.3, 0.8, 1.6, None, 3.2, None, _ARM,
               note="estimate: 7 cores x 128 FLOP/clk x 0.89 GHz; fp16 2x, int8 dot 4x"),
)


def assumed_launch(d: DeviceSpec) -> tuple[float, str]:
    """(us, note) for a device without a measured launch cost."""
    us = _ASSUMED_LAUNCH_US.get(d.vendor, 5.0 if d.kind != "mobile-gpu" else 10.0)
    what = {"NVIDIA": "an empty kernel replayed in a CUDA graph",
            "Apple": "a Metal compute dispatch in one command buffer",
            "Intel": "a compute dispatch in one queue submission"}.get(
                d.vendor, "a compute dispatch (OpenCL / Vulkan)")
    return us, f"assumed: {us:g} us per kernel, typical of {what}; `drift probe` measures it"


def _norm(name: str) -> str:
    return re.sub(r"[\s_]+", "-", name.strip().lower())


def all_keys() -> list[str]:
    return [d.key for d in DEVICES]


def device_spec(name: str, device: str | None = None) -> DeviceSpec:
    """A device of the table by key or alias ("rtx4090", "h100"), or `local` / `local:cpu`
    / `local:cuda`: this machine's ceilings as `drift probe` measured them."""
    key = _norm(name)
    if key == "local" or key.startswith("local:"):
        from drift.analysis.probe import load_probe, probe_backend

        backend = key.split(":", 1)[1] if ":" in key else probe_backend(device)
        return load_probe(backend).to_device_spec()
    flat = key.replace("-", "")  # "RTX 4090", "rtx-4090" and "rtx4090" are one device
    for d in DEVICES:
        if flat in {n.replace("-", "") for n in (d.key, *d.aliases)}:
            return d
    raise UnknownDeviceSpecError(
        f"unknown device spec {name!r} (known: local, {', '.join(all_keys())})"
    )


def scaled(spec: DeviceSpec, **changes) -> DeviceSpec:
    """A copy with some figures changed: what-if analysis ("an H100 with 2 TB/s")."""
    return replace(spec, **changes)
