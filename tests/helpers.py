"""Small helpers shared by the test modules (not a test file)."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from fedlora.cli import main


def tiny_overrides_for(out_dir: Path, run: str = "test") -> list[str]:
    """A fast federation: tiny random model, 2 rounds, 3 banks on a 300-row sample, no tracking."""
    return [
        "model.name=tiny-bert",
        "federation.rounds=2",
        "data.max_rows=300",
        "training.local_steps=2",
        "training.batch_size=16",
        "tracking.enabled=false",
        f"output.dir={out_dir}",
        f"output.run_name={run}",
    ]


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
