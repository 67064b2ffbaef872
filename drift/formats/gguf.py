"""GGUF files, memory-mapped and lazy.

`open_gguf(path)` parses the header itself, every read bounds-checked against the file size,
so that a bad file (truncated, corrupt, absurd counts or lengths) gets one clear
`ModelFileError` and never a traceback, a giant allocation or a long loop. gguf-py's
`GGUFReader` is not used to parse: it has none of these checks, and it is slow (seconds on a
100 MB model, per key of a tokenizer vocabulary). Its names and quant sizes are used.

The metadata is plain Python values, as `GGUFReader`'s `contents()` gives them; each tensor is
a read-only view of its bytes in the mapped file (nothing is read until it is used).

Shapes are in numpy order: a weight GGUF lists as (in, out) ggml dims is (out, in) here.

File layout (GGUF v2/v3, little-endian):
    magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv x       (string key, u32 value type, value)
    n_tensors x  (string name, u32 n_dims, u64 dims[n_dims], u32 quant type, u64 offset)
    padding to `general.alignment` (default 32), then the tensor data; offsets are from there.
    string = u64 length + UTF-8 bytes; array value = u32 item type, u64 count, items.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
from gguf import GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType

from drift.errors import ModelFileError, UnsupportedError
from drift.formats import quants

GGUF_MAGIC = b"GGUF"
MAX_DIMS = 4  # GGML_MAX_DIMS: llama.cpp rejects more

# Scalar value types: one little-endian item (arrays read the same format through numpy).
_SCALARS: dict[GGUFValueType, struct.Struct] = {
    t: struct.Struct(f)
    for t, f in [
        (GGUFValueType.UINT8, "<B"),
        (GGUFValueType.INT8, "<b"),
        (GGUFValueType.UINT16, "<H"),
        (GGUFValueType.INT16, "<h"),
        (GGUFValueType.UINT32, "<I"),
        (GGUFValueType.INT32, "<i"),
        (GGUFValueType.FLOAT32, "<f"),
        (GGUFValueType.BOOL, "<?"),
        (GGUFValueType.UINT64, "<Q"),
        (GGUFValueType.INT64, "<q"),
        (GGUFValueType.FLOAT64, "<d"),
    ]
}
_U32, _U64 = _SCALARS[GGUFValueType.UINT32], _SCALARS[GGUFValueType.UINT64]

# Tensor types gguf-py hands out as typed arrays rather than bytes; drift keeps that convention
# (an F32 norm weight is a float32 array of its shape).
_TYPED_DATA: dict[GGMLQuantizationType, type] = {
    GGMLQuantizationType.F32: np.float32,
    GGMLQuantizationType.F16: np.float16,
    GGMLQuantizationType.F64: np.float64,
    GGMLQuantizationType.I8: np.int8,
    GGMLQuantizationType.I16: np.int16,
    GGMLQuantizationType.I32: np.int32,
    GGMLQuantizationType.I64: np.int64,
}

_MIN_KV_BYTES = 8 + 4 + 1  # empty key, value type, smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # empty name, n_dims, type, offset
_MAX_ELEMENTS = 2**63  # ggml counts in int64
_MAX_BYTES = 2**62  # numpy sizes are signed 64-bit
# Metadata arrays are vocabularies and merges: 10**6 entries at most in practice. A corrupt
# count that still fits in a large file would otherwise become a list of billions of objects.
_MAX_ARRAY = 1 << 24


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: (rows, cols) for a matrix
    qtype: GGMLQuantizationType
    # Read-only view of the stored bytes in the mapped file, nothing copied: (..., bytes per
    # row) uint8, or a typed array of `shape` for the types in _TYPED_DATA (F32, F16, ...).
    data: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


class GGUFFile:
    """One opened GGUF file: `metadata` (key -> value) and `tensors` (name -> TensorInfo)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        buf = _map(self.path)
        header = _Header(buf, self.path)
        self.version = header.version
        self.metadata: dict[str, Any] = header.metadata
        self.tensors: dict[str, TensorInfo] = header.tensors

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise ModelFileError(f"{self.path}: no general.architecture key")
        return arch

    def dequantize(self, name: str) -> np.ndarray:
        """The whole tensor as float32 in its numpy shape."""
        info = self.tensors[name]
        return quants.dequantize(info.data, info.qtype, info.shape, tensor_name=name)

    def dequantize_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Some rows of a 2-D tensor as float32, (len(rows), cols): an embedding lookup that
        does not expand the whole table."""
        info = self.tensors[name]
        rows = np.asarray(rows, dtype=np.int64)
        raw = np.asarray(info.data)[rows]
        return quants.dequantize(raw, info.qtype, (len(rows), info.shape[-1]), tensor_name=name)


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    return GGUFFile(path)


def check_quant_supported(info: TensorInfo) -> None:
    quants.check_supported(info.qtype, info.name)


def _map(path: str) -> mmap.mmap:
    """The whole file mapped read-only, after the checks that need no parsing."""
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ModelFileError(f"{path}: is a directory, not a GGUF file")
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: not a regular file")
    try:
        with open(path, "rb") as f:
            head = f.read(24)
            if not head:
                raise ModelFileError(f"{path}: empty file, not a GGUF file")
            if head[:4] != GGUF_MAGIC:
                raise ModelFileError(f"{path}: not a GGUF file (starts with {head[:4]!r})")
            if len(head) < 24:
                raise ModelFileError(f"{path}: truncated GGUF header ({len(head)} bytes)")
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read ({e.strerror or e})") from None


class _Header:
    """Parses the header of a mapped GGUF file into `version`, `metadata` and `tensors`.

    Every read claims its bytes through `_need`, which raises if they run past the end of the
    file; counts and lengths are checked against the bytes left before anything is allocated
    or looped over."""

    def __init__(self, buf: mmap.mmap, path: str):
        self.buf, self.path, self.size = buf, path, len(buf)
        self.pos = 4
        self.where = "the file header"
        self.version = self._u32()
        if self.version not in (2, 3):
            if self.version in (2 << 24, 3 << 24):  # 2 or 3 written big-endian
                raise UnsupportedError(f"{path}: big-endian GGUF files are not supported")
            raise UnsupportedError(f"{path}: GGUF version {self.version} is not supported")
        n_tensors, n_kv = self._u64(), self._u64()
        if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES > self.size - self.pos:
            self._corrupt(f"{n_tensors} tensors and {n_kv} keys cannot fit in {self.size} bytes")
        self.metadata = self._read_metadata(n_kv)
        alignment = self.metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
        if alignment <= 0 or alignment & (alignment - 1):
            self._corrupt(f"general.alignment {alignment} is not a power of two")
        infos = [self._read_tensor_info(i) for i in range(n_tensors)]
        data_start = -(-self.pos // alignment) * alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, dims, type_id, offset in infos:
            if name in self.tensors:
                self._corrupt(f"tensor {name} appears twice")
            self.tensors[name] = self._tensor(name, dims, type_id, data_start, offset, alignment)

    # -- bounds-checked reads -----------------------------------------------------------------

    def _corrupt(self, what: str) -> NoReturn:
        raise ModelFileError(f"{self.path}: corrupt GGUF file: {what}")

    def _need(self, n: int, what: str) -> int:
        """Claims the next n bytes; returns where they start."""
        start = self.pos
        if n > self.size - start:
            raise ModelFileError(
                f"{self.path}: truncated or corrupt GGUF file: {what} in {self.where} needs "
                f"{n} bytes at offset {start}, the file has {self.size}"
            )
        self.pos = start + n
        return start

    def _u32(self) -> int:
        return _U32.unpack_from(self.buf, self._need(4, "a u32"))[0]

    def _u64(self) -> int:
        return _U64.unpack_from(self.buf, self._need(8, "a u64"))[0]

    def _str(self) -> str:
        n = self._u64()
        start = self._need(n, f"a string of {n} bytes")
        try:
            return self.buf[start : start + n].decode("utf-8")
        except UnicodeDecodeError:
            self._corrupt(f"a string in {self.where} is not UTF-8")

    # -- sections -----------------------------------------------------------------------------

    def _read_metadata(self, n_kv: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i in range(n_kv):
            self.where = f"metadata entry {i}"
            key = self._str()
            self.where = f"metadata key {key!r}"
            if key in out:
                self._corrupt(f"key {key!r} appears twice")
            vtype = self._value_type()
            if key == "general.alignment" and vtype != GGUFValueType.UINT32:
                self._corrupt(f"general.alignment is {vtype.name}, not UINT32")
            out[key] = self._value(vtype)
        return out

    def _value_type(self) -> GGUFValueType:
        raw = self._u32()
        try:
            return GGUFValueType(raw)
        except ValueError:
            self._corrupt(f"unknown value type {raw} in {self.where}")

    def _value(self, vtype: GGUFValueType) -> Any:
        if vtype == GGUFValueType.STRING:
            return self._str()
        if vtype != GGUFValueType.ARRAY:
            fmt = _SCALARS[vtype]
            return fmt.unpack_from(self.buf, self._need(fmt.size, vtype.name))[0]
        itype = self._value_type()
        count = self._u64()
        if count > _MAX_ARRAY:
            self._corrupt(f"{self.where} is an array of {count} items (at most {_MAX_ARRAY})")
        if itype == GGUFValueType.ARRAY:
            raise UnsupportedError(f"{self.path}: {self.where} is an array of arrays")
        if itype == GGUFValueType.STRING:
            return self._str_array(count)
        fmt = _SCALARS[itype]
        start = self._need(count * fmt.size, f"an array of {count} {itype.name}")
        items = np.frombuffer(self.buf, dtype=np.dtype(fmt.format), count=count, offset=start)
        return (items != 0 if itype == GGUFValueType.BOOL else items).tolist()

    def _str_array(self, count: int) -> list[str]:
        # The hot loop of a tokenizer vocabulary (up to 256k strings): `_str` inlined.
        if count * 8 > self.size - self.pos:  # each string takes at least its length field
            self._need(count * 8, f"an array of {count} strings")
        buf, size, pos = self.buf, self.size, self.pos
        unpack = _U64.unpack_from
        out: list[str] = []
        try:
            for i in range(count):
                if pos + 8 > size:
                    self.pos = pos
                    self._need(8, f"the length of string {i}")
                n = unpack(buf, pos)[0]
                if n > size - pos - 8:
                    self.pos = pos + 8
                    self._need(n, f"string {i} of {n} bytes")
                out.append(buf[pos + 8 : pos + 8 + n].decode("utf-8"))
                pos += 8 + n
        except UnicodeDecodeError:
            self._corrupt(f"string {len(out)} in {self.where} is not UTF-8")
        self.pos = pos
        return out

    def _read_tensor_info(self, i: int) -> tuple[str, list[int], int, int]:
        self.where = f"tensor info {i}"
        name = self._str()
        if not name.isprintable():  # it goes into one-line messages; real names are identifiers
            self._corrupt(f"tensor name {name!r} in {self.where} is not printable")
        self.where = f"tensor info {i} ({name})"
        n_dims = self._u32()
        if n_dims > MAX_DIMS:
            self._corrupt(f"tensor {name} has {n_dims} dimensions (at most {MAX_DIMS})")
        dims = [self._u64() for _ in range(n_dims)]
        return name, dims, self._u32(), self._u64()

    def _tensor(
        self, name: str, dims: list[int], type_id: int, data_start: int, offset: int, align: int
    ) -> TensorInfo:
        try:
            qtype = GGMLQuantizationType(type_id)
        except ValueError:
            raise UnsupportedError(
                f"{self.path}: tensor {name}: unknown quant type id {type_id}"
            ) from None
        elements, block_bytes = quants.block_shape(qtype)
        # The product of the non-zero dimensions, in bytes, must fit the address space: numpy
        # refuses the view of such a shape even when a zero dimension leaves it empty.
        span = int(np.prod([max(d, 1) for d in dims], dtype=object))
        if span >= _MAX_ELEMENTS or -(-span // elements) * block_bytes >= _MAX_BYTES:
            self._corrupt(f"tensor {name}: dimensions {dims} are too large")
        row = dims[0] if dims else 1  # ggml pads missing dimensions with 1
        if row % elements:
            self._corrupt(
                f"tensor {name}: row of {row} weights is not a whole number of "
                f"{qtype.name} blocks ({elements} weights each)"
            )
        if offset % align:
            self._corrupt(f"tensor {name}: data offset {offset} is not {align}-byte aligned")
        shape = tuple(reversed(dims))  # numpy order
        n_elements = int(np.prod(dims, dtype=object))
        nbytes = n_elements // elements * block_bytes
        start = data_start + offset
        if start + nbytes > self.size:
            raise ModelFileError(
                f"{self.path}: truncated GGUF file: tensor {name} needs bytes up to "
                f"{start + nbytes}, the file has {self.size}"
            )
        typed = _TYPED_DATA.get(qtype)
        if typed is not None:
            data = np.frombuffer(self.buf, dtype=typed, count=n_elements, offset=start)
            return TensorInfo(name, shape, qtype, data.reshape(shape))
        data = np.frombuffer(self.buf, dtype=np.uint8, count=nbytes, offset=start)
        row_bytes = row // elements * block_bytes
        return TensorInfo(name, shape, qtype, data.reshape(*shape[:-1], row_bytes))
