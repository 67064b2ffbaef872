"""Storages: the round trip logical -> physical -> logical, and the coordinate translation
(numpy `locate` and the generated `index_expr`) against where `to_physical` really put each
element, for awkward shapes."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from drift.formats import quants
from drift.passes.storage import (
    BLOCK_FIELDS,
    ChannelSlices4,
    MultiObject,
    QuantBlockPlanes,
    QuantBlocks,
    StridedBuffer,
    block_size,
    weight_storage,
)

rng = np.random.default_rng(0)

PLAIN = [
    StridedBuffer((3, 5, 7), "f32"),
    StridedBuffer.pitched((5, 7), "f32", row_align=16),
    StridedBuffer.pitched((2, 3, 5), "f16", row_align=8),
    ChannelSlices4((2, 3, 5, 7), "f32"),
    ChannelSlices4((9, 64), "f32"),
    ChannelSlices4((1, 4, 4, 3), "f16"),
    MultiObject((3, 1000), "f32", chunk=256),
    MultiObject((1, 49152), "f32", chunk=16384),
]


def _coords(shape):
    grids = np.meshgrid(*[np.arange(d) for d in shape], indexing="ij")
    return [g.reshape(-1) for g in grids]


def _eval(expr: str, names, values) -> int:
    return eval(expr, {}, dict(zip(names, values)))  # the expressions are Python syntax


@pytest.mark.parametrize("st", PLAIN, ids=str)
def test_round_trip(st):
    x = rng.standard_normal(st.shape).astype(np.float16 if st.dtype == "f16" else np.float32)
    objs = st.to_physical(x)
    assert [o.shape for o in objs] == [o.shape for o in st.objects()]
    np.testing.assert_array_equal(st.from_physical(objs), x)
    # bound into a larger block at an offset, as the arena does
    block = np.zeros(st.nbytes + 128, dtype=np.uint8)
    bound = st.bind(block[64:])
    st.write(bound, x)
    np.testing.assert_array_equal(st.from_physical(bound), x)
    assert st.nbytes % st.align == 0


@pytest.mark.parametrize("st", PLAIN, ids=str)
def test_locate_and_index_expr_agree_with_placement(st):
    x = np.arange(np.prod(st.shape), dtype=np.float32).reshape(st.shape)
    if st.dtype == "f16":
        x = (x % 2000).astype(np.float16)
    objs = st.to_physical(x)
    coords = _coords(st.shape)
    obj, off = st.locate(coords)
    flat = [o.reshape(-1) for o in objs]
    got = np.array([flat[o][f] for o, f in zip(obj, off)])
    np.testing.assert_array_equal(got, x.reshape(-1))
    names = [f"c{i}" for i in range(len(st.shape))]
    exprs = st.index_expr(names)
    sample = rng.choice(len(coords[0]), size=min(200, len(coords[0])), replace=False)
    for s in sample:
        vals = [int(c[s]) for c in coords]
        assert _eval(exprs["object"], names, vals) == obj[s]
        assert _eval(exprs["offset"], names, vals) == off[s]


def test_channel_slices_pad_to_four_and_zero_the_padding():
    st = ChannelSlices4((1, 2, 2, 3), "f32")
    (obj,) = st.to_physical(np.ones((1, 2, 2, 3), np.float32))
    assert obj.shape == (1, 1, 2, 2, 4)  # (slices, N, H, W, 4)
    assert np.all(obj[..., 3] == 0) and np.all(obj[..., :3] == 1)
    assert st.nbytes == 64  # 16 values of 4 bytes, not 12


def test_multi_object_respects_the_object_size():
    st = MultiObject((1, 49152), "f32", chunk=16384)
    assert st.count == 3 and all(o.nbytes <= 65536 for o in st.objects())
    offsets = [o.offset for o in st.objects()]
    assert offsets == sorted(offsets) and all(o % 64 == 0 for o in offsets)


def _quantized(qtype: Q, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((n, k)).astype(np.float32)
    raw = quants.quantize(x, qtype).reshape(n, -1)
    return raw, quants.dequantize(raw, qtype, (n, k))


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q4_K, Q.Q6_K])
def test_quant_planes_round_trip_and_split_scales_from_quants(qtype):
    E = block_size(qtype.name)[0]
    n, k = 37, 2 * E  # rows not a multiple of the tile
    raw, _ = _quantized(qtype, n, k)
    st = QuantBlockPlanes((n, k), qtype.name, tile_rows=16)
    planes = st.to_physical(raw)
    assert len(planes) == len(BLOCK_FIELDS[qtype.name])
    np.testing.assert_array_equal(st.from_physical(planes), raw)
    np.testing.assert_array_equal(st.rows(planes, 16, 37), raw[16:37])
    np.testing.assert_array_equal(st.gather_rows(planes, np.array([36, 0, 17])), raw[[36, 0, 17]])
    # the planes are tiles of 16 rows: row r's block b sits at slot ((r//16)*nb + b)*16 + r%16
    names = [f[0] for f in BLOCK_FIELDS[qtype.name]]
    d_plane = planes[names.index("d")]
    off = BLOCK_FIELDS[qtype.name][names.index("d")][1]
    r, b = 20, 1
    slot = ((r // 16) * st.blocks_per_row + b) * 16 + r % 16
    B = block_size(qtype.name)[1]
    np.testing.assert_array_equal(d_plane.reshape(-1)[slot * 2 : slot * 2 + 2],
                                  raw[r, b * B + off : b * B + off + 2])


@pytest.mark.parametrize("qtype,tile", [(Q.Q4_0, 8), (Q.Q6_K, 1), (Q.Q4_K, 32)])
def test_quant_planes_written_over_old_bytes(qtype, tile):
    """`write` into objects that held other bytes (a reused block) leaves exactly the planes
    of a fresh block: every field's slots, and zeros in the last tile's rows past N."""
    E = block_size(qtype.name)[0]
    n, k = 45, 3 * E
    raw, _ = _quantized(qtype, n, k)
    st = QuantBlockPlanes((n, k), qtype.name, tile_rows=tile)
    dirty = st.bind(np.full(st.nbytes, 0xA5, dtype=np.uint8))
    st.write(dirty, raw)
    for got, want in zip(dirty, st.to_physical(raw)):
        np.testing.assert_array_equal(got, want)
    if n % tile:
        assert not any(p[-1, :, n % tile :].any() for p in dirty)


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0])
def test_quant_plane_index_expr_dequantizes_single_elements(qtype):
    """A kernel's view: element (r, c) decoded from the planes through the generated index
    expressions equals the reference dequantization."""
    n, k = 21, 64
    raw, ref = _quantized(qtype, n, k)
    st = QuantBlockPlanes((n, k), qtype.name, tile_rows=8)
    planes = {f[0]: p.reshape(-1) for f, p in zip(st.fields, st.to_physical(raw))}
    ex = st.index_expr(["r", "c"])
    for r, c in [(0, 0), (3, 17), (20, 63), (9, 31), (8, 32)]:
        env = {"r": r, "c": c}
        at = {name: eval(ex[name], {}, env) for name in planes}
        d = planes["d"][at["d"] : at["d"] + 2].view(np.float16).astype(np.float32)[0]
        byte = int(planes["qs"][at["qs"] + eval(ex["qs_byte"], {}, env)])
        if qtype == Q.Q8_0:
            q = np.int8(np.uint8(byte).view(np.int8))
            val = d * np.float32(q)
        else:
            q = (byte >> eval(ex["qs_shift"], {}, env)) & 0xF
            if qtype == Q.Q4_0:
                val = d * np.float32(q - 8)
            else:
                m = planes["m"][at["m"] : at["m"] + 2].view(np.float16).astype(np.float32)[0]
                val = d * np.float32(q) + m
        assert val == ref[r, c], (r, c)


def test_quant_blocks_locate_block_bytes():
    st = QuantBlocks((4, 64), "Q4_0")
    _, off = st.locate([np.array([3]), np.array([40])])
    assert off[0] == (3 * 2 + 1) * 18


def test_weight_storage_choice():
    assert isinstance(weight_storage((64, 64), "Q4_0", planes=True), QuantBlockPlanes)
    assert isinstance(weight_storage((64, 64), "Q4_0", planes=False), QuantBlocks)
    assert isinstance(weight_storage((64,), "f32", planes=True), StridedBuffer)


# ------------------------------------------------------------------------ GPU kernel planes

KERNEL_TYPES = ["Q4_0", "Q4_1", "Q4_K", "Q8_0", "Q5_0", "Q5_K", "Q6_K"]


def _random_blocks(qtype: str, shape, rng) -> np.ndarray:
    """Valid GGUF blocks of a random (N, K) weight (random bytes where drift cannot quantize
    the type, with finite f16 scales)."""
    from gguf import GGMLQuantizationType as Q

    from drift.formats import quants
    from drift.formats.quants import BLOCK_FIELDS

    x = rng.standard_normal(shape).astype(np.float32)
    try:
        return quants.quantize(x, Q[qtype]).reshape(shape[0], -1)
    except Exception:  # noqa: BLE001  no quantizer for this type: random blocks
        E, B = block_size(qtype)
        b = rng.integers(0, 256, (shape[0] * shape[1] // E, B), dtype=np.uint8)
        for name, off, size, kind in BLOCK_FIELDS[qtype]:
            if name in ("d", "dmin"):
                b[:, off : off + 2] = (rng.random((len(b), 1)) * 0.01 + 1e-3).astype(
                    np.float16).view(np.uint8)
        return b.reshape(shape[0], -1)


@pytest.mark.parametrize("qtype", KERNEL_TYPES)
def test_kernel_planes_hold_the_weight(qtype):
    """The GPU kernels' planes, made by the numpy reference of the load-time conversion, give
    back the file's weights (gguf-py's dequantization): exactly where the planes keep the
    file's scales, within f16 rounding of the K-quants' scale products."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize as gguf_dequantize

    from drift.passes.storage import KernelPlanes

    rng = np.random.default_rng()
    E = block_size(qtype)[0]
    shape = (int(rng.integers(3, 9)), E * int(rng.integers(1, 4)))
    raw = _random_blocks(qtype, shape, rng)
    st = KernelPlanes(shape, qtype)
    objs = st.to_physical(raw)
    assert [o.shape for o in objs] == [o.shape for o in st.objects()]
    want = gguf_dequantize(raw, Q[qtype]).reshape(shape)
    got = st.from_physical(objs)
    if qtype in ("Q4_K", "Q5_K", "Q6_K"):
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
    else:
        np.testing.assert_array_equal(got, want)
    # the accessor: element (r, c)'s quant lives where locate / index_expr say
    r, c = int(rng.integers(shape[0])), int(rng.integers(shape[1]))
    _, off = st.locate([np.array(r), np.array(c)])
    assert int(off) == eval(st.index_expr(["r", "c"])["offset"], {}, {"r": r, "c": c})
