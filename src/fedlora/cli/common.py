"""What every ``fedlora`` command shares: the stderr console and the one way to stop with an error."""

from __future__ import annotations

import sys
from typing import NoReturn

from rich.console import Console

__all__ = ["console", "fail"]

console = Console(stderr=True)
"""Progress, logs and errors go to stderr; stdout carries only a command's result."""


def fail(message: object, code: int) -> NoReturn:
    """Print ``error: message`` to stderr and exit with ``code`` (1: a failure, 2: a bad request or setup)."""
    console.print(f"[red]error:[/] {message}")
    sys.exit(code)
