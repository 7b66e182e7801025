"""A store in a local directory, with atomic writes (temp file + fsync + rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fedlora.store.base import StoreError, check_key


class LocalStore:
    """Keys are paths under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if self.root.resolve() not in path.parents:  # a symlink inside the root pointing out of it
            raise StoreError(f"key {key!r} escapes the store root {self.root}", kind="invalid key")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise StoreError(f"{self.uri(key)}: not found", kind="not found") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        check_key(prefix, prefix=True)
        base = self.root
        if not base.exists():
            return []
        keys = (p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))
        return sorted(k for k in keys if k.startswith(prefix))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def check(self) -> None:
        """A directory is always reachable; it is created on the first write."""

    def local_path(self, key: str) -> Path | None:
        return self._path(key) if key else self.root.resolve()

    def uri(self, key: str) -> str:
        return str(self.root / key)
