"""Dequantizers: one element of a quantized weight, read from its block planes.

Written from the layout comments of `drift/formats/quants.py` (the executable specification;
the tests compare against gguf-py), against the planes `QuantBlockPlanes` converts the GGUF
blocks into at load: for element (row, col), `index_expr` gives the byte offset of its block
in every field's plane and its index `e` in the block. Each function returns the body of a
helper `f32 <name>(u32 row, u32 col)`, in the renderer's dialect.
"""

from __future__ import annotations

from collections.abc import Callable

from drift.backends.kernels.access import Accessor
from drift.backends.kernels.renderer import Helper, Renderer


def _prologue(r: Renderer, w: Accessor) -> tuple[list[str], dict[str, str]]:
    at = w.block_at(r, "row", "col")  # col: the block's first element
    lines, names = [], {}
    for name, _, _, _ in w.storage.fields:
        lines.append(r.let(f"o_{name}", "u32", at[name]))
        names[name] = f"o_{name}"
    return lines, names


def _q4(r, w, o, with_min: bool, high_bit: str | None, bias: int) -> list[str]:
    # Q4_0/Q4_1/Q5_0/Q5_1: q = nibble (e // 16) of qs[e % 16] (| bit e of qh << 4)
    lines = [r.let("d", "f32", w.plane("d").f16(r, o["d"])),
             r.var("q", "u32", f"({w.plane('qs').u8(r, o['qs'] + ' + e % 16')} >> (e / 16 * 4)) & 15")]
    if high_bit:
        hb = w.plane("qh").u8(r, f"{o['qh']} + e / 8")
        lines.append(f"q = q | ((({hb}) >> (e % 8)) & 1) << 4;")
    if with_min:
        lines.append(f"return d * {r.cast('f32', 'q')} + {w.plane('m').f16(r, o['m'])};")
    else:
        lines.append(f"return d * ({r.cast('f32', 'q')} - {r.f(bias)});")
    return lines


def _q8_0(r, w, o):
    return [f"return {r.i8(w.plane('qs').u8(r, o['qs'] + ' + e'))} * "
            f"{w.plane('d').f16(r, o['d'])};"]


def _k_scale_min(r, w, o, s: str) -> list[str]:
    # Q4_K/Q5_K: six-bit scale and min of sub-block s (see quants._k_scale_min)
    def b(i: str) -> str:
        return w.plane("scales").u8(r, f"{o['scales']} + {i}")

    return [
        r.let("j", "u32", f"{s} % 4"),
        r.var("sc", "u32", f"{b('j')} & 63"),
        r.var("mn", "u32", f"{b('j + 4')} & 63"),
        f"if ({s} >= 4) {{ sc = ({b('j + 8')} & 15) | (({b('j')} >> 6) << 4); "
        f"mn = ({b('j + 8')} >> 4) | (({b('j + 4')} >> 6) << 4); }}",
    ]


def _q45_k(r, w, o, five: bool):
    lines = _k_scale_min(r, w, o, "(e / 32)")
    qs = w.plane("qs").u8(r, f"{o['qs']} + e / 64 * 32 + e % 32")
    lines.append(r.var("q", "u32", f"({qs} >> (e / 32 % 2 * 4)) & 15"))
    if five:
        hb = w.plane("qh").u8(r, f"{o['qh']} + e % 32")
        lines.append(f"q = q | ((({hb}) >> (e / 32)) & 1) << 4;")
    d, dmin = w.plane("d").f16(r, o["d"]), w.plane("dmin").f16(r, o["dmin"])
    lines.append(f"return ({d} * {r.cast('f32', 'sc')}) * {r.cast('f32', 'q')} - "
                 f"({dmin} * {r.cast('f32', 'mn')});")
    return lines


def _q6_k(r, w, o):
    low = w.plane("ql").u8(r, f"{o['ql']} + e / 128 * 64 + e % 64")
    high = w.plane("qh").u8(r, f"{o['qh']} + e / 128 * 32 + e % 32")
    sc = r.i8(w.plane("scales").u8(r, f"{o['scales']} + e / 16"))
    return [
        r.let("rr", "u32", "e % 128"),
        r.let("q", "u32", f"(({low} >> (rr / 64 * 4)) & 15) | ((({high} >> (rr / 32 * 2)) & 3) << 4)"),
        f"return ({w.plane('d').f16(r, o['d'])} * {sc}) * ({r.cast('f32', 'q')} - {r.f(32)});",
    ]


def _q2_k(r, w, o):
    sc = w.plane("scales").u8(r, f"{o['scales']} + e / 16")
    qs = w.plane("qs").u8(r, f"{o['qs']} + e / 128 * 32 + e % 32")
    return [
        r.let("sc", "u32", sc),
        r.let("q", "u32", f"({qs} >> (e % 128 / 32 * 2)) & 3"),
        f"return ({w.plane('d').f16(r, o['d'])} * {r.cast('f32', 'sc & 15')}) * "
        f"{r.cast('f32', 'q')} - ({w.plane('dmin').f16(r, o['dmin'])} * {r.cast('f32', 'sc >> 4')});",
    ]


def _q3_k(r, w, o):
    def b(i: str) -> str:
        return w.plane("scales").u8(r, f"{o['scales']} + {i}")

    qs = w.plane("qs").u8(r, f"{o['qs']} + e / 128 * 32 + e % 32")
    hm = w.plane("hmask").u8(r, f"{o['hmask']} + e % 32")
    return [
        r.let("s", "u32", "e / 16"),
        r.let("lo", "u32", f"({b('s % 8')} >> (s / 8 * 4)) & 15"),
        r.let("hi", "u32", f"({b('8 + s % 4')} >> (s / 4 * 2)) & 3"),
        r.let("low2", "u32", f"({qs} >> (e % 128 / 32 * 2)) & 3"),
        r.let("hbit", "u32", f"({hm} >> (e / 32)) & 1"),
        f"return ({w.plane('d').f16(r, o['d'])} * ({r.cast('f32', 'lo | (hi << 4)')} - {r.f(32)})) * "
        f"({r.cast('f32', 'low2')} - {r.select('hbit == 1', r.f(0), r.f(4))});",
    ]


DEQUANT: dict[str, Callable] = {
    "Q4_0": lambda r, w, o: _q4(r, w, o, False, None, 8),
    "Q4_1": lambda r, w, o: _q4(r, w, o, True, None, 0),
    "Q5_0": lambda r, w, o: _q4(r, w, o, False, "qh", 16),
    "Q5_1": lambda r, w, o: _q4(r, w, o, True, "qh", 0),
    "Q8_0": _q8_0,
    "Q2_K": _q2_k,
    "Q3_K": _q3_k,
    "Q4_K": lambda r, w, o: _q45_k(r, w, o, False),
    "Q5_K": lambda r, w, o: _q45_k(r, w, o, True),
    "Q6_K": _q6_k,
}


def dequant_helper(r: Renderer, w: Accessor, name: str) -> Helper:
    """`f32 name(u32 row, u32 col, u32 e)`: element (row, col + e) of the quantized weight
    `w`, col the first element of a block."""
    lines, offsets = _prologue(r, w)
    lines += DEQUANT[w.dtype](r, w, offsets)
    return Helper(name, "f32", (("row", "u32"), ("col", "u32"), ("e", "u32")), tuple(w.params),
                  "\n    ".join(lines))
