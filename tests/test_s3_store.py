"""S3Store against a real Ceph radosgw (the ``ceph_s3`` fixture): layout, integrity, errors, outages.

Every store here is built the way the product builds it (credentials from the standard AWS
chain, i.e. the environment), unless a test needs a specific client.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from safetensors.torch import save as save_safetensors

from fedlora.store.adapters import load_adapter, save_adapter
from fedlora.store.base import IntegrityError, StoreError
from fedlora.store.s3 import S3Store, parse_s3_uri
from services import CephS3, free_port

BUCKET = f"fedlora-store-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def bucket(ceph_s3: CephS3) -> str:
    ceph_s3.client().create_bucket(Bucket=BUCKET)
    return BUCKET


def _use_credentials(monkeypatch: pytest.MonkeyPatch, access: str, secret: str, region: str) -> None:
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)


@pytest.fixture
def admin_env(monkeypatch: pytest.MonkeyPatch, ceph_s3: CephS3) -> None:
    """The admin user's keys in the environment (the standard AWS chain)."""
    _use_credentials(monkeypatch, ceph_s3.access_key, ceph_s3.secret_key, ceph_s3.region)


@pytest.fixture
def make_store(ceph_s3: CephS3, bucket: str, admin_env: None) -> Callable[..., S3Store]:
    """Build an S3Store on the Ceph endpoint with a fresh prefix (keyword arguments override)."""

    def make(**kwargs: Any) -> S3Store:
        options: dict[str, Any] = {
            "bucket": bucket,
            "prefix": f"unit/{uuid.uuid4().hex[:8]}",
            "endpoint_url": ceph_s3.endpoint,
            "path_style": True,
            "retry_seconds": 5.0,
        }
        options.update(kwargs)
        return S3Store(**options)

    return make


def _adapter(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "base.layer.0.lora_A.weight": torch.randn(4, 16, generator=g),
        "base.layer.0.lora_B.weight": torch.randn(16, 4, generator=g),
    }


@pytest.fixture
def gateway_back(ceph_s3: CephS3) -> Iterator[None]:
    """Whatever a test does to the gateway, it runs again afterwards (later tests need it)."""
    yield
    ceph_s3.start_gateway()


# --- layout -------------------------------------------------------------------------------


def test_put_get_exists_list_round_trip_under_a_prefix(make_store: Callable[..., S3Store], ceph_s3: CephS3) -> None:
    store = make_store()
    sibling = make_store(prefix=store.prefix + "x")  # "unit/abc" vs "unit/abcx": must not leak into listings
    data = {"b/2.bin": b"two", "a/1.bin": b"one", "a/10.bin": b"ten", "a/2.bin": b"\x00\xff" * 100, "c.json": b"{}"}
    for key, value in data.items():
        store.put(key, value)
    sibling.put("a/1.bin", b"sibling")

    for key, value in data.items():
        assert store.get(key) == value
        assert store.exists(key)
    assert not store.exists("a/3.bin")
    assert not store.exists("a")  # a "directory" is not a key
    with pytest.raises(StoreError, match="not found") as info:
        store.get("a/3.bin")
    assert f"s3://{BUCKET}/{store.prefix}/a/3.bin" in str(info.value)

    assert store.list("") == sorted(data) == ["a/1.bin", "a/10.bin", "a/2.bin", "b/2.bin", "c.json"]
    assert store.list("a/") == ["a/1.bin", "a/10.bin", "a/2.bin"]
    assert store.list("a/1") == ["a/1.bin", "a/10.bin"]
    assert store.list("zzz/") == []
    assert sibling.list("") == ["a/1.bin"]
    assert sibling.get("a/1.bin") == b"sibling"

    # The objects sit at <prefix>/<key> in the bucket.
    admin = ceph_s3.client()
    listed = admin.list_objects_v2(Bucket=BUCKET, Prefix=store.prefix + "/")
    assert sorted(o["Key"] for o in listed["Contents"]) == [f"{store.prefix}/{k}" for k in sorted(data)]
    assert store.uri("a/1.bin") == f"s3://{BUCKET}/{store.prefix}/a/1.bin"
    assert store.uri("") == f"s3://{BUCKET}/{store.prefix}"

    # Overwrite is a plain replace.
    store.put("c.json", b'{"v": 2}')
    assert store.get("c.json") == b'{"v": 2}'

    for bad in ("../escape", "/abs", "a/../../b"):
        with pytest.raises(StoreError, match="escapes"):
            store.put(bad, b"x")


def test_list_follows_continuation_tokens(ceph_s3: CephS3, bucket: str) -> None:
    """More keys than one listing page (max_keys=3 per page via the client's parameter hook)."""
    client = ceph_s3.client()
    pages: list[int] = []

    def small_pages(params: dict[str, Any], **_: Any) -> None:
        params["MaxKeys"] = 3

    def count(parsed: dict[str, Any], **_: Any) -> None:
        pages.append(len(parsed.get("Contents", [])))

    client.meta.events.register("before-parameter-build.s3.ListObjectsV2", small_pages)
    client.meta.events.register("after-call.s3.ListObjectsV2", count)
    store = S3Store(bucket=bucket, prefix=f"paged/{uuid.uuid4().hex[:8]}", client=client)
    keys = [f"rounds/{i:04d}/MANIFEST.json" for i in range(8)]
    for key in reversed(keys):
        store.put(key, key.encode())
    assert store.list("rounds/") == keys
    assert pages == [3, 3, 2]


def test_without_a_prefix_keys_are_bucket_keys(ceph_s3: CephS3, admin_env: None) -> None:
    bucket = f"fedlora-noprefix-{uuid.uuid4().hex[:8]}"
    ceph_s3.client().create_bucket(Bucket=bucket)
    store = S3Store(bucket=bucket, endpoint_url=ceph_s3.endpoint, path_style=True, retry_seconds=5)
    store.put("run-1/config.yaml", b"seed: 0\n")
    store.put("top.json", b"{}")
    assert store.list("") == ["run-1/config.yaml", "top.json"]
    assert store.list("run-1/") == ["run-1/config.yaml"]
    assert ceph_s3.client().get_object(Bucket=bucket, Key="run-1/config.yaml")["Body"].read() == b"seed: 0\n"
    assert parse_s3_uri(f"s3://{bucket}/a/b/") == (bucket, "a/b")
    with pytest.raises(StoreError, match="names no bucket"):
        parse_s3_uri("s3:///x")


# --- integrity ----------------------------------------------------------------------------


def test_every_object_carries_its_sha256(make_store: Callable[..., S3Store], ceph_s3: CephS3) -> None:
    store = make_store()
    payloads = {"x.bin": b"x" * 12345, "empty.bin": b"", "meta.json": b'{"a": 1}\n'}
    for key, value in payloads.items():
        store.put(key, value)
    admin = ceph_s3.client()
    for key, value in payloads.items():
        head = admin.head_object(Bucket=BUCKET, Key=f"{store.prefix}/{key}")
        assert head["Metadata"] == {"sha256": hashlib.sha256(value).hexdigest()}
        assert head["ContentLength"] == len(value)


def test_object_replaced_behind_the_stores_back_fails_integrity(
    make_store: Callable[..., S3Store], ceph_s3: CephS3
) -> None:
    store = make_store()
    store.put("rounds/0001/global/adapter.safetensors", b"the real adapter")
    full = f"{store.prefix}/rounds/0001/global/adapter.safetensors"
    admin = ceph_s3.client()
    old_meta = admin.head_object(Bucket=BUCKET, Key=full)["Metadata"]
    admin.put_object(Bucket=BUCKET, Key=full, Body=b"a forged adapter", Metadata=old_meta)
    with pytest.raises(IntegrityError, match="do not match the object's sha256 metadata") as info:
        store.get("rounds/0001/global/adapter.safetensors")
    assert full in str(info.value)
    # An object without the metadata (written by another tool) is read unverified, not rejected.
    admin.put_object(Bucket=BUCKET, Key=f"{store.prefix}/foreign.txt", Body=b"foreign")
    assert store.get("foreign.txt") == b"foreign"


def test_load_adapter_detects_a_tampered_adapter(make_store: Callable[..., S3Store], ceph_s3: CephS3) -> None:
    store = make_store()
    tensors = _adapter(0)
    meta = save_adapter(store, "rounds/0001/updates/bank-a", tensors, {"bank": "bank-a", "round": 1})
    loaded = load_adapter(store, "rounds/0001/updates/bank-a")
    assert loaded.meta == meta and loaded.meta["bank"] == "bank-a"
    assert all(torch.equal(loaded.tensors[k], tensors[k]) for k in tensors)

    # A valid safetensors file with other weights, uploaded with *consistent* object metadata:
    # S3's own check passes, the adapter's recorded sha256 in meta.json does not.
    forged = save_safetensors({k: v + 1 for k, v in tensors.items()})
    full = f"{store.prefix}/rounds/0001/updates/bank-a/adapter.safetensors"
    admin = ceph_s3.client()
    admin.put_object(Bucket=BUCKET, Key=full, Body=forged, Metadata={"sha256": hashlib.sha256(forged).hexdigest()})
    with pytest.raises(IntegrityError, match="does not match the recorded"):
        load_adapter(store, "rounds/0001/updates/bank-a")

    # Garbage whose sha256 *is* recorded in meta.json: not a valid safetensors file.
    garbage = b"not safetensors at all"
    admin.put_object(Bucket=BUCKET, Key=full, Body=garbage, Metadata={"sha256": hashlib.sha256(garbage).hexdigest()})
    meta_key = f"{store.prefix}/rounds/0001/updates/bank-a/meta.json"
    bad_meta = json.dumps({**meta, "sha256": hashlib.sha256(garbage).hexdigest()}).encode()
    admin.put_object(
        Bucket=BUCKET, Key=meta_key, Body=bad_meta, Metadata={"sha256": hashlib.sha256(bad_meta).hexdigest()}
    )
    with pytest.raises(IntegrityError, match="not a valid safetensors file"):
        load_adapter(store, "rounds/0001/updates/bank-a")

    # A missing adapter is a StoreError naming the key.
    with pytest.raises(StoreError, match=r"updates/bank-b/meta\.json: not found"):
        load_adapter(store, "rounds/0001/updates/bank-b")


# --- permanent errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "code", "hint"),
    [
        ("wrong-secret", "SignatureDoesNotMatch", "wrong secret key: check AWS_SECRET_ACCESS_KEY"),
        ("unknown-key", "InvalidAccessKeyId", "unknown access key: check AWS_ACCESS_KEY_ID"),
    ],
)
def test_bad_credentials_fail_at_once_with_a_hint(
    ceph_s3: CephS3, bucket: str, monkeypatch: pytest.MonkeyPatch, which: str, code: str, hint: str
) -> None:
    secret = ceph_s3.secret_key
    if which == "wrong-secret":
        _use_credentials(
            monkeypatch, ceph_s3.access_key, secret[:-1] + ("A" if secret[-1] != "A" else "B"), "us-east-1"
        )
    else:
        _use_credentials(monkeypatch, "NOSUCHACCESSKEY00000", secret, "us-east-1")
    store = S3Store(bucket=bucket, prefix="creds", endpoint_url=ceph_s3.endpoint, path_style=True, retry_seconds=30)
    started = time.monotonic()
    for what, call in [
        ("open", store.check),
        ("upload", lambda: store.put("k.bin", b"x")),
        ("download", lambda: store.get("k.bin")),
        ("list", lambda: store.list("")),
    ]:
        with pytest.raises(StoreError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"{what} s3://{bucket}/creds"), message
        assert f"failed: {code}: {hint}" in message, message
    # A HEAD response has no body, so S3 cannot say why: the status is all exists() can report.
    with pytest.raises(StoreError, match=r"^check s3://.*/creds/k.bin failed: 403"):
        store.exists("k.bin")
    assert time.monotonic() - started < 10, "permanent errors must not be retried for retry_seconds"
    assert "Contents" not in ceph_s3.client().list_objects_v2(Bucket=bucket, Prefix="creds/")


def test_no_credentials_at_all(ceph_s3: CephS3, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = S3Store(bucket=bucket, prefix="nocreds", endpoint_url=ceph_s3.endpoint, region="us-east-1", path_style=True)
    with pytest.raises(StoreError, match="NoCredentialsError: no AWS credentials found"):
        store.check()


def test_missing_bucket_says_it_does_not_exist(make_store: Callable[..., S3Store]) -> None:
    name = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    store = make_store(bucket=name, prefix="p")
    for call in (store.check, lambda: store.put("k", b"x"), lambda: store.get("k"), lambda: store.list("")):
        with pytest.raises(StoreError, match=f"NoSuchBucket: bucket '{name}' does not exist"):
            call()


def test_exists_in_a_missing_bucket_is_an_error_not_false(make_store: Callable[..., S3Store]) -> None:
    """A typo in the bucket name must not read as "this key is not there yet".

    HEAD answers a bare 404 both for a missing key and for a missing bucket; exists() takes
    both for a missing key, so e.g. ``fedlora simulate --resume RUN`` against a misspelt
    bucket says "no run 'RUN' to resume" instead of naming the missing bucket, and a step's
    probe of ``outcome.json``/``MANIFEST.json`` reads "not written yet".
    """
    name = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    store = make_store(bucket=name, prefix="p")
    with pytest.raises(StoreError, match=f"bucket '{name}' does not exist"):
        store.exists("config.yaml")


def test_unreachable_endpoint_gives_up_after_retry_seconds(make_store: Callable[..., S3Store]) -> None:
    port = free_port()  # nothing listens there
    store = make_store(endpoint_url=f"http://127.0.0.1:{port}", retry_seconds=1)
    started = time.monotonic()
    with pytest.raises(StoreError, match="S3 still unavailable after") as info:
        store.check()
    assert time.monotonic() - started < 15
    assert f"127.0.0.1:{port}" in str(info.value)
    with pytest.raises(StoreError, match=r"upload .*/k\.bin: S3 still unavailable"):
        store.put("k.bin", b"x")


# --- transient outage -----------------------------------------------------------------------


def test_put_and_get_ride_out_a_brief_gateway_outage(
    make_store: Callable[..., S3Store],
    ceph_s3: CephS3,
    gateway_back: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="fedlora.store.s3")
    store = make_store(retry_seconds=60)
    existing = b"written before the outage" * 1000
    store.put("before.bin", existing)
    payload = bytes(range(256)) * 4096  # 1 MiB
    results: dict[str, Any] = {}

    def worker(name: str, fn: Callable[[], Any]) -> None:
        try:
            results[name] = fn()
        except BaseException as exc:  # reported by the main thread
            results[name] = exc

    # The gateway is stopped and restarted from this (the main) thread: the services kill
    # their daemons when the thread that started them exits (PR_SET_PDEATHSIG).
    ceph_s3.stop_gateway()
    threads = [
        threading.Thread(target=worker, args=("put", lambda: store.put("during.bin", payload))),
        threading.Thread(target=worker, args=("get", lambda: store.get("before.bin"))),
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(3)
    assert all(t.is_alive() for t in threads), results  # still retrying, not failed
    ceph_s3.start_gateway()
    for t in threads:
        t.join(timeout=90)
    assert not any(t.is_alive() for t in threads)
    assert results["put"] is None, results["put"]
    assert results["get"] == existing
    assert time.monotonic() - started < 60
    assert store.get("during.bin") == payload
    head = ceph_s3.client().head_object(Bucket=BUCKET, Key=f"{store.prefix}/during.bin")
    assert head["Metadata"]["sha256"] == hashlib.sha256(payload).hexdigest()
    retried = [r.getMessage() for r in caplog.records if "transient S3 error" in r.getMessage()]
    assert any("upload" in m and "during.bin" in m for m in retried), retried
    assert any("download" in m and "before.bin" in m for m in retried), retried


# --- server-side encryption ---------------------------------------------------------------


def test_sse_aes256_works_or_fails_clearly(make_store: Callable[..., S3Store], ceph_s3: CephS3) -> None:
    """Ceph needs SSE-S3 configured (a KMS backend, and TLS unless rgw_crypt_require_ssl=false)."""
    store = make_store(sse="AES256")
    try:
        store.put("enc.bin", b"secret adapter")
    except StoreError as exc:
        message = str(exc)
        # A permanent error at once, naming the key and the server's reason; nothing written.
        assert message.startswith(f"upload s3://{BUCKET}/{store.prefix}/enc.bin failed: "), message
        assert "still unavailable" not in message
        assert "InvalidRequest" in message or "NotImplemented" in message or "encryption" in message.lower()
        assert not make_store(prefix=store.prefix).exists("enc.bin")
        print(f"Ceph refused SSE AES256: {message}")
    else:
        assert store.get("enc.bin") == b"secret adapter"
        head = ceph_s3.client().head_object(Bucket=BUCKET, Key=f"{store.prefix}/enc.bin")
        assert head.get("ServerSideEncryption") == "AES256"
        print("Ceph accepted SSE AES256")
