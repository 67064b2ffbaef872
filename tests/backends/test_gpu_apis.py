"""The portable GPU backends (WebGPU on lavapipe, OpenCL on PoCL in CI), one parametrized file:
every op against its numpy reference on awkward shapes, quantized matmuls against gguf-py's
dequantization in float64, split objects past the binding limit, tiny models of every
architecture against the plain evaluation, and the reference model against the cpu backend."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from drift.backends import backend_class
from drift.ir import GraphBuilder
from drift.models.decoder import build_graph
from drift.passes.storage import BLOCK_FIELDS, MultiObject, block_size
from tests.passes.helpers import run_plain
from tests.passes.test_model_graphs import KINDS, tiny_config, tiny_weights

APIS = ["webgpu", "opencl"]


def _backend(api: str, **kw):
    cls = backend_class(api)
    if not cls.available():
        pytest.skip(f"no {api} device (scripts/test.sh installs lavapipe and PoCL)")
    return cls(**kw)


@pytest.fixture(scope="module", params=APIS)
def api(request):
    _backend(request.param)  # skip early when absent
    return request.param


def _run(api, g, weights, feeds, **kw):
    b = _backend(api, **kw)
    b.load_arrays(weights)
    return b.compile(g).run(feeds), b


def _check(api, g, weights, feeds, tol=2e-5, **kw):
    got, b = _run(api, g, weights, feeds, **kw)
    ref = run_plain(g, weights, feeds)
    for o in g.outputs:
        scale = max(1.0, float(np.abs(ref[o]).max()))
        assert np.abs(got[o] - ref[o]).max() <= tol * scale, o
    return b


rng = np.random.default_rng(7)


def _f(*shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("op", ["add", "mul", "swiglu", "geglu"])
def test_binary_and_gated(api, op):
    b = GraphBuilder(op)
    x, y = b.input("x", (3, 7, 5), "f32"), b.input("y", (3, 7, 5), "f32")
    b.output(b.op(op, x, y))
    _check(api, b.finish(), {}, {"x": _f(3, 7, 5) * 4, "y": _f(3, 7, 5)})


def test_broadcast_add_of_a_weight(api):
    b = GraphBuilder("bias")
    x = b.input("x", (5, 37), "f32")
    b.output(b.op("add", x, b.weight("bias", (37,), "f32")))
    _check(api, b.finish(), {"bias": _f(37)}, {"x": _f(5, 37)})


@pytest.mark.parametrize("op,attrs", [("scale", {"value": 0.37}), ("silu", {}), ("gelu", {}),
                                      ("softcap", {"cap": 3.0})])
def test_unary(api, op, attrs):
    b = GraphBuilder(op)
    x = b.input("x", (11, 13), "f32")
    b.output(b.op(op, x, **attrs))
    _check(api, b.finish(), {}, {"x": _f(11, 13) * 30})  # large inputs: tanh/exp extremes


@pytest.mark.parametrize("shape,unit", [((5, 37), False), ((3, 5, 19), True)])
def test_rms_norm(api, shape, unit):
    b = GraphBuilder("norm")
    x = b.input("x", shape, "f32")
    b.output(b.op("rms_norm", x, b.weight("w", shape[-1:], "f32"), eps=1e-5, unit_offset=unit))
    _check(api, b.finish(), {"w": _f(shape[-1])}, {"x": _f(*shape)})


def test_add_rms_norm_fused(api):
    b = GraphBuilder("addnorm")
    x, y = b.input("x", (3, 5, 37), "f32"), b.input("y", (3, 5, 37), "f32")
    h = b.op("add", x, y)
    b.output(b.op("rms_norm", h, b.weight("w", (37,), "f32"), eps=1e-6))
    b.output(b.op("mul", h, h))
    be = _check(api, b.finish(), {"w": _f(37)}, {"x": _f(3, 5, 37), "y": _f(3, 5, 37)})
    assert be.supports("add_rms_norm") and not be.supports("rms_norm_matmul")


@pytest.mark.parametrize("rows", [1, 5, 11])
def test_matmul_f32(api, rows):
    b = GraphBuilder("mm")
    x = b.input("x", (rows, 37), "f32")
    b.output(b.op("matmul", x, b.weight("w", (29, 37), "f32")))
    _check(api, b.finish(), {"w": _f(29, 37)}, {"x": _f(rows, 37)})


def _random_blocks(qtype: str, n_rows: int, k: int) -> np.ndarray:
    """Random GGUF blocks of a type: random bytes, with every f16 scale field a small half."""
    E, B = block_size(qtype)
    raw = rng.integers(0, 256, (n_rows, k // E, B), dtype=np.uint8)
    for name, off, size, _ in BLOCK_FIELDS[qtype]:
        if name in ("d", "dmin", "m"):
            h = (rng.standard_normal((n_rows, k // E)) * 0.05).astype(np.float16)
            raw[..., off : off + 2] = h.view(np.uint8).reshape(n_rows, k // E, 2)
    return raw.reshape(n_rows, -1)


@pytest.mark.parametrize("qtype", sorted(BLOCK_FIELDS))
def test_quantized_matmul_against_gguf_py(api, qtype):
    N, K, S = 19, 512, 3
    blocks = _random_blocks(qtype, N, K)
    w64 = gguf_dequantize(blocks, GGMLQuantizationType[qtype]).astype(np.float64)  # (N, K)
    x = _f(S, K)
    b = GraphBuilder("qmm")
    b.output(b.op("matmul", b.input("x", (S, K), "f32"), b.weight("w", (N, K), qtype)))
    be = _backend(api)
    be.load_raw("w", (N, K), qtype, blocks)
    got = be.compile(b.finish()).run({"x": x})
    ref = x.astype(np.float64) @ w64.T
    assert np.abs(got[b.graph.outputs[0]] - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("tile", [8, 1])
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K"])
@pytest.mark.parametrize("S,N", [(1, 131), (2, 200), (4, 67), (9, 131)])
def test_matmul_stages_against_gguf_py(api, qtype, S, N, tile, monkeypatch):
    """The GEMV (S <= GEMV_ROWS: weight words; rows on lanes where the planes are tiled, the
    backends' 8, or a row's threads on consecutive words, two rows a thread past 128 rows,
    at tile 1) and the tiled GEMM (past that), on N not a multiple of any tile and K of
    several steps."""
    from drift.backends.kernels import templates
    from drift.backends.kernels.gpu import GPUBackend

    monkeypatch.setattr(GPUBackend, "kernel_tile_rows", tile)

    K = 768 if block_size(qtype)[0] == 32 else 1024
    blocks = _random_blocks(qtype, N, K)
    w64 = gguf_dequantize(blocks, GGMLQuantizationType[qtype]).astype(np.float64)
    x = _f(S, K)
    b = GraphBuilder("qmm")
    b.output(b.op("matmul", b.input("x", (S, K), "f32"), b.weight("w", (N, K), qtype)))
    be = _backend(api)
    be.load_raw("w", (N, K), qtype, blocks)
    prog = be.compile(b.finish())
    if S <= templates.GEMV_ROWS or be.rt.renderer.tiled_gemm:  # PoCL: the block walk
        stage = "gemv" if S <= templates.GEMV_ROWS else "gemm"
        assert [k.name for k in prog.sources] == [f"matmul:{stage}"]
    if S <= templates.GEMV_ROWS:  # the GEMV reads the quant words 16 bytes a load
        assert any(p.kind == "u32x4" for p in prog.sources[0].params)
    got = prog.run({"x": x})[b.graph.outputs[0]]
    ref = x.astype(np.float64) @ w64.T
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("prefetch,mma_type", [(True, "f16"), (False, "f16"), (True, "tf32")])
@pytest.mark.parametrize("op", ["matmul", "ffn_gate_up", "stacked_matmul"])
@pytest.mark.parametrize("qtype", ["Q4_0", "Q6_K", "f32"])
def test_gemm_on_matrix_units(api, op, qtype, prefetch, mma_type, monkeypatch):
    """The prefill GEMM of matrix units (`_gemm_mma`, `warp_mma` in its plain spelling: the
    fragments' semantics, operands rounded to halves or to tf32) on ragged tiles (70 rows:
    two row tiles, N not a multiple of 64, K of several steps), with a gated epilogue and
    its biases, and stacked outputs, the next step's loads prefetched or not: as float64
    numpy within the operands' rounding (10 mantissa bits on both types)."""
    from drift.backends.kernels import templates

    monkeypatch.setattr(templates, "GEMM_MMA", "always")
    monkeypatch.setattr(templates, "GEMM_MMA_PREFETCH", prefetch)
    monkeypatch.setattr(templates, "GEMM_MMA_TYPE", mma_type)
    _gemm_on_matrix_units(api, op, qtype)


@pytest.mark.parametrize("tile", [(128, 128, 16), (128, 64, 32)])
def test_gemm_on_matrix_units_large_tiles(api, tile, monkeypatch):
    """The tiles chosen for large grids (eight and 16 subgroups; K steps of 16 and 32), on
    the gated two-weight case, whose staging takes the most workgroup memory."""
    from drift.backends.kernels import templates

    monkeypatch.setattr(templates, "GEMM_MMA", "always")
    monkeypatch.setattr(templates, "GEMM_MMA_TILE", tile)
    _gemm_on_matrix_units(api, "ffn_gate_up", "Q4_0")


@pytest.mark.parametrize("vec4,prefetch,tile", [(False, False, (32, 32, 32, 4, 4)),
                                                (False, True, (32, 32, 32, 4, 4)),
                                                (False, True, (32, 64, 32, 4, 8)),
                                                (True, False, (32, 32, 32, 4, 4)),
                                                (True, True, (32, 64, 32, 4, 8)),
                                                (True, True, (64, 64, 16, 8, 8)),
                                                (True, False, (32, 128, 32, 4, 8)),
                                                (True, False, None)])
@pytest.mark.parametrize("op", ["matmul", "ffn_gate_up", "stacked_matmul"])
def test_tiled_gemm_variants(api, op, vec4, prefetch, tile, monkeypatch):
    """The f32 tiled GEMM (`_gemm`, prefill where no matrix units are reached) with its
    tiles in workgroup memory as f32 or f32x4, the next step's loads in registers or not and
    wider register tiles, on the ragged shapes, gated epilogue and stacked outputs of the
    matrix-unit test: as float64 numpy. Tile None: the tile chosen per matmul, on a grid
    small enough to take the widest tile (gate/up: the narrow, by its accumulators)."""
    _gemm_constants(monkeypatch, GEMM_VEC4=vec4, GEMM_PREFETCH=prefetch, GEMM_TILE=tile,
                    **({"GEMM_MIN_THREADS": 1} if tile is None else {}))
    _gemm_on_matrix_units(api, op, "Q4_K" if op == "matmul" else "Q4_0", stage="gemm",
                          tol=1e-4)


def _gemm_constants(monkeypatch, **values) -> None:
    """The templates' constants for a test of the GEMMs without matrix units (GEMM_MMA off)."""
    from drift.backends.kernels import templates

    for name, value in {"GEMM_MMA": "never", **values}.items():
        monkeypatch.setattr(templates, name, value)


@pytest.mark.parametrize("prefetch,buffers,tile", [(False, 1, (32, 32, 32, 4, 4)),
                                                   (True, 1, (32, 64, 32, 4, 8)),
                                                   (False, 1, (64, 64, 16, 8, 8)),
                                                   (False, 2, (64, 64, 32, 8, 4)),
                                                   (True, 2, (32, 128, 32, 4, 8)),
                                                   (False, 1, None), (False, 2, None)])
@pytest.mark.parametrize("op", ["matmul", "ffn_gate_up", "stacked_matmul"])
def test_tiled_gemm_on_halves(api, op, prefetch, buffers, tile, monkeypatch):
    """Prefill's GEMM on packed halves (`_gemm_half`), where the device computes on them
    (lavapipe's `shader-f16`; PoCL has no fp16): x and the weights rounded to halves (2^-11),
    their products summed in halves over a step's 16 pairs, in f32 across steps; the staged
    tiles in one buffer or two. On the ragged shapes, gated epilogue and stacked outputs of
    the matrix-unit test, as float64 numpy, within the f16 matrix units' tolerance (errors of
    6e-4 to 1e-3 of the largest output seen on lavapipe, the matrix units' 3e-4). Tile None:
    the tile chosen per matmul on a grid small enough for the widest (64 x 128; gate/up:
    64 x 64, by its accumulators)."""
    if not _backend(api).rt.renderer.f16_math:
        pytest.skip(f"{api}: this device does not compute on halves")
    _gemm_constants(monkeypatch, GEMM_HALF="always", GEMM_HALF_BUFFERS=buffers,
                    GEMM_PREFETCH=prefetch, GEMM_TILE=tile,
                    **({"GEMM_HALF_MIN_THREADS": 1} if tile is None else {}))
    _gemm_on_matrix_units(api, op, "Q4_K" if op == "matmul" else "Q4_0", stage="gemm_half")


def test_gemm_tile_choice(monkeypatch):
    """The f32 GEMM's tile per matmul, on Llama-3.1-8B's and 3.2-1B's prefill at 512 rows:
    the widest whose grid keeps GEMM_MIN_THREADS threads, never for fused gate/up (two
    weights' accumulators), the next where the device's workgroup memory is WebGPU's
    minimum, and GEMM_TILE over all where set."""
    from drift.backends.kernels import templates

    monkeypatch.setattr(templates, "GEMM_TILE", None)
    monkeypatch.setattr(templates, "GEMM_VEC4", True)
    widest, wide, narrow = templates.GEMM_TILES
    assert templates.gemm_tile(512, 4096, 1) == widest  # 8B q / o: 16 x 32 workgroups of 128
    assert templates.gemm_tile(512, 6144, 1) == widest  # 8B q, k, v stacked
    assert templates.gemm_tile(512, 14336, 2) == narrow  # 8B gate/up: 64 accumulators wider
    assert templates.gemm_tile(512, 1024, 1) == narrow  # 8B k alone: 16 384 threads widest
    assert templates.gemm_tile(512, 2048, 1) == narrow  # 1B q / o: 32 768
    assert templates.gemm_tile(70, 131, 1) == narrow  # a short prompt
    assert templates.gemm_storage(widest, 1) > 16384 >= templates.gemm_storage(wide, 1)
    assert templates.gemm_tile(512, 4096, 1, storage=16384) == wide
    assert templates.gemm_storage(narrow, 2) <= 16384
    monkeypatch.setattr(templates, "GEMM_TILE", (64, 64, 16, 8, 8))
    assert templates.gemm_tile(512, 14336, 2) == (64, 64, 16, 8, 8)


def test_half_gemm_tile_choice(monkeypatch):
    """The GEMM on packed halves takes its own list (GEMM_HALF_TILES): 64 x 128 where the
    grid keeps 32 768 threads (8B q / o, stacked q, k, v, down, the LM head), 64 x 64 for
    fused gate/up (2 x 32 accumulators; 13 KiB of workgroup memory, so on a 16 KiB device
    too) and the 1B's q / o, the narrowest for the 8B's k alone (16 384 threads at any wider
    tile) and a short prompt; each declares less workgroup memory than the f32 GEMM at its
    tile."""
    from drift.backends.kernels import templates

    monkeypatch.setattr(templates, "GEMM_TILE", None)
    big, square, _, _, narrow = templates.GEMM_HALF_TILES
    tile = templates.gemm_tile
    assert [tile(512, N, 1, 49152, halves=True) for N in (4096, 6144, 128256)] == [big] * 3
    assert tile(512, 14336, 2, 49152, halves=True) == square
    assert tile(512, 2048, 1, 49152, halves=True) == square
    assert tile(512, 14336, 2, 16384, halves=True) == square
    assert tile(512, 1024, 1, 49152, halves=True) == narrow
    assert tile(60, 2048, 1, 49152, halves=True) == narrow
    assert tile(512, 4096, 1, 12288, halves=True) == square  # under big's 12.5 KiB
    for t in templates.GEMM_HALF_TILES:
        assert templates.gemm_storage(t, 1, halves=True) < templates.gemm_storage(t, 1)


def test_renderer_knows_halves(api, monkeypatch):
    """WebGPU computes on halves where the adapter has `shader-f16` (the runtime asks for
    it) and runs prefill's GEMM on them by default on a GPU, not on a CPU driver (lavapipe);
    OpenCL does not spell f16 arithmetic. Where `f16_gemm` is set, "auto" picks the half
    GEMM, and GEMM_HALF="never" the f32 one."""
    rt = _backend(api).rt
    r = rt.renderer
    if api == "webgpu":
        assert r.f16_math == ("shader-f16" in rt.adapter.features)
        assert r.f16_gemm == (r.f16_math and rt.adapter.info["adapter_type"] != "CPU")
    else:
        assert not r.f16_math and not r.f16_gemm
    if not r.f16_math:
        pytest.skip(f"{api}: this device does not compute on halves")
    _gemm_constants(monkeypatch)
    _gemm_on_matrix_units(api, "matmul", "Q4_0", stage="gemm_half", f16_gemm=True)
    _gemm_on_matrix_units(api, "matmul", "Q4_0", stage="gemm", tol=1e-4, f16_gemm=False)
    _gemm_constants(monkeypatch, GEMM_HALF="never")
    _gemm_on_matrix_units(api, "matmul", "Q4_0", stage="gemm", tol=1e-4, f16_gemm=True)


def test_renderer_knows_workgroup_storage(api):
    """Each runtime tells its renderer the device's workgroup memory (the GEMM's tile
    choice reads it): at least the 16 KiB WebGPU guarantees, as the driver reports it."""
    rt = _backend(api).rt
    assert rt.renderer.workgroup_storage >= 16384
    if api == "webgpu":
        lim = rt.adapter.limits["max-compute-workgroup-storage-size"]
    else:
        lim = rt.dev.local_mem_size
    assert rt.renderer.workgroup_storage == lim


@pytest.mark.parametrize("vec4,tile", [(False, (32, 32, 32, 4, 4)), (True, (32, 32, 32, 4, 4)),
                                       (True, (32, 64, 32, 4, 8)), (True, (32, 128, 32, 4, 8))])
@pytest.mark.parametrize("op", ["matmul", "ffn_gate_up", "stacked_matmul"])
def test_tiled_gemm_on_whole_tiles(api, op, vec4, tile, monkeypatch):
    """The f32 tiled GEMM on shapes of whole tiles (no output store guarded off), where
    PoCL runs it too (its guard bug needs a partial tile; `tiled_gemm` is off there for
    prompts of any length): OpenCL C's spelling of the f32x4 tiles (`Renderer.lane`) is
    checked in CI, not only on NVIDIA's driver. As float64 numpy. (PoCL also stores wrong
    values where one 128-column tile holds three stacked outputs' columns, 64 + 32 + 32;
    lavapipe does not: those shapes are `test_tiled_gemm_variants`'.)"""
    _gemm_constants(monkeypatch, GEMM_VEC4=vec4, GEMM_TILE=tile)
    Ns = {"matmul": [256], "ffn_gate_up": [128, 128], "stacked_matmul": [128, 64, 64]}[op]
    _gemm_on_matrix_units(api, op, "Q4_0", stage="gemm", tol=1e-4, S=64, Ns=Ns,
                          force_tiled=True)


def _gemm_on_matrix_units(api, op, qtype, stage="mma", tol=3e-3, S=70, Ns=None,
                          force_tiled=False, f16_gemm=None):
    K = 512 if qtype != "Q6_K" else 768
    Ns = Ns or {"matmul": [131], "ffn_gate_up": [67, 67], "stacked_matmul": [96, 40, 40]}[op]
    b = GraphBuilder("mma")
    x = b.input("x", (S, K), "f32")
    be = _backend(api)
    if force_tiled:
        be.rt.renderer.tiled_gemm = True
    if f16_gemm is not None:  # as the runtime sets it on a GPU
        be.rt.renderer.f16_gemm = f16_gemm
    if not be.rt.renderer.tiled_gemm:
        pytest.skip("this driver runs the block walk, not tiled GEMMs (PoCL 3.1)")
    ws = {}
    for i, N in enumerate(Ns):
        if qtype == "f32":
            ws[f"w{i}"] = _f(N, K) * 0.1
            be.load_arrays({f"w{i}": ws[f"w{i}"]})
        else:
            blocks = _random_blocks(qtype, N, K)
            be.load_raw(f"w{i}", (N, K), qtype, blocks)
            be._host[f"w{i}"] = blocks  # (a stack is made from the file's form)
            ws[f"w{i}"] = gguf_dequantize(blocks, GGMLQuantizationType[qtype])
    ys = [b.op("matmul", x, b.weight(f"w{i}", (N, K), qtype)) for i, N in enumerate(Ns)]
    if op == "ffn_gate_up":
        ws |= {"bg": _f(Ns[0]), "bu": _f(Ns[1])}
        be.load_arrays({"bg": ws["bg"], "bu": ws["bu"]})
        b.output(b.op("swiglu", b.op("add", ys[0], b.weight("bg", (Ns[0],), "f32")),
                      b.op("add", ys[1], b.weight("bu", (Ns[1],), "f32"))))
    else:
        for y in ys:
            b.output(y)
    graph = b.finish()
    prog = be.compile(graph)
    assert [k.name for k in prog.sources] == [f"{prog.graph.nodes[0].op}:{stage}"]
    assert prog.graph.nodes[0].op == op
    feeds = {"x": _f(S, K) * (0.02 if qtype != "f32" else 1.0)}
    ref = run_plain(graph, {k: v.astype(np.float64) for k, v in ws.items()},
                    {"x": feeds["x"].astype(np.float64)})
    got = prog.run(feeds)
    for o in graph.outputs:
        assert np.abs(got[o] - ref[o]).max() <= tol * np.abs(ref[o]).max(), o


@pytest.mark.parametrize("act,bias", [("swiglu", False), ("geglu", True)])
def test_ffn_gate_up_fused_over_two_quant_types(api, act, bias):
    """Gate Q4_K and up Q6_K (a Q4_K_M file may mix them), 11 rows (a ragged row tile)."""
    S, K, F = 11, 512, 37
    blocks = {"wg": _random_blocks("Q4_K", F, K), "wu": _random_blocks("Q6_K", F, K)}
    b = GraphBuilder("ffn")
    x = b.input("x", (S, K), "f32")
    g = b.op("matmul", x, b.weight("wg", (F, K), "Q4_K"))
    u = b.op("matmul", x, b.weight("wu", (F, K), "Q6_K"))
    if bias:
        g = b.op("add", g, b.weight("bg", (F,), "f32"))
        u = b.op("add", u, b.weight("bu", (F,), "f32"))
    b.output(b.op(act, g, u))
    graph = b.finish()
    be = _backend(api)
    for name, qtype in (("wg", "Q4_K"), ("wu", "Q6_K")):
        be.load_raw(name, (F, K), qtype, blocks[name])
    weights = {name: gguf_dequantize(blocks[name], GGMLQuantizationType[qtype])
               for name, qtype in (("wg", "Q4_K"), ("wu", "Q6_K"))}
    if bias:
        weights |= {"bg": _f(F), "bu": _f(F)}
        be.load_arrays({"bg": weights["bg"], "bu": weights["bu"]})
    prog = be.compile(graph)
    assert [n.op for n in prog.graph.nodes] == ["ffn_gate_up"]
    feeds = {"x": _f(S, K) * 0.02}  # random blocks: weights in the tens
    ref = run_plain(graph, weights, feeds)[graph.outputs[0]]
    got = prog.run(feeds)[graph.outputs[0]]
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("qtype", ["f32", "Q8_0", "Q4_K"])
def test_embedding(api, qtype):
    V, D, S = 41, 256, 6
    ids = rng.integers(0, V, S).astype(np.int32)
    b = GraphBuilder("emb")
    b.output(b.op("embedding", b.weight("t", (V, D), qtype), b.input("ids", (S,), "i32")))
    be = _backend(api)
    if qtype == "f32":
        table = _f(V, D)
        be.load_arrays({"t": table})
    else:
        blocks = _random_blocks(qtype, V, D)
        be.load_raw("t", (V, D), qtype, blocks)
        table = gguf_dequantize(blocks, GGMLQuantizationType[qtype])
    got = be.compile(b.finish()).run({"ids": ids})[b.graph.outputs[0]]
    np.testing.assert_allclose(got, table[ids], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode,n_dims,factors", [("norm", 12, False), ("neox", 8, True),
                                                 ("neox", 12, False)])
def test_rope(api, mode, n_dims, factors):
    S, H, Dh = 3, 5, 12
    b = GraphBuilder("rope")
    x, pos = b.input("x", (S, H, Dh), "f32"), b.input("pos", (S,), "i32")
    extra = [b.weight("ff", (n_dims // 2,), "f32")] if factors else []
    b.output(b.op("rope", x, pos, *extra, mode=mode, n_dims=n_dims, theta=10000.0,
                  freq_scale=0.5))
    w = {"ff": 1.0 + np.abs(_f(n_dims // 2))} if factors else {}
    _check(api, b.finish(), w, {"x": _f(S, H, Dh), "pos": np.array([0, 7, 40], np.int32)},
           tol=1e-5)


@pytest.mark.parametrize("window,softcap", [(0, 0.0), (3, 0.0), (0, 5.0)])
def test_kv_write_and_attention(api, window, softcap):
    S, H, Hkv, Dh, Dv, C = 4, 6, 2, 12, 10, 300  # C > the 256-key tile
    g = _attention_graph(S, H, Hkv, Dh, Dv, C, window=window, softcap=softcap)
    be = _backend(api)
    prog = be.compile(g)
    state: dict = {}
    for start in (0, 4, 290):  # later calls attend over the cache the first ones wrote
        p = np.arange(start, start + S, dtype=np.int32)
        feeds = {"q": _f(S, H, Dh), "k": _f(S, Hkv, Dh), "v": _f(S, Hkv, Dv), "pos": p}
        if start == 290:  # skip ahead: fill the cache rows between on both sides
            fill = {"q": _f(S, H, Dh), "k": _f(S, Hkv, Dh), "v": _f(S, Hkv, Dv)}
            for s0 in range(8, 290, S):
                f2 = dict(fill, pos=np.arange(s0, s0 + S, dtype=np.int32))
                run_plain(g, {}, f2, state)
                prog.run(f2)
        ref = run_plain(g, {}, feeds, state)
        got = prog.run(feeds)
        np.testing.assert_allclose(got[g.outputs[0]], ref[g.outputs[0]], rtol=1e-4, atol=1e-5)


def _attention_graph(S, H, Hkv, Dh, Dv, C, **attrs):
    """kv_write of S rows into both caches, then attention over them."""
    b = GraphBuilder("attn")
    q = b.input("q", (S, H, Dh), "f32")
    k, v = b.input("k", (S, Hkv, Dh), "f32"), b.input("v", (S, Hkv, Dv), "f32")
    pos = b.input("pos", (S,), "i32")
    kc = b.op("kv_write", b.state("kc", (C, Hkv, Dh), "f32"), k, pos)
    vc = b.op("kv_write", b.state("vc", (C, Hkv, Dv), "f32"), v, pos)
    b.output(b.op("attention", q, kc, vc, pos, scale=0.3, **attrs))
    return b.finish()


@pytest.mark.parametrize("H,Hkv,Dh,Dv,window,softcap,groups", [
    (8, 2, 64, 64, 0, 0.0, None),  # GQA; by runs: 8 lanes a key (lavapipe: a subgroup)
    (4, 4, 10, 100, 0, 5.0, None),  # one key a thread (rows not in 16-byte slots), softcap
    (6, 3, 16, 24, 100, 0.0, None),  # a window; by runs: 2 lanes a key, runs merged by shuffles
    (8, 2, 64, 64, 300, 0.0, 32),  # four splits of several steps (a window of five)
    (8, 2, 64, 64, 0, 0.0, 32),  # four splits of several steps
    (32, 2, 64, 64, 0, 0.0, None),  # 16 heads a kv head: more subgroups x heads than threads
])
def test_split_attention_at_decode(api, monkeypatch, H, Hkv, Dh, Dv, window, softcap, groups):
    """Decode (S of 1 or 2) attention split over several workgroups per (query, head), merged
    by a second launch: as numpy's over a 700-key cache filled by a prefill (itself the
    one-workgroup kernel) with fresh values, at positions from 0 to the cache's last (empty
    splits, a partly filled last step, one split, all), with GQA, a window, a softcap. Where
    the device has subgroup shuffles and rows cut into 16-byte slots, the split kernel is the
    one by runs (`_attend_runs`), else one key a thread."""
    from drift.backends.kernels import templates

    if groups:  # fewer splits than steps: each split several steps
        monkeypatch.setattr(templates, "ATTN_SPLIT_GROUPS", groups)
    C = 700
    be = _backend(api)
    by_runs = templates.attention_run_lanes(be.rt.renderer, (1, H, Dh), (C, Hkv, Dh),
                                            (C, Hkv, Dv)) > 0
    if api == "webgpu" and be.rt.renderer.subgroup_lanes >= 8:  # lavapipe: 8
        assert by_runs == (Dh % 8 == 0 and Dv % 8 == 0)
    attrs = {"window": window, "softcap": softcap}
    fill = be.compile(_attention_graph(C, H, Hkv, Dh, Dv, C, **attrs))
    assert [k.name for k in fill.sources if k.name.startswith("attention")] == ["attention"]
    state: dict = {}
    feeds = {"q": _f(C, H, Dh), "k": _f(C, Hkv, Dh), "v": _f(C, Hkv, Dv),
             "pos": np.arange(C, dtype=np.int32)}
    ref = run_plain(fill.graph, {}, feeds, state)[fill.graph.outputs[0]]
    got = fill.run(feeds)[fill.graph.outputs[0]]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    for S in (1, 2):
        prog = be.compile(_attention_graph(S, H, Hkv, Dh, Dv, C, **attrs))
        assert [k.name for k in prog.sources if k.name.startswith("attention")] == [
            "attention:split", "attention:combine"]
        split = next(k for k in prog.sources if k.name == "attention:split")
        assert any(name == "ro" for name, _, _ in split.shared) == by_runs  # the runs' merge
        for p in (0, 1, 63, 64, 65, 200, 511, C - S):
            feeds = {"q": _f(S, H, Dh), "k": _f(S, Hkv, Dh), "v": _f(S, Hkv, Dv),
                     "pos": np.arange(p, p + S, dtype=np.int32)}
            ref = run_plain(prog.graph, {}, feeds, state)[prog.graph.outputs[0]]
            got = prog.run(feeds)[prog.graph.outputs[0]]
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5, err_msg=f"S {S} p {p}")
    # a node of two launches: counted twice, timed and profiled as one node
    assert prog.launch_counts() == [1.0, 1.0, 2.0]
    assert len(prog.launch_nodes()) == len(prog.launches) == 4
    per_node = prog.profile(feeds)
    assert [n for n, _ in per_node] == list(prog.graph.nodes)
    assert all(t >= 0 for _, t in per_node)


def test_split_objects_past_the_binding_limit(api):
    """A 16 KiB binding limit: the weights' planes and the f32 matrix are cut into chunks, the
    large activations become MultiObject storages (the layout pass), and nothing changes."""
    S, K, K2, N = 11, 256, 32, 400
    blocks = _random_blocks("Q4_1", N, K)
    wf = _f(N, K2) * 0.1
    b = GraphBuilder("split")
    x, x2 = b.input("x", (S, K), "f32"), b.input("x2", (S, K2), "f32")
    h = b.op("matmul", x, b.weight("wq", (N, K), "Q4_1"))  # (S, N): 17600 bytes
    h2 = b.op("matmul", x2, b.weight("wf", (N, K2), "f32"))
    b.output(b.op("add", h, h2))
    g = b.finish()
    be = _backend(api, max_binding_bytes=16384)
    be.load_raw("wq", (N, K), "Q4_1", blocks)
    be.load_arrays({"wf": wf})
    assert len(be.weights["wf"][1][0].chunks) > 1 and len(be.weights["wq"][1][-1].chunks) > 1
    prog = be.compile(g)
    assert any(isinstance(s, MultiObject) for s in prog.storages.values())
    xv, x2v = _f(S, K), _f(S, K2)
    wq = gguf_dequantize(blocks, GGMLQuantizationType.Q4_1)
    ref = xv @ wq.T + x2v @ wf.T
    got = prog.run({"x": xv, "x2": x2v})[g.outputs[0]]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_lm_head_past_lavapipes_binding_limit(api):
    """A tied embedding / LM head of vocab 128256 x 288 f32 (148 MB, past lavapipe's 128 MiB
    storage binding): looked up and multiplied through its chunks."""
    V, D = 128256, 288
    table = np.random.default_rng(3).standard_normal((V, D), dtype=np.float32)
    b = GraphBuilder("head")
    ids = b.input("ids", (2,), "i32")
    h = b.op("embedding", b.weight("t", (V, D), "f32"), ids)
    b.output(b.op("matmul", h, "t"))
    g = b.finish()
    be = _backend(api)
    be.load_arrays({"t": table})
    if api == "webgpu":
        assert len(be.weights["t"][1][0].chunks) == 2
    got = be.compile(g).run({"ids": np.array([5, V - 1], np.int32)})[g.outputs[0]]
    ref = table[[5, V - 1]] @ table.T
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


def test_layers_render_their_kernels_once(api, monkeypatch):
    """A model's layers share their kernels: with the render memo each distinct launch is
    rendered once however many layers and prompt lengths use it (`GPUBackend.kernels_for`),
    and every program's sources are the ones rendering each node anew gives, for a prefill,
    a decode step and another prompt length. A kernel constant changed between programs
    (as the tests and bench/drift_with.py do) is rendered anew, not taken from the memo."""
    from drift.backends.kernels import gpu, templates

    calls = []
    real = gpu.kernel_for

    def counting(*args):
        calls.append(args[1].op)
        return real(*args)

    monkeypatch.setattr(gpu, "kernel_for", counting)
    cfg = tiny_config("llama").with_(n_layers=4)
    w = tiny_weights(cfg)
    dtypes = {k: "f32" for k in w}

    def sources(memo: bool) -> list[list[str]]:
        monkeypatch.setattr(gpu.GPUBackend, "render_memo", memo)
        be = _backend(api)
        be.load_arrays(w)
        progs = [be.compile(build_graph(cfg, dtypes, S, 16)) for S in (5, 1, 7)]
        return [[be.rt.renderer.render(k) for k in p.sources] for p in progs]

    fresh = sources(False)
    rendered_fresh = len(calls)
    calls.clear()
    memo = sources(True)
    assert memo == fresh
    # four layers alike: each layer's nodes are rendered for the first layer only
    assert len(calls) <= rendered_fresh // 2, (len(calls), rendered_fresh)
    be = _backend(api)
    be.load_arrays(w)
    g = build_graph(cfg, dtypes, 5, 16)
    first = [be.rt.renderer.render(k) for k in be.compile(g).sources]
    monkeypatch.setattr(templates, "NORM_WG", templates.NORM_WG // 2)
    second = [be.rt.renderer.render(k) for k in be.compile(g).sources]
    changed = [a != b for a, b in zip(first, second)]
    assert any(changed) and not all(changed)  # the norms' kernels, not the others


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_tiny_models_prefill_then_decode(api, kind, split, monkeypatch):
    """Every model kind: a prefill, then decode steps, as the plain evaluation. split: tiles
    of 2 keys, so that the 16-position cache splits at decode (the windowed layers of 3 and 4
    keys too), over more decode steps."""
    from drift.backends.kernels import templates

    if split:
        monkeypatch.setattr(templates, "ATTN_SPLIT_TILE", 2)
    cfg = tiny_config(kind)
    w = tiny_weights(cfg)
    dtypes = {k: "f32" for k in w}
    be = _backend(api)
    be.load_arrays(w)
    state: dict = {}
    decode_at = range(5, 16, 2) if split else (5, 6)
    for S, start in ((5, 0), *((1, p) for p in decode_at)):
        g = build_graph(cfg, dtypes, S, 16)
        prog = be.compile(g)
        if split and S == 1:
            assert "attention:split" in [k.name for k in prog.sources]
        feeds = {"tokens": (np.arange(S, dtype=np.int32) * 7 + start) % cfg.vocab_size,
                 "positions": np.arange(start, start + S, dtype=np.int32)}
        ref = run_plain(g, w, feeds, state)[g.outputs[0]]
        got = prog.run(feeds)[g.outputs[0]]
        assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), start


PROMPT = [1, 504, 3575, 282, 4649, 314]  # token ids: the reference is the cpu backend


def _greedy(path, device, n):
    from drift.runtime.engine import Engine

    e = Engine(path, device=device, ctx=64)
    logits = e.prefill(PROMPT)
    tokens, all_logits = [], [logits]
    for i in range(n):
        tokens.append(int(np.argmax(logits)))
        logits = e.forward([tokens[-1]], len(PROMPT) + i)
        all_logits.append(logits)
    return tokens, np.stack(all_logits)


@pytest.fixture(scope="module")
def smollm2_cpu(smollm2_path):
    return _greedy(smollm2_path, "cpu", 32)


@pytest.mark.slow
def test_smollm2_greedy_32_tokens_as_the_cpu_backend(api, smollm2_path, smollm2_cpu):
    ref_tokens, ref_logits = smollm2_cpu
    tokens, logits = _greedy(smollm2_path, api, 32)
    assert tokens == ref_tokens
    assert np.abs(logits - ref_logits).max() <= 1e-2


@pytest.mark.slow
def test_smollm2_greedy_with_split_attention(api, smollm2_path, smollm2_cpu, monkeypatch):
    """Tiles of 16 keys: the 64-position cache's decode attention splits four ways (one to
    three splits hold keys over the 38 positions); the tokens and logits as the cpu's."""
    from drift.backends.kernels import templates

    monkeypatch.setattr(templates, "ATTN_SPLIT_TILE", 16)
    ref_tokens, ref_logits = smollm2_cpu
    tokens, logits = _greedy(smollm2_path, api, 32)
    assert tokens == ref_tokens
    assert np.abs(logits - ref_logits).max() <= 1e-2


@pytest.mark.slow
def test_gemma3_greedy_as_the_cpu_backend(api, gemma3_path):
    """Q4_K, Q5_0, Q6_K and Q8_0 weights; the 262144 x 640 Q8_0 embedding's quant plane
    (168 MB) is past lavapipe's 128 MiB binding, so it runs as chunks there."""
    ref_tokens, ref_logits = _greedy(gemma3_path, "cpu", 4)
    tokens, logits = _greedy(gemma3_path, api, 4)
    assert tokens == ref_tokens
    assert np.abs(logits - ref_logits).max() <= 1e-2


def test_drift_devices_lists_every_api(api, capsys):
    from drift.cli import main

    assert main(["devices", "--json"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    assert any(r["api"] == api and "max_binding" in r for r in rows)
    assert any(r["api"] == "cpu" for r in rows)


def test_kernels_follow_the_storage_chosen(api):
    """The same templates over 4-wide channel slices (PHWC4) for the rank-3 activations: only
    the accessors' coordinate translation changes, and the logits do not."""
    import dataclasses

    from drift.passes.storage import ChannelSlices4

    cfg = tiny_config("qwen2")
    w = tiny_weights(cfg)
    be = _backend(api)
    caps = dataclasses.replace(be.capabilities(), channel_slices=True)
    be.capabilities = lambda: caps
    be.load_arrays(w)
    g = build_graph(cfg, {k: "f32" for k in w}, 3, 16)
    prog = be.compile(g)
    assert any(isinstance(s, ChannelSlices4) for s in prog.storages.values())
    feeds = {"tokens": np.array([3, 1, 4], np.int32), "positions": np.arange(3, dtype=np.int32)}
    ref = run_plain(g, w, feeds)[g.outputs[0]]
    got = prog.run(feeds)[g.outputs[0]]
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def test_a_call_is_one_submission_reading_only_the_outputs(api):
    """Kernels are bound when the program is built; a call writes the inputs, queues every
    launch and reads the graph outputs back: one `Runtime.run`. Quantized weights are held
    as their planes, no float copy."""
    cfg = tiny_config("llama")
    w = tiny_weights(cfg)
    be = _backend(api)
    be.load_arrays({k: v for k, v in w.items() if k != "token_embd.weight"})
    table = _random_blocks("Q4_0", *w["token_embd.weight"].shape)
    be.load_raw("token_embd.weight", w["token_embd.weight"].shape, "Q4_0", table)
    dtypes = {k: "f32" for k in w} | {"token_embd.weight": "Q4_0"}
    prog = be.compile(build_graph(cfg, dtypes, 1, 16))
    calls = []
    run = be.rt.run
    be.rt.run = lambda launches, writes, reads: calls.append((len(launches), reads)) or run(
        launches, writes, reads)
    prog.run({"tokens": np.array([3], np.int32), "positions": np.array([0], np.int32)})
    (n_launches, reads), = calls
    assert n_launches == sum(n.op not in ("reshape", "last_row") for n in prog.graph.nodes)
    assert [r[2] for r in reads] == [prog.storages["logits"].nbytes]
    assert be.stored_dtypes() == {}
    assert be.held_bytes().weights < sum(v.nbytes for v in w.values())


def test_greedy_sampling_on_the_device(api):
    """argmax in the step's own submission (4 bytes back), chunked prefill included: the
    tokens of host sampling, first maximum on ties."""
    from drift.runtime.sampler import GREEDY, SamplerConfig

    cfg = tiny_config("llama")
    w = tiny_weights(cfg)
    be = _backend(api)
    be.load_arrays(w)
    assert be.sampler(SamplerConfig(temperature=0.7, top_k=0)) is None  # top-k off: the host
    pick = be.sampler(GREEDY)
    dtypes = {k: "f32" for k in w}
    for S, start in ((5, 0), (1, 5), (1, 6)):
        prog = be.compile(build_graph(cfg, dtypes, S, 16))
        feeds = {"tokens": np.arange(S, dtype=np.int32) + 2,
                 "positions": np.arange(start, start + S, dtype=np.int32)}
        host = prog.run(feeds)["logits"].reshape(-1)  # the cache rows rewritten alike
        dev = prog.run(feeds, to_host=False)["logits"].reshape(-1)
        assert pick(dev, []) == int(np.argmax(host))
    b = GraphBuilder("ties")
    b.output(b.op("scale", b.input("x", (1, 1000), "f32"), value=1.0))
    prog = be.compile(b.finish())
    x = np.zeros((1, 1000), np.float32)
    x[0, [417, 733]] = 5.0
    assert pick(prog.run({"x": x}, to_host=False)[prog.graph.outputs[0]], []) == 417


def test_decode_ahead_is_the_cpu_backends_greedy_answer(api, tmp_path, monkeypatch):
    """Decode ahead (each step queued before the token it runs is read: the argmax stores
    the token into the step's input on the device) gives the cpu backend's greedy tokens on
    a random Q4_0 model: to max_tokens, to a stop token (the step queued for it wasted, the
    cache's record naming it) and to a full context; a second call reuses the cache's
    prefix, its record right. Every step queued is waited for, also when the caller stops
    reading early. With DRIFT_DECODE_AHEAD=0 the same tokens one step at a time."""
    from drift.backends.kernels.gpu import GreedySampler
    from drift.formats.writer import write_random
    from drift.models.presets import Preset, _llama
    from drift.runtime.engine import Engine
    from drift.runtime.generate import GenerationStats, decodes_ahead, generate_tokens
    from drift.runtime.sampler import GREEDY, Sampler

    preset = Preset("tiny-llama", "llama", _llama(2, 64, 4, 2, 96, ctx=128), 300, False, True)
    path = write_random(preset, "Q4_0", tmp_path / "tiny.gguf", seed=3, workers=1)
    prompt = [5, 17, 260, 3, 99, 42, 7]
    cpu = Engine(path, device="cpu", ctx=24)
    want = list(generate_tokens(cpu, prompt, Sampler(GREEDY), 12))
    gpu = Engine(path, device=api, ctx=24)
    assert decodes_ahead(gpu, gpu.backend.sampler(GREEDY))
    submitted, collected = [], []
    real_submit, real_collect = GreedySampler.submit, GreedySampler.collect

    def spy(self, logits, feed):
        submitted.append(logits.program)
        return real_submit(self, logits, feed)

    def spy_collect(self, ticket):
        collected.append(ticket)
        return real_collect(self, ticket)

    monkeypatch.setattr(GreedySampler, "submit", spy)
    monkeypatch.setattr(GreedySampler, "collect", spy_collect)
    assert list(generate_tokens(gpu, prompt, Sampler(GREEDY), 12)) == want
    assert len(submitted) == 12 and all(p is gpu.program(1) for p in submitted[1:])
    assert gpu.cached_tokens == prompt + want[:11]  # the 12th token is not run
    assert len(collected) == 12
    # a stop token: the answer before it; the step queued for it ran (waited for), and the
    # record says so
    stats = GenerationStats()
    submitted.clear(), collected.clear()
    got = list(generate_tokens(gpu, prompt + want[:2], Sampler(GREEDY), 12, {want[5]}, stats))
    assert got == want[2:5] and stats.finish_reason == "stop"
    assert gpu.cached_tokens == prompt + want[:6] and len(collected) == len(submitted) == 5
    # the caller stops reading after two tokens: the step queued behind them is waited for
    submitted.clear(), collected.clear()
    tokens = generate_tokens(gpu, prompt, Sampler(GREEDY), 12)
    assert [next(tokens), next(tokens)] == want[:2]
    tokens.close()
    assert len(collected) == len(submitted) == 3
    assert list(generate_tokens(gpu, prompt, Sampler(GREEDY), 12)) == want
    # the context full: 24 positions hold the prompt and 17 tokens
    full = list(generate_tokens(cpu, prompt, Sampler(GREEDY), 40))
    stats = GenerationStats()
    assert list(generate_tokens(gpu, prompt, Sampler(GREEDY), 40, (), stats)) == full
    assert stats.finish_reason == "context" and len(full) == 24 - len(prompt)
    monkeypatch.setenv("DRIFT_DECODE_AHEAD", "0")
    submitted.clear()
    assert list(generate_tokens(gpu, prompt, Sampler(GREEDY), 12)) == want and not submitted
    monkeypatch.setenv("DRIFT_DECODE_AHEAD", "yes")
    from drift.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="DRIFT_DECODE_AHEAD"):
        list(generate_tokens(gpu, prompt, Sampler(GREEDY), 2))


def test_sampled_decode_ahead_is_the_cpu_backends_answer(api, tmp_path, monkeypatch):
    """Top-k sampling decodes ahead too (the device draws with the host generator's next
    uniform and feeds the token to the next step): for each seed and cut, the tokens of the
    cpu backend's host sampling on a random Q4_0 model, every step queued on the device but
    the prefill's; with DRIFT_DECODE_AHEAD=0 the same tokens a step at a time."""
    from drift.backends.kernels.gpu import TopKSampler
    from drift.formats.writer import write_random
    from drift.models.presets import Preset, _llama
    from drift.runtime.engine import Engine
    from drift.runtime.generate import decodes_ahead, generate_tokens
    from drift.runtime.sampler import Sampler, SamplerConfig

    preset = Preset("tiny-llama", "llama", _llama(2, 64, 4, 2, 96, ctx=128), 300, False, True)
    path = write_random(preset, "Q4_0", tmp_path / "tiny.gguf", seed=5, workers=1)
    prompt = [5, 17, 260, 3, 99, 42, 7]
    cpu, gpu = Engine(path, device="cpu", ctx=32), Engine(path, device=api, ctx=32)
    tickets = []
    real_submit = TopKSampler.submit
    monkeypatch.setattr(TopKSampler, "submit", lambda self, logits, feed: tickets.append(
        real_submit(self, logits, feed)) or tickets[-1])
    for cfg in (SamplerConfig(seed=1), SamplerConfig(temperature=1.3, top_k=64, seed=2),
                SamplerConfig(temperature=0.5, top_k=7, top_p=1.0, min_p=0.0, seed=3)):
        assert decodes_ahead(gpu, gpu.backend.sampler(cfg))
        want = list(generate_tokens(cpu, prompt, Sampler(cfg), 16))
        tickets.clear()
        assert list(generate_tokens(gpu, prompt, Sampler(cfg), 16)) == want, cfg
        assert len(tickets) == 16 and all(kind == "device" for kind, _ in tickets)
        assert gpu.cached_tokens == prompt + want[:15]
    monkeypatch.setenv("DRIFT_DECODE_AHEAD", "0")
    tickets.clear()
    assert list(generate_tokens(gpu, prompt, Sampler(cfg), 16)) == want and not tickets


def test_bench_sample_times_the_sampled_loop(api, tmp_path, capsys):
    """`drift bench --sample`: tg draws with `drift run`'s default sampling, on the device
    and decoding ahead, and says so; without it, greedy."""
    import json

    from drift.cli import main
    from drift.formats.writer import write_random
    from drift.models.presets import Preset, _llama

    preset = Preset("tiny-llama", "llama", _llama(2, 64, 4, 2, 96, ctx=128), 300, False, True)
    path = write_random(preset, "Q4_0", tmp_path / "tiny.gguf", seed=2, workers=1)
    for flag, loop in (("--sample", "top-40 sampling on the device, each step queued"),
                       (None, "argmax on the device, each step queued")):
        args = ["bench", str(path), "-p", "4", "-n", "3", "-r", "1", "--device", api,
                "--no-ceilings", "--json", *([flag] if flag else [])]
        assert main(args) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["decode_loop"].startswith(loop) and res["sampled"] == (flag is not None)


@pytest.mark.parametrize("pass_per_dispatch", [False, True])
def test_device_timestamps(api, pass_per_dispatch):
    """`timed`: every launch of a call timed on the device (OpenCL profiling events, WebGPU
    timestamp queries, inside one pass or a pass per dispatch), and `profile` from them;
    the outputs still right afterwards."""
    cfg = tiny_config("llama")
    w = tiny_weights(cfg)
    be = _backend(api)
    if pass_per_dispatch:
        if getattr(be.rt, "timestamps", None) is None:
            pytest.skip("one way of timing only")
        be.rt.timestamps = "pass-per-dispatch"
    be.load_arrays(w)
    prog = be.compile(build_graph(cfg, {k: "f32" for k in w}, 1, 16))
    feeds = {"tokens": np.array([3], np.int32), "positions": np.array([2], np.int32)}
    want = prog.run(feeds)["logits"]
    t = prog.timed(feeds)
    if t is None:
        pytest.skip(be.rt.timing_unavailable)
    assert len(t.seconds) == len(prog.launches) == len(prog.launch_nodes())
    assert all(s >= 0 for s in t.seconds) and t.span >= 0.99 * sum(t.seconds) > 0
    per_node = prog.profile(feeds)
    assert [n for n, _ in per_node] == list(prog.graph.nodes)
    np.testing.assert_array_equal(prog.run(feeds)["logits"], want)


@pytest.mark.parametrize("S", [1, 2, 9])
@pytest.mark.parametrize("qtype,bias", [("f32", True), ("Q4_0", False), ("Q6_K", True)])
def test_stacked_matmul_one_matrix(api, S, qtype, bias):
    """Q/K/V as one matmul over the weights stacked as rows of one matrix (from host copies
    here, from the file's rows in load_weights), each output's columns (and bias) its own;
    the GEMV, GEMM and block walk alike. The members' own copies are dropped."""
    K = 256
    widths = (96, 32, 32)
    b = GraphBuilder("stacked")
    x = b.input("x", (S, K), "f32")
    names = [b.weight(f"w{i}", (n, K), qtype) for i, n in enumerate(widths)]
    biases = [b.weight(f"b{i}", (n,), "f32") for i, n in enumerate(widths)] if bias else []
    for o in b.op_multi("stacked_matmul", x, *names, *biases, n=3, bias=bias):
        b.output(o)
    g = b.finish()
    be = _backend(api)
    weights, dense = {}, {}
    for i, n in enumerate(widths):
        if qtype == "f32":
            dense[f"w{i}"] = _f(n, K)
        else:
            blocks = _random_blocks(qtype, n, K)
            be.load_raw(f"w{i}", (n, K), qtype, blocks)
            be._host[f"w{i}"] = blocks  # what load_arrays keeps, in the file's form
            dense[f"w{i}"] = gguf_dequantize(blocks, GGMLQuantizationType[qtype])
        if bias:
            weights[f"b{i}"] = _f(n)
    be.load_arrays(weights | ({k: v for k, v in dense.items()} if qtype == "f32" else {}))
    feeds = {"x": _f(S, K)}
    prog = be.compile(g)
    assert prog.sources[0].name.startswith("stacked_matmul:")
    assert not any(f"w{i}" in be.weights for i in range(3))
    got = prog.run(feeds)
    ref = run_plain(g, weights | dense, feeds)
    for o in g.outputs:
        assert np.abs(got[o] - ref[o]).max() <= 1e-4 * max(1.0, np.abs(ref[o]).max()), o


def test_greedy_sampling_over_many_groups(api):
    """argmax's two stages over a vocabulary of many first-stage groups: maxima in
    different groups, the first of equal ones wins, the last element, a negative row."""
    from drift.backends.kernels.gpu import GreedySampler

    be = _backend(api)
    pick = GreedySampler(be)
    for V in (128256, 4097):
        b = GraphBuilder("vocab")
        b.output(b.op("scale", b.input("x", (1, V), "f32"), value=1.0))
        prog = be.compile(b.finish())
        for case in range(3):
            x = _f(1, V)
            if case == 1:
                x[0, [V // 3, V - 1]] = 50.0
            if case == 2:
                x[:] = -1.0
                x[0, -1] = 0.0
            out = prog.run({"x": x}, to_host=False)[prog.graph.outputs[0]]
            assert pick(out, []) == int(np.argmax(x)), (V, case)


def _vector_program(be, V):
    b = GraphBuilder("vocab")
    b.output(b.op("scale", b.input("x", (1, V), "f32"), value=1.0))
    prog = be.compile(b.finish())
    return lambda x: prog.run({"x": x}, to_host=False)[prog.graph.outputs[0]]


def test_topk_on_the_device_is_numpys_with_the_tie_rule(api):
    """The device's top-k (two stages: each group's k best, then theirs) is the host's
    `_best` order exactly: ties to the smaller id (many ties; all equal, -0 among +0),
    vocabularies of one group, a ragged second and 32; the logits come back bit for bit."""
    from drift.backends.kernels.gpu import TopKSampler
    from drift.runtime.sampler import SamplerConfig, _best

    be = _backend(api)
    g = np.random.default_rng(11)
    for V in (1000, 4097, 128256):
        on_device = _vector_program(be, V)
        for K in (5, 64):
            pick = TopKSampler(be, SamplerConfig(top_k=K))
            for case in ("random", "ties", "equal"):
                x = g.standard_normal((1, V)).astype(np.float32)
                if case == "ties":
                    x = np.round(x * 2).astype(np.float32)  # a few values, thousands each
                if case == "equal":
                    x[:] = 0.0
                    x[0, [3, V - 2]] = -0.0
                ids, vals = pick.best(on_device(x))
                want = _best(x[0].astype(np.float64), K)
                np.testing.assert_array_equal(ids, want, err_msg=f"{V} {K} {case}")
                np.testing.assert_array_equal(vals, x[0, want])


def test_topk_sampling_stops_on_non_finite_logits(api):
    """check_finite's semantics: a NaN anywhere (it sorts first), +inf, or all -inf raise."""
    from drift.errors import NumericalError
    from drift.runtime.sampler import SamplerConfig

    be = _backend(api)
    pick = be.sampler(SamplerConfig(temperature=0.7, top_k=5))
    on_device = _vector_program(be, 4097)
    for value, where in ((np.nan, 4000), (np.inf, 17), (-np.inf, slice(None))):
        x = _f(1, 4097)
        x[0, where] = value
        with pytest.raises(NumericalError):
            pick(on_device(x), [])
    x = _f(1, 4097)
    x[0, :4000] = -np.inf  # -inf among the candidates is fine, as on the host
    assert pick(on_device(x), []) >= 4000


def _fed_program(be):
    """A decode step's program, whose "tokens" input a sampler's `submit` stores into, and
    a reader of what it holds there."""
    cfg = tiny_config("llama")
    w = tiny_weights(cfg)
    be.load_arrays(w)
    prog = be.compile(build_graph(cfg, {k: "f32" for k in w}, 1, 16))
    prog._bind()

    def fed() -> int:
        be.synchronize()
        (raw,) = be.rt.run([], [], [(be.arena, prog.plan.offsets["tokens"], 4)])
        return int(prog.storages["tokens"].from_physical(
            prog.storages["tokens"].bind(raw)).reshape(-1)[0])

    return prog, fed


@pytest.mark.parametrize("top_k", [1, 5, 40, 64])
@pytest.mark.parametrize("ahead", [False, True])
def test_topk_sampling_draws_the_host_samplers_tokens(api, top_k, ahead):
    """`sampler(config)` with 0 < top_k <= TOPK_MAX: the device's top-k, then the host's cut
    and draw with its generator (called), or the device's (`submit`, decode ahead: given the
    generator's next uniform, the token stored into the next step's input too): for each
    seed, top-p and min-p, the tokens of `Sampler` on the same logits, step after step."""
    from drift.backends.kernels.gpu import TopKSampler
    from drift.runtime.sampler import Sampler, SamplerConfig

    be = _backend(api)
    V = 5003
    assert be.sampler(SamplerConfig(top_k=65)) is None
    assert be.sampler(SamplerConfig(top_k=40, repeat_penalty=1.1)) is None
    on_device = _vector_program(be, V)
    feed, fed = _fed_program(be) if ahead else (None, None)
    g = np.random.default_rng(top_k)
    steps = [(g.standard_normal((1, V)) * 2.5).astype(np.float32) for _ in range(6)]
    for seed in (0, 1, 2):
        for top_p in (0.9, 1.0):
            for min_p in (0.0, 0.05):
                cfg = SamplerConfig(temperature=0.7, top_k=top_k, top_p=top_p, min_p=min_p,
                                    seed=seed)
                pick, host = be.sampler(cfg), Sampler(cfg)
                assert isinstance(pick, TopKSampler)
                for x in steps:
                    want = host(x, [])
                    if not ahead:
                        assert pick(on_device(x), []) == want, cfg
                        continue
                    ticket = pick.submit(on_device(x), feed)
                    assert ticket[0] == "device"
                    assert pick.collect(ticket) == want == fed(), cfg


def test_topk_draw_on_the_device_stops_on_non_finite_logits(api):
    """Decoding ahead, logits no token can be drawn from (a NaN, +inf, all -inf) give -1
    (the host raises on it) and a valid id, 0, in the next step's input; -inf among the
    candidates is drawn from as on the host."""
    from drift.runtime.sampler import SamplerConfig

    be = _backend(api)
    pick = be.sampler(SamplerConfig(temperature=0.7, top_k=5, seed=4))
    on_device = _vector_program(be, 4097)
    feed, fed = _fed_program(be)
    for value, where in ((np.nan, 4000), (np.inf, 17), (-np.inf, slice(None))):
        x = _f(1, 4097)
        x[0, where] = value
        assert pick.collect(pick.submit(on_device(x), feed)) == -1
        assert fed() == 0
    x = _f(1, 4097)
    x[0, :4094] = -np.inf  # three finite candidates of five
    for _ in range(8):
        assert pick.collect(pick.submit(on_device(x), feed)) >= 4094


@pytest.mark.slow
def test_smollm2_topk_sampling_as_the_cpu_backend(api, smollm2_path):
    """The generation loop samples through the backend's `TopKSampler` (temperature 0.8,
    top-k 40, seed 1): the tokens of the cpu backend's host sampling."""
    from drift.backends.kernels.gpu import TopKSampler
    from drift.runtime.engine import Engine
    from drift.runtime.generate import generate_tokens
    from drift.runtime.sampler import Sampler, SamplerConfig

    cfg = SamplerConfig(temperature=0.8, top_k=40, seed=1)
    want = list(generate_tokens(Engine(smollm2_path, device="cpu", ctx=64), PROMPT,
                                Sampler(cfg), 12))
    e = Engine(smollm2_path, device=api, ctx=64)
    made = []
    sampler = e.backend.sampler
    e.backend.sampler = lambda c: made.append(sampler(c)) or made[-1]
    assert list(generate_tokens(e, PROMPT, Sampler(cfg), 12)) == want
    assert isinstance(made[0], TopKSampler)


# -- the int8-x GEMV: x quantized to int8 blocks (two levels), dot products of packed bytes


def test_quantize_q8_kernel_is_the_reference_arithmetic(api):
    """The values `ops_quant.quantize_planes` represents, from x with zero, tiny and huge
    blocks, within the second level's step (2^-15 of the block's largest): a level may move by
    one where the device's division rounds otherwise, so the levels are not compared."""
    from drift.ir.ops_quant import dequantize_planes, quantize_planes

    K = 32 * 13
    x = _f(1, K) * 3
    x[0, :32] = 0.0  # an all-zero block: scale 0
    x[0, 32:64] *= 1e-30
    x[0, 64:96] *= 1e20
    b = GraphBuilder("q8")
    b.output(b.op("quantize_q8", b.input("x", (1, K), "f32")))
    g = b.finish()
    be = _backend(api, int8_dot=True)
    prog = be.compile(g)
    name = g.outputs[0]
    ref = quantize_planes(x)
    got = prog.run({"x": x})[name]  # the logical value read back from the planes
    want = dequantize_planes(*ref[:3]).reshape(1, K)
    amax = np.abs(x.reshape(-1, 32)).max(axis=1).repeat(32).reshape(1, K)
    assert np.all(np.abs(got - want) <= amax * 2.0 ** -15)
    assert np.all(got[0, :32] == 0)


@pytest.mark.parametrize("tile", [8, 1])
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K"])
def test_int8_gemv_against_gguf_py(api, qtype, tile, monkeypatch):
    """The int8-x GEMV of every weight type it reads, rows on lanes (planes tiled by 8) and
    a row's threads on consecutive words (tile 1: two rows a thread, N past 128), a ragged
    last workgroup, against float64 on the values the int8 blocks represent."""
    from drift.backends.kernels.gpu import GPUBackend
    from drift.ir.ops_quant import quantize_blocks

    monkeypatch.setattr(GPUBackend, "kernel_tile_rows", tile)

    N, K = 133, 768 if block_size(qtype)[0] == 32 else 1024
    blocks = _random_blocks(qtype, N, K)
    w64 = gguf_dequantize(blocks, GGMLQuantizationType[qtype]).astype(np.float64)
    x = _f(1, K)
    b = GraphBuilder("q8mm")
    xq = b.op("quantize_q8", b.input("x", (1, K), "f32"))
    b.output(b.op("matmul", xq, b.weight("w", (N, K), qtype)))
    be = _backend(api, int8_dot=True)
    be.load_raw("w", (N, K), qtype, blocks)
    prog = be.compile(b.finish())
    assert [k.name for k in prog.sources] == ["quantize_q8", "matmul:gemv_q8"]
    got = prog.run({"x": x})[b.graph.outputs[0]]
    ref = quantize_blocks(x).astype(np.float64) @ w64.T
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    # and within x's rounding (~2^-15 of each block's largest) of the f32-x product
    ref32 = x.astype(np.float64) @ w64.T
    assert np.abs(got - ref32).max() <= 1e-3 * max(1.0, np.abs(ref32).max())


def test_decode_graph_reads_int8_x_in_every_matmul(api):
    """A decode step of a quantized tiny Llama: a quantize kernel before each distinct x,
    the Q/K/V stack, o, the fused gate/up and down all int8-x GEMVs, the logits as the
    plain evaluation's on the values the int8 blocks represent (the pass's own graph)."""
    cfg = tiny_config("llama")
    w = tiny_weights(cfg)
    qt = "Q8_0"
    be = _backend(api, int8_dot=True)
    from drift.formats.quants import quantize as drift_quantize

    raw, dtypes = {}, {}
    for k, v in w.items():
        if v.ndim == 2 and v.shape[1] % 32 == 0 and "embd" not in k:
            raw[k] = drift_quantize(v.astype(np.float32), GGMLQuantizationType[qt])
            dtypes[k] = qt
        else:
            dtypes[k] = "f32"
    g = build_graph(cfg, dtypes, 1, 16)
    for k, v in raw.items():
        be.load_raw(k, g.tensors[k].shape, qt, v)
        be._host[k] = v  # what load_arrays keeps, in the file's form (stacked from it)
    be.load_arrays({k: v for k, v in w.items() if k not in raw})
    prog = be.compile(g)
    names = [k.name for k in prog.sources]
    assert "matmul:gemv" not in names and "ffn_gate_up:gemv_q8" in names, names
    assert "stacked_matmul:gemv_q8" in names and names.count("quantize_q8") >= 4
    feeds = {"tokens": np.array([3], np.int32), "positions": np.array([0], np.int32)}
    got = prog.run(feeds)[g.outputs[0]]
    deq = {k: gguf_dequantize(v, GGMLQuantizationType[qt]).reshape(w[k].shape).astype(np.float32)
           for k, v in raw.items()}
    ref = run_plain(prog.graph, {**w, **deq}, feeds)[g.outputs[0]]
    # x's rounding to its blocks' grid (2^-15 of a block's largest) may go the other way on
    # a value the device computed 1e-6 off: ~1e-4 of the logits after two layers
    assert np.abs(got - ref).max() <= 1e-3 * max(1.0, np.abs(ref).max())


@pytest.mark.slow
def test_smollm2_greedy_on_int8_x(api, smollm2_path, smollm2_cpu, monkeypatch):
    """The reference model with DRIFT_INT8_DOT=1: every decode GEMV on int8 x (lavapipe:
    dot4I8Packed; PoCL: the dot product emulated), the same tokens as the cpu backend."""
    monkeypatch.setenv("DRIFT_INT8_DOT", "1")
    ref_tokens, ref_logits = smollm2_cpu
    tokens, logits = _greedy(smollm2_path, api, 32)
    assert tokens == ref_tokens
    assert np.abs(logits - ref_logits).max() <= 1e-2


@pytest.mark.slow
def test_smollm2_greedy_on_halves(api, smollm2_path, smollm2_cpu, monkeypatch):
    """The reference model with prefill's GEMMs on packed halves (GEMM_HALF="always":
    lavapipe's shader-f16; the 6-token prompt takes the tiled GEMM): the same 32 tokens as
    the cpu backend, logits within the halves' rounding."""
    from drift.backends.kernels import templates

    if not _backend(api).rt.renderer.f16_math:
        pytest.skip(f"{api}: this device does not compute on halves")
    monkeypatch.setattr(templates, "GEMM_HALF", "always")
    ref_tokens, ref_logits = smollm2_cpu
    tokens, logits = _greedy(smollm2_path, api, 32)
    assert tokens == ref_tokens
    # x and the weights rounded to halves in prefill: 2e-3 of the largest logit there on
    # lavapipe (the f32 GEMM's 1e-2 absolute is 4e-4), less as decode goes on
    rel = np.abs(logits - ref_logits).max(axis=1) / np.abs(ref_logits).max(axis=1)
    assert rel.max() <= 5e-3


# -- prefill's int8 GEMM: x quantized to one-level int8 blocks (q8x1), dot4_i8 on int8 tiles


def test_quantize_q8_one_level_kernel_is_the_reference_arithmetic(api):
    """`quantize_q8 {levels: 1}`: the values `ops_quant.quantize_planes_1` represents (x in
    whole levels of its block's largest / 127) from x with zero, tiny and huge blocks; a level
    may move by one where the device's division rounds a half otherwise, no more."""
    from drift.ir.ops_quant import dequantize_planes_1, quantize_planes_1

    K = 32 * 13
    x = _f(3, K) * 3
    x[0, :32] = 0.0  # an all-zero block: scale 0
    x[1, 32:64] *= 1e-30
    x[2, 64:96] *= 1e20
    b = GraphBuilder("q8_1")
    b.output(b.op("quantize_q8", b.input("x", (3, K), "f32"), levels=1))
    g = b.finish()
    assert g.tensors[g.outputs[0]].dtype == "q8x1"
    prog = _backend(api).compile(g)
    assert [k.name for k in prog.sources] == ["quantize_q8_1"]
    got = prog.run({"x": x})[g.outputs[0]]
    want = dequantize_planes_1(*quantize_planes_1(x)[:2]).reshape(3, K)
    amax = np.abs(x.reshape(-1, 32)).max(axis=1).repeat(32).reshape(3, K)
    assert np.all(np.abs(got - want) <= amax / 127 * 1.0001)
    assert np.mean(got == want) > 0.99 and np.all(got[0, :32] == 0)


def _int8_gemm(monkeypatch, **constants):
    from drift.backends.kernels import templates

    monkeypatch.setattr(templates, "GEMM_INT8", "always")
    for k, v in constants.items():
        monkeypatch.setattr(templates, k, v)


@pytest.mark.parametrize("tile", [None, (64, 128, 1, 8, 8), (64, 64, 2, 8, 4), (32, 32, 1, 4, 4)])
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K"])
def test_int8_gemm_against_gguf_py(api, qtype, tile, monkeypatch):
    """The int8 GEMM of every weight type it reads (Q4_K, Q6_K: an x block's words chosen
    from their 256-element blocks; Q6_K's scales of 16), at its tiles (None: the list's
    choice on a small grid), on ragged rows and columns (a partial last tile both ways),
    against float64 on the values the q8x1 blocks represent; and within x's one-level
    rounding of the f32-x product."""
    from drift.ir.ops_quant import quantize_blocks_1

    _int8_gemm(monkeypatch, GEMM_INT8_TILE=tile,
               **({"GEMM_INT8_MIN_THREADS": 1} if tile is None else {}))
    S, N, K = 70, 133, 512
    blocks = _random_blocks(qtype, N, K)
    w64 = gguf_dequantize(blocks, GGMLQuantizationType[qtype]).astype(np.float64)
    x = _f(S, K)
    b = GraphBuilder("gemm_q8")
    xq = b.op("quantize_q8", b.input("x", (S, K), "f32"), levels=1)
    b.output(b.op("matmul", xq, b.weight("w", (N, K), qtype)))
    be = _backend(api)
    be.load_raw("w", (N, K), qtype, blocks)
    prog = be.compile(b.finish())
    assert [k.name for k in prog.sources] == ["quantize_q8_1", "matmul:gemm_q8"]
    got = prog.run({"x": x})[b.graph.outputs[0]]
    ref = quantize_blocks_1(x).astype(np.float64) @ w64.T
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    ref32 = x.astype(np.float64) @ w64.T  # one level: ~1/254 of each block's largest
    assert np.abs(got - ref32).max() <= 2e-2 * np.abs(ref32).max()


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("types", [("Q4_K", "Q6_K"), ("Q6_K", "Q4_0"), ("Q4_1", "Q8_0")])
def test_int8_gemm_fused_gate_up_over_two_quant_types(api, types, bias, monkeypatch):
    """Fused gate/up on the int8 GEMM with two weight types, one with scales of 16 (Q6_K:
    its ints made signed, each x block's products folded in two halves, the other weight's
    scale stored into both) or with and without an offset (Q4_1's min, Q8_0 none), biases
    in the epilogue: the plain evaluation of the pass's graph on the same q8x1 x."""
    _int8_gemm(monkeypatch)
    S, K, F = 11, 512, 37
    blocks = {"wg": _random_blocks(types[0], F, K), "wu": _random_blocks(types[1], F, K)}
    b = GraphBuilder("ffn")
    x = b.input("x", (S, K), "f32")
    g = b.op("matmul", x, b.weight("wg", (F, K), types[0]))
    u = b.op("matmul", x, b.weight("wu", (F, K), types[1]))
    if bias:
        g = b.op("add", g, b.weight("bg", (F,), "f32"))
        u = b.op("add", u, b.weight("bu", (F,), "f32"))
    b.output(b.op("swiglu", g, u))
    graph = b.finish()
    be = _backend(api)
    weights = {}
    for name, qtype in zip(("wg", "wu"), types):
        be.load_raw(name, (F, K), qtype, blocks[name])
        weights[name] = gguf_dequantize(blocks[name], GGMLQuantizationType[qtype])
    if bias:
        weights |= {"bg": _f(F), "bu": _f(F)}
        be.load_arrays({"bg": weights["bg"], "bu": weights["bu"]})
    prog = be.compile(graph)
    assert [k.name for k in prog.sources] == ["quantize_q8_1", "ffn_gate_up:gemm_q8"]
    feeds = {"x": _f(S, K) * 0.002}  # random blocks: weights in the tens (Q6_K's hundreds)
    ref = run_plain(prog.graph, weights, feeds)[graph.outputs[0]]
    got = prog.run(feeds)[graph.outputs[0]]
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("parts", [(37, 13, 13), (40, 23)])
def test_int8_gemm_stacked_outputs_side_by_side(api, parts, monkeypatch):
    """A stacked matmul on the int8 GEMM whose outputs lie next to each other in the arena,
    7 rows in a tile of 32 and a partial column tile: nothing a workgroup computes past the
    edge may land in a neighbour (PoCL 3.1 runs the guarded-off stores of a tiled GEMM; the
    GEMM clamps them onto the last row and column, whose values they are)."""
    _int8_gemm(monkeypatch)
    S, K = 7, 512
    blocks = {f"w{i}": _random_blocks("Q4_0", n, K) for i, n in enumerate(parts)}
    b = GraphBuilder("stack")
    x = b.input("x", (S, K), "f32")
    for i, n in enumerate(parts):
        b.output(b.op("matmul", x, b.weight(f"w{i}", (n, K), "Q4_0")))
    graph = b.finish()
    be = _backend(api)
    for name, raw in blocks.items():
        be.load_raw(name, raw.shape[:1] + (K,), "Q4_0", raw)
        be._host[name] = raw  # what load_arrays keeps, in the file's form (stacked from it)
    prog = be.compile(graph)
    assert [k.name for k in prog.sources] == ["quantize_q8_1", "stacked_matmul:gemm_q8"]
    feeds = {"x": _f(S, K)}
    w = {k: gguf_dequantize(v, GGMLQuantizationType.Q4_0) for k, v in blocks.items()}
    ref = run_plain(prog.graph, w, feeds)
    got = prog.run(feeds)
    for o in graph.outputs:
        assert np.abs(got[o] - ref[o]).max() <= 1e-5 * np.abs(ref[o]).max(), o


def test_prefill_graph_runs_every_matmul_on_the_int8_gemm(api, monkeypatch):
    """A prefill of a tiny Llama with Q4_0 and Q8_0 weights under GEMM_INT8="always": the
    quantize pass puts a one-level quantize before each distinct x of the Q/K/V stack, o and
    the fused gate/up, all of them the int8 GEMM, no fusion folding them; the logits as the
    plain evaluation's of the pass's own graph. Decode keeps its GEMVs on f32 x."""
    from drift.formats.quants import quantize as drift_quantize

    _int8_gemm(monkeypatch)
    cfg = tiny_config("llama")
    w = tiny_weights(cfg)
    be = _backend(api)
    raw, dtypes = {}, {}
    for i, (k, v) in enumerate(sorted(w.items())):
        if v.ndim == 2 and v.shape[1] % 32 == 0 and "embd" not in k:
            qt = ("Q4_0", "Q8_0")[i % 2]
            raw[k] = (qt, drift_quantize(v.astype(np.float32), GGMLQuantizationType[qt]))
            dtypes[k] = qt
        else:
            dtypes[k] = "f32"
    S = 12
    g = build_graph(cfg, dtypes, S, 16)
    for k, (qt, v) in raw.items():
        be.load_raw(k, g.tensors[k].shape, qt, v)
        be._host[k] = v  # what load_arrays keeps, in the file's form (stacked from it)
    be.load_arrays({k: v for k, v in w.items() if k not in raw})
    prog = be.compile(g)
    names = [k.name for k in prog.sources]
    for want in ("stacked_matmul:gemm_q8", "ffn_gate_up:gemm_q8", "matmul:gemm_q8"):
        assert want in names, names
    # ffn_down (K = 48: no whole blocks, an f32 weight) keeps f32 x and its GEMM
    # (PoCL's block walk, lavapipe's tiled GEMM); the LM head on the last row is a GEMV
    f32_x = [k for k in names if "matmul" in k and not k.endswith((":gemm_q8", ":gemv"))]
    assert len(f32_x) == cfg.n_layers and len(set(f32_x)) == 1, names
    assert names.count("quantize_q8_1") == 3 * cfg.n_layers and "quantize_q8" not in names
    feeds = {"tokens": rng.integers(0, cfg.vocab_size, S).astype(np.int32),
             "positions": np.arange(S, dtype=np.int32)}
    got = prog.run(feeds)[g.outputs[0]]
    deq = {k: gguf_dequantize(v, GGMLQuantizationType[qt]).reshape(w[k].shape).astype(np.float32)
           for k, (qt, v) in raw.items()}
    ref = run_plain(prog.graph, {**w, **deq}, feeds)[g.outputs[0]]
    # x's rounding to its blocks' grid may go the other way on a value the device computed
    # 1e-6 off: a level (1/127 of a block's largest) on that element
    assert np.abs(got - ref).max() <= 1e-2 * max(1.0, np.abs(ref).max())
    decode = be.compile(build_graph(cfg, dtypes, 1, 16))
    assert not any("q8" in k.name for k in decode.sources)


def test_int8_gemm_setting(api, monkeypatch):
    """DRIFT_INT8_GEMM=0/1 decides where set; else GEMM_INT8: "never" (the default until
    measured on a GPU) keeps the prefill graph's x f32; "auto" takes the int8 GEMM on a GPU
    whose renderer takes tiled GEMMs and has no matrix units spelled (so not on lavapipe or
    PoCL); another value is refused with one line."""
    from drift.backends.kernels import templates
    from drift.backends.kernels.gpu import int8_gemm_choice
    from drift.errors import InvalidArgumentError

    be = _backend(api)
    assert templates.GEMM_INT8 == "never" and not be.capabilities().int8_gemm
    monkeypatch.setattr(templates, "GEMM_INT8", "auto")
    r = be.rt.renderer
    assert int8_gemm_choice(r, False) == (r.tiled_gemm and not r.mma)
    assert not int8_gemm_choice(r, True) and not be.capabilities().int8_gemm  # a CPU driver
    monkeypatch.setenv("DRIFT_INT8_GEMM", "1")  # the environment's word first
    assert be.capabilities().int8_gemm
    monkeypatch.setenv("DRIFT_INT8_GEMM", "0")
    monkeypatch.setattr(templates, "GEMM_INT8", "always")
    assert not be.capabilities().int8_gemm
    monkeypatch.setenv("DRIFT_INT8_GEMM", "on")
    with pytest.raises(InvalidArgumentError, match="DRIFT_INT8_GEMM='on': 0 or 1"):
        be.capabilities()
    monkeypatch.delenv("DRIFT_INT8_GEMM")
    monkeypatch.setattr(templates, "GEMM_INT8", "yes")
    with pytest.raises(InvalidArgumentError, match="GEMM_INT8 'yes'"):
        be.capabilities()


def test_a_bad_int8_gemm_setting_is_one_line_from_the_cli(api, smollm2_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, DRIFT_INT8_GEMM="on")
    run = subprocess.run([sys.executable, "-m", "drift", "run", str(smollm2_path), "--device",
                          api, "--raw", "-n", "2", "Hello"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("drift")]
    assert lines == ["drift: error: DRIFT_INT8_GEMM='on': 0 or 1"], run.stderr


@pytest.mark.slow
def test_smollm2_greedy_on_the_int8_gemm(api, smollm2_path, smollm2_cpu, monkeypatch):
    """The reference model with prefill's GEMMs on int8 dot products (GEMM_INT8="always";
    the 6-token prompt takes the GEMM; its Q4_1 and Q8_0 weights are the GEMM's): the same
    32 tokens as the cpu backend. x in one level moves the prompt's logits by ~4 % of the
    largest (lavapipe), as llama.cpp's MMQ on its q8_1 blocks would; decode is on f32 x."""
    _int8_gemm(monkeypatch)
    ref_tokens, ref_logits = smollm2_cpu
    tokens, logits = _greedy(smollm2_path, api, 32)
    assert tokens == ref_tokens
    rel = np.abs(logits - ref_logits).max(axis=1) / np.abs(ref_logits).max(axis=1)
    assert rel.max() <= 8e-2


@pytest.mark.slow
def test_gemma3_greedy_on_the_int8_gemm(api, gemma3_path, monkeypatch):
    """The Q4_K_M reference model with prefill's Q4_K, Q6_K and Q8_0 matmuls on the int8 GEMM
    (its Q5_0 ones keep f32 x): the cpu backend's 4 greedy tokens; the logits within
    x's one-level rounding through 18 layers (3-7 % of the largest seen on lavapipe, whose
    cache the int8 prefill wrote)."""
    ref_tokens, ref_logits = _greedy(gemma3_path, "cpu", 4)
    _int8_gemm(monkeypatch)
    tokens, logits = _greedy(gemma3_path, api, 4)
    assert tokens == ref_tokens
    rel = np.abs(logits - ref_logits).max(axis=1) / np.abs(ref_logits).max(axis=1)
    assert rel.max() <= 0.15


def test_int8_choice_refuses_a_bad_value(api, monkeypatch):
    from drift.errors import InvalidArgumentError

    monkeypatch.setenv("DRIFT_INT8_DOT", "yes")
    with pytest.raises(InvalidArgumentError, match="DRIFT_INT8_DOT"):
        _backend(api)


def test_wgsl_runtime_checks_setting(monkeypatch):
    """WGSL kernels are made without naga's run-time checks (wgpu-native's trusted modules)
    unless DRIFT_WGSL_CHECKS=1: both give numpy's answer on a ragged tiled GEMM and a GEMV
    (the templates' own clamps keep every index in bounds); another value is refused with
    one line."""
    from drift.backends.kernels import templates
    from drift.errors import InvalidArgumentError

    S, N, K = 37, 70, 96
    x, w = _f(S, K), _f(N, K)
    b = GraphBuilder("checks")
    b.output(b.op("matmul", b.input("x", (S, K), "f32"), b.weight("w", (N, K), "f32")))
    graph = b.finish()
    assert S > templates.GEMV_ROWS
    be = _backend("webgpu")  # (skips without an adapter, before wgpu is imported here)
    from wgpu.backends.wgpu_native import _api

    trusted = []
    make = _api.libf.wgpuDeviceCreateShaderModuleTrusted
    monkeypatch.setattr(_api.libf, "wgpuDeviceCreateShaderModuleTrusted",
                        lambda *a: trusted.append(a[2]) or make(*a))
    for checks in ("0", "1"):
        monkeypatch.setenv("DRIFT_WGSL_CHECKS", checks)
        trusted.clear()
        be = _backend("webgpu")
        be.load_arrays({"w": w})
        got = be.compile(graph).run({"x": x})[graph.outputs[0]]
        ref = x.astype(np.float64) @ w.astype(np.float64).T
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max(), checks
        # every kernel without checks (0: WGPUShaderRuntimeChecks_None), or none trusted
        assert trusted and set(trusted) == {0} if checks == "0" else not trusted
    monkeypatch.setenv("DRIFT_WGSL_CHECKS", "off")
    be = _backend("webgpu")
    be.load_arrays({"w": w})
    with pytest.raises(InvalidArgumentError, match="DRIFT_WGSL_CHECKS='off': 0 or 1"):
        be.compile(graph).run({"x": x})


def test_webgpu_needs_the_native_calls_it_makes(monkeypatch):
    """The WebGPU runtime calls wgpu-native's C functions itself (submission indices, maps,
    the encoding loop): a wgpu whose library lacks one is not offered as a device."""
    from drift.backends.webgpu import WebGPUBackend

    if not WebGPUBackend.available():
        pytest.skip("no webgpu device (scripts/test.sh installs lavapipe)")
    from wgpu.backends.wgpu_native import _api

    class Without:  # the library as a wgpu without submission indices would have it
        def __getattr__(self, name):
            if name == "wgpuQueueSubmitForIndex":
                raise AttributeError(name)
            return getattr(_api.lib, name)

    monkeypatch.setattr(_api, "lib", Without())
    assert not WebGPUBackend.available()


def test_greedy_submit_after_the_call_ran(api):
    """`GreedySampler.submit` on logits whose call is no longer pending (something ran it
    first): the host's argmax of them, written into the next program's token input, and
    that program then runs on it as on the same token fed from the host."""
    from drift.backends.kernels.gpu import GreedySampler

    cfg = tiny_config("llama")
    w = tiny_weights(cfg)
    be = _backend(api)
    be.load_arrays(w)
    prog = be.compile(build_graph(cfg, {k: "f32" for k in w}, 1, 16))
    logits = prog.run({"tokens": np.array([3], np.int32),
                       "positions": np.array([0], np.int32)}, to_host=False)["logits"]
    be.flush()  # the call runs before the sampler's kernel could join it
    want = int(np.argmax(np.asarray(logits)))  # (before the token input is written: the
    pick = GreedySampler(be)  # arena may hold both in one place)
    assert pick.collect(pick.submit(logits, prog)) == want
    fed = prog.run({"positions": np.array([1], np.int32)}, fed=frozenset({"tokens"}))
    again = prog.run({"tokens": np.array([want], np.int32),
                      "positions": np.array([1], np.int32)})
    np.testing.assert_array_equal(fed["logits"], again["logits"])
