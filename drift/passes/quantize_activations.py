"""Matmuls on int8 x, where the device has fast int8 dot products.

    y = matmul(x, W)         => xq = quantize_q8(x);  y = matmul(xq, W)

At decode a matmul is a GEMV that streams its weight once; on a device with int8 dot products
(`Capabilities.int8_dot`) it runs fastest on x as int8 blocks (`drift/ir/ops_quant.py`) against
the weight's own integer quants, rescaled per block. One `quantize_q8` is inserted per x, in
front of every matmul (or stacked matmul) whose weight type the backend's int8 GEMV reads
(`int8_weights`) and whose x is one row with whole blocks; the fusion rules that follow
(`fuse_quantize.py`) fold it into the op that produced x. This pass changes numerics (x on
a 2^-15 grid of its block's largest element), so it runs only where the backend asks for it,
fusion on or off.

Prefill (`Capabilities.int8_gemm`): each x of more than `gemv_rows` rows in front of a matmul
whose weight types the backend's int8 GEMM reads (`int8_gemm_weights`) gets a
`quantize_q8 {levels: 1}` (q8x1: one level, x on a 1/254 grid of its block's largest
element), which no fusion rule folds (the producers' kernels write two levels).
"""

from __future__ import annotations

from drift.ir import Graph, Node, Role, TensorSpec
from drift.ir.graph import Attrs
from drift.ir.ops_quant import Q8, Q8_1, QBLOCK
from drift.passes.context import PassContext
from drift.passes.pipeline import Pass

MATMULS = ("matmul", "stacked_matmul", "ffn_gate_up")  # the last: the portable backends'


def _reads_q8(n: Node, graph: Graph, decode: bool, caps) -> bool:
    """Whether matmul node `n` reads int8 x: at decode through the int8 GEMV (one row), in a
    prefill through the int8 GEMM (more than the GEMV's rows)."""
    if n.op not in MATMULS:
        return False
    x = graph.tensors[n.inputs[0]]
    n_weights = 2 if n.op == "ffn_gate_up" else n.attrs.get("n", 1)
    ws = [graph.tensors[w] for w in n.inputs[1 : 1 + n_weights]]
    K = x.shape[-1]
    types = caps.int8_weights if decode else caps.int8_gemm_weights
    rows_ok = x.numel == K if decode else x.numel // K > caps.gemv_rows
    return (x.dtype == "f32" and x.role != Role.WEIGHT and rows_ok and K % QBLOCK == 0
            and all(w.dtype in types and len(w.shape) == 2 for w in ws))


def run(graph: Graph, ctx: PassContext) -> Graph:
    decode = int(graph.meta.get("n_tokens", 0)) == 1
    if not (ctx.caps.int8_dot if decode else ctx.caps.int8_gemm):
        ctx.log.append("not asked for")
        return graph
    dtype, attrs = (Q8, {}) if decode else (Q8_1, {"levels": 1})
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(graph.nodes):
        if _reads_q8(n, graph, decode, ctx.caps):
            readers.setdefault(n.inputs[0], []).append(i)
    tensors = dict(graph.tensors)
    quantized: dict[str, str] = {}  # x -> its q8 tensor
    insert_before: dict[int, Node] = {}
    for x, idx in readers.items():
        q = f"{x}.q8"
        tensors[q] = TensorSpec(q, graph.tensors[x].shape, dtype, Role.ACTIVATION)
        quantized[x] = q
        insert_before[idx[0]] = Node("quantize_q8", (x,), (q,), Attrs(attrs))
    rewired = {i for idx in readers.values() for i in idx}
    nodes: list[Node] = []
    for i, n in enumerate(graph.nodes):
        if i in insert_before:
            nodes.append(insert_before[i])
        if i in rewired:
            n = Node(n.op, (quantized[n.inputs[0]],) + n.inputs[1:], n.outputs, n.attrs)
        nodes.append(n)
    ctx.log.append(f"{len(rewired)} matmuls on int8 x ({dtype}), {len(quantized)} quantize_q8")
    return Graph(graph.name, tensors, nodes, list(graph.inputs), list(graph.outputs),
                 dict(graph.meta))


PASS = Pass("quantize_activations", run)
