"""drift.formats.gguf: reads what gguf-py reads, and turns every kind of bad file into one
line of DriftError, never a traceback, a giant allocation or a hang. Broken files are made by
patching or cutting a small GGUF written here with gguf-py's writer."""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFWriter
from gguf import quants as gguf_quants
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drift.errors import DriftError, ModelFileError, UnsupportedError
from drift.formats import quants
from drift.formats.gguf import check_quant_supported, open_gguf

MODELS = Path.home() / ".cache" / "drift" / "models"
VOCAB = ["<s>", "</s>", "a", "b", "héllo", "", "日本"] + [f"tok{i}" for i in range(40)]


def write_gguf(path: Path, alignment: int | None = None) -> Path:
    """A small GGUF: every scalar value type, string and number arrays, and tensors of float,
    quantized and (for drift) unsupported types."""
    rng = np.random.default_rng(0)
    w = GGUFWriter(path, "llama")
    if alignment:
        w.add_custom_alignment(alignment)
    w.add_string("general.name", "tiny")
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -5)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -300)
    w.add_uint32("llama.block_count", 2)
    w.add_int32("test.i32", -70000)
    w.add_float32("llama.rope.freq_base", 10000.5)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_uint64("test.u64", 2**40)
    w.add_int64("test.i64", -(2**40))
    w.add_float64("test.f64", 0.1)
    w.add_string("test.key1", "first")
    w.add_string("test.key2", "second")
    w.add_array("tokenizer.ggml.tokens", VOCAB)
    w.add_array("tokenizer.ggml.scores", [float(-i) / 3 for i in range(len(VOCAB))])
    w.add_array("tokenizer.ggml.token_type", [1] * len(VOCAB))
    w.add_array("test.bools", [True, False, True])
    w.add_tensor("norm.weight", rng.standard_normal(8).astype(np.float32))
    w.add_tensor("f32.weight", rng.standard_normal((4, 8)).astype(np.float32))
    w.add_tensor("f16.weight", rng.standard_normal((2, 16)).astype(np.float16))
    for name, qtype, shape in [
        ("q4_0.weight", Q.Q4_0, (3, 64)),
        ("q8_0.weight", Q.Q8_0, (2, 32)),
        ("q4_k.weight", Q.Q4_K, (2, 256)),
        ("bf16.weight", Q.BF16, (2, 4)),
    ]:
        raw = quants.quantize(rng.standard_normal(shape).astype(np.float32), qtype)
        w.add_tensor(name, raw, raw_dtype=qtype)
    # A type gguf-py names but drift does not decode: random bytes of the right size.
    iq = rng.integers(0, 256, (1, quants.block_shape(Q.IQ2_XS)[1]), dtype=np.uint8)
    w.add_tensor("iq2.weight", iq, raw_dtype=Q.IQ2_XS)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_gguf(tmp_path_factory.mktemp("gguf") / "small.gguf").read_bytes()


def reader_metadata(reader: GGUFReader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def assert_same_as_gguf_py(path: Path) -> None:
    """Metadata and every tensor (name, type, numpy shape, dtype, bytes) as GGUFReader has them."""
    f, reader = open_gguf(path), GGUFReader(path)
    assert f.metadata == reader_metadata(reader)
    assert list(f.tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        info = f.tensors[t.name]
        assert info.qtype == t.tensor_type
        assert info.shape == tuple(reversed(t.shape.tolist()))
        assert info.data.dtype == t.data.dtype and info.data.shape == t.data.shape
        assert info.data.tobytes() == t.data.tobytes()


@pytest.mark.parametrize("alignment", [None, 64])
def test_reads_what_gguf_py_reads(tmp_path: Path, alignment: int | None) -> None:
    assert_same_as_gguf_py(write_gguf(tmp_path / "m.gguf", alignment))


def test_values_and_dequantize(tmp_path: Path) -> None:
    f = open_gguf(write_gguf(tmp_path / "m.gguf"))
    assert f.architecture == "llama" and f.version == 3
    md = f.metadata
    assert md["tokenizer.ggml.tokens"] == VOCAB
    assert md["test.bools"] == [True, False, True]
    assert (md["test.u64"], md["test.i64"], md["test.i8"]) == (2**40, -(2**40), -5)
    assert md["llama.rope.freq_base"] == 10000.5 and md["test.f64"] == 0.1
    assert f.tensors["f32.weight"].shape == (4, 8) and f.tensors["q4_0.weight"].shape == (3, 64)
    for name, info in f.tensors.items():
        if info.qtype not in quants.SUPPORTED:
            continue
        ref = np.asarray(gguf_quants.dequantize(info.data, info.qtype), np.float32)
        assert np.array_equal(f.dequantize(name), ref.reshape(info.shape))
    rows = np.array([2, 0, 2])
    assert np.array_equal(f.dequantize_rows("q4_0.weight", rows), f.dequantize("q4_0.weight")[rows])


def test_unsupported_quant_type_fails_when_used(tmp_path: Path) -> None:
    f = open_gguf(write_gguf(tmp_path / "m.gguf"))
    info = f.tensors["iq2.weight"]
    assert info.qtype == Q.IQ2_XS and info.shape == (1, 256)
    for use in (lambda: check_quant_supported(info), lambda: f.dequantize("iq2.weight")):
        with pytest.raises(UnsupportedError, match="tensor iq2.weight: quant type IQ2_XS is not"):
            use()
    check_quant_supported(f.tensors["q4_k.weight"])


# -- broken files ---------------------------------------------------------------------------


def at_key(data: bytes, key: str) -> int:
    """Offset of the value type (u32) of a metadata key; the value follows it."""
    return data.index(struct.pack("<Q", len(key)) + key.encode()) + 8 + len(key)


def at_tensor(data: bytes, name: str) -> int:
    """Offset of the n_dims (u32) of a tensor info; then the u64 dims, u32 type, u64 offset."""
    return data.index(struct.pack("<Q", len(name)) + name.encode()) + 8 + len(name)


def patch(data: bytes, at: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def end_of_tensor_data(data: bytes, tmp_path: Path) -> int:
    path = tmp_path / "whole.gguf"
    path.write_bytes(data)
    return max(t.data_offset + t.n_bytes for t in GGUFReader(path).tensors)


Case = Callable[[bytes, Path], bytes]
BROKEN: dict[str, tuple[Case, type[DriftError], str]] = {
    "empty": (lambda d, t: b"", ModelFileError, "empty file"),
    "bad magic": (lambda d, t: b"GGML" + d[4:], ModelFileError, "not a GGUF file"),
    "truncated header": (lambda d, t: d[:20], ModelFileError, "truncated GGUF header"),
    "version 1": (lambda d, t: patch(d, 4, "<I", 1), UnsupportedError, "version 1"),
    "big-endian": (lambda d, t: patch(d, 4, ">I", 3), UnsupportedError, "big-endian"),
    "absurd tensor count": (
        lambda d, t: patch(d, 8, "<Q", 2**62),
        ModelFileError,
        "cannot fit",
    ),
    "absurd key count": (lambda d, t: patch(d, 16, "<Q", 2**40), ModelFileError, "cannot fit"),
    "truncated in the keys": (
        lambda d, t: d[: at_key(d, "tokenizer.ggml.tokens") + 40],
        ModelFileError,
        "truncated or corrupt GGUF file: .* in metadata key 'tokenizer.ggml.tokens'",
    ),
    "truncated in the tensor infos": (
        lambda d, t: d[: at_tensor(d, "q8_0.weight") + 6],
        ModelFileError,
        r"truncated or corrupt GGUF file: .* in tensor info 4 \(q8_0.weight\)",
    ),
    "truncated tensor data": (
        lambda d, t: d[: end_of_tensor_data(d, t) - 1],
        ModelFileError,
        "truncated GGUF file: tensor iq2.weight needs bytes up to",
    ),
    "absurd key length": (lambda d, t: patch(d, 24, "<Q", 2**62), ModelFileError, "string of"),
    "absurd string length": (
        lambda d, t: patch(d, at_key(d, "general.name") + 4, "<Q", 2**63),
        ModelFileError,
        "general.name",
    ),
    "absurd string array length": (
        lambda d, t: patch(d, at_key(d, "tokenizer.ggml.tokens") + 8, "<Q", 2**20),
        ModelFileError,
        "an array of 1048576 strings",
    ),
    "absurd number array length": (
        lambda d, t: patch(d, at_key(d, "tokenizer.ggml.scores") + 8, "<Q", 2**20),
        ModelFileError,
        "an array of 1048576 FLOAT32",
    ),
    "array beyond any vocabulary": (
        lambda d, t: patch(d, at_key(d, "tokenizer.ggml.scores") + 8, "<Q", 2**62),
        ModelFileError,
        "'tokenizer.ggml.scores' is an array of 4611686018427387904 items",
    ),
    "absurd string length in an array": (
        lambda d, t: patch(d, at_key(d, "tokenizer.ggml.tokens") + 16, "<Q", 2**40),
        ModelFileError,
        "string 0 of 1099511627776 bytes",
    ),
    "unknown value type": (
        lambda d, t: patch(d, at_key(d, "general.name"), "<I", 99),
        ModelFileError,
        "unknown value type 99 in metadata key 'general.name'",
    ),
    "unknown array item type": (
        lambda d, t: patch(d, at_key(d, "test.bools") + 4, "<I", 13),
        ModelFileError,
        "unknown value type 13",
    ),
    "array of arrays": (
        lambda d, t: patch(d, at_key(d, "test.bools") + 4, "<I", 9),
        UnsupportedError,
        "array of arrays",
    ),
    "duplicate key": (
        lambda d, t: d.replace(b"test.key2", b"test.key1"),
        ModelFileError,
        "key 'test.key1' appears twice",
    ),
    "duplicate tensor": (
        lambda d, t: d.replace(b"f16.weight", b"f32.weight"),
        ModelFileError,
        "tensor f32.weight appears twice",
    ),
    "key not UTF-8": (
        lambda d, t: d.replace(b"test.key2", b"test.key\xff"),
        ModelFileError,
        "not UTF-8",
    ),
    "token not UTF-8": (
        lambda d, t: d.replace("héllo".encode(), b"h\xc3llo"),
        ModelFileError,
        "string 4 in metadata key 'tokenizer.ggml.tokens' is not UTF-8",
    ),
    "tensor name not printable": (
        lambda d, t: d.replace(b"f16.weight", b"f16\nweight"),
        ModelFileError,
        r"tensor name 'f16\\nweight' in tensor info 2 is not printable",
    ),
    "absurd n_dims": (
        lambda d, t: patch(d, at_tensor(d, "f32.weight"), "<I", 1000),
        ModelFileError,
        "tensor f32.weight has 1000 dimensions",
    ),
    "absurd dim": (
        lambda d, t: patch(d, at_tensor(d, "f32.weight") + 4 + 8, "<Q", 2**40),
        ModelFileError,
        "truncated GGUF file: tensor f32.weight needs",
    ),
    "overflowing dims": (
        lambda d, t: patch(d, at_tensor(d, "f32.weight") + 4 + 8, "<Q", 2**64 - 1),
        ModelFileError,
        "dimensions .* are too large",
    ),
    "unknown tensor type": (
        lambda d, t: patch(d, at_tensor(d, "q4_0.weight") + 4 + 16, "<I", 99),
        UnsupportedError,
        "tensor q4_0.weight: unknown quant type id 99",
    ),
    "row not whole blocks": (
        lambda d, t: patch(d, at_tensor(d, "q4_0.weight") + 4, "<Q", 48),
        ModelFileError,
        "tensor q4_0.weight: row of 48 weights is not a whole number of Q4_0 blocks",
    ),
    "misaligned tensor": (
        lambda d, t: patch(
            d,
            at_tensor(d, "q4_0.weight") + 4 + 16 + 4,
            "<Q",
            struct.unpack_from("<Q", d, at_tensor(d, "q4_0.weight") + 4 + 16 + 4)[0] + 2,
        ),
        ModelFileError,
        "tensor q4_0.weight: data offset .* is not 32-byte aligned",
    ),
    "alignment not a power of two": (
        lambda d, t: patch(d, at_key(d, "general.alignment") + 4, "<I", 48),
        ModelFileError,
        "general.alignment 48 is not a power of two",
    ),
    "alignment of the wrong type": (
        lambda d, t: patch(d, at_key(d, "general.alignment"), "<I", 5),
        ModelFileError,
        "general.alignment is INT32",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_file(case: str, small: bytes, tmp_path: Path) -> None:
    mutate, error, message = BROKEN[case]
    data = small
    if "alignment" in case:
        data = write_gguf(tmp_path / "aligned.gguf", alignment=64).read_bytes()
    path = tmp_path / "broken.gguf"
    path.write_bytes(mutate(data, tmp_path))
    with pytest.raises(error, match=message) as e:
        open_gguf(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no such file"):
        open_gguf(tmp_path / "missing.gguf")
    with pytest.raises(ModelFileError, match="is a directory"):
        open_gguf(tmp_path)
    if hasattr(os, "mkfifo"):  # reading a FIFO would block forever
        os.mkfifo(tmp_path / "fifo")
        with pytest.raises(ModelFileError, match="not a regular file"):
            open_gguf(tmp_path / "fifo")


def test_a_cut_anywhere_in_the_header_is_an_error(small: bytes, tmp_path: Path) -> None:
    # Every prefix that ends before the last tensor info does: none may open, none may crash.
    header_end = at_tensor(small, "iq2.weight") + 4 + 2 * 8 + 4 + 8
    for n in range(header_end):
        path = tmp_path / f"cut{n}.gguf"
        path.write_bytes(small[:n])
        with pytest.raises(DriftError):
            open_gguf(path)


# -- fuzzing --------------------------------------------------------------------------------

INTERESTING_U64 = [0, 1, 4, 255, 2**31, 2**32 - 1, 2**32, 2**62, 2**63, 2**64 - 1]
_names = itertools.count()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    byte_edits=st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=6),
    u64_edits=st.lists(
        st.tuples(st.integers(0, 4095), st.sampled_from(INTERESTING_U64)), max_size=3
    ),
    cut=st.none() | st.integers(0, 4096),
)
def test_fuzzed_header_opens_or_raises_drift_error(
    small: bytes,
    fuzz_dir: Path,
    byte_edits: list[tuple[int, int]],
    u64_edits: list[tuple[int, int]],
    cut: int | None,
) -> None:
    data = bytearray(small)
    for at, value in byte_edits:
        data[at % len(data)] = value
    for at, value in u64_edits:
        struct.pack_into("<Q", data, at % (len(data) - 8), value)
    if cut is not None:
        data = data[:cut]
    path = fuzz_dir / f"{next(_names)}.gguf"
    path.write_bytes(bytes(data))
    try:
        f = open_gguf(path)
        for name, info in f.tensors.items():
            if info.qtype in quants.SUPPORTED:
                f.dequantize(name)
            else:
                with pytest.raises(UnsupportedError):
                    check_quant_supported(info)
    except DriftError as e:
        assert "\n" not in str(e)


# -- real models ----------------------------------------------------------------------------


def model(name: str) -> Path:
    path = MODELS / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.mark.slow
def test_smollm2_as_gguf_py_reads_it() -> None:
    path = model("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert_same_as_gguf_py(path)
    f = open_gguf(path)
    assert f.architecture == "llama" and len(f.metadata["tokenizer.ggml.tokens"]) == 49152
    for name in ["blk.0.attn_q.weight", "token_embd.weight", "output_norm.weight"]:
        info = f.tensors[name]
        ref = np.asarray(gguf_quants.dequantize(info.data, info.qtype), np.float32)
        assert np.array_equal(f.dequantize(name).view(np.uint32), ref.view(np.uint32))


@pytest.mark.slow
def test_gemma3_k_quants_as_gguf_py_decodes_them() -> None:
    f = open_gguf(model("gemma-3-270m-q4_k_m.gguf"))
    assert f.architecture == "gemma3"
    seen = set()
    for name, info in f.tensors.items():
        if info.qtype in seen or info.qtype == Q.F32:
            continue
        seen.add(info.qtype)
        rows = info.data[:64]  # enough blocks of real data, without expanding the whole tensor
        ref = np.asarray(gguf_quants.dequantize(rows, info.qtype), np.float32)
        mine = quants.dequantize(rows, info.qtype, ref.shape, tensor_name=name)
        assert np.array_equal(mine.view(np.uint32), ref.view(np.uint32)), name
    assert {Q.Q4_K, Q.Q6_K, Q.Q5_0, Q.Q8_0} <= seen
