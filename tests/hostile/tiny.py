"""A tiny but complete llama GGUF (SmolLM2's keys, chat template and tokenizer layout at toy
sizes) that loads and generates in milliseconds, and a way to write it with any key changed:
the raw material of the hostile-input tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as T
from gguf import GGUFWriter

from drift.tokenizer.gguf_tokenizer import bytes_to_unicode

DROP = object()  # a value in `changes` that removes the key

TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
D, H, HKV, F, LAYERS, CTX = 32, 4, 2, 64, 2, 128
MERGES = ["Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "t h", "Ġt he"]


def vocabulary() -> tuple[list[str], list[int]]:
    tokens = list(bytes_to_unicode().values())
    tokens += [m.replace(" ", "") for m in MERGES]
    types = [1] * len(tokens)
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        tokens.append(special)
        types.append(3)
    return tokens, types


def metadata() -> dict[str, Any]:
    tokens, types = vocabulary()
    return {
        "general.architecture": "llama",
        "general.name": "tiny",
        "llama.block_count": LAYERS,
        "llama.context_length": CTX,
        "llama.embedding_length": D,
        "llama.feed_forward_length": F,
        "llama.attention.head_count": H,
        "llama.attention.head_count_kv": HKV,
        "llama.rope.freq_base": 10000.0,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "llama.vocab_size": len(tokens),
        "llama.rope.dimension_count": D // H,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": list(MERGES),
        "tokenizer.ggml.bos_token_id": len(tokens) - 2,
        "tokenizer.ggml.eos_token_id": len(tokens) - 1,
        "tokenizer.ggml.padding_token_id": len(tokens) - 3,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": TEMPLATE,
    }


def tensors(vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    hd = D // H

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    out = {"token_embd.weight": w(vocab, D), "output_norm.weight": np.ones(D, np.float32)}
    for i in range(LAYERS):
        b = f"blk.{i}."
        out |= {
            b + "attn_norm.weight": np.ones(D, np.float32),
            b + "attn_q.weight": w(H * hd, D),
            b + "attn_k.weight": w(HKV * hd, D),
            b + "attn_v.weight": w(HKV * hd, D),
            b + "attn_output.weight": w(D, H * hd),
            b + "ffn_norm.weight": np.ones(D, np.float32),
            b + "ffn_gate.weight": w(F, D),
            b + "ffn_up.weight": w(F, D),
            b + "ffn_down.weight": w(D, F),
        }
    return out


def _vtype(value: Any) -> T:
    if isinstance(value, bool):
        return T.BOOL
    if isinstance(value, int):
        return T.UINT32 if 0 <= value < 2**32 else T.INT64 if value < 0 else T.UINT64
    if isinstance(value, float):
        return T.FLOAT32
    if isinstance(value, str):
        return T.STRING
    raise TypeError(value)


def write(path: Path, changes: dict[str, Any] | None = None,
          tensor_changes: dict[str, np.ndarray | object] | None = None) -> Path:
    """The tiny model at `path`, with metadata `changes` (a value, a (value, GGUFValueType)
    pair, or DROP) and tensors replaced or dropped (DROP)."""
    md = metadata()
    for key, value in (changes or {}).items():
        if value is DROP:
            md.pop(key, None)
        else:
            md[key] = value
    ts = tensors(len(metadata()["tokenizer.ggml.tokens"]))
    for name, value in (tensor_changes or {}).items():
        if value is DROP:
            ts.pop(name, None)
        else:
            ts[name] = value
    w = GGUFWriter(path, None)  # the architecture key comes from `md` like every other
    for key, value in md.items():
        if isinstance(value, tuple):
            value, vtype = value
        elif isinstance(value, list):
            vtype = T.ARRAY
        else:
            vtype = _vtype(value)
        if vtype == T.ARRAY:
            sub = _vtype(value[0]) if value else T.UINT32
            w.add_key_value(key, value, T.ARRAY, sub_type=sub)
        else:
            w.add_key_value(key, value, vtype)
    for name, array in ts.items():
        w.add_tensor(name, array, raw_dtype=Q.F32 if array.dtype == np.float32 else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
