"""Graphs of ops over logical tensors.

A `Graph` is a list of `Node`s in execution order over named `TensorSpec`s. Models build one
graph per stage (prefill of S tokens, decode of one token); passes rewrite graphs; backends
compile them. `GraphBuilder` gives model code a readable way to write one:

    x = b.op("rms_norm", h, b.weight("blk.0.attn_norm.weight"), eps=1e-5)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from drift.ir.tensor import Role, TensorSpec


class Attrs(dict):
    """Op attributes: a dict that can be hashed, so frozen nodes can be too."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))


@dataclass(frozen=True)
class Node:
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Attrs = field(default_factory=Attrs)

    def __str__(self) -> str:
        attrs = ", ".join(f"{k}={v}" for k, v in self.attrs.items())
        attrs = f" {{{attrs}}}" if attrs else ""
        return f"{', '.join(self.outputs)} = {self.op}({', '.join(self.inputs)}){attrs}"


@dataclass
class Graph:
    name: str
    tensors: dict[str, TensorSpec]
    nodes: list[Node]
    inputs: list[str]  # fed each call, in this order
    outputs: list[str]  # returned each call
    meta: dict[str, Any] = field(default_factory=dict)  # stage, n_tokens, model config ...

    def spec(self, name: str) -> TensorSpec:
        return self.tensors[name]

    def by_role(self, role: Role) -> list[TensorSpec]:
        return [t for t in self.tensors.values() if t.role == role]

    def producers(self) -> dict[str, Node]:
        return {out: n for n in self.nodes for out in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {name: [] for name in self.tensors}
        for n in self.nodes:
            for i in n.inputs:
                users[i].append(n)
        return users

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def validate(self) -> None:
        """Every input defined before use, each tensor written once, shapes as the registry says."""
        from drift.ir.ops import infer

        defined = {
            t.name
            for t in self.tensors.values()
            if t.role in (Role.WEIGHT, Role.INPUT) or (t.role == Role.KV and t.name == storage_name(t.name))
        }
        for n in self.nodes:
            for i in n.inputs:
                assert i in defined, f"{n}: input {i} used before it is defined"
            inferred = infer(n.op, [self.tensors[i] for i in n.inputs], n.attrs)
            for out, (shape, dtype) in zip(n.outputs, inferred, strict=True):
                spec = self.tensors[out]
                assert spec.shape == shape and spec.dtype == dtype, f"{n}: {spec} != {shape} {dtype}"
                assert out not in defined, f"{n}: {out} written twice"
                defined.add(out)
        for o in self.outputs:
            assert o in defined, f"output {o} never produced"


def storage_name(tensor: str) -> str:
    """The persistent tensor an in-place update stands for: k_cache.3'' -> k_cache.3."""
    return tensor.rstrip("'")


class GraphBuilder:
    """Appends nodes, inferring each output's shape and dtype from the op registry."""

    def __init__(self, name: str, **meta: Any):
        self.graph = Graph(name, {}, [], [], [], dict(meta))
        self._counter = 0

    def _add(self, spec: TensorSpec) -> str:
        assert spec.name not in self.graph.tensors, f"tensor {spec.name} defined twice"
        self.graph.tensors[spec.name] = spec
        return spec.name

    def input(self, name: str, shape: tuple[int, ...], dtype: str) -> str:
        self.graph.inputs.append(name)
        return self._add(TensorSpec(name, shape, dtype, Role.INPUT))

    def weight(self, name: str, shape: tuple[int, ...], dtype: str) -> str:
        if name in self.graph.tensors:  # a weight used twice (tied embeddings) is one tensor
            return name
        return self._add(TensorSpec(name, shape, dtype, Role.WEIGHT))

    def state(self, name: str, shape: tuple[int, ...], dtype: str) -> str:
        return self._add(TensorSpec(name, shape, dtype, Role.KV))

    def op(self, op: str, *inputs: str, name: str | None = None, **attrs: Any) -> str:
        outs = self.op_multi(op, *inputs, names=[name] if name else None, **attrs)
        assert len(outs) == 1
        return outs[0]

    def op_multi(self, op: str, *inputs: str, names: list[str] | None = None, **attrs: Any) -> list[str]:
        from drift.ir.ops import REGISTRY, infer

        attrs_ = Attrs(attrs)
        specs = [self.graph.tensors[i] for i in inputs]
        inferred = infer(op, specs, attrs_)
        outs = []
        for k, (shape, dtype) in enumerate(inferred):
            if REGISTRY[op].writes_state and k == 0:
                # An in-place update of a KV tensor: a new name, so the dataflow shows the order,
                # for the same storage (see `storage_name`).
                out = inputs[0] + "'"
                outs.append(self._add(TensorSpec(out, shape, dtype, Role.KV)))
                continue
            self._counter += 1
            out = names[k] if names else f"t{self._counter}_{op}"
            outs.append(self._add(TensorSpec(out, shape, dtype, Role.ACTIVATION)))
        self.graph.nodes.append(Node(op, tuple(inputs), tuple(outs), attrs_))
        return outs

    def output(self, name: str) -> None:
        spec = self.graph.tensors[name]
        if spec.role == Role.ACTIVATION:
            self.graph.tensors[name] = TensorSpec(spec.name, spec.shape, spec.dtype, Role.OUTPUT)
        self.graph.outputs.append(name)

    def finish(self) -> Graph:
        self.graph.validate()
        return self.graph
