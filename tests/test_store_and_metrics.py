from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedlora.evaluation import compute_metrics
from fedlora.store.adapters import load_adapter, save_adapter
from fedlora.store.base import IntegrityError, StoreError
from fedlora.store.local import LocalStore


def test_adapter_round_trip_with_sha256(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.float32)}
    meta = save_adapter(store, "rounds/0001/updates/bank-a", tensors, {"bank": "bank-a", "round": 1})
    assert len(meta["sha256"]) == 64
    back = load_adapter(store, "rounds/0001/updates/bank-a")
    assert back.meta["bank"] == "bank-a"
    for k, v in tensors.items():
        assert torch.equal(back.tensors[k], v)
    assert not list(tmp_path.rglob("*.tmp"))


def test_tampered_adapter_is_detected(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    save_adapter(store, "u", {"a": torch.ones(8)}, {})
    path = tmp_path / "u" / "adapter.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        load_adapter(store, "u")


def test_store_refuses_keys_outside_its_root_and_reports_missing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    with pytest.raises(StoreError, match="escapes"):
        store.put("../evil", b"x")
    with pytest.raises(StoreError, match="not found"):
        store.get("nope")
    store.put("a/b.json", b"{}")
    assert store.list("a/") == ["a/b.json"] and store.exists("a/b.json")


def test_metrics_against_hand_computed_values() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    m = compute_metrics(y, p)
    assert m.auc == pytest.approx(0.75)  # 3 of 4 (bad, good) pairs ordered correctly
    assert m.ks == pytest.approx(0.5)
    assert m.accuracy == pytest.approx(0.5)
    assert m.f1 == pytest.approx(0.5)
    assert m.brier == pytest.approx((0.01 + 0.36 + 0.36 + 0.01) / 4)
    assert np.isnan(compute_metrics(np.array([1, 1]), np.array([0.2, 0.3])).auc)
