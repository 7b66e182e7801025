"""The store seam: a key/value byte store with the run layout on top.

Run layout (shared by the local directory store and the S3 store)::

    config.yaml
    rounds/0000/global/{adapter.safetensors, meta.json}     initial global adapter
    rounds/NNNN/updates/<bank>/{adapter.safetensors, meta.json}
    rounds/NNNN/global/{adapter.safetensors, meta.json}
    rounds/NNNN/MANIFEST.json                               written last: the round is committed
    privacy/<bank>.json                                     the bank's published privacy report
                                                            (its ledger lives in the bank's own store)
    final/{adapter.safetensors, meta.json}, final/peft/     final adapter
    summary.json, report/
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from fedlora.errors import FedLoRAError


class StoreError(FedLoRAError, RuntimeError):
    """A store operation failed; the message names the key."""


class IntegrityError(StoreError):
    """Stored bytes do not match their recorded sha256."""


class Store(Protocol):
    """A byte store addressed by ``/``-separated keys."""

    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key`` atomically (readers see all of it or none)."""
        ...

    def get(self, key: str) -> bytes:
        """Read ``key``; raises :class:`StoreError` when it does not exist."""
        ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Keys that start with ``prefix``, sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key`` (no error when it does not exist)."""
        ...

    def check(self) -> None:
        """Fail early (before anything is written) when the store is unreachable or access is denied."""
        ...

    def local_path(self, key: str) -> Path | None:
        """Where ``key`` lives on this machine's file system, or None for a remote store."""
        ...

    def uri(self, key: str) -> str:
        """A human-readable location of ``key`` (path or URL)."""
        ...


def round_prefix(round_index: int) -> str:
    """Key prefix of a round (``rounds/0003``)."""
    return f"rounds/{round_index:04d}"


def update_prefix(round_index: int, bank: str) -> str:
    """Key prefix of one bank's update in a round."""
    return f"{round_prefix(round_index)}/updates/{bank}"


def global_prefix(round_index: int) -> str:
    """Key prefix of the global adapter after a round (round 0 = initial)."""
    return f"{round_prefix(round_index)}/global"


class PrefixedStore:
    """A view of ``store`` whose keys all live under ``prefix/`` (e.g. one bank's ledger inside a run)."""

    def __init__(self, store: Store, prefix: str) -> None:
        self.store = store
        self.prefix = prefix.strip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}"

    def put(self, key: str, data: bytes) -> None:
        self.store.put(self._key(key), data)

    def get(self, key: str) -> bytes:
        return self.store.get(self._key(key))

    def exists(self, key: str) -> bool:
        return self.store.exists(self._key(key))

    def list(self, prefix: str) -> list[str]:
        cut = len(self.prefix) + 1
        return [k[cut:] for k in self.store.list(self._key(prefix))]

    def delete(self, key: str) -> None:
        self.store.delete(self._key(key))

    def check(self) -> None:
        self.store.check()

    def local_path(self, key: str) -> Path | None:
        return self.store.local_path(self._key(key))

    def uri(self, key: str) -> str:
        return self.store.uri(self._key(key))
