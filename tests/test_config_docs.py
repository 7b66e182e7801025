"""docs/configuration.md is generated from the config's own field descriptions and must not be stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fedlora.config import describe_fields

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gen_config_docs.py"


def test_the_committed_configuration_reference_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr


def test_every_field_and_its_description_is_on_the_page() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for name, _default, description in describe_fields():
        if name == "federation.banks":
            continue
        assert f"| `{name}`" in page, name
        assert " ".join(description.split()).replace("|", "\\|") in page, name
    assert "| `federation.banks[].batch_size` |" in page  # the per-bank fields too
