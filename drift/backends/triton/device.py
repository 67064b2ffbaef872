"""The device found at start, and the kernel tile sizes chosen from it.

Tile sizes are constexpr parameters of the kernel templates; `Tuning` holds them and is
derived from `DeviceInfo` once, so each device gets kernels specialized for it (Triton then
compiles one binary per constexpr combination and caches it).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from drift.backends.base import DeviceInfo


def triton_p2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def interpreting() -> bool:
    """Kernels run on the CPU through Triton's interpreter (tests without a GPU)."""
    return os.environ.get("TRITON_INTERPRET") == "1" and os.environ.get("DRIFT_TRITON_CPU") == "1"


def patch_interpreter() -> None:
    """Triton 3.6's interpreter turns a loop bound into an int with int(ndarray), which numpy
    2.4 refuses for 1-element arrays; index through the one element instead."""
    try:
        from triton.runtime import interpreter as it
    except ImportError:
        return
    if getattr(it, "_drift_patched", False) or not hasattr(it, "_patch_lang_tensor"):
        return
    original = it._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__",
                       lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    it._patch_lang_tensor = patched
    it._drift_patched = True


if os.environ.get("TRITON_INTERPRET") == "1":
    patch_interpreter()


def read_device() -> tuple[torch.device, DeviceInfo]:
    if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available():
        import multiprocessing

        info = DeviceInfo("triton", "triton interpreter (CPU)", "cpu", 8 * 2**30,
                          multiprocessing.cpu_count(),
                          {"interpreter": True, "sm_count": 4, "shared_memory": 48 * 1024,
                           "l2_bytes": 2**20, "capability": (0, 0), "vendor": "cpu"})
        return torch.device("cpu"), info
    dev = torch.device("cuda", torch.cuda.current_device())
    p = torch.cuda.get_device_properties(dev)
    vendor = "amd" if getattr(torch.version, "hip", None) else "nvidia"
    extra = {
        "interpreter": False,
        "vendor": vendor,
        "sm_count": p.multi_processor_count,
        "capability": (p.major, p.minor),
        "shared_memory": getattr(p, "shared_memory_per_block_optin", 0)
        or getattr(p, "shared_memory_per_multiprocessor", 0),
        "l2_bytes": getattr(p, "L2_cache_size", 0),
        "warp_size": getattr(p, "warp_size", 32),
        "torch": torch.__version__,
    }
    return dev, DeviceInfo("triton", p.name, "gpu", p.total_memory, p.multi_processor_count,
                           extra)


@dataclass(frozen=True)
class Tuning:
    gemv_bn: int  # rows per GEMV program
    gemv_bk: int  # weights per GEMV tile (a 4-bit plane: gemv_bk / 2 bytes)
    gemv_warps: int
    gemm_bm: int
    gemm_bn: int
    gemm_bk: int  # weights per GEMM step; a 4-bit plane takes gemm_bk bytes (2x the weights)
    gemm_warps: int
    gemm_stages: int
    attn_bm: int  # prefill query tile
    attn_bn: int  # prefill key tile
    attn_bt: int  # decode key tile
    attn_warps: int
    decode_programs: int  # target programs for split-K decode attention
    row_block: int  # elementwise / norm block
    small: bool = False  # the interpreter: one fixed tile
    # int8-x GEMV (decode): rows per program, int32 words of a row per step, warps, stages
    qgemv_bn: int = 4
    qgemv_bw: int = 64
    qgemv_warps: int = 4
    qgemv_stages: int = 1
    qx_blocks: int = 32  # x blocks of 32 per quantize_x program
    int_gemv: bool = True  # decode GEMVs on int8 x (dp4a); False: the float GEMV
    x2: bool = True  # x as two int8 levels (~2^-15), not one (~2^-8): see quantize_x_kernel
    # prefill: dequantize into the fp16 scratch + dense GEMM from this many rows of x up
    dense_min_m: int = 64
    dense_bm: int = 128
    dense_bn: int = 128
    dense_bk: int = 64
    dense_warps: int = 8
    dense_stages: int = 3
    norm_block: int = 4096  # decode norm+quant: one program, the row in chunks of this
    norm_warps: int = 8
    dequant_bn: int = 16  # rows x bytes (4-bit) or elements (8-bit) per dequant program
    dequant_bb: int = 256
    # measured best configurations per (kernel, quant, N, K) of this device: `drift tune`'s
    # output in the user cache over the shipped table (`tables_for`), and where they came from
    table: dict = field(default_factory=dict, compare=False, hash=False)
    table_source: str = field(default="", compare=False, hash=False)

    def gemm_tiles(self, m: int, n: int) -> tuple[int, int, int]:
        """(BM, BN, warps): the largest tile that still gives every SM a program."""
        cands = [(self.gemm_bm, self.gemm_bn, self.gemm_warps)]
        if not self.small:
            cands += [(128, 128, 8), (64, 128, 4), (64, 64, 4)]
        for bm, bn, w in cands:
            bm = bm if m > bm // 2 else max(16, triton_p2(m))
            if -(-m // bm) * -(-n // bn) >= self.decode_programs:
                return bm, bn, w
        return bm, bn, w

    def qgemv(self, n: int, k: int, qtype: str = "") -> tuple[int, int, int, int]:
        """(BN, BW, warps, stages) of the int8-x GEMV: the measured best for this shape if
        the device's table has it; else the defaults, with fewer rows per program where N is
        small, so that every SM still gets a few programs."""
        hit = self.table.get(f"qgemv {qtype} {n} {k}")
        if hit:
            return tuple(hit)
        bn = self.qgemv_bn
        while not self.small and bn > 1 and (n + bn - 1) // bn < 2 * self.decode_programs:
            bn //= 2
        return bn, self.qgemv_bw, self.qgemv_warps, self.qgemv_stages

    def dense_tiles(self, m: int, n: int, k: int = 0,
                    qtype: str = "") -> tuple[int, int, int, int, int]:
        """(BM, BN, BK, warps, stages) of the dense fp16 GEMM after dequantization: the
        table's best for this weight shape (measured at M = 512) when M is that large. The
        GEMM reads the dequantized fp16 weight whatever its type, so an entry measured for
        another type of the same shape serves too."""
        hit = self.table.get(f"dense {qtype} {n} {k}")
        if not hit:
            hit = next((v for key, v in self.table.items()
                        if key.startswith("dense ") and key.endswith(f" {n} {k}")), None)
        if hit and m >= 256:
            return tuple(hit)
        bm = self.dense_bm if m > self.dense_bm // 2 else max(16, triton_p2(m))
        return bm, self.dense_bn, self.dense_bk, self.dense_warps, self.dense_stages

    def gemv_warps_for(self, k: int) -> int:
        """Short rows (K <= 4096) ran best on 2 warps in the H100/H200 sweeps, long on 4."""
        return self.gemv_warps if self.small or k > 4096 else max(1, self.gemv_warps // 2)

    def gemv_rows(self, n: int) -> int:
        """Rows per GEMV program: small enough to give each SM a few programs."""
        bn = self.gemv_bn
        while bn > 2 and (n + bn - 1) // bn < 2 * self.decode_programs:
            bn //= 2
        return bn


TUNED_DIR = Path(__file__).with_name("tuned")  # shipped: measured on the project's GPUs
TABLE_FORMAT = 1  # a table with another "format" is not read (its keys may mean other things)


def table_file(device_name: str) -> str:
    """The table's file name for a device: its name with every run of other characters as _."""
    return re.sub(r"[^A-Za-z0-9]+", "_", device_name).strip("_") + ".json"


def user_tuned_dir() -> Path:
    """Where `drift tune` writes: $DRIFT_HOME/tuned (default ~/.cache/drift/tuned)."""
    return Path(os.environ.get("DRIFT_HOME", "~/.cache/drift")).expanduser() / "tuned"


def read_table(path: Path) -> dict | None:
    try:
        t = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(t, dict) or t.get("format", 1) != TABLE_FORMAT:
        return None
    return t


def _nearest_shipped(info: DeviceInfo) -> tuple[Path, dict] | None:
    """The shipped table of the device most like this one: same vendor and compute
    capability (so the same instructions and shared memory per SM), then the nearest SM
    count, then the nearest shared memory (an H200 gets the H100's)."""
    cap = list(info.extra.get("capability") or ())
    vendor = info.extra.get("vendor", "nvidia")
    sms = info.extra.get("sm_count", 0)
    smem = info.extra.get("shared_memory", 0)
    cands = []
    for path in sorted(TUNED_DIR.glob("*.json")):
        t = read_table(path)
        if t and list(t.get("capability") or ()) == cap and t.get("vendor", "nvidia") == vendor:
            cands.append((abs(t.get("sm_count", 0) - sms), abs(t.get("shared_memory", 0) - smem),
                          path.name, path, t))
    if not cap or not cands:
        return None
    return min(cands)[3:]


def tables_for(info: DeviceInfo) -> tuple[dict, str]:
    """The measured table for this device and a line saying where it came from, "" if none.

    `DRIFT_TRITON_TUNED=file` is the only table when set. Otherwise the user's own
    (`drift tune`, in `user_tuned_dir()`) over the shipped table of this device's exact name,
    or, without one, of the shipped device with the same compute capability
    (`_nearest_shipped`); the user's entries win where both measured a shape."""
    forced = os.environ.get("DRIFT_TRITON_TUNED")
    if forced:
        t = read_table(Path(forced))
        return (t, f"{forced} (DRIFT_TRITON_TUNED)") if t else ({}, "")
    layers = []  # (table, description), lowest first
    name = table_file(info.name)
    shipped = read_table(TUNED_DIR / name)
    if shipped:
        layers.append((shipped, f"shipped {name}"))
    else:
        near = _nearest_shipped(info)
        if near:
            path, t = near
            cap = ".".join(str(c) for c in info.extra.get("capability", ()))
            layers.append((t, f"shipped {path.name} ({t.get('device', path.stem)}: same "
                              f"compute capability {cap}, {t.get('sm_count', '?')} SMs vs "
                              f"{info.extra.get('sm_count', '?')})"))
    user = read_table(user_tuned_dir() / name)
    if user:
        layers.append((user, f"{user_tuned_dir() / name} (drift tune)"))
    if not layers:
        return {}, ""
    merged: dict = {"best": {}}
    for t, _ in layers:
        merged["best"].update(t.get("best", {}))
        if "qgemv_default" in t:
            merged["qgemv_default"] = t["qgemv_default"]
    return merged, " over ".join(d for _, d in reversed(layers))


def tune(info: DeviceInfo) -> Tuning:
    if info.extra.get("interpreter"):
        # Few, large programs: the interpreter runs each program in numpy.
        return Tuning(32, 512, 1, 32, 32, 64, 1, 1, 32, 32, 32, 1, 4, 1024, small=True,
                      qgemv_bn=32, qgemv_bw=128, qgemv_warps=1, dense_min_m=2, dense_bm=32,
                      dense_bn=64, dense_bk=64, dense_warps=1, dense_stages=1,
                      dequant_bn=16, dequant_bb=256, norm_block=1024, norm_warps=1)
    sms = info.extra["sm_count"]
    smem = info.extra.get("shared_memory", 0)
    measured, source = tables_for(info)
    qdef = measured.get("qgemv_default", [4, 256, 4, 1])
    big = smem >= 200 * 1024  # Hopper / Ampere datacenter parts: deeper pipelines, larger tiles
    return Tuning(
        # H100 sweep (docs/triton.md): GEMV best at 2-4 rows x 512-1024 weights, 2-4 warps;
        # GEMM best at 128 x 256 x 64, 8 warps, 3 stages (144 TFLOP/s vs 84 at 128 x 128).
        gemv_bn=4, gemv_bk=1024, gemv_warps=4,
        gemm_bm=128 if big else 64, gemm_bn=256 if big else 64, gemm_bk=64 if big else 32,
        gemm_warps=8 if big else 4, gemm_stages=3 if big else 2,
        attn_bm=64, attn_bn=64, attn_bt=64, attn_warps=4,
        decode_programs=sms, row_block=1024,
        # int8-x GEMV: dp4a is PTX, so NVIDIA only; elsewhere the float GEMV
        int_gemv=info.extra.get("vendor") == "nvidia",
        qgemv_bn=qdef[0], qgemv_bw=qdef[1], qgemv_warps=qdef[2], qgemv_stages=qdef[3],
        table=measured.get("best", {}), table_source=source,
        dense_bm=128 if big else 64, dense_bn=128 if big else 64, dense_bk=64 if big else 32,
        dense_warps=8 if big else 4, dense_stages=3 if big else 2,
    )
