"""Decode matmuls on int8 x, where the device has fast int8 dot products.

    y = matmul(x, W)         => xq = quantize_q8(x);  y = matmul(xq, W)

At decode a matmul is a GEMV that streams its weight once; on a device with int8 dot products
(`Capabilities.int8_dot`) it runs fastest on x as int8 blocks (`drift/ir/ops_quant.py`) against
the weight's own integer quants, rescaled per block. One `quantize_q8` is inserted per x, in
front of every matmul (or stacked matmul) whose weight type the backend's int8 GEMV reads
(`int8_weights`) and whose x is one row with whole blocks; the fusion rules that follow
(`fuse_quantize.py`) fold it into the op that produced x. This pass changes numerics (x on
a 2^-15 grid of its block's largest element), so it runs only where the backend asks for it,
fusion on or off.
"""

from __future__ import annotations

from drift.ir import Graph, Node, Role, TensorSpec
from drift.ir.ops_quant import Q8, QBLOCK
from drift.passes.context import PassContext
from drift.passes.pipeline import Pass

MATMULS = ("matmul", "stacked_matmul", "ffn_gate_up")  # the last: the portable backends'


def _reads_q8(n: Node, graph: Graph, caps) -> bool:
    if n.op not in MATMULS:
        return False
    x = graph.tensors[n.inputs[0]]
    n_weights = 2 if n.op == "ffn_gate_up" else n.attrs.get("n", 1)
    ws = [graph.tensors[w] for w in n.inputs[1 : 1 + n_weights]]
    K = x.shape[-1]
    return (x.dtype == "f32" and x.role != Role.WEIGHT and x.numel == K and K % QBLOCK == 0
            and all(w.dtype in caps.int8_weights and len(w.shape) == 2 for w in ws))


def run(graph: Graph, ctx: PassContext) -> Graph:
    if not ctx.caps.int8_dot or int(graph.meta.get("n_tokens", 0)) != 1:
        ctx.log.append("not asked for" if not ctx.caps.int8_dot else "decode only")
        return graph
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(graph.nodes):
        if _reads_q8(n, graph, ctx.caps):
            readers.setdefault(n.inputs[0], []).append(i)
    tensors = dict(graph.tensors)
    quantized: dict[str, str] = {}  # x -> its q8 tensor
    insert_before: dict[int, Node] = {}
    for x, idx in readers.items():
        q = f"{x}.q8"
        tensors[q] = TensorSpec(q, graph.tensors[x].shape, Q8, Role.ACTIVATION)
        quantized[x] = q
        insert_before[idx[0]] = Node("quantize_q8", (x,), (q,))
    rewired = {i for idx in readers.values() for i in idx}
    nodes: list[Node] = []
    for i, n in enumerate(graph.nodes):
        if i in insert_before:
            nodes.append(insert_before[i])
        if i in rewired:
            n = Node(n.op, (quantized[n.inputs[0]],) + n.inputs[1:], n.outputs, n.attrs)
        nodes.append(n)
    ctx.log.append(f"{len(rewired)} matmuls on int8 x, {len(quantized)} quantize_q8")
    return Graph(graph.name, tensors, nodes, list(graph.inputs), list(graph.outputs),
                 dict(graph.meta))


PASS = Pass("quantize_activations", run)
