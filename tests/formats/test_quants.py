"""drift.formats.quants against gguf-py: dequantize bit for bit on random blocks of every
supported type, quantize byte for byte where gguf-py quantizes, round trips within a bound
per type, and the errors a caller sees."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q
from gguf import quants as gguf_quants

from drift.errors import InvalidArgumentError, ModelFileError, UnsupportedError
from drift.formats import quants

# Byte offsets of the f16 scale fields in one block: random bytes there could be NaN or Inf,
# which the comparison would not tell apart from a bug. Written from the ggml block structs,
# not from quants.py, so that a wrong layout comment there shows up as a mismatch here.
F16_FIELDS: dict[Q, list[int]] = {
    Q.Q4_0: [0],
    Q.Q4_1: [0, 2],
    Q.Q5_0: [0],
    Q.Q5_1: [0, 2],
    Q.Q8_0: [0],
    Q.Q2_K: [80, 82],
    Q.Q3_K: [108],
    Q.Q4_K: [0, 2],
    Q.Q5_K: [0, 2],
    Q.Q6_K: [208],
}
# Exponent bits of the floating-point types; all ones is NaN or Inf.
FLOAT_EXPONENT: dict[Q, tuple[type, int]] = {
    Q.F32: (np.uint32, 0x7F800000),
    Q.F16: (np.uint16, 0x7C00),
    Q.BF16: (np.uint16, 0x7F80),
}
ALL = sorted(quants.SUPPORTED)
GGUF_PY_QUANTIZES = [Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]
# Largest |error| of a round trip, as a fraction of the largest |weight| in its block (super-
# block for the K types), with room for the f16 rounding of the scales. Q4_0 / Q5_0 map the
# extreme weight to -8 / -16 and clip its opposite at +7 / +15: a whole step. Q4_K: half a step
# of (max - min) / 15, the step rounded up to a 6-bit multiple of d. Q6_K: a whole step of
# amax / 32 where the opposite extreme clips at +31.
ROUND_TRIP_BOUND: dict[Q, float] = {
    Q.Q4_0: 1 / 8 + 2e-3,
    Q.Q4_1: 1 / 15 + 2e-3,
    Q.Q5_0: 1 / 16 + 2e-3,
    Q.Q5_1: 1 / 31 + 2e-3,
    Q.Q8_0: 1 / 254 + 2e-3,
    Q.Q4_K: 1 / 15 + 4e-3,
    Q.Q6_K: 1 / 32 + 2e-3,
}


@pytest.fixture
def rng() -> np.random.Generator:
    seed = int(np.random.SeedSequence().entropy) % 2**32
    print(f"seed {seed}")  # shown by pytest when the test fails
    return np.random.default_rng(seed)


def finite(rng: np.random.Generator, n: int, uint: type, exponent: int) -> np.ndarray:
    """n random bit patterns of a float type, any sign, subnormals included, never NaN/Inf."""
    bits = rng.integers(0, np.iinfo(uint).max, n, dtype=uint, endpoint=True)
    all_ones = (bits & uint(exponent)) == uint(exponent)
    return np.where(all_ones, bits ^ uint(exponent & -exponent), bits)  # clear one exponent bit


def random_raw(rng: np.random.Generator, qtype: Q, rows: int, blocks_per_row: int) -> np.ndarray:
    """(rows, bytes per row) uint8: random blocks with finite scale fields."""
    _, nbytes = GGML_QUANT_SIZES[qtype]
    n = rows * blocks_per_row
    if qtype in FLOAT_EXPONENT:
        uint, exponent = FLOAT_EXPONENT[qtype]
        return finite(rng, n, uint, exponent).view(np.uint8).reshape(rows, -1)
    blocks = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    for at in F16_FIELDS[qtype]:
        blocks[:, at : at + 2] = finite(rng, n, np.uint16, 0x7C00).view(np.uint8).reshape(n, 2)
    return blocks.reshape(rows, -1)


def assert_same_bits(mine: np.ndarray, ref: np.ndarray) -> None:
    ref = np.asarray(ref)
    assert mine.dtype == np.float32 and ref.dtype == np.float32
    assert mine.shape == ref.shape
    differ = mine.view(np.uint32) != ref.view(np.uint32)
    assert not differ.any(), f"{differ.sum()} values differ, first at {np.argwhere(differ)[0]}"


@pytest.mark.parametrize("rows", [1, 3, 17, 66])
@pytest.mark.parametrize("qtype", ALL, ids=lambda q: q.name)
def test_dequantize_bit_equal_to_gguf_py(qtype: Q, rows: int, rng: np.random.Generator) -> None:
    elements, _ = GGML_QUANT_SIZES[qtype]
    blocks_per_row = int(rng.integers(1, 8))
    raw = random_raw(rng, qtype, rows, blocks_per_row)
    mine = quants.dequantize(raw, qtype, (rows, blocks_per_row * elements))
    assert_same_bits(mine, gguf_quants.dequantize(raw, qtype))


@pytest.mark.parametrize("qtype", ALL, ids=lambda q: q.name)
def test_dequantize_in_several_chunks(
    qtype: Q, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A chunk that does not divide the block count: the last pass is a partial one.
    monkeypatch.setattr(quants, "_CHUNK_ELEMENTS", 700)
    elements, _ = GGML_QUANT_SIZES[qtype]
    raw = random_raw(rng, qtype, 13, 5)
    mine = quants.dequantize(raw, qtype, (13, 5 * elements))
    assert_same_bits(mine, gguf_quants.dequantize(raw, qtype))


def test_dequantize_accepts_typed_and_strided_input(rng: np.random.Generator) -> None:
    # The reader hands F32/F16 tensors over as typed arrays of their shape.
    x = rng.standard_normal((5, 6)).astype(np.float32)
    assert_same_bits(quants.dequantize(x, Q.F32, (5, 6)), x)
    assert_same_bits(
        quants.dequantize(x.astype(np.float16), Q.F16, (5, 6)),
        x.astype(np.float16).astype(np.float32),
    )
    # Every other row of a Q8_0 matrix: a strided view, as `raw[::2]` gives.
    raw = random_raw(rng, Q.Q8_0, 8, 2)
    assert_same_bits(
        quants.dequantize(raw[::2], Q.Q8_0, (4, 64)), gguf_quants.dequantize(raw, Q.Q8_0)[::2]
    )
    # A 3-D shape from flat bytes.
    flat = random_raw(rng, Q.Q4_K, 6, 1).reshape(-1)
    out = quants.dequantize(flat, Q.Q4_K, (2, 3, 256))
    assert_same_bits(out.reshape(6, 256), gguf_quants.dequantize(flat.reshape(6, -1), Q.Q4_K))


def test_dequantize_rejects_wrong_sizes(rng: np.random.Generator) -> None:
    raw = random_raw(rng, Q.Q4_0, 2, 2)
    with pytest.raises(ModelFileError, match="tensor w: 72 bytes, but Q4_0"):
        quants.dequantize(raw, Q.Q4_0, (3, 64), tensor_name="w")
    with pytest.raises(ModelFileError, match="not a whole number of Q4_0 blocks"):
        quants.dequantize(raw, Q.Q4_0, (4, 36), tensor_name="w")


def test_unsupported_type_names_tensor_and_type() -> None:
    raw = np.zeros((1, GGML_QUANT_SIZES[Q.IQ2_XS][1]), dtype=np.uint8)
    with pytest.raises(UnsupportedError) as e:
        quants.dequantize(raw, Q.IQ2_XS, (1, 256), tensor_name="blk.0.attn_q.weight")
    msg = str(e.value)
    assert msg.startswith("tensor blk.0.attn_q.weight: quant type IQ2_XS is not supported")
    assert all(t.name in msg for t in quants.SUPPORTED)
    assert "\n" not in msg


def weights(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Weights as models have them (row scales keep the f16 block scales out of the subnormal
    range, where no relative bound holds), plus the blocks quantizers trip on: zero, constant,
    one sign only, one outlier."""
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    x *= np.exp(rng.uniform(-4, 1, (rows, 1))).astype(np.float32)
    x[0, :256] = 0
    x[1, :256] = 0.25
    x[2, :256] = np.abs(x[2, :256])
    x[3, :256] = -np.abs(x[3, :256])
    x[4, 7] = 40 * np.abs(x[4]).max()
    return x


@pytest.mark.parametrize("qtype", GGUF_PY_QUANTIZES, ids=lambda q: q.name)
def test_quantize_byte_equal_to_gguf_py(qtype: Q, rng: np.random.Generator) -> None:
    x = weights(rng, 9, 512).reshape(3, 3, 512)
    mine = quants.quantize(x, qtype)
    ref = np.asarray(gguf_quants.quantize(x, qtype)).view(np.uint8)
    assert mine.dtype == np.uint8 and mine.shape == ref.shape
    assert np.array_equal(mine, ref)


@pytest.mark.parametrize("qtype", sorted(ROUND_TRIP_BOUND), ids=lambda q: q.name)
def test_quantize_round_trip(qtype: Q, rng: np.random.Generator) -> None:
    elements, nbytes = GGML_QUANT_SIZES[qtype]
    x = weights(rng, 11, 768)
    raw = quants.quantize(x, qtype)
    assert raw.shape == (11, 768 // elements * nbytes)
    # gguf-py decodes independently of drift: this checks the packing, not just the inverse.
    back = np.asarray(gguf_quants.dequantize(raw, qtype))
    assert_same_bits(quants.dequantize(raw, qtype, x.shape), back)
    err = np.abs(back - x).reshape(-1, elements)
    amax = np.abs(x).reshape(-1, elements).max(axis=-1, keepdims=True)
    worst = (err / np.where(amax == 0, 1, amax)).max()
    assert worst <= ROUND_TRIP_BOUND[qtype], worst
    assert not err[np.all(x.reshape(-1, elements) == 0, axis=-1)].any()  # zero stays zero


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16], ids=lambda q: q.name)
def test_float_round_trip(qtype: Q, rng: np.random.Generator) -> None:
    x = weights(rng, 6, 256)
    back = quants.dequantize(quants.quantize(x, qtype), qtype, x.shape)
    mantissa_bits = {Q.F32: 23, Q.F16: 10, Q.BF16: 7}[qtype]
    # Half an ulp, relative; F16 also has subnormals below 2**-14, spaced 2**-24 apart.
    bound = np.abs(x) * 2.0 ** -(mantissa_bits + 1) + (2.0**-25 if qtype == Q.F16 else 0)
    assert np.all(np.abs(back - x) <= bound)


def test_quantize_errors() -> None:
    with pytest.raises(UnsupportedError, match="quantizing to Q2_K is not supported"):
        quants.quantize(np.zeros((1, 256), np.float32), Q.Q2_K)
    with pytest.raises(InvalidArgumentError, match="multiple of 256"):
        quants.quantize(np.zeros((2, 576), np.float32), Q.Q4_K)
