"""GGUF blocks -> the planes the Triton kernels read: the `KernelPlanes` storage of
drift/passes/storage.py (its `kernel_planes_of` is the numpy reference of this conversion, and
its KERNEL_LAYOUTS the kind, group, pair and offset each type's kernels are specialized on).

The raw bytes go to the device as they are (uint8, 4.5 bits a weight for Q4_0), and the
planes are cut from them there with torch, one tensor at a time, so no float copy of a
quantized weight ever exists and the host does no per-weight work:

    type   kind  plane                                   scales (f16)       mins (f16)   G  P
    F32    0     f32 (N, K)                               -                  -            -  -
    F16    0     f16 (N, K)                               -                  -            -  -
    BF16   0     bf16 (N, K)                              -                  -            -  -
    Q4_0   1     qs bytes (N, K/2), q = nibble - 8        d                  -            32 16
    Q4_1   1     qs bytes (N, K/2)                        d                  m            32 16
    Q4_K   1     qs bytes (N, K/2)                        d*scale_j          -dmin*min_j  32 32
    Q8_0   2     int8 (N, K)                              d                  -            32 -
    Q5_0   2     int8 (N, K) = q - 16 (widened: 8 bits)   d                  -            32 -
    Q5_K   2     int8 (N, K) = q (widened: 8 bits)        d*scale_j          -dmin*min_j  32 -
    Q6_K   2     int8 (N, K) = q - 32 (widened: 8 bits)   d*scale_j          -            16 -

Q5_0, Q5_K and Q6_K are widened to an int8 plane for now (1.6x, 1.45x and 1.23x their
bytes); Q4_K's
products d*scale are rounded to f16 (relative error <= 2^-11). Other types raise
UnsupportedError.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q

from drift.errors import UnsupportedError
from drift.formats.gguf import TensorInfo
from drift.formats.quants import block_shape, field
from drift.passes.storage import KERNEL_LAYOUTS

KINDS = {"float": 0, "q4": 1, "q8": 2}
SUPPORTED = (Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_K, Q.Q8_0, Q.Q5_0, Q.Q6_K)


@dataclass
class QWeight:
    """A (N, K) matrix in kernel layout."""

    shape: tuple[int, int]
    kind: int
    q: torch.Tensor
    scales: torch.Tensor | None = None
    mins: torch.Tensor | None = None
    group: int = 32
    pair: int = 16
    offset: int = 0
    qtype: str = ""
    # a row range [row0, row0 + N) of a weight stacked at load with its siblings (Q, K, V or
    # gate, up): decode runs one GEMV over the whole stack
    base: QWeight | None = None
    row0: int = 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.q, self.scales, self.mins)
                   if t is not None)

    def args(self) -> tuple:
        """(q, scales, mins) pointers; absent planes point at q (never read)."""
        return (self.q, self.scales if self.scales is not None else self.q,
                self.mins if self.mins is not None else self.q)

    def strides(self) -> tuple[int, int]:
        """(bytes or elements per row of the q plane, groups per row): passed as arguments so
        Triton sees their divisibility by 16 (wide vector loads)."""
        K = self.shape[1]
        return (K // 2 if self.kind == 1 else K), (K // self.group if self.kind else 1)

    def meta(self) -> dict:
        return {"KIND": self.kind, "P": self.pair, "G": self.group, "OFF": self.offset,
                "HAS_MIN": self.mins is not None}


def _own(t: torch.Tensor) -> torch.Tensor:
    """A fresh, aligned copy: a plane read as int32 words must start on 4 bytes, which a
    contiguous slice of the raw blocks (a single block per row) need not."""
    return t.clone(memory_format=torch.contiguous_format)


def _f16(b: torch.Tensor) -> torch.Tensor:
    """(..., 2) uint8 -> (...) float16."""
    return b.contiguous().view(torch.float16).squeeze(-1)


def convert(raw: torch.Tensor, qtype: Q, shape: tuple[int, int], name: str = "") -> QWeight:
    """raw: uint8 (N, row bytes) on the target device -> QWeight, in the planes of the
    `KernelPlanes` storage (drift/passes/storage.py; `kernel_planes_of` is the numpy reference
    this torch conversion is tested against). Blocks are sliced by the one field table
    (`quants.field`)."""
    N, K = shape
    elements, nbytes = block_shape(qtype)
    if qtype not in SUPPORTED:
        raise UnsupportedError(
            f"tensor {name}: the triton backend does not run {qtype.name} weights yet "
            f"(it runs {', '.join(t.name for t in SUPPORTED)})"
        )
    raw = raw.reshape(N, -1)
    if qtype in (Q.F32, Q.F16, Q.BF16):
        dt = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}[qtype]
        return QWeight(shape, 0, raw.contiguous().view(dt), qtype=qtype.name)
    t = qtype.name
    kind, group, pair, offset, _ = KERNEL_LAYOUTS[t]
    nb = K // elements
    b = raw.reshape(N, nb, nbytes)

    def planes(q, scales, mins=None) -> QWeight:
        return QWeight(shape, kind, q, scales, mins, group, pair, offset, t)

    if qtype in (Q.Q4_0, Q.Q4_1):
        mins = _f16(field(b, t, "m")) if qtype == Q.Q4_1 else None
        return planes(_own(field(b, t, "qs").reshape(N, K // 2)), _f16(field(b, t, "d")), mins)
    if qtype in (Q.Q4_K, Q.Q5_K):
        # 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit min packed in 12 bytes
        d = _f16(field(b, t, "d")).float()[:, :, None]
        dmin = _f16(field(b, t, "dmin")).float()[:, :, None]
        sc = field(b, t, "scales").to(torch.int32)
        lo4, mid4, hi4 = sc[:, :, 0:4], sc[:, :, 4:8], sc[:, :, 8:12]
        scale = torch.cat([lo4 & 63, (hi4 & 15) | ((lo4 >> 6) << 4)], -1).float()
        mins = torch.cat([mid4 & 63, (hi4 >> 4) | ((mid4 >> 6) << 4)], -1).float()
        scales = (d * scale).half().reshape(N, nb * 8)
        neg_mins = (-(dmin * mins)).half().reshape(N, nb * 8)
        if qtype == Q.Q4_K:
            return planes(_own(field(b, t, "qs").reshape(N, K // 2)), scales, neg_mins)
        # Q5_K: e = c*64 + h*32 + l (c < 4, h < 2, l < 32): low4 = nibble h of qs[c*32 + l],
        # bit 4 = bit (2c + h) of qh[l]; q in [0, 32), w = d*scale_j * q - dmin*min_j
        qh = field(b, t, "qh").to(torch.int16)
        qs = field(b, t, "qs").reshape(N, nb, 4, 32).to(torch.int16)
        e = torch.arange(256, device=raw.device)
        c, h, lane = e // 64, (e // 32) % 2, e % 32
        low4 = (qs[:, :, c, lane] >> (4 * h)) & 15
        high = (qh[:, :, lane] >> (2 * c + h)) & 1
        return planes((low4 | (high << 4)).to(torch.int8).reshape(N, K), scales, neg_mins)
    if qtype == Q.Q8_0:
        return planes(_own(field(b, t, "qs").reshape(N, K)).view(torch.int8),
                      _f16(field(b, t, "d")))
    if qtype == Q.Q5_0:
        qs = field(b, t, "qs")
        low = torch.cat([qs & 15, qs >> 4], -1).to(torch.int16)  # (N, nb, 32)
        qh = field(b, t, "qh").to(torch.int16)  # bit e of the little-endian u32: bit 4 of q[e]
        e = torch.arange(32, device=raw.device)
        hbit = (qh[:, :, e // 8] >> (e % 8)) & 1
        q = (low | (hbit << 4)) - 16
        return planes(q.to(torch.int8).reshape(N, K), _f16(field(b, t, "d")))
    # Q6_K: e = h*128 + r: low4 = nibble (r // 64) of ql[h*64 + r % 64];
    # high2 = bits [2*(r // 32), +2) of qh[h*32 + r % 32]; q = (low4 | high2 << 4) - 32
    ql = field(b, t, "ql").reshape(N, nb, 2, 64).to(torch.int16)
    qh = field(b, t, "qh").reshape(N, nb, 2, 32).to(torch.int16)
    r = torch.arange(128, device=raw.device)
    low4 = (ql[:, :, :, r % 64] >> (4 * (r // 64))) & 15
    high2 = (qh[:, :, :, r % 32] >> (2 * (r // 32))) & 3
    q = ((low4 | (high2 << 4)) - 32).to(torch.int8).reshape(N, K)
    sc = field(b, t, "scales").contiguous().view(torch.int8).float()  # (N, nb, 16)
    d = _f16(field(b, t, "d")).float()[:, :, None]
    return planes(q, (d * sc).half().reshape(N, nb * 16))


SLAB_WEIGHTS = 1 << 25  # weights converted at a time: bounds the temporaries of a big matrix


def upload(info: TensorInfo, device: torch.device) -> QWeight | torch.Tensor:
    """A GGUF tensor on the device: matrices as QWeight, vectors as f32."""
    data = np.asarray(info.data).view(np.uint8)
    if len(info.shape) == 1:
        from drift.formats import quants

        return torch.from_numpy(quants.dequantize(data, info.qtype, info.shape, info.name)).to(
            device)
    N, K = info.shape[0], int(np.prod(info.shape[1:]))
    data = data.reshape(N, -1)
    step = max(1, SLAB_WEIGHTS // K)
    parts = []
    for r0 in range(0, N, step):
        raw = torch.from_numpy(np.array(data[r0 : r0 + step])).to(device)
        parts.append(convert(raw, info.qtype, (raw.shape[0], K), info.name))
    if len(parts) == 1:
        w = parts[0]
    else:
        first = parts[0]

        def cat(attr: str) -> torch.Tensor | None:
            if getattr(first, attr) is None:
                return None
            return torch.cat([getattr(p, attr) for p in parts])

        w = QWeight((N, K), first.kind, cat("q"), cat("scales"), cat("mins"), first.group,
                    first.pair, first.offset, first.qtype)
        del parts
    w.shape = (N, K)
    return w


def pinned(info: TensorInfo) -> QWeight | torch.Tensor:
    """A GGUF tensor in kernel layout in page-locked host memory: what a streamed weight is
    copied from at the link's full speed (from the file's pages, a copy runs at a third of
    it)."""
    w = upload(info, torch.device("cpu"))
    if isinstance(w, torch.Tensor):
        return w.pin_memory()
    for attr in ("q", "scales", "mins"):
        t = getattr(w, attr)
        if t is not None:
            setattr(w, attr, t.pin_memory())
    return w


def to_device(w: QWeight | torch.Tensor, device: torch.device) -> QWeight | torch.Tensor:
    """A host weight (`pinned`) copied to the device, asynchronously on the current stream."""
    if isinstance(w, torch.Tensor):
        return w.to(device, non_blocking=True)
    planes = {a: None if getattr(w, a) is None else getattr(w, a).to(device, non_blocking=True)
              for a in ("q", "scales", "mins")}
    return QWeight(w.shape, w.kind, planes["q"], planes["scales"], planes["mins"], w.group,
                   w.pair, w.offset, w.qtype)


def stackable(infos: list[TensorInfo]) -> bool:
    """Whether weights can be one matrix: one quant type, matrices of one width."""
    return (len({i.qtype for i in infos}) == 1 and all(len(i.shape) == 2 for i in infos)
            and len({i.shape[1] for i in infos}) == 1)


def upload_stack(infos: list[TensorInfo], device: torch.device) -> list[QWeight]:
    """Upload the members, concatenate their planes along N into one QWeight and return
    each member as a row range (views) of it: no more memory than the members alone, after
    the upload's transient copy."""
    parts = [upload(i, device) for i in infos]
    first = parts[0]

    def cat(attr: str) -> torch.Tensor | None:
        if getattr(first, attr) is None:
            return None
        return torch.cat([getattr(p, attr) for p in parts])

    N = sum(p.shape[0] for p in parts)
    K = first.shape[1]
    base = QWeight((N, K), first.kind, cat("q"), cat("scales"), cat("mins"), first.group,
                   first.pair, first.offset, first.qtype)
    parts.clear()  # the members' own planes go; only the stack stays
    out, r0 = [], 0
    for i in infos:
        n = i.shape[0]
        q, s, m = (None if t is None else t[r0 : r0 + n] for t in (base.q, base.scales, base.mins))
        out.append(QWeight((n, K), base.kind, q, s, m, base.group, base.pair, base.offset,
                           base.qtype, base, r0))
        r0 += n
    return out
