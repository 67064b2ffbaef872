"""What `drift analyze MODEL` analyses: a GGUF file's real shapes and types, or a published
shape (a preset) with the types a quantization recipe would give it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from drift.analysis import quant as quant_mod
from drift.errors import InvalidArgumentError
from drift.models import ModelConfig, config_from_gguf
from drift.models.presets import PRESETS

DEFAULT_PRESET_QUANT = "Q4_K_M"  # what most people download


class UnknownModelError(InvalidArgumentError):
    """The model argument is neither a file, nor a preset, nor a name the hub knows."""


@dataclass(frozen=True)
class ModelSpec:
    label: str  # what tables and plots call it
    config: ModelConfig
    weight_dtypes: dict[str, str]
    quant: str  # the recipe name, or the file's type ("MOSTLY_Q4_1")
    path: Path | None  # the GGUF file, None for a preset


def _file_type(md: dict) -> str:
    from gguf import LlamaFileType

    ft = md.get("general.file_type")
    try:
        return LlamaFileType(int(ft)).name.removeprefix("MOSTLY_")
    except (TypeError, ValueError):
        return "file"


def from_gguf(path: str | os.PathLike, quant: str | None = None) -> ModelSpec:
    """A file's config and per-tensor types; `quant` re-types it as that recipe would."""
    from drift.formats.gguf import open_gguf
    from drift.runtime.engine import gguf_dtype

    path = Path(path)
    f = open_gguf(path)
    shapes = {n: t.shape for n, t in f.tensors.items()}
    cfg = config_from_gguf(f.metadata, shapes, path.name)
    if quant:
        return ModelSpec(path.stem, cfg, quant_mod.weight_dtypes(cfg, quant),
                         quant_mod.recipe(quant).name, path)
    dtypes = {n: gguf_dtype(t.qtype.name) for n, t in f.tensors.items()}
    return ModelSpec(path.stem, cfg, dtypes, _file_type(f.metadata), path)


def from_preset(name: str, quant: str | None = None) -> ModelSpec:
    from drift.models.presets import preset

    cfg = preset(name).config()
    r = quant_mod.recipe(quant or DEFAULT_PRESET_QUANT)
    return ModelSpec(name, cfg, quant_mod.weight_dtypes(cfg, r.name), r.name, None)


def resolve(model: str | None, quant: str | None = None) -> ModelSpec:
    """A path, a preset name, or (last) whatever `drift.hub.resolve_model` can fetch.

    Presets win over the hub's short names: analysis needs shapes, never a download.
    """
    if not model:
        raise InvalidArgumentError("name a model: a .gguf path or a preset "
                                   f"({', '.join(PRESETS)})")
    if quant:
        quant_mod.recipe(quant)  # a bad --quant fails before any file is opened
    if os.path.exists(model) or model.endswith(".gguf"):
        return from_gguf(model, quant)
    if model.lower() in PRESETS:
        return from_preset(model.lower(), quant)
    try:
        from drift.hub import resolve_model
    except ImportError:
        resolve_model = None
    if resolve_model is None or "/" not in model:
        raise UnknownModelError(
            f"unknown model {model!r}: not a file, and not a preset "
            f"(known: {', '.join(PRESETS)})"
        )
    return from_gguf(resolve_model(model, progress=False), quant)
