from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from fedlora.config import Config, load_config


@pytest.fixture
def tiny_overrides(tmp_path: Path) -> list[str]:
    """A fast federation: tiny random model, 2 rounds, 3 banks on a 300-row sample."""
    return [
        "model.name=tiny-bert",
        "federation.rounds=2",
        "data.max_rows=300",
        "training.local_steps=2",
        "training.batch_size=16",
        "tracking.enabled=false",
        f"output.dir={tmp_path / 'runs'}",
        "output.run_name=test",
    ]


@pytest.fixture
def tiny_config(tiny_overrides: list[str]) -> Config:
    return load_config(None, tiny_overrides)
