"""The root of every error FedLoRA raises on purpose.

Each module keeps its own precise class (``ConfigError``, ``StoreError``, ...), also derived
from the builtin it always was (``ValueError``, ``RuntimeError``), so callers can catch
either; a shell (the CLI, a pipeline task) catches :class:`FedLoRAError` once.
"""

from __future__ import annotations


class FedLoRAError(Exception):
    """A failure FedLoRA detected and explains (bad input, a refused request, an unavailable service)."""


class FederationError(FedLoRAError, RuntimeError):
    """A step cannot go on (too few banks, an uncommitted previous round, a conflicting run).

    Here rather than in :mod:`fedlora.federation` because the modules the steps use (tracking,
    the bank's privacy side) raise it too.
    """
