"""Names from a request are identifiers, never paths; store keys cannot leave their prefix (issue 27, finding 2)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from fedlora.names import InvalidName, check_name, is_name
from fedlora.store.base import PrefixedStore, Store, StoreError, check_key
from fedlora.store.local import LocalStore
from fedlora.store.s3 import S3Store

PATHS = ["../x", "a/b", "..", ".", "", "x/..", "/abs", "a\\b", "A", "bank_a", "-a", "a-", "a" * 64, "a b", "a.b"]


@pytest.mark.parametrize("value", PATHS)
def test_a_name_that_is_a_path_or_not_a_dns_label_is_refused(value: str) -> None:
    assert not is_name(value)
    with pytest.raises(InvalidName, match=r"run name .* is not an identifier"):
        check_name(value, kind="run")


@pytest.mark.parametrize("value", ["r1", "bank-a", "20261207-053000", "a" * 63, "0"])
def test_dns_labels_are_names(value: str) -> None:
    assert check_name(value, kind="bank") == value


def _stores(tmp_path: Path) -> list[Store]:
    # No request reaches S3 here: the key is checked before any call.
    client = boto3.session.Session().client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
    )
    local = LocalStore(tmp_path / "root")
    return [local, PrefixedStore(local, "ledger"), S3Store(bucket="b", prefix="p", client=client)]


@pytest.mark.parametrize(
    "key",
    [
        "datasets/fp/charges/../x/0001/t.json",
        "datasets/fp/charges/../charges/x/0001/t.json",
        "../escape",
        "a//b",
        "a/./b",
        "/abs",
        "a\\..\\b",
        "a\x00b",
    ],
)
def test_no_store_accepts_a_key_that_leaves_or_aliases_its_prefix(tmp_path: Path, key: str) -> None:
    for store in _stores(tmp_path):
        for op in (lambda s: s.put(key, b"x"), lambda s: s.get(key), lambda s: s.exists(key), lambda s: s.delete(key)):
            with pytest.raises(StoreError, match="escapes or aliases") as info:
                op(store)
            assert info.value.kind == "invalid key"
    assert not list((tmp_path / "root").rglob("*.json"))  # nothing was written anywhere


def test_list_prefixes_may_be_empty_or_end_with_a_slash_but_not_climb(tmp_path: Path) -> None:
    assert check_key("", prefix=True) == ""
    assert check_key("datasets/fp/charges/", prefix=True) == "datasets/fp/charges/"
    with pytest.raises(StoreError):
        check_key("datasets/../", prefix=True)
    local = LocalStore(tmp_path)
    local.put("datasets/fp/charges/r1/0001/t.json", b"{}")
    assert local.list("datasets/fp/charges/") == ["datasets/fp/charges/r1/0001/t.json"]
    with pytest.raises(StoreError):
        local.list("datasets/fp/charges/../")
