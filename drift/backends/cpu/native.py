"""The numpy backend's compiled kernels (`kernels.c`): matrix-vector products straight from
quantized blocks. Hybrid execution's cold FFN (`ColdFFN`: int8 x, skipping) and the numpy
backend's GEMV for weights it keeps quantized (`gemv_f32`: float x, the reference's
arithmetic up to summation order) both run on them.

`kernels.c` is compiled at first use with the system's C compiler (`cc -O3 -march=native
-fopenmp`, into `$DRIFT_HOME/kernels/`, keyed by the source's and compiler's hash) and called
through ctypes, which releases the GIL. Without a compiler, `ColdFFN` computes the same thing
with numpy (one clear warning, correct but slow).

Weights are held as planes converted once at load: the packed quants as they are in the file
(nibbles or int8) and the f16 scales (and minimums) split out of the blocks, so the dot
products read no more bytes than the file holds.
Gate and up rows of types other than Q4_0, Q4_1 and Q8_0 are re-quantized to Q8_0 at load (a
K-quant's sub-block scales do not fit the block-of-32 loop; Q8_0 keeps them within ~0.4 % of
a block's largest weight). The down projection's cold columns come already transposed and
re-quantized to Q8_0 rows by the split (`drift/hybrid/split.py`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drift.errors import InvalidArgumentError
from drift.formats import quants

SOURCE = Path(__file__).with_name("kernels.c")
KINDS = {"Q4_0": 0, "Q4_1": 1, "Q8_0": 2}  # the weight types the C loop reads as they are
ACTIVATIONS = ("swiglu", "geglu")

_lib = None
_lib_lock = threading.Lock()
_lib_error: str | None = None


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def isa_flags() -> list[str]:
    """DRIFT_CPU_ISA=avx2 builds the kernels without their AVX-512 paths (to compare them on
    one machine); unset: whatever -march=native finds."""
    isa = os.environ.get("DRIFT_CPU_ISA", "")
    if isa not in ("", "native", "avx2"):
        raise InvalidArgumentError(f"DRIFT_CPU_ISA={isa!r}: native or avx2")
    return ["-mno-avx512f"] if isa == "avx2" else []


def _build(cc: str, out: Path) -> None:
    base = [cc, "-O3", "-shared", "-fPIC", "-o", str(out), str(SOURCE)]
    native = ["-march=native", *isa_flags()]
    tries = [base + native + ["-fopenmp"], base + native, base]
    err = ""
    for cmd in tries:  # OpenMP or -march=native may be missing (macOS clang): fewer flags
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if r.returncode == 0:
            return
        err = r.stderr.strip().splitlines()[-1:] or [""]
    raise OSError(f"{cc} failed: {err[0]}")


def library():
    """The compiled kernels (ctypes), or None where they cannot be built here."""
    global _lib, _lib_error
    with _lib_lock:
        if _lib is not None or _lib_error is not None:
            return _lib
        if os.environ.get("DRIFT_CPU_KERNELS") == "numpy":
            _lib_error = "DRIFT_CPU_KERNELS=numpy"
            return None
        cc = _compiler()
        if cc is None:
            _lib_error = "no C compiler (cc, gcc or clang) found"
            print(f"drift: hybrid CPU kernels run on numpy: {_lib_error}", file=sys.stderr)
            return None
        from drift.hub import models_dir

        key = hashlib.sha256(SOURCE.read_bytes() + cc.encode() + os.uname().machine.encode()
                             + " ".join(isa_flags()).encode()).hexdigest()[:16]
        path = models_dir().parent / "kernels" / f"cpu_kernels-{key}.so"
        try:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
                _build(cc, tmp)
                os.replace(tmp, path)
            lib = ctypes.CDLL(str(path))
        except OSError as e:
            _lib_error = str(e)
            print(f"drift: hybrid CPU kernels run on numpy: {e}", file=sys.stderr)
            return None
        p = ctypes.c_void_p
        i = ctypes.c_int
        lib.quantize_x.argtypes = [p, i, i, p, p, p]
        lib.gemv_rows.argtypes = [p, i, p, i, p, p, p, i, p]
        lib.axpy_rows_q8.argtypes = [p, i, p, i, p, i, p, p, i]
        lib.ffn_cold_token.argtypes = [p, p, p, i, i, i, p, ctypes.c_float, i, p, i, p, p, p,
                                       p, p, p, p, p, i, p]
        lib.ffn_cold_token.restype = i
        lib.gemv_f32.argtypes = [i, p, p, p, i, i, p, i, p]
        lib.dequant_rows.argtypes = [p, i, i, i, p]
        lib.n_threads.restype = i
        lib.set_prefetch.argtypes = [i, i]
        setting = prefetch_setting()
        if setting is not None:
            lib.set_prefetch(*setting)
        _lib = lib
        return lib


def prefetch_setting() -> tuple[int, int] | None:
    """DRIFT_CPU_PREFETCH=ROWS,LEVEL: how many active rows ahead the skipping loops prefetch
    (0..64) and into which cache level (0 non-temporal .. 3 all); None: the kernels' default."""
    setting = os.environ.get("DRIFT_CPU_PREFETCH")
    if not setting:
        return None
    try:
        rows, level = (int(v) for v in setting.split(","))
    except ValueError:
        rows = level = -1
    if not (0 <= rows <= 64 and 0 <= level <= 3):
        raise InvalidArgumentError(f"DRIFT_CPU_PREFETCH={setting!r}: ROWS,LEVEL with ROWS in "
                                   f"0..64 and LEVEL in 0..3 (e.g. 4,2)")
    return rows, level


def _ptr(a: np.ndarray | None):
    return None if a is None else a.ctypes.data


class _Planes(ctypes.Structure):  # planes_t of kernels.c
    _fields_ = [("kind", ctypes.c_int), ("qs", ctypes.c_void_p), ("d", ctypes.c_void_p),
                ("m", ctypes.c_void_p), ("qs_stride", ctypes.c_int64),
                ("d_stride", ctypes.c_int64)]


@dataclass
class RowPlanes:
    """A (R, K) weight as the C loop reads it: `qs` the packed quants of each row (nibbles,
    (R, K/2) uint8, or int8 (R, K)), `d` the block scales and `m` the block minimums (Q4_1),
    IEEE half bits (R, K/32) uint16, as the file stores them. Each row's elements are
    adjacent; the rows may be strided (views into `interleaved` records)."""

    kind: str
    qs: np.ndarray
    d: np.ndarray
    m: np.ndarray | None
    K: int

    @property
    def nbytes(self) -> int:
        return self.qs.nbytes + self.d.nbytes + (0 if self.m is None else self.m.nbytes)

    def struct(self) -> _Planes:
        """The C loop's view of these planes (planes_t): pointers and row strides."""
        if self.m is not None and self.m.strides != self.d.strides:
            raise ValueError("the minimums are laid out as the scales")
        return _Planes(KINDS[self.kind], _ptr(self.qs), _ptr(self.d), _ptr(self.m),
                       self.qs.strides[0], self.d.strides[0] // 2)

    @classmethod
    def from_blocks(cls, raw: np.ndarray, qtype: str, shape: tuple[int, int]) -> RowPlanes:
        """From a GGUF tensor's stored rows (R, row bytes)."""
        R, K = shape
        if qtype not in KINDS:  # a K-quant, Q5, F16...: re-quantized to Q8_0 rows
            from gguf import GGMLQuantizationType as Q

            w = quants.dequantize(raw, Q[qtype], shape)
            raw, qtype = quants.quantize(w, Q.Q8_0), "Q8_0"
        blocks = np.ascontiguousarray(raw).reshape(R, K // 32, -1)
        flat = blocks.reshape(-1, blocks.shape[-1])

        def scale(name):  # f16 as stored, split out of the blocks (the kernel widens them)
            return np.ascontiguousarray(quants.field(flat, qtype, name)).view(
                np.uint16).reshape(R, K // 32)

        qs = np.ascontiguousarray(quants.field(flat, qtype, "qs")).reshape(R, -1)
        if qtype == "Q8_0":
            qs = qs.view(np.int8)
        return cls(qtype, qs, scale("d"), scale("m") if qtype == "Q4_1" else None, K)

    def dequantize(self) -> np.ndarray:
        """The float32 weights these planes hold (the numpy path, tests)."""
        R, K = self.qs.shape[0], self.K
        d = np.repeat(self.d.view(np.float16).astype(np.float32), 32, axis=1)
        if self.kind == "Q8_0":
            return self.qs.astype(np.float32) * d
        b = self.qs.reshape(R, K // 32, 16)
        q = np.concatenate([b & 15, b >> 4], axis=-1).reshape(R, K).astype(np.float32)
        if self.kind == "Q4_0":
            return d * (q - 8)
        return d * q + np.repeat(self.m.view(np.float16).astype(np.float32), 32, axis=1)


def interleaved(up: RowPlanes, down: RowPlanes) -> tuple[RowPlanes, RowPlanes]:
    """The same two weights (rows per neuron: up (F, D), the transposed down (F, D)) as views
    into one record per neuron, [up quants | up scales (| minimums) | down quants | down
    scales], 64-byte aligned: an active neuron's 6.5 KB (Llama 3 8B) are one run of memory,
    which the core's prefetchers stream, instead of four runs of 0.25-4 KB in four planes."""
    parts = [up.qs, up.d, *([] if up.m is None else [up.m]), down.qs, down.d]
    F = up.qs.shape[0]
    if down.qs.shape[0] != F or down.m is not None:
        raise ValueError("up and down rows per neuron, down as Q8_0 rows")
    widths = [a.shape[1] * a.itemsize for a in parts]
    record = -(-sum(widths) // 64) * 64
    raw = np.empty(F * record + 64, np.uint8)
    base = raw[(-raw.ctypes.data) % 64:][: F * record].reshape(F, record)
    views, at = [], 0
    for a, w in zip(parts, widths):
        v = base[:, at : at + w].view(a.dtype)
        v[:] = a
        views.append(v)
        at += w
    if up.m is None:
        uq, ud, dq, dd = views
        um = None
    else:
        uq, ud, um, dq, dd = views
    return (RowPlanes(up.kind, uq, ud, um, up.K), RowPlanes(down.kind, dq, dd, None, down.K))


def dequant_rows(lib, w: RowPlanes, r0: int, r1: int, out: np.ndarray | None = None) -> np.ndarray:
    """Rows r0..r1 of w as float32, exactly the reference's values (`RowPlanes.dequantize`),
    into `out` ((r1 - r0, K) float32, C-contiguous) or a new array."""
    if out is None:
        out = np.empty((r1 - r0, w.K), np.float32)
    if out.shape != (r1 - r0, w.K) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("out: (r1 - r0, K) float32, C-contiguous")
    lib.dequant_rows(ctypes.byref(w.struct()), w.K, r0, r1, _ptr(out))
    return out


def gemv_f32(lib, w: RowPlanes, x: np.ndarray) -> np.ndarray:
    """x (S, K) float32 @ w.T from w's quantized rows, in float32: each block's weights are
    rebuilt exactly (d * (q - 8), d * q + m, d * q) and multiplied by x; (S, R)."""
    if not (w.qs.flags.c_contiguous and w.d.flags.c_contiguous):
        raise ValueError("gemv_f32 reads adjacent rows")
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, w.K)
    out = np.empty((x.shape[0], w.qs.shape[0]), np.float32)
    lib.gemv_f32(KINDS[w.kind], _ptr(w.qs), _ptr(w.d), _ptr(w.m), w.K, w.qs.shape[0], _ptr(x),
                 x.shape[0], _ptr(out))
    return out


def _act(kind: str, g: np.ndarray) -> np.ndarray:
    from drift.ir import REGISTRY

    return REGISTRY["silu" if kind == "swiglu" else "gelu"].reference([g], {})[0]


class ColdFFN:
    """One layer's cold neurons on the CPU: gate and up rows, and the down projection either
    as the neurons' columns in Q8_0 rows (`down_rows`, transposed: what skipping needs) or as
    the file's own (D, F') rows (dense: a GEMV on the quantized h, no re-quantization).
    `__call__(x)` returns their part of down(act(gate x) * up x), the neurons whose
    |act(gate x)| is at most `threshold` skipped (CATS): their up row and down row are never
    read. With `gate` None the GPU holds the gate rows: `__call__(x, g)` takes the gate
    pre-activations g = gate x it computed."""

    def __init__(self, gate: RowPlanes | None, up: RowPlanes, down: RowPlanes, act: str,
                 threshold: float, down_rows: bool = True,
                 predictor: tuple[np.ndarray, np.ndarray, float] | None = None,
                 records: bool = True):
        if down_rows and down.kind != "Q8_0":
            raise ValueError("the transposed down projection is held as Q8_0 rows")
        if not down_rows and threshold > 0:
            raise ValueError("skipping needs the down projection as rows per neuron")
        if act not in ACTIVATIONS:
            raise ValueError(f"no cold FFN kernel for activation {act!r}")
        if down_rows and records:  # each neuron's up and down rows in one record
            up, down = interleaved(up, down)
        self.gate, self.up, self.down, self.act = gate, up, down, act
        self.down_rows = down_rows
        self.threshold = float(threshold)
        self._work = None  # the per-thread accumulators of the down axpy
        # (A (F', r), B (r, D), margin): only the neurons whose predicted gate p = A (B x) has
        # |act(p)| > margin * threshold get their gate computed (see ops_hybrid.py)
        self.predictor = predictor
        self.last_candidates = 0
        # over all calls: gate rows the predictor let tokens read, and (where the full gate
        # was computed anyway: several tokens) how many truly active neurons it let through
        self.pred_rows = self.pred_tokens = self.recall_hits = self.recall_total = 0
        if gate is None and predictor is not None:
            raise ValueError("a predictor spares gate rows; this layer's gate is on the GPU")
        self.n, self.D = up.qs.shape[0], up.K
        self.last_active = 0  # neurons computed in full on the last call (all tokens)
        self._float = None

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes for w in (self.gate, self.up, self.down) if w is not None)

    def __call__(self, x: np.ndarray, g: np.ndarray | None = None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, self.D)
        if (g is None) != (self.gate is not None):
            raise ValueError("the gate pre-activations come from the caller exactly when the "
                             "gate rows are not here")
        if g is not None:
            g = np.ascontiguousarray(g, dtype=np.float32).reshape(x.shape[0], self.n)
        lib = library()
        if lib is None:
            return self._numpy(x, g)
        return self._token(lib, x, g) if x.shape[0] == 1 else self._native(lib, x, g)

    def _token(self, lib, x: np.ndarray, g_in: np.ndarray | None) -> np.ndarray:
        """One token (decode): every step in one call and one parallel region."""
        if getattr(self, "_scratch", None) is None:
            n, D, F32 = self.n, self.D, np.float32
            threads = lib.n_threads()
            self._structs = [w.struct() if w is not None
                             else _Planes(KINDS[self.up.kind], None, None, None, 0, 0)
                             for w in (self.gate, self.up, self.down)]
            hq = -(-n // 32) * 32
            self._scratch = [np.empty(n, F32), np.empty(n, np.int32), np.zeros(hq, F32),
                             np.empty(hq, np.int8), np.empty(hq // 32, F32),
                             np.empty(hq // 32, F32), np.empty(threads * D, F32)]
            # the arguments that never change, converted once (a decode token makes one
            # call per layer: their conversion was a third of a small layer's call)
            self._head = (*(ctypes.byref(st) for st in self._structs), int(self.down_rows),
                          self.D, self.n)
            self._tail = (*(_ptr(s) for s in self._scratch), threads)
        y = np.empty((1, self.D), np.float32)
        pred = self.predicted(x)
        cand = None if pred is None else np.flatnonzero(pred[0]).astype(np.int32)
        count = lib.ffn_cold_token(*self._head, _ptr(x), self.threshold,
                                   0 if self.act == "swiglu" else 1, _ptr(cand),
                                   0 if cand is None else cand.size, _ptr(g_in), *self._tail,
                                   _ptr(y))
        self.last_active = count
        return y

    def predicted(self, x: np.ndarray) -> np.ndarray | None:
        """(S, F') bool: the neurons the predictor lets each token compute (None: no
        predictor, every one)."""
        if self.predictor is None or self.threshold <= 0:
            return None
        A, B, margin = self.predictor
        pred = np.abs(_act(self.act, (x @ B.T) @ A.T)) > margin * self.threshold
        self.last_candidates = int(pred.any(axis=0).sum())
        self.pred_rows += int(pred.sum())
        self.pred_tokens += pred.shape[0]
        return pred

    def _count_recall(self, active: np.ndarray, pred: np.ndarray) -> None:
        self.recall_hits += int((active & pred).sum())
        self.recall_total += int(active.sum())

    def _native(self, lib, x: np.ndarray, g: np.ndarray | None) -> np.ndarray:
        S, D, n = x.shape[0], self.D, self.n

        def quantized(v: np.ndarray):
            K = v.shape[1]
            q = (np.empty((S, K), np.int8), np.empty((S, K // 32), np.float32),
                 np.empty((S, K // 32), np.float32))
            lib.quantize_x(_ptr(v), S, K, *(_ptr(a) for a in q))
            return q

        qx = quantized(x)

        def gemv(w: RowPlanes, rows: np.ndarray | None, count: int, q=qx) -> np.ndarray:
            out = np.empty((S, count), np.float32)
            lib.gemv_rows(ctypes.byref(w.struct()), w.K, _ptr(rows), count,
                          *(_ptr(a) for a in q), S, _ptr(out))
            return out

        a = _act(self.act, gemv(self.gate, None, n) if g is None else g)
        keep = np.abs(a) > self.threshold if self.threshold > 0 else None
        pred = self.predicted(x)
        if pred is not None:  # (the gate of every neuron was computed: prefill is rare here)
            self._count_recall(keep, pred)
            keep &= pred
        if keep is None:
            rows, h = None, a * gemv(self.up, None, n)
            count = n
        else:  # the union over the call's tokens; a token's inactive neurons weigh 0
            rows = np.flatnonzero(keep.any(axis=0)).astype(np.int32)
            count = rows.size
            h = np.where(keep[:, rows], a[:, rows], 0) * gemv(self.up, rows, count)
            h = np.ascontiguousarray(h, dtype=np.float32)
        self.last_active = count
        if not self.down_rows:  # dense: down's own rows over h, quantized like x
            return gemv(self.down, None, D, quantized(np.ascontiguousarray(h, np.float32)))
        y = np.empty((S, D), np.float32)
        if not count:
            y[:] = 0
            return y
        threads = lib.n_threads()
        if self._work is None or self._work.size < threads * S * D:
            self._work = np.empty(threads * S * D, np.float32)
        lib.axpy_rows_q8(ctypes.byref(self.down.struct()), D, _ptr(rows), count,
                         _ptr(h), S, _ptr(y), _ptr(self._work), threads)
        return y

    def _numpy(self, x: np.ndarray, g: np.ndarray | None) -> np.ndarray:
        """The same arithmetic without the compiled loop: x quantized to int8 blocks, the
        weights dequantized once and kept."""
        from drift.ir.ops_quant import QBLOCK

        if self._float is None:
            self._float = tuple(None if w is None else w.dequantize()
                                for w in (self.gate, self.up, self.down))
        wg, wu, wd = self._float
        if not self.down_rows:
            wd = wd.T  # (D, F') -> (F', D)
        b = x.reshape(x.shape[0], -1, QBLOCK)
        amax = np.abs(b).max(axis=-1, keepdims=True)
        inv = np.where(amax > 0, 127 / np.maximum(amax, 1e-30), 0).astype(np.float32)
        t = b * inv
        q = np.trunc(t + np.where(t >= 0, 0.5, -0.5))
        xq = (q * (amax / 127)).reshape(x.shape).astype(np.float32)
        a = _act(self.act, xq @ wg.T if g is None else g)
        h = a * (xq @ wu.T)
        if self.threshold > 0:
            keep = np.abs(a) > self.threshold
            pred = self.predicted(x)
            if pred is not None:
                self._count_recall(keep, pred)
                keep &= pred
            h = np.where(keep, h, 0)
            self.last_active = int(keep.any(axis=0).sum())
        else:
            self.last_active = self.n
        return (h @ wd).astype(np.float32)
