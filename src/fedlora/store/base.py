"""The store seam: a key/value byte store with the run layout on top.

Run layout (shared by the local directory store and the S3 store)::

    config.yaml
    rounds/0000/global/meta.json                            round 0: the seeded initial adapter (a spec)
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
    """A store operation failed; the message names the key.

    Attributes:
        kind: What went wrong, without key, path or bucket (``"not found"``, ``"access denied"``,
            ``"unavailable"``, ``"invalid key"``, ...): the only part of a store error that may leave a bank.
    """

    def __init__(self, message: str, *, kind: str = "failed") -> None:
        super().__init__(message)
        self.kind = kind


class IntegrityError(StoreError):
    """Stored bytes do not match their recorded sha256."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="integrity check failed")


_BAD_SEGMENTS = frozenset({"", ".", ".."})


def check_key(key: str, *, prefix: bool = False) -> str:
    """Return ``key`` when it stays inside its store; raise :class:`StoreError` otherwise.

    A key is ``/``-separated segments, none of them empty, ``.`` or ``..``, with no backslash or
    NUL: then every store (a directory, an S3 prefix, a :class:`PrefixedStore` view) maps it under
    its own root, and a listing of a prefix sees every key written under that prefix. A list
    prefix (``prefix=True``) may be empty or end with ``/``.

    Raises:
        StoreError: (kind ``"invalid key"``) the key could leave its prefix or alias another key.
    """
    body = key[:-1] if prefix and key.endswith("/") else key
    if prefix and body == "":
        return key
    if "\\" in key or "\x00" in key or any(s in _BAD_SEGMENTS for s in body.split("/")):
        raise StoreError(
            f"store key {key[:200]!r} escapes or aliases its prefix: "
            "a key is plain relative segments (no '', '.' or '..', no backslash)",
            kind="invalid key",
        )
    return key


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

    def _key(self, key: str, *, prefix: bool = False) -> str:
        return f"{self.prefix}/{check_key(key, prefix=prefix)}"

    def put(self, key: str, data: bytes) -> None:
        self.store.put(self._key(key), data)

    def get(self, key: str) -> bytes:
        return self.store.get(self._key(key))

    def exists(self, key: str) -> bool:
        return self.store.exists(self._key(key))

    def list(self, prefix: str) -> list[str]:
        cut = len(self.prefix) + 1
        return [k[cut:] for k in self.store.list(self._key(prefix, prefix=True))]

    def delete(self, key: str) -> None:
        self.store.delete(self._key(key))

    def check(self) -> None:
        self.store.check()

    def local_path(self, key: str) -> Path | None:
        return self.store.local_path(self._key(key, prefix=True))

    def uri(self, key: str) -> str:
        return self.store.uri(self._key(key, prefix=True))
