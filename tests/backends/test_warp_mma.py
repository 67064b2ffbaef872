"""The PTX spelling of `Renderer.warp_mma` against PTX's own definition of the mma
fragments (PTX ISA, "Matrix Fragments for mma.m16n8k8" on .tf32 and "for mma.m16n8k16" on
.f16): a warp simulated lane by lane in numpy. The register order the OpenCL renderer
passes to the instruction is read back from its source, each lane's A and B registers are
placed where the ISA says the hardware takes them from, and the product's fragments are
compared with what the plain spelling (each lane's own sums, the tests' devices) computes
for the same lane."""

from __future__ import annotations

import re

import numpy as np
import pytest

from drift.backends.kernels.renderer import Renderer
from drift.backends.opencl.renderer import OpenCLRenderer


def _reads(lines: list[str]) -> tuple[list[str], list[str]]:
    """The asm's A and B operands, in order, as the index expressions of A[...] and B[...]
    (tf32 ones passed as their bits, `as_uint(...)`; f16 ones as the u32 they are staged as)."""
    (asm,) = lines
    ops = re.findall(r'"r"\((?:as_uint\()?(\w)\[([^\]]+)\]\)?\)', asm)
    return [i for m, i in ops if m == "A"], [i for m, i in ops if m == "B"]


@pytest.mark.parametrize("halves", [False, True], ids=["tf32", "f16"])
def test_ptx_fragments_are_the_isas(halves, monkeypatch):
    rng = np.random.default_rng(5)
    # A unit of K is one value (tf32) or two halves (f16: K's lower index in the low bits)
    per = 2 if halves else 1
    A, B = rng.standard_normal((16, 8 * per)), rng.standard_normal((8 * per, 8))
    A_units = A.reshape(16, 8, per)  # A_units[row, k, h] = A[row, per k + h]
    B_units = B.reshape(8, per, 8).transpose(0, 2, 1)  # B_units[k, col, h] = B[per k + h, col]
    r = OpenCLRenderer()
    r.mma = "ptx"
    acc = ["c0", "c1", "c2", "c3"]
    lines = r.warp_mma(acc, lambda row, k: f"A[{row}, {k}]", lambda k, col: f"B[{k}, {col}]",
                       halves)
    a_idx, b_idx = _reads(lines)
    assert len(a_idx) == 4 and len(b_idx) == 2
    assert re.search(r'"=f"\(c0\), "=f"\(c1\), "=f"\(c2\), "=f"\(c3\)', lines[0])
    assert ("m16n8k16.row.col.f32.f16.f16.f32" if halves else
            "m16n8k8.row.col.f32.tf32.tf32.f32") in lines[0]
    # each lane's registers, as the renderer's source loads them
    regs = {}
    for lane in range(32):
        env = {"mg": lane // 4, "mt": lane % 4}
        regs[lane] = ([A_units[eval(i, {}, env)] for i in a_idx],
                      [B_units[eval(i, {}, env)] for i in b_idx])
    # the hardware's view: the ISA's fragment layout (the same (row, unit) per register on
    # both types: a unit is a tf32, or two consecutive halves of K)
    HA, HB = np.full((16, 8 * per), np.nan), np.full((8 * per, 8), np.nan)
    for lane, (ra, rb) in regs.items():
        g, t = lane // 4, lane % 4
        for i, v in enumerate(ra):
            for h in range(per):
                HA[g + 8 * (i % 2), per * (t + 4 * (i // 2)) + h] = v[h]
        for i, v in enumerate(rb):
            for h in range(per):
                HB[per * (t + 4 * i) + h, g] = v[h]
    D = HA @ HB
    assert not np.isnan(D).any()
    # the plain spelling, lane by lane (a half read back as the unit's element h)
    monkeypatch.setattr(OpenCLRenderer, "unpack_half", lambda self, word, h: f"{word}[{h}]")
    plain = Renderer.warp_mma(r, acc, lambda row, k: f"A[{row}, {k}]",
                              lambda k, col: f"B[{k}, {col}]", halves)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        env = {"A": A_units[..., 0] if not halves else A_units,
               "B": B_units[..., 0] if not halves else B_units,
               "mg": g, "mt": t, "c0": 0.0, "c1": 0.0, "c2": 0.0, "c3": 0.0}
        for line in plain:
            name, expr = line.rstrip(";").split(" = ", 1)
            env[name] = eval(expr, {}, env)
        for i, c in enumerate(acc):  # the ISA's accumulator layout
            want = D[g + 8 * (i // 2), 2 * t + i % 2]
            assert abs(env[c] - want) < 1e-12, (lane, c)
    np.testing.assert_allclose(D, A @ B)
