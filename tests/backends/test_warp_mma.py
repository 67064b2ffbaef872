"""The PTX spelling of `Renderer.warp_mma` against PTX's own definition of mma.m16n8k8's
fragments (PTX ISA, "Matrix Fragments for mma.m16n8k8", .tf32): a warp simulated lane by
lane in numpy. The register order the OpenCL renderer passes to the instruction is read
back from its source, each lane's A and B registers are placed where the ISA says the
hardware takes them from, and the product's fragments are compared with what the plain
spelling (each lane's own sums, the tests' devices) computes for the same lane."""

from __future__ import annotations

import re

import numpy as np

from drift.backends.kernels.renderer import Renderer
from drift.backends.opencl.renderer import OpenCLRenderer


def _reads(lines: list[str]) -> tuple[list[str], list[str]]:
    """The asm's A and B operands, in order, as the index expressions of A[...] and B[...]."""
    (asm,) = lines
    ops = re.findall(r'"r"\(as_uint\((\w)\[([^\]]+)\]\)\)', asm)
    return [i for m, i in ops if m == "A"], [i for m, i in ops if m == "B"]


def test_ptx_fragments_are_the_isas():
    rng = np.random.default_rng(5)
    A, B = rng.standard_normal((16, 8)), rng.standard_normal((8, 8))
    r = OpenCLRenderer()
    r.mma = "ptx"
    acc = ["c0", "c1", "c2", "c3"]
    lines = r.warp_mma(acc, lambda row, k: f"A[{row}, {k}]", lambda k, col: f"B[{k}, {col}]")
    a_idx, b_idx = _reads(lines)
    assert len(a_idx) == 4 and len(b_idx) == 2
    assert re.search(r'"=f"\(c0\), "=f"\(c1\), "=f"\(c2\), "=f"\(c3\)', lines[0])
    # each lane's registers, as the renderer's source loads them
    regs = {}
    for lane in range(32):
        env = {"mg": lane // 4, "mt": lane % 4}
        regs[lane] = ([A[eval(i, {}, env)] for i in a_idx], [B[eval(i, {}, env)] for i in b_idx])
    # the hardware's view: the ISA's fragment layout for .tf32 m16n8k8
    HA, HB = np.full((16, 8), np.nan), np.full((8, 8), np.nan)
    for lane, (ra, rb) in regs.items():
        g, t = lane // 4, lane % 4
        for i, v in enumerate(ra):
            HA[g + 8 * (i % 2), t + 4 * (i // 2)] = v
        for i, v in enumerate(rb):
            HB[t + 4 * i, g] = v
    D = HA @ HB
    assert not np.isnan(D).any()
    # the plain spelling, lane by lane
    plain = Renderer.warp_mma(r, acc, lambda row, k: f"A[{row}, {k}]",
                              lambda k, col: f"B[{k}, {col}]")
    for lane in range(32):
        g, t = lane // 4, lane % 4
        env = {"A": A, "B": B, "mg": g, "mt": t, "c0": 0.0, "c1": 0.0, "c2": 0.0, "c3": 0.0}
        for line in plain:
            name, expr = line.rstrip(";").split(" = ", 1)
            env[name] = eval(expr, {}, env)
        for i, c in enumerate(acc):  # the ISA's accumulator layout
            want = D[g + 8 * (i // 2), 2 * t + i % 2]
            assert abs(env[c] - want) < 1e-12, (lane, c)
    np.testing.assert_allclose(D, A @ B)
