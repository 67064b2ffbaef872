"""drift's GGUF tokenizers against transformers' tokenizers built from the same files.

The reference for SmolLM2 is transformers' with SmolLM2's own pre-tokenizer put back (digits
split one by one, as in its tokenizer.json and in llama.cpp): transformers' GGUF loader drops
that split, which drift keeps on purpose (see test_smollm2_splits_digits_like_its_tokenizer_json).
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers

from drift.errors import ModelFileError, UnsupportedError
from drift.tokenizer import Tokenizer
from tests.tokenizer import drift_tokenizer, transformers_tokenizer

TEXTS = [
    "",
    " ",
    "Hello world",
    "Hello, world!",
    " Hello  world ",
    "   leading spaces",
    "trailing spaces   ",
    "The capital of France is",
    "I'm sure they've done it, haven't they? We'll see; she'd know.",
    "ALL CAPS AND MiXeD cAsE",
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)  # (rows, cols)",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    '{"key": [1, 2.5, null, true], "nested": {"a": "b"}}',
    "<html><body><p class='x'>Hi &amp; bye</p></body></html>",
    "12345",
    "3.14159 2.71828 -42 +7 1e-9 0x1F",
    "x  1",
    "Order #12345 costs $99.99 (20% off)",
    "2024-06-01T12:34:56Z",
    "https://example.com/path?query=1&lang=en#frag",
    "mail me at someone@example.org",
    "你好，世界！今天天气很好。",
    "机器学习是人工智能的一个分支",
    "こんにちは、世界。カタカナとひらがな",
    "東京タワーは333メートルです",
    "مرحبا بالعالم",
    "النص العربي يكتب من اليمين إلى اليسار",
    "नमस्ते दुनिया",
    "हिन्दी भाषा",
    "Привет, мир! Как дела?",
    "Съешь же ещё этих мягких французских булок",
    "Γειά σου Κόσμε",
    "Ελληνικά: αβγδε ΑΒΓΔΕ",
    "한국어 텍스트",
    "Tiếng Việt có dấu",
    "Ünïcödé àccénts: café, naïve, Straße, Ørsted",
    "😀 😃 😄 emoji",
    "👨‍👩‍👧‍👦 family",
    "🏳️‍🌈 flag and 👍🏽 skin tone",
    "🤖🧠💡",
    "𝕳𝖊𝖑𝖑𝖔 𝔀𝓸𝓻𝓵𝓭",
    "a\tb\tc",
    "\t\ttabs first",
    "line one\nline two\n\nline four",
    "\n\n\n",
    "\r\nwindows\r\nnewlines",
    "many     spaces      here",
    "\u00a0non-breaking\u00a0space",
    "zero\u200bwidth",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>more",
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "<bos>already has bos",
    "<eos> and <pad> and <unk>",
    "<|endoftext|>",
    "<not_a_special_token>",
    "~!@#$%^&*()_+`-={}|[]\\:\";'<>?,./",
    "....----====____",
    "\x00\x01\x7f control chars",
    "a" * 100,
    "The quick brown fox jumps over the lazy dog. " * 3,
]

MODELS = ("smollm2", "gemma3")


def _smollm2_reference(raw: Any) -> Any:
    """transformers' SmolLM2 tokenizer with the pre-tokenizer of SmolLM2's tokenizer.json."""
    ref = copy.deepcopy(raw)
    ref.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    return ref


@pytest.fixture(scope="module", params=MODELS)
def pair(request: pytest.FixtureRequest) -> tuple[Tokenizer, Any]:
    """(drift's tokenizer, transformers' reference) for one reference model."""
    path: Path = request.getfixturevalue(f"{request.param}_path")
    ours = drift_tokenizer(path)
    ref = transformers_tokenizer(path)
    return ours, _smollm2_reference(ref) if request.param == "smollm2" else ref


def _odd_ids(tok: Tokenizer) -> list[int]:
    """Ids a decoder is most likely to get wrong: special, byte and whitespace tokens."""
    special = sorted(tok.stop_ids | {tok.bos_id, tok.eos_id} - {None})
    raw = [i for i in range(min(tok.vocab_size, 4096)) if tok.token_text(i).startswith("<0x")]
    spaces = [i for i in range(min(tok.vocab_size, 4096)) if not tok.decode([i]).strip()]
    return special + raw + spaces[:50]


@pytest.mark.slow
@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match_transformers(pair: tuple[Tokenizer, Any], text: str) -> None:
    ours, ref = pair
    ids = ours.encode(text)
    assert ids == ref.encode(text)
    assert ours.decode(ids) == ref.decode(ids)
    assert ours.decode(ids, skip_special=True) == ref.decode(ids, skip_special_tokens=True)
    # Special tokens written in the text, taken literally (llama.cpp's parse_special=False).
    literal = ours.encode(text, add_bos=False, parse_special=False)
    assert literal == ref.encode(text, add_special_tokens=False, split_special_tokens=True)


@pytest.mark.slow
def test_decode_random_ids_matches_transformers(pair: tuple[Tokenizer, Any]) -> None:
    ours, ref = pair
    rng = random.Random(0)
    odd = _odd_ids(ours)
    for _ in range(300):
        ids = [
            rng.choice(odd) if rng.random() < 0.4 else rng.randrange(ours.vocab_size)
            for _ in range(rng.randint(1, 12))
        ]
        assert ours.decode(ids) == ref.decode(ids), ids
        assert ours.decode(ids, skip_special=True) == ref.decode(ids, skip_special_tokens=True)


@pytest.mark.slow
def test_special_ids_and_bos_agree_with_transformers(pair: tuple[Tokenizer, Any]) -> None:
    ours, ref = pair
    assert ours.vocab_size == len(ref)
    assert (ours.bos_id, ours.eos_id) == (ref.bos_token_id, ref.eos_token_id)
    assert ours.add_bos == ref.add_bos_token
    plain = ref.encode("Hello", add_special_tokens=False)
    assert ours.encode("Hello", add_bos=False) == plain
    assert ours.encode("Hello", add_bos=True) == [ours.bos_id, *plain]
    assert ours.token_text(ours.bos_id) == ref.bos_token


@pytest.mark.slow
def test_bos_follows_the_file(smollm2_path: Path, gemma3_path: Path) -> None:
    smollm2 = drift_tokenizer(smollm2_path)
    gemma3 = drift_tokenizer(gemma3_path)
    assert not smollm2.add_bos and smollm2.encode("Hi")[0] != smollm2.bos_id
    assert gemma3.add_bos and gemma3.encode("Hi")[0] == gemma3.bos_id == 2


@pytest.mark.slow
def test_stop_ids(smollm2_path: Path, gemma3_path: Path) -> None:
    smollm2 = drift_tokenizer(smollm2_path)
    gemma3 = drift_tokenizer(gemma3_path)
    assert {smollm2.token_text(i) for i in smollm2.stop_ids} == {"<|im_end|>", "<|endoftext|>"}
    assert {gemma3.token_text(i) for i in gemma3.stop_ids} == {"<eos>", "<end_of_turn>"}


@pytest.mark.slow
def test_smollm2_splits_digits_like_its_tokenizer_json(smollm2_path: Path) -> None:
    ours = drift_tokenizer(smollm2_path)
    ids = ours.encode("x  1")
    assert [ours.token_text(i) for i in ids] == ["x", "ĠĠ", "1"]
    # The deliberate difference: transformers' GGUF loader forgets SmolLM2's Digits split.
    assert transformers_tokenizer(smollm2_path).encode("x  1") != ids


def _stream(tok: Tokenizer, ids: list[int], skip_special: bool = False) -> list[str]:
    decoder = tok.stream(skip_special=skip_special)
    return [decoder.feed(i) for i in ids] + [decoder.flush()]


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_stream_pieces_concatenate_to_decode(request: pytest.FixtureRequest, model: str) -> None:
    tok = drift_tokenizer(request.getfixturevalue(f"{model}_path"))
    for text in TEXTS:
        ids = tok.encode(text)
        pieces = _stream(tok, ids)
        assert "".join(pieces) == tok.decode(ids), text
        # Valid text never shows half a character on the way.
        assert all("\ufffd" not in p for p in pieces), (text, pieces)
        assert "".join(_stream(tok, ids, skip_special=True)) == tok.decode(ids, skip_special=True)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_stream_holds_back_split_characters(request: pytest.FixtureRequest, model: str) -> None:
    tok = drift_tokenizer(request.getfixturevalue(f"{model}_path"))
    char = tok.encode("\U000f0000", add_bos=False)  # private use: bytes in any vocabulary
    ids = char + tok.encode("!", add_bos=False)
    assert len(char) == 4
    decoder = tok.stream()
    pieces = [decoder.feed(i) for i in ids]
    assert pieces[:3] == ["", "", ""]
    assert "".join(pieces) == "\U000f0000!" and decoder.flush() == ""


@pytest.fixture(scope="module", params=MODELS)
def model_tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    return drift_tokenizer(request.getfixturevalue(f"{request.param}_path"))


@pytest.mark.slow
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_stream_of_any_ids_concatenates_to_decode(model_tokenizer: Tokenizer, data: Any) -> None:
    tok = model_tokenizer
    any_id = st.integers(0, tok.vocab_size - 1)
    ids = data.draw(st.lists(st.one_of(any_id, st.sampled_from(_odd_ids(tok))), max_size=24))
    assert "".join(_stream(tok, ids)) == tok.decode(ids)


# --- Synthetic vocabularies: the other tokenizer kinds against transformers' GGUF converter ---

BYTE_ALPHABET = "".join(sorted(set(pre_tokenizers.ByteLevel.alphabet()), key=lambda c: ord(c)))
SYNTHETIC_TEXTS = [
    "hello world",
    "  hello",
    "don't stop",
    "12345 678",
    "the thing\n\nin",
    "héllo 世界",
    "<|endoftext|>the",
    "x  1",
    "",
]


def _byte_level_metadata(pre: str) -> dict[str, Any]:
    merges = [
        "Ġ t",
        "h e",
        "Ġt he",
        "Ġ a",
        "i n",
        "in g",
        "Ġ Ġ",
        "1 2",
        "12 3",
        "l l",
        "ll o",
        "he llo",
        "Ġ w",
        "o r",
        "Ġw or",
        "Ġwor l",
        "Ġworl d",
        "Ċ Ċ",
        "' t",
    ]
    tokens = ["<|endoftext|>", *BYTE_ALPHABET, *(m.replace(" ", "") for m in merges)]
    return {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3] + [1] * (len(tokens) - 1),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.eos_token_id": 0,
    }


def _sentencepiece_metadata(add_space_prefix: bool | None = None) -> dict[str, Any]:
    pieces = [
        "▁",
        "h",
        "e",
        "l",
        "o",
        "w",
        "r",
        "d",
        "a",
        "he",
        "ll",
        "▁h",
        "▁he",
        "llo",
        "hello",
        "▁hello",
        "▁w",
        "or",
        "▁wor",
        "ld",
        "▁world",
        "▁a",
    ]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    md = {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0] * 259 + [-float(i) for i in range(len(pieces))],
        "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * len(pieces),
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    if add_space_prefix is not None:
        md["tokenizer.ggml.add_space_prefix"] = add_space_prefix
    return md


def _transformers_backend(md: dict[str, Any]) -> Any:
    mapping = pytest.importorskip("transformers.integrations.gguf.gguf_tokenizer_mapping")
    tokenizer_dict = {
        name: md[f"tokenizer.{key}"]
        for key, name in mapping.GGUF_TOKENIZER_MAPPING["tokenizer"].items()
        if f"tokenizer.{key}" in md
    }
    backend, _ = mapping.convert_gguf_tokenizer(md["general.architecture"], tokenizer_dict)
    return backend


@pytest.mark.parametrize("pre", ["gpt2", "default", "llama-bpe", "qwen2", "gpt-4o"])
def test_byte_level_pre_tokenizers_match_transformers(pre: str) -> None:
    md = _byte_level_metadata(pre)
    ours, ref = Tokenizer.from_gguf(md), _transformers_backend(md)
    for text in SYNTHETIC_TEXTS:
        ids = ours.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False).ids, text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=False) == text


def test_sentencepiece_matches_transformers() -> None:
    md = _sentencepiece_metadata()
    ours, ref = Tokenizer.from_gguf(md), _transformers_backend(md)
    assert ours.add_bos  # llama.cpp's default for a SentencePiece file that does not say
    for text in [*SYNTHETIC_TEXTS, "hello</s>world", "  a  "]:
        ids = ours.encode(text, add_bos=False)
        assert ids == ref.encode(text, add_special_tokens=False).ids, text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=False), text
        assert "".join(_stream(ours, ids)) == ours.decode(ids)
    assert ours.encode("hello world", add_bos=False) == [274, 279]  # ▁hello ▁world


def test_sentencepiece_without_space_prefix() -> None:
    """A file that says add_space_prefix = False gets none (transformers adds one anyway)."""
    ours = Tokenizer.from_gguf(_sentencepiece_metadata(add_space_prefix=False))
    assert [ours.token_text(i) for i in ours.encode("hello", add_bos=False)] == ["hello"]
    assert ours.decode(ours.encode(" hello", add_bos=False)) == " hello"


def test_unknown_tokenizer_model_is_one_line_unsupported() -> None:
    md = {"tokenizer.ggml.model": "t5", "tokenizer.ggml.tokens": ["a", "b"]}
    with pytest.raises(UnsupportedError, match="'t5'") as err:
        Tokenizer.from_gguf(md)
    assert "\n" not in str(err.value)


def test_unknown_pre_tokenizer_is_unsupported() -> None:
    with pytest.raises(UnsupportedError, match="'no-such-pre'"):
        Tokenizer.from_gguf(_byte_level_metadata("no-such-pre"))


@pytest.mark.parametrize("drop", ["tokenizer.ggml.model", "tokenizer.ggml.tokens"])
def test_missing_tokenizer_is_a_model_file_error(drop: str) -> None:
    md = _byte_level_metadata("gpt2")
    del md[drop]
    with pytest.raises(ModelFileError, match="no tokenizer"):
        Tokenizer.from_gguf(md)


def test_byte_level_without_merges_is_a_model_file_error() -> None:
    md = _byte_level_metadata("gpt2")
    del md["tokenizer.ggml.merges"]
    with pytest.raises(ModelFileError, match="merges"):
        Tokenizer.from_gguf(md)
