"""Shared fixtures: the reference model files (fetched by scripts/test.sh)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MODELS_DIR = Path(os.environ.get("DRIFT_HOME", Path.home() / ".cache" / "drift")) / "models"
SMOLLM2 = MODELS_DIR / "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3 = MODELS_DIR / "gemma-3-270m-q4_k_m.gguf"


def _model(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path.name} absent: run scripts/test.sh (drift pull) first")
    return path


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return _model(SMOLLM2)


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    return _model(GEMMA3)


@pytest.fixture(scope="session", params=["smollm2", "gemma3"])
def reference_model_path(request) -> Path:
    return _model({"smollm2": SMOLLM2, "gemma3": GEMMA3}[request.param])
