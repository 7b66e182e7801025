"""Adapters as safetensors plus JSON metadata with the file's sha256.

The metadata (bank, round, example count, ε, sha256, ...) is written after the tensors, so a
reader that finds ``meta.json`` finds a complete adapter; on read the sha256 is verified.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from fedlora.model import AdapterState
from fedlora.store.base import IntegrityError, Store, StoreError

ADAPTER_FILE = "adapter.safetensors"
META_FILE = "meta.json"


@dataclass(frozen=True)
class StoredAdapter:
    """An adapter read back from the store, integrity-checked."""

    tensors: AdapterState
    meta: dict[str, Any]


def put_json(store: Store, key: str, data: object) -> None:
    """Write ``data`` as indented JSON."""
    store.put(key, (json.dumps(data, indent=2, sort_keys=True, default=float) + "\n").encode("utf-8"))


def get_json(store: Store, key: str) -> Any:
    """Read a JSON document."""
    try:
        return json.loads(store.get(key).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{store.uri(key)}: not valid JSON: {exc}", kind="not valid JSON") from exc


def save_adapter(store: Store, prefix: str, tensors: AdapterState, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``tensors`` and ``meta`` (plus sha256 and byte size) under ``prefix``; return the metadata."""
    payload = save_safetensors({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
    full = {**meta, "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload), "file": ADAPTER_FILE}
    store.put(f"{prefix}/{ADAPTER_FILE}", payload)
    put_json(store, f"{prefix}/{META_FILE}", full)
    return full


def load_adapter(store: Store, prefix: str) -> StoredAdapter:
    """Read an adapter and verify its sha256 against its metadata.

    Raises:
        IntegrityError: the bytes do not match the recorded sha256.
        StoreError: the adapter or its metadata is missing or unreadable.

    """
    meta = get_json(store, f"{prefix}/{META_FILE}")
    payload = store.get(f"{prefix}/{ADAPTER_FILE}")
    digest = hashlib.sha256(payload).hexdigest()
    if digest != meta.get("sha256"):
        raise IntegrityError(
            f"{store.uri(prefix + '/' + ADAPTER_FILE)}: sha256 {digest[:12]}… does not match the recorded "
            f"{str(meta.get('sha256'))[:12]}…"
        )
    try:
        tensors = load_safetensors(payload)
    except Exception as exc:  # safetensors raises its own error types
        raise IntegrityError(f"{store.uri(prefix)}: not a valid safetensors file: {exc}") from exc
    return StoredAdapter(tensors=tensors, meta=meta)
