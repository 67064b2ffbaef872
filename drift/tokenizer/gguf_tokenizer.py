"""Tokenizers rebuilt from a GGUF file's metadata, on the Hugging Face `tokenizers` library.

A GGUF carries no tokenizer.json, only llama.cpp's keys: the vocabulary, merges (or scores),
token types and special ids. From them we build the same pipeline transformers builds for the
same file (`transformers/integrations/gguf/gguf_tokenizer_mapping.py`), so the tests can hold
drift to it token for token. Where transformers drifts from the model's own tokenizer, drift
follows the model (and llama.cpp) instead, on purpose:

- pre "smollm" (and the other llama.cpp names sharing its rule): digits are split one by one
  before GPT-2's regex, as SmolLM's tokenizer.json does. transformers forgets the digit split,
  which only shows when whitespace precedes a digit ("a  1").
- pre "llama3" family: BPE `ignore_merges`, as Llama 3's tokenizer.json and llama.cpp have.
- "llama" vocabularies honour `tokenizer.ggml.add_space_prefix = False` (transformers always
  prefixes a space).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from drift.errors import DriftError, ModelFileError, UnsupportedError, quote

# A SentencePiece byte-fallback token, "<0x0A>"; tokenizers' ByteFallback decoder goes by text.
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_SURROGATE = re.compile("[\ud800-\udfff]")

# llama.cpp's token types (`tokenizer.ggml.token_type`).
_CONTROL, _USER_DEFINED = 3, 4

# Token texts that end a turn in the chat formats drift knows; a model stops on any of them
# that its vocabulary marks as a control or user-defined token.
_END_OF_TURN_MARKERS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|eom_id|>", "<|endoftext|>")

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# `tokenizer.ggml.pre` -> the regex that splits text before byte-level BPE (the entries of
# transformers' table for these three rules). The sets below name the pre-tokenizers with a
# rule of their own.
_BPE_SPLITS = {
    **dict.fromkeys(
        (
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "dbrx",
            "smaug-bpe",
        ),
        _LLAMA3_SPLIT,
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), _QWEN2_SPLIT),
    **dict.fromkeys(("gpt-4o", "llama4", "minimax-m2"), _GPT4O_SPLIT),
}
# GPT-2's own regex (what `pre_tokenizers.ByteLevel(use_regex=True)` applies).
_GPT2_PRE = frozenset({"gpt2", "default", "mpt", "olmo", "jais"})
# llama.cpp splits every digit off before GPT-2's regex for these (SmolLM's tokenizer.json:
# Digits(individual_digits=True) then ByteLevel).
_DIGITS_THEN_GPT2_PRE = frozenset(
    {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
)
# llama.cpp's LLAMA3 pre type: merges ignored when a whole word is a token, BOS added.
_LLAMA3_FAMILY = frozenset(
    {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"}
)
# Architectures whose SentencePiece files transformers converts with GemmaTokenizer.
_GEMMA_ARCHS = frozenset({"gemma", "gemma2", "gemma3"})


def valid_text(text: str) -> str:
    """`text` with what UTF-8 cannot hold replaced by U+FFFD: lone surrogates, such as the
    bytes of an invalid UTF-8 argument or file that Python decoded with surrogateescape."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character: byte-level vocabularies are spelled
    in this alphabet, so a token that uses any other character must be respelled to be found."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    spelled = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in spelled]
    spelled.update((b, chr(256 + n)) for n, b in enumerate(others))
    return spelled


class Tokenizer:
    """Text <-> token ids for one GGUF model, with the special ids the runtime needs."""

    def __init__(
        self,
        backend: Backend,
        tokens: Sequence[str],
        *,
        kind: str,
        add_bos: bool,
        bos_id: int | None,
        eos_id: int | None,
        stop_ids: frozenset[int],
    ):
        self._backend = backend
        self._tokens = tokens
        self._literal: Backend | None = None  # built on first encode(parse_special=False)
        self.kind = kind
        self.add_bos = add_bos
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.stop_ids = stop_ids
        added = backend.get_added_tokens_decoder()
        # What the streaming decoder must know: ids `decode(skip_special=True)` drops, and
        # SentencePiece byte tokens, which the decoder turns into text a whole run at a time.
        self.special_ids = frozenset(i for i, t in added.items() if t.special)
        self.byte_ids = frozenset(
            i
            for i, t in enumerate(tokens)
            if kind == "llama" and _BYTE_TOKEN.fullmatch(t) and i not in added
        )

    @classmethod
    def from_gguf(cls, metadata: dict[str, Any]) -> Tokenizer:
        """Build the tokenizer a GGUF's `tokenizer.ggml.*` keys describe; every key is checked
        for type and range first, so that a bad file fails here with a message naming it."""
        kind = metadata.get("tokenizer.ggml.model")
        tokens = metadata.get("tokenizer.ggml.tokens")
        if not isinstance(kind, str) or not isinstance(tokens, list) or not tokens:
            raise ModelFileError("the GGUF has no tokenizer (tokenizer.ggml.model / .tokens)")
        _check_list(metadata, "tokens", str, len(tokens))
        types: list[int] = _check_list(metadata, "token_type", int, len(tokens)) or []
        pre = metadata.get("tokenizer.ggml.pre", "default")
        if not isinstance(pre, str):
            raise ModelFileError(f"metadata tokenizer.ggml.pre={quote(pre)} is not a string")
        specials = {
            key: _token_id(metadata, f"tokenizer.ggml.{key}_token_id", len(tokens))
            for key in ("bos", "eos", "unknown", "padding", "eot", "eom")
        }
        try:
            if kind == "gpt2":
                backend = _byte_level(tokens, _merges(metadata), pre)
                default_add_bos = pre in _LLAMA3_FAMILY
            elif kind == "llama":
                arch = metadata.get("general.architecture", "")
                backend = _sentencepiece(metadata, tokens, gemma=arch in _GEMMA_ARCHS)
                default_add_bos = True  # llama.cpp's default for SentencePiece vocabularies
            else:
                raise UnsupportedError(
                    f"tokenizer model {quote(kind)} is not supported "
                    "(drift reads 'gpt2' byte-level BPE and 'llama' SentencePiece vocabularies)"
                )
            _add_special_tokens(backend, tokens, types, kind, specials)
        except DriftError:
            raise
        except Exception as e:  # noqa: BLE001 -- `tokenizers` refusing what the checks let by
            raise ModelFileError(f"the GGUF's tokenizer metadata is inconsistent: {e}") from None
        stops = {specials[key] for key in ("eos", "eot", "eom")}
        stops.update(
            i
            for i, text in enumerate(tokens)
            if text in _END_OF_TURN_MARKERS
            and (not types or (i < len(types) and types[i] in (_CONTROL, _USER_DEFINED)))
        )
        return cls(
            backend,
            tokens,
            kind=kind,
            add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", default_add_bos)),
            bos_id=specials["bos"],
            eos_id=specials["eos"],
            stop_ids=frozenset(i for i in stops if i is not None and 0 <= i < len(tokens)),
        )

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    def token_text(self, token_id: int) -> str:
        """The token as the vocabulary spells it ("Ġthe", "▁the", "<0x0A>"); `decode` gives text."""
        return self._tokens[token_id]

    def encode(
        self, text: str, add_bos: bool | None = None, parse_special: bool = True
    ) -> list[int]:
        """Token ids of `text`; BOS first when `add_bos` (None: as the model file says).

        With `parse_special=False` control tokens written in the text ("<|im_start|>") are
        tokenized as plain characters, as llama.cpp does for untrusted user text.
        """
        if not isinstance(text, str):
            raise TypeError(f"text to encode must be a string, got {type(text).__name__}")
        backend = self._backend if parse_special else self._literal_backend()
        ids = backend.encode(valid_text(text), add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special)

    def stream(self, skip_special: bool = False) -> IncrementalDecoder:
        """A decoder to feed generated ids one at a time."""
        return IncrementalDecoder(self, skip_special=skip_special)

    def _literal_backend(self) -> Backend:
        # A second backend, so that flipping `encode_special_tokens` never races with a
        # concurrent parse_special=True call on the shared one.
        if self._literal is None:
            literal = Backend.from_str(self._backend.to_str())
            literal.encode_special_tokens = True
            self._literal = literal
        return self._literal


class IncrementalDecoder:
    """Turns ids, fed one at a time, into text pieces whose concatenation is `decode(all ids)`.

    Decoding each token alone would be wrong: a byte-level token may hold half a UTF-8
    character, SentencePiece decoders strip the space that starts the text, and a run of byte
    fallback tokens is decoded as a whole (one invalid byte turns the whole run into U+FFFD).
    So we decode a short window of recent ids that starts at a boundary which already gave
    complete text, and emit what the newest ids added to it. Text is held back while it ends
    in U+FFFD (a character still incomplete) or in a byte-fallback run that may go on.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False):
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._ids: list[int] = []
        self._prefix = 0  # window start: ids before it are done with
        self._read = 0  # ids before it have been emitted

    def feed(self, token_id: int) -> str:
        """The new complete text after `token_id` (often "", e.g. mid-character)."""
        self._ids.append(token_id)
        tok = self._tokenizer
        if token_id in tok.byte_ids or (self._skip_special and token_id in tok.special_ids):
            return ""  # a byte run may continue; a skipped token adds nothing and ends nothing
        return self._advance(final=False)

    def flush(self) -> str:
        """What is still held back (an incomplete character at the end comes out as U+FFFD)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        decode = self._tokenizer.decode
        done = decode(self._ids[self._prefix : self._read], self._skip_special)
        text = decode(self._ids[self._prefix :], self._skip_special)
        if len(text) <= len(done) or (text.endswith("\ufffd") and not final):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(done) :]


def _merges(metadata: dict[str, Any]) -> list[tuple[str, str]] | None:
    merges = _check_list(metadata, "merges", str)
    if merges is None:
        return None
    pairs = [m.split(" ") for m in merges]
    for i, pair in enumerate(pairs):
        if len(pair) != 2 or not all(pair):
            raise ModelFileError(
                f"metadata tokenizer.ggml.merges[{i}]={quote(merges[i])} is not two tokens "
                "separated by one space"
            )
    return [(a, b) for a, b in pairs]


_A = {str: "a string", int: "an integer", float: "a number"}


def _check_list(metadata: dict[str, Any], key: str, item: type, length: int | None = None
                ) -> list | None:
    """The list at `tokenizer.ggml.{key}` (None when absent), checked: a list of `item`
    (int: not bool; float: any number), of `length` items when given."""
    full = f"tokenizer.ggml.{key}"
    value = metadata.get(full)
    if value is None:
        return None
    if not isinstance(value, list):
        raise ModelFileError(f"metadata {full}={quote(value)} is not an array")
    if length is not None and len(value) != length:
        raise ModelFileError(f"metadata {full} has {len(value)} items, the vocabulary {length}")
    kinds = (int, float) if item is float else (item,)
    for i, v in enumerate(value):
        if not isinstance(v, kinds) or isinstance(v, bool):
            raise ModelFileError(
                f"metadata {full}[{i}]={quote(v)} is not {_A[item]}"
            )
    return value


def _token_id(metadata: dict[str, Any], key: str, n_tokens: int) -> int | None:
    value = metadata.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n_tokens:
        raise ModelFileError(
            f"metadata {key}={quote(value)} is not a token id (the vocabulary has {n_tokens})"
        )
    return value


def _byte_level(tokens: list[str], merges: list[tuple[str, str]] | None, pre: str) -> Backend:
    """GPT-2 style byte-level BPE, split the way the vocabulary's merges were learned."""
    if merges is None:
        raise ModelFileError("the GGUF's byte-level BPE vocabulary has no tokenizer.ggml.merges")
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {
        t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
        for i, t in enumerate(tokens)
    }
    backend = Backend(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            ignore_merges=pre in _LLAMA3_FAMILY,
        )
    )
    if pre in _GPT2_PRE:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif pre in _DIGITS_THEN_GPT2_PRE:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    elif pre in _BPE_SPLITS:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_BPE_SPLITS[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        known = sorted(_GPT2_PRE | _DIGITS_THEN_GPT2_PRE | _BPE_SPLITS.keys())
        raise UnsupportedError(
            f"BPE pre-tokenizer {pre!r} is not supported (known: {', '.join(known)})"
        )
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece(metadata: dict[str, Any], tokens: list[str], gemma: bool) -> Backend:
    """SentencePiece-style BPE with byte fallback ("▁" for space, <0xNN> for stray bytes)."""
    if gemma:
        # Gemma files store tokens of 2+ spaces as real spaces; the model looks them up as "▁▁".
        tokens = ["▁" * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = _merges(metadata)
    if merges is None:
        # Rebuilt from the vocabulary. Gemma's scores do not follow its merge order but the
        # token order does; elsewhere the score is the merge priority.
        if gemma:
            priority = {t: -i for i, t in enumerate(tokens)}
        else:
            scores = _check_list(metadata, "scores", float, len(tokens)) or []
            priority = dict(zip(tokens, scores))
        merges = derive_merges(vocab, priority)
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
    backend = Backend(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            fuse_unk=True,
            byte_fallback=True,
            unk_token=tokens[unk_id] if unk_id is not None else None,
        )
    )
    pieces = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if gemma:
        backend.normalizer = normalizers.Replace(" ", "▁")
    elif metadata.get("tokenizer.ggml.add_space_prefix", True):
        backend.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="first", split=False
        )
        pieces.append(decoders.Strip(content=" ", left=1, right=0))
    else:
        backend.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="never", split=False
        )
    backend.decoder = decoders.Sequence(pieces)
    return backend


def derive_merges(vocab: dict[str, int], priority: dict[str, float]) -> list[tuple[str, str]]:
    """BPE merges implied by a vocabulary: every split of a token into two tokens, best
    `priority` first, in exactly the order of transformers' `generate_merges` (equal priority:
    longer left part first), so that both tokenize alike."""
    found: list[tuple[str, str, float]] = []
    for piece, score in priority.items():
        local = [
            (piece[:k], piece[k:], score)
            for k in range(1, len(piece))
            if piece[:k] in vocab and piece[k:] in vocab
        ]
        if len(local) > 1:
            local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        found.extend(local)
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in found]


def _add_special_tokens(
    backend: Backend,
    tokens: list[str],
    types: list[int],
    kind: str,
    specials: dict[str, int | None],
) -> None:
    """Register control tokens (and the named bos/eos/unk/pad) as special, and user-defined
    tokens as plain added tokens, so text containing them keeps them whole.

    In a byte-level vocabulary a "control" token spelled outside the byte alphabet is a
    llama.cpp mislabel and is skipped, as transformers does.
    """
    alphabet = set(bytes_to_unicode().values()) if kind == "gpt2" else None
    vocab = backend.get_vocab()
    control = [
        t
        for t, ty in zip(tokens, types)
        if ty == _CONTROL and (alphabet is None or set(t) <= alphabet)
    ]
    user = [t for t, ty in zip(tokens, types) if ty == _USER_DEFINED and t in vocab]
    named = {
        tokens[i]
        for key in ("bos", "eos", "unknown", "padding")
        if (i := specials[key]) is not None and 0 <= i < len(tokens)
    }
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])
    backend.add_special_tokens(
        [
            AddedToken(t, normalized=False, special=True)
            for t in sorted(named - set(control) - set(user))
        ]
    )
