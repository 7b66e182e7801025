"""Small helpers shared by the test modules (not a test file)."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from click.testing import CliRunner

from fedlora.cli import main
from fedlora.config import Config, load_config
from fedlora.runtime import Runtime


def tiny_overrides_for(out_dir: Path, run: str = "test") -> list[str]:
    """A fast federation: tiny random model, 2 rounds, 3 banks on a 300-row German Credit sample, no tracking.

    German Credit and a text-only head, not the embedded default (Taiwan with its columns), so these tests keep
    their small, fixed layout; ``tests/test_config.py`` checks the default itself.
    """
    return [
        "data.dataset=german_credit",
        "model.schema_features=false",
        "model.name=tiny-bert",
        "federation.rounds=2",
        "data.max_rows=300",
        "training.local_steps=2",
        "training.batch_size=16",
        "tracking.enabled=false",
        f"output.dir={out_dir}",
        f"output.run_name={run}",
    ]


def randomize_trainable(model: torch.nn.Module, std: float = 0.2) -> None:
    """Draw every trainable parameter from N(0, std²): B = 0 and a zero head give zero LoRA gradients."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, std)


def tiny_runtime(out_dir: Path, *extra: str) -> Runtime:
    """A runtime on the tiny random encoder and a 200-row sample (model, data and caches load on use)."""
    config = load_config(
        None,
        [
            "data.dataset=german_credit",
            "model.schema_features=false",
            "model.name=tiny-bert",
            "data.max_rows=200",
            "tracking.enabled=false",
            f"output.dir={out_dir}",
            *extra,
        ],
    )
    return Runtime(config)


def set_args(overrides: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]``."""
    return [arg for o in overrides for arg in ("--set", o)]


def run_cli(args: list[str]) -> tuple[int, str]:
    """Run ``fedlora ARGS`` in-process; return the exit code and the output."""
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return result.exit_code, result.output


class JsonHandler(BaseHTTPRequestHandler):
    """Base of the in-process HTTP fakes: quiet, answers JSON, sends every method to ``_route``."""

    def _route(self, method: str) -> None:
        raise NotImplementedError

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FakeKfpOutput:
    """Stands in for KFP's Output[Metrics] / Output[ClassificationMetrics] / Output[Markdown]."""

    def __init__(self, path: Path) -> None:
        self.metadata: dict[str, Any] = {}
        self.roc: tuple[list[float], list[float], list[float]] | None = None
        self.path = str(path)

    def log_metric(self, metric: str, value: float) -> None:
        self.metadata[metric] = value

    def log_roc_curve(self, fpr: list[float], tpr: list[float], threshold: list[float]) -> None:
        self.roc = (fpr, tpr, threshold)


def tiny_pipeline_config(tmp_path: Path, banks: list[str], *extra: str) -> Config:
    """The tiny federation of the pipeline tests: a shared store under ``tmp_path``, no tracking."""
    listed = ", ".join(f"{{name: {b}}}" for b in banks)
    overrides = [o for o in tiny_overrides_for(tmp_path / "runs") if not o.startswith("output.run_name")]
    return load_config(None, [*overrides, f"federation.banks=[{listed}]", f"store.uri={tmp_path / 'store'}", *extra])


# --- a bank's Job on a two-bank consortium (tests of the bank's guarantee) ---------------------

BANK_TEST_POLICY = json.dumps({"minNoiseMultiplier": 0.0})
"""The tiny test schedule (2 rounds x 2 steps at ε=8) calibrates to σ < 0.5, the default policy's floor."""


def german_rows(path: Path, rows: int = 200, start: int = 0) -> Path:
    """Write ``rows`` rows of the bundled German Credit file, from ``start``, to ``path`` (a bank's file)."""
    with resources.files("fedlora.data").joinpath("german_credit.csv").open("r", encoding="utf-8") as f:
        pd.read_csv(f, dtype=object).iloc[start : start + rows].to_csv(path, index=False)
    return path


def bank_consortium(tmp_path: Path, tiny_overrides: list[str], *extra: str) -> Config:
    """A two-bank run ``r1`` (bank-a reads its own file) initialized in the exchange ``tmp_path/exchange``."""
    from fedlora.federation import initialize

    config = load_config(
        None,
        [
            *tiny_overrides,
            "federation.banks=[{name: bank-a, data: /data/only-bank-a-sees-this.csv}, {name: bank-b}]",
            f"store.uri={tmp_path / 'exchange'}",
            *extra,
        ],
    )
    initialize(config, run="r1", runtime=Runtime(config))
    return config


def bank_job(config: Config, tmp_path: Path, *, round_index: int = 1, run: str = "r1", **env: str) -> dict[str, Any]:
    """Run bank-a's Job command; return its outcome (the last stdout line) plus the exit code and output."""
    from fedlora.config import config_to_yaml

    base = {
        "FEDLORA_REQUEST_CONFIG": config_to_yaml(config),
        "FEDLORA_BANK_DATA": str(german_rows(tmp_path / "credit.csv")),
        "FEDLORA_BANK_LEDGER": str(tmp_path / "bank-a-ledger"),
        "FEDLORA_BANK_POLICY": BANK_TEST_POLICY,
    }
    result = CliRunner().invoke(
        main,
        ["train-bank", "--run", run, "--bank", "bank-a", "--round", str(round_index)],
        env=base | env,
    )
    last = result.output.strip().splitlines()[-1] if result.output.strip() else ""
    outcome = json.loads(last) if last.startswith("{") else {}
    return {"exit_code": result.exit_code, "output": result.output, **outcome}


def text_task_overrides(root: Path) -> list[str]:
    """A small text-task run (bundled TFNS, tiny-llama, 240 rows, one round of 2 steps) writing under ``root``."""
    return [
        "data.dataset=tfns",
        "model.name=tiny-llama",
        "model.max_length=96",
        "data.max_rows=240",
        "training.batch_size=16",
        "training.local_steps=2",
        "training.learning_rate=0.5",
        "federation.rounds=1",
        "tracking.enabled=false",
        f"output.dir={root}",
    ]
