"""Architectures, looked up by the GGUF `general.architecture` key.

Each module has the same contract: `ARCHS` (the keys it serves) and
`config_from_metadata(metadata, tensor_names, source) -> ModelConfig`. The graph itself comes
from the shared decoder builder, which every supported architecture is a variant of.
"""

from __future__ import annotations

from types import ModuleType

from drift.errors import ModelFileError, UnsupportedError
from drift.models import gemma, llama, qwen2
from drift.models.config import ModelConfig
from drift.models.decoder import build_graph, expected_tensors

_MODULES: tuple[ModuleType, ...] = (llama, qwen2, gemma)
ARCHITECTURES: dict[str, ModuleType] = {a: m for m in _MODULES for a in m.ARCHS}


def arch_module(arch: str, source: str = "model") -> ModuleType:
    if arch not in ARCHITECTURES:
        raise UnsupportedError(
            f"{source}: architecture {arch!r} is not supported "
            f"(supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    return ARCHITECTURES[arch]


def config_from_gguf(metadata: dict, tensor_shapes: dict[str, tuple[int, ...]], source: str) -> ModelConfig:
    """The config of a GGUF file, checked against the tensors it holds (names and shapes)."""
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFileError(f"{source}: no general.architecture key")
    cfg = arch_module(arch, source).config_from_metadata(metadata, set(tensor_shapes), source)
    expected = expected_tensors(cfg)
    for name, shape in expected.items():
        if name not in tensor_shapes:
            raise ModelFileError(f"{source}: tensor {name} is missing for a {arch} model")
        if tuple(tensor_shapes[name]) != shape:
            raise ModelFileError(
                f"{source}: tensor {name} has shape {tensor_shapes[name]}, expected {shape}"
            )
    unused = sorted(set(tensor_shapes) - set(expected))
    if unused:
        raise ModelFileError(
            f"{source}: {len(unused)} tensors a {arch} model does not use ({', '.join(unused[:3])}"
            f"{', ...' if len(unused) > 3 else ''}): not a {arch} file, or a variant drift lacks"
        )
    return cfg


__all__ = ["ARCHITECTURES", "ModelConfig", "arch_module", "build_graph", "config_from_gguf",
           "expected_tensors"]
