"""Dequantizers: the elements of a quantized weight, read from its block planes.

Written from the layout comments of `drift/formats/quants.py` (the executable specification;
the tests compare against gguf-py), against the planes `QuantBlockPlanes` converts the GGUF
blocks into at load. A dequantizer comes in three parts, so that a loop over a block's
elements reads each scale once (the compilers behind lavapipe do not hoist them):

    block     statements once per block: its f16 factors (d, m, dmin)
    sub       sub-block size (the run of elements one scale covers) and the statements
              once per sub-block `sb`: that sub-block's scale and min
    element   (statements, f32 expression) for element `e` of sub-block `sb`

Plane offsets of the block holding (row, col0) come from the storage's `index_expr` (the
accessor's coordinate translation), bound to `o_<field>` first.

The decode GEMV reads a weight another way (`Words`): as the 32-bit words of its main quant
plane, consecutive threads on consecutive words (coalesced, and four or eight weights per
load instead of one byte), each word's weights in groups sharing one affine map
`w = a * q + c`, so that a group costs one multiply-add per weight and `a * sum(q x) +
c * sum(x)` once (`c` folds Q4_0's -8, Q4_1's min, Q4_K's sub-block min, Q6_K's -32).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from drift.backends.kernels.access import Accessor
from drift.backends.kernels.renderer import Renderer


@dataclass(frozen=True)
class Dequant:
    block: list[str]
    sub: int
    sub_lines: Callable[[str], list[str]]  # sb -> statements
    element: Callable[[str, str], tuple[list[str], str]]  # (sb, e) -> (statements, value)


def _offsets(r: Renderer, w: Accessor, row: str, col0: str) -> tuple[list[str], dict[str, str]]:
    at = w.block_at(r, row, col0)
    lines, names = [], {}
    for name, _, _, _ in w.storage.fields:
        lines.append(r.let(f"o_{name}", "u32", at[name]))
        names[name] = f"o_{name}"
    return lines, names


def _byte(r: Renderer, w: Accessor, o: dict, field: str, at: str) -> str:
    return w.plane(field).u8(r, f"{o[field]} + {at}")


def _half(r: Renderer, w: Accessor, o: dict, field: str) -> str:
    return w.plane(field).f16(r, o[field])


def _q4(r, w, o, with_min: bool, high: bool, bias: int) -> Dequant:
    # Q4_0/Q4_1/Q5_0/Q5_1: q[e] = nibble (e // 16) of qs[e % 16] (| bit e of qh << 4)
    block = [r.let("d", "f32", _half(r, w, o, "d"))]
    if with_min:
        block.append(r.let("mb", "f32", _half(r, w, o, "m")))

    def element(sb, e):
        q = f"(({_byte(r, w, o, 'qs', f'{e} % 16')} >> ({e} / 16 * 4)) & 15)"
        if high:
            q = f"({q} | ((({_byte(r, w, o, 'qh', f'{e} / 8')} >> ({e} % 8)) & 1) << 4))"
        qf = r.cast("f32", q)
        return [], f"d * {qf} + mb" if with_min else f"d * ({qf} - {r.f(bias)})"

    return Dequant(block, 32, lambda sb: [], element)


def _q8_0(r, w, o) -> Dequant:
    block = [r.let("d", "f32", _half(r, w, o, "d"))]
    return Dequant(block, 32, lambda sb: [],
                   lambda sb, e: ([], f"{r.i8(_byte(r, w, o, 'qs', e))} * d"))


def _q45_k(r, w, o, five: bool) -> Dequant:
    # Q4_K/Q5_K: 8 sub-blocks of 32; six-bit scale and min of sub-block sb (quants._k_scale_min)
    block = [r.let("d", "f32", _half(r, w, o, "d")), r.let("dmin", "f32", _half(r, w, o, "dmin"))]

    def b(i: str) -> str:
        return _byte(r, w, o, "scales", i)

    def sub_lines(sb):
        return [r.let("j", "u32", f"{sb} % 4"),
                r.var("sc", "u32", f"{b('j')} & 63"), r.var("mn", "u32", f"{b('j + 4')} & 63"),
                f"if ({sb} >= 4) {{ sc = ({b('j + 8')} & 15) | (({b('j')} >> 6) << 4); "
                f"mn = ({b('j + 8')} >> 4) | (({b('j + 4')} >> 6) << 4); }}",
                r.let("dl", "f32", f"d * {r.cast('f32', 'sc')}"),
                r.let("ml", "f32", f"dmin * {r.cast('f32', 'mn')}")]

    def element(sb, e):
        q = f"(({_byte(r, w, o, 'qs', f'{sb} / 2 * 32 + {e}')} >> ({sb} % 2 * 4)) & 15)"
        if five:
            q = f"({q} | ((({_byte(r, w, o, 'qh', e)} >> {sb}) & 1) << 4))"
        return [], f"dl * {r.cast('f32', q)} - ml"

    return Dequant(block, 32, sub_lines, element)


def _q6_k(r, w, o) -> Dequant:
    # 16 sub-blocks of 16, int8 scales; e' = sb*16 + e = h*128 + rr
    block = [r.let("d", "f32", _half(r, w, o, "d"))]

    def sub_lines(sb):
        return [r.let("dl", "f32", f"d * {r.i8(_byte(r, w, o, 'scales', sb))}")]

    def element(sb, e):
        lines = [r.let("ee", "u32", f"{sb} * 16 + {e}"), r.let("rr", "u32", "ee % 128")]
        low = _byte(r, w, o, "ql", "ee / 128 * 64 + ee % 64")
        high = _byte(r, w, o, "qh", "ee / 128 * 32 + ee % 32")
        q = f"(({low} >> (rr / 64 * 4)) & 15) | ((({high} >> (rr / 32 * 2)) & 3) << 4)"
        return lines, f"dl * ({r.cast('f32', q)} - {r.f(32)})"

    return Dequant(block, 16, sub_lines, element)


def _q2_k(r, w, o) -> Dequant:
    block = [r.let("d", "f32", _half(r, w, o, "d")), r.let("dmin", "f32", _half(r, w, o, "dmin"))]

    def sub_lines(sb):
        return [r.let("sc", "u32", _byte(r, w, o, "scales", sb)),
                r.let("dl", "f32", f"d * {r.cast('f32', 'sc & 15')}"),
                r.let("ml", "f32", f"dmin * {r.cast('f32', 'sc >> 4')}")]

    def element(sb, e):
        lines = [r.let("ee", "u32", f"{sb} * 16 + {e}")]
        q = f"({_byte(r, w, o, 'qs', 'ee / 128 * 32 + ee % 32')} >> (ee % 128 / 32 * 2)) & 3"
        return lines, f"dl * {r.cast('f32', q)} - ml"

    return Dequant(block, 16, sub_lines, element)


def _q3_k(r, w, o) -> Dequant:
    block = [r.let("d", "f32", _half(r, w, o, "d"))]

    def b(i: str) -> str:
        return _byte(r, w, o, "scales", i)

    def sub_lines(sb):
        return [r.let("lo", "u32", f"({b(f'{sb} % 8')} >> ({sb} / 8 * 4)) & 15"),
                r.let("hi", "u32", f"({b(f'8 + {sb} % 4')} >> ({sb} / 4 * 2)) & 3"),
                r.let("dl", "f32", f"d * ({r.cast('f32', 'lo | (hi << 4)')} - {r.f(32)})")]

    def element(sb, e):
        qs = _byte(r, w, o, "qs", "ee / 128 * 32 + ee % 32")
        lines = [r.let("ee", "u32", f"{sb} * 16 + {e}"),
                 r.let("low2", "u32", f"({qs} >> (ee % 128 / 32 * 2)) & 3"),
                 r.let("hbit", "u32", f"({_byte(r, w, o, 'hmask', 'ee % 32')} >> (ee / 32)) & 1")]
        return lines, f"dl * ({r.cast('f32', 'low2')} - {r.select('hbit == 1', r.f(0), r.f(4))})"

    return Dequant(block, 16, sub_lines, element)


# ---------------------------------------------------------------------------------------------
# words: the GEMV's reading


@dataclass(frozen=True)
class Group:
    """Weights `a * q + c` of one word (c "" where there is none): `elems` are (q as an f32
    expression, the element's offset in its block).

    For the int8 GEMV (x as int8 blocks, `Renderer.dot4_i8`): `ints`, each run's four q as
    the signed bytes of one u32, in element order; `c_lead`, where `c` is one value over a
    whole x block of 32 (Q4_0's offset, Q4_1's min, Q4_K's sub-block min), the condition that
    this word holds that block's first elements: its reader adds c times the block's sum
    (`Q8Blocks`' sums), the others nothing. "" where c covers less (Q6_K's 16): the word's
    own x sum is computed. `ints_c`: the int8 reading's c where it differs from the f32
    one (Q4_0, Q6_K: the f32 elems carry their offset, subtracted in the conversion for free;
    the ints do not)."""

    a: str
    c: str
    elems: list[tuple[str, str]]  # in runs of 4 consecutive elements, each from a multiple of 4
    ints: tuple[str, ...] = ()
    c_lead: str = ""
    ints_c: str | None = None

    @property
    def int_c(self) -> str:
        """c of the int8 reading."""
        return self.c if self.ints_c is None else self.ints_c

    def runs(self) -> list[list[tuple[str, str]]]:
        """The elements four at a time: the GEMV reads the x of each run as one f32x4."""
        assert len(self.elems) % 4 == 0
        return [self.elems[i : i + 4] for i in range(0, len(self.elems), 4)]


@dataclass(frozen=True)
class Words:
    """A quant type as words of its plane `plane`, `per_block` to a block.

    `at(j)`: statements that depend only on the word's place `j` in its block (where its
    elements are), shared by every weight row a thread reads at that place. `read(w, o, j,
    q)`, for the row whose block has plane offsets `o` and word `q`: the row's statements (its
    scales) and the word's groups."""

    plane: str
    per_block: int
    at: Callable[[str], list[str]]
    read: Callable[[Accessor, dict, str, str], tuple[list[str], list[Group]]]
    # For prefill's int8 GEMM, which reads a weight one x block of 32 at a time: where a
    # block of 256 holds x block `sbx` (`XBlock`); None for blocks of 32 (all their words,
    # every group of each, one scale)
    x_block: XBlock | None = None


@dataclass(frozen=True)
class XBlock:
    """The words of a weight block of 256 that hold its x block `sbx` (of 32) for the int8
    GEMM: `words` of them, the t-th `word_of(sbx, t)`, each word's group `group_of(sbx)`.
    `scale_elems`: elements one group scale covers (Q6_K's 16: two scales an x block, the
    first for words t < 4). `offset`: where the GEMM subtracts it from each byte of the
    ints (Q6_K's 32: its 6-bit quants become signed, and its `ints_c` is not needed)."""

    words: int
    word_of: Callable[[str, str], str]
    group_of: Callable[[str], str]
    scale_elems: int = 32
    offset: int = 0


def small_f32(r: Renderer, bits: str, bias: int = 0) -> str:
    """`bits - bias` as f32, for 0 <= bits < 2^23: the bits as the mantissa of 2^23, less
    2^23 + bias (exact; integer-to-float conversion runs at a quarter of the FMA rate on
    NVIDIA GPUs, this is an OR and a subtraction)."""
    return f"({r.bitcast_f32(f'1258291200u | ({bits})')} - {r.f(8388608 + bias)})"


NIBBLES = "252645135u"  # 0x0F0F0F0F: the low nibble of each byte


def _nibbles(r: Renderer, q: str, shift: int, bias: int = 0) -> list[str]:
    """The four nibbles at bit `shift` of each byte of u32 `q`, less `bias`, as f32."""
    return [small_f32(r, f"(({q} >> {8 * i + shift}) & 15)", bias) for i in range(4)]


def _words_q4(r: Renderer, with_min: bool) -> Words:
    # word j of qs: bytes 4j..4j+3, their low nibbles elements 4j + i, high ones 16 + 4j + i
    def read(w, o, j, q):
        lines = [r.let("d", "f32", _half(r, w, o, "d"))]
        if with_min:
            lines.append(r.let("mb", "f32", _half(r, w, o, "m")))
        bias = 0 if with_min else 8  # Q4_0's offset: in the f32 elems, not in the ints
        elems = [(v, f"4 * {j} + {i}") for i, v in enumerate(_nibbles(r, q, 0, bias))]
        elems += [(v, f"16 + 4 * {j} + {i}") for i, v in enumerate(_nibbles(r, q, 4, bias))]
        ints = (f"({q} & {NIBBLES})", f"(({q} >> 4u) & {NIBBLES})")
        if with_min:
            return lines, [Group("d", "mb", elems, ints, f"{j} == 0u")]
        return lines, [Group("d", "", elems, ints, f"{j} == 0u", f"-{r.f(8)} * d")]

    return Words("qs", 4, lambda j: [], read)


def _words_q8_0(r: Renderer) -> Words:
    # signed bytes: byte ^ 128 is the value + 128
    def read(w, o, j, q):
        elems = [(small_f32(r, f"((({q} >> {8 * i}) & 255) ^ 128u)", 128), f"4 * {j} + {i}")
                 for i in range(4)]
        return [r.let("d", "f32", _half(r, w, o, "d"))], [Group("d", "", elems, (q,))]

    return Words("qs", 8, lambda j: [], read)


def _words_q4_k(r: Renderer) -> Words:
    # word j of qs: bytes 32p + at.. (p = j / 8, at = j % 8 * 4); low nibbles are elements
    # 64p + at + i of sub-block 2p, high nibbles 64p + 32 + at + i of sub-block 2p + 1
    def at(j):
        return [r.let("p", "u32", f"{j} / 8"), r.let("at", "u32", f"{j} % 8 * 4")]

    def read(w, o, j, q):
        def b(i: str) -> str:
            return _byte(r, w, o, "scales", i)

        lines = [r.let("d", "f32", _half(r, w, o, "d")),
                 r.let("dmin", "f32", _half(r, w, o, "dmin"))]
        groups = []
        for h in range(2):  # sub-block 2p + h: scale and min as quants._k_scale_min
            sb = f"2 * p + {h}"
            lines += [r.let(f"j{h}", "u32", f"({sb}) % 4"),
                      r.var(f"sc{h}", "u32", f"{b(f'j{h}')} & 63"),
                      r.var(f"mn{h}", "u32", f"{b(f'j{h} + 4')} & 63"),
                      f"if ({sb} >= 4) {{ sc{h} = ({b(f'j{h} + 8')} & 15) | "
                      f"(({b(f'j{h}')} >> 6) << 4); mn{h} = ({b(f'j{h} + 8')} >> 4) | "
                      f"(({b(f'j{h} + 4')} >> 6) << 4); }}"]
            elems = [(v, f"64 * p + {32 * h} + at + {i}")
                     for i, v in enumerate(_nibbles(r, q, 4 * h))]
            groups.append(Group(f"d * {r.cast('f32', f'sc{h}')}",
                                f"-dmin * {r.cast('f32', f'mn{h}')}", elems,
                                (f"(({q} >> {4 * h}u) & {NIBBLES})",), "at == 0u"))
        return lines, groups

    # x block sbx is sub-block sbx: in words 8 (sbx / 2) + t, the group sbx % 2 of each
    return Words("qs", 32, at, read,
                 XBlock(8, lambda sbx, t: f"8 * ({sbx} / 2) + {t}", lambda sbx: f"{sbx} % 2"))


def _words_q6_k(r: Renderer) -> Words:
    # word j of ql: half hh = j / 16, bytes l0.. of it (l0 = j % 16 * 4); low nibbles are
    # elements 128hh + l0 + i, high ones 128hh + 64 + l0 + i; their two high bits are in qh
    # byte 32hh + l0 % 32 + i at bit 2 * (l0 / 32) (+4 for the high nibbles); sub-blocks of 16
    def at(j):
        return [r.let("hh", "u32", f"{j} / 16"), r.let("l0", "u32", f"{j} % 16 * 4"),
                r.let("sh", "u32", "l0 / 32 * 2")]

    def read(w, o, j, q):
        lines = [r.let("d", "f32", _half(r, w, o, "d")),
                 r.let("qh", "u32", w.plane("qh").u32(r, f"{o['qh']} + 32 * hh + l0 % 32"))]
        groups = []
        for h in range(2):
            sb = f"hh * 8 + l0 / 16 + {4 * h}"
            lines.append(r.let(f"dl{h}", "f32",
                               f"d * {r.i8(_byte(r, w, o, 'scales', sb))}"))
            elems = [(small_f32(r, f"(({q} >> {8 * i + 4 * h}) & 15) | "
                                   f"(((qh >> ({8 * i + 4 * h} + sh)) & 3) << 4)", 32),
                      f"128 * hh + {64 * h} + l0 + {i}") for i in range(4)]
            ints = (f"(({q} >> {4 * h}u) & {NIBBLES}) | "
                    f"(((qh >> ({4 * h}u + sh)) & 50529027u) << 4u)",)  # 0x03030303
            groups.append(Group(f"dl{h}", "", elems, ints, ints_c=f"-{r.f(32)} * dl{h}"))
        return lines, groups

    # x block sbx: elements 32 sbx .. of half hh = sbx / 4, group h = sbx % 4 / 2, l0 from
    # sbx % 2 * 32: words 16 hh + sbx % 2 * 8 + t; two sub-blocks of 16 (t < 4, t >= 4)
    return Words("ql", 32, at, read,
                 XBlock(8, lambda sbx, t: f"16 * ({sbx} / 4) + {sbx} % 2 * 8 + {t}",
                        lambda sbx: f"{sbx} % 4 / 2", scale_elems=16, offset=32))


WORDS: dict[str, Callable[[Renderer], Words]] = {
    "Q4_0": lambda r: _words_q4(r, False),
    "Q4_1": lambda r: _words_q4(r, True),
    "Q8_0": _words_q8_0,
    "Q4_K": _words_q4_k,
    "Q6_K": _words_q6_k,
}


def block_offsets(r: Renderer, w: Accessor, row: str, col0: str) -> tuple[list[str], dict]:
    """`o_<field>` = the plane offsets of the block holding (row, col0)."""
    return _offsets(r, w, row, col0)


DEQUANT: dict[str, Callable] = {
    "Q4_0": lambda r, w, o: _q4(r, w, o, False, False, 8),
    "Q4_1": lambda r, w, o: _q4(r, w, o, True, False, 0),
    "Q5_0": lambda r, w, o: _q4(r, w, o, False, True, 16),
    "Q5_1": lambda r, w, o: _q4(r, w, o, True, True, 0),
    "Q8_0": _q8_0,
    "Q2_K": _q2_k,
    "Q3_K": _q3_k,
    "Q4_K": lambda r, w, o: _q45_k(r, w, o, False),
    "Q5_K": lambda r, w, o: _q45_k(r, w, o, True),
    "Q6_K": _q6_k,
}


def dequant(r: Renderer, w: Accessor, row: str, col0: str) -> Dequant:
    """The parts of the block of quantized weight `w` that starts at (row, col0); the
    plane offsets lead the block statements."""
    lines, offsets = _offsets(r, w, row, col0)
    d = DEQUANT[w.dtype](r, w, offsets)
    return Dequant(lines + d.block, d.sub, d.sub_lines, d.element)
