"""Random-weight GGUF files with the exact shapes of published models (`drift make-random`).

Speed does not depend on the values of a dense model's weights, so a file with the shapes of
Llama-3.1-8B and random weights times every engine fairly without downloading anything.
Weights are N(0, 0.02), norms 1, Llama 3's rope_freqs its real long-context factors; the
tokenizer is a minimal valid GPT-2 byte-level BPE (256 byte tokens, a few merges, special
tokens), so llama.cpp and others load the file too.

The file is written tensor by tensor (`GGUFWriter`'s header, then each tensor's bytes as they
are made), generating and quantizing slabs of rows in worker processes: an 8B file never needs
more than a few slabs of float32 in memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter, LlamaFileType, TokenType

from drift.errors import InvalidArgumentError
from drift.formats.quants import QUANTIZABLE, block_shape, quantize
from drift.models.decoder import expected_tensors
from drift.models.presets import Preset

STD = 0.02
SLAB_WEIGHTS = 1 << 22  # weights generated per job
MERGES = [("Ġ", "t"), ("Ġ", "a"), ("h", "e"), ("i", "n"), ("r", "e"), ("o", "n")]


def qtype_of(name: str) -> Q:
    try:
        qtype = Q[name.upper()]
    except KeyError:
        raise InvalidArgumentError(f"unknown quant type {name!r}") from None
    if qtype not in QUANTIZABLE:
        names = ", ".join(sorted(t.name for t in QUANTIZABLE))
        raise InvalidArgumentError(f"cannot write {qtype.name} weights (can: {names})")
    return qtype


# llama.cpp's fallbacks for rows that are not whole 256-weight super-blocks.
FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q6_K: Q.Q8_0}


def tensor_qtype(qtype: Q, shape: tuple[int, ...], what: str) -> Q:
    """The type a matrix is written in: `qtype`, or its fallback when rows don't fit blocks."""
    for t in (qtype, FALLBACK.get(qtype)):
        if t is not None and shape[-1] % block_shape(t)[0] == 0:
            return t
    raise InvalidArgumentError(
        f"{what}: rows of {shape[-1]} weights are not whole {qtype.name} blocks "
        f"of {block_shape(qtype)[0]}"
    )


def byte_tokens() -> list[str]:
    """GPT-2's byte -> printable character map, in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(
        range(0xAE, 0xFF + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def vocabulary(size: int) -> tuple[list[str], list[int], list[str], int, int]:
    """(tokens, token types, merges, bos id, eos id) for a vocabulary of `size` entries."""
    tokens = byte_tokens() + [a + b for a, b in MERGES]
    types = [TokenType.NORMAL] * len(tokens)
    bos, eos = len(tokens), len(tokens) + 1
    tokens += ["<|begin_of_text|>", "<|end_of_text|>"]
    types += [TokenType.CONTROL] * 2
    if size < len(tokens):
        raise InvalidArgumentError(f"vocabulary of {size} is too small (at least {len(tokens)})")
    n_extra = size - len(tokens)
    tokens += [f"<|reserved_{i}|>" for i in range(n_extra)]
    types += [TokenType.CONTROL] * n_extra
    return tokens, [int(t) for t in types], [f"{a} {b}" for a, b in MERGES], bos, eos


def llama3_rope_factors(n: int, head_dim: int, theta: float, factor: float = 8.0,
                        low: float = 1.0, high: float = 4.0, orig_ctx: int = 8192) -> np.ndarray:
    """The rope_freqs.weight values Llama 3.1's converter writes (per-frequency divisors)."""
    out = []
    for i in range(n):
        freq = 1.0 / theta ** (2 * i / head_dim)
        wavelen = 2 * math.pi / freq
        if wavelen < orig_ctx / high:
            out.append(1.0)
        elif wavelen > orig_ctx / low:
            out.append(factor)
        else:
            smooth = (orig_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _slab(job: tuple) -> np.ndarray:
    seed, index, rows, cols, qtype = job
    rng = np.random.default_rng([seed, index])
    w = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(STD)
    return quantize(w, qtype)


def _tensor_jobs(seed: int, index: int, shape: tuple[int, int], qtype: Q) -> list[tuple]:
    rows, cols = shape
    step = max(1, SLAB_WEIGHTS // cols)
    return [(seed, index * 100000 + j, min(step, rows - r0), cols, qtype)
            for j, r0 in enumerate(range(0, rows, step))]


def _add_metadata(w: GGUFWriter, md: dict) -> None:
    for key, value in md.items():
        if key == "general.architecture":
            continue  # GGUFWriter writes it
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_string(key, str(value))


def write_random(
    preset: Preset,
    qtype: Q | str,
    path: str | os.PathLike,
    seed: int = 0,
    workers: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Write a GGUF file with `preset`'s shapes, 2-D weights in `qtype`, and return its path."""
    qtype = qtype_of(qtype) if isinstance(qtype, str) else qtype
    cfg = preset.config()
    shapes = expected_tensors(cfg)
    qtypes = {name: tensor_qtype(qtype, shape, f"{preset.name}: {name}")
             for name, shape in shapes.items() if len(shape) == 2}
    path = Path(path)
    w = GGUFWriter(path, preset.arch)
    _add_metadata(w, preset.metadata())
    ftype = getattr(LlamaFileType, f"MOSTLY_{qtype.name}", None)
    if qtype == Q.F32:
        ftype = LlamaFileType.ALL_F32
    if ftype is not None:
        w.add_file_type(int(ftype))
    w.add_quantization_version(2)
    tokens, types, merges, bos, eos = vocabulary(preset.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(True)

    def payload(name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        if len(shape) == 1:
            if name == "rope_freqs.weight":
                return llama3_rope_factors(shape[0], cfg.head_dim, cfg.rope_theta)
            if name.endswith("norm.weight"):
                return np.ones(shape, dtype=np.float32)
            rng = np.random.default_rng([seed, 999, len(name)])
            return rng.standard_normal(shape, dtype=np.float32) * np.float32(STD)
        return None  # 2-D: generated in slabs

    names = list(shapes)
    for name in names:
        shape = shapes[name]
        if len(shape) == 1:
            w.add_tensor_info(name, (shape[0] * 4,), np.dtype(np.uint8), shape[0] * 4, Q.F32)
        else:
            elements, size = block_shape(qtypes[name])
            nbytes = shape[0] * (shape[1] // elements) * size
            w.add_tensor_info(name, (shape[0], nbytes // shape[0]), np.dtype(np.uint8), nbytes,
                              qtypes[name])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()

    workers = workers or min(16, os.cpu_count() or 1)
    pool = None
    if workers > 1:
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(workers)
    try:
        for i, name in enumerate(names):
            shape = shapes[name]
            data = payload(name, shape)
            if data is None:
                jobs = _tensor_jobs(seed, i, shape, qtypes[name])
                parts = pool.imap(_slab, jobs) if pool else map(_slab, jobs)
                data = np.concatenate([p.reshape(-1) for p in parts])
            w.write_tensor_data(np.ascontiguousarray(data).view(np.uint8).reshape(-1))
            if progress:
                progress(name, i + 1, len(names))
    finally:
        if pool:
            pool.close()
            pool.join()
    w.close()
    return path
