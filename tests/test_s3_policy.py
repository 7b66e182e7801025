"""The consortium bucket policy, enforced by a real Ceph radosgw (the ``ceph_s3`` fixture)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from botocore.exceptions import ClientError, EndpointConnectionError

from fedlora.store.policy import bank_principal, consortium_bucket_policy
from helpers import run_cli
from services import CephS3

PREFIX = "consortium"
RUN = "run-1"
GLOBAL_KEY = f"{PREFIX}/{RUN}/rounds/0001/global/adapter.safetensors"
MANIFEST_KEY = f"{PREFIX}/{RUN}/rounds/0001/MANIFEST.json"
CONFIG_KEY = f"{PREFIX}/{RUN}/config.yaml"


def update_key(bank: str, name: str = "adapter.safetensors", round_index: int = 1) -> str:
    return f"{PREFIX}/{RUN}/rounds/{round_index:04d}/updates/{bank}/{name}"


def privacy_key(bank: str) -> str:
    return f"{PREFIX}/{RUN}/privacy/{bank}.json"


def error_code(call: Callable[[], Any]) -> str:
    """The S3 error code a call fails with (the test fails if it succeeds)."""
    with pytest.raises(ClientError) as info:
        call()
    return str(info.value.response["Error"]["Code"])


@dataclass
class Consortium:
    bucket: str
    coordinator: Any
    bank_a: Any
    bank_b: Any
    keys_a: tuple[str, str]


@pytest.fixture(scope="module")
def consortium(ceph_s3: CephS3) -> Iterator[Consortium]:
    """A bucket owned by the coordinator (the admin user), two bank users, the policy applied."""
    suffix = uuid.uuid4().hex[:8]
    uid_a, uid_b = f"bank-a-{suffix}", f"bank-b-{suffix}"
    keys_a = ceph_s3.create_user(uid_a)
    keys_b = ceph_s3.create_user(uid_b)
    bucket = f"consortium-{suffix}"
    coordinator = ceph_s3.client()
    coordinator.create_bucket(Bucket=bucket)
    policy = consortium_bucket_policy(
        bucket=bucket,
        prefix=PREFIX,
        coordinator=bank_principal(ceph_s3.admin_uid),
        banks={"bank-a": bank_principal(uid_a), "bank-b": bank_principal(uid_b)},
    )
    coordinator.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    # The server stored what we sent (radosgw rejects a policy it cannot parse).
    assert json.loads(coordinator.get_bucket_policy(Bucket=bucket)["Policy"]) == policy
    coordinator.put_object(Bucket=bucket, Key=CONFIG_KEY, Body=b"federation: {rounds: 2}\n")
    coordinator.put_object(Bucket=bucket, Key=GLOBAL_KEY, Body=b"global-round-1")
    coordinator.put_object(Bucket=bucket, Key="elsewhere/secret.txt", Body=b"not for banks")
    yield Consortium(bucket, coordinator, ceph_s3.client(*keys_a), ceph_s3.client(*keys_b), keys_a)


def test_policy_document_names_principals_and_scopes_writes_per_bank() -> None:
    policy = consortium_bucket_policy(
        bucket="fed",
        prefix="/consortium/",
        coordinator="coordinator",
        banks={"bank-a": "bank-a", "bank-b": "arn:aws:iam::123456789012:role/bank-b"},
    )
    assert policy["Version"] == "2012-10-17"
    json.dumps(policy)  # a JSON document
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert len(by_sid) == len(policy["Statement"])
    write_a = by_sid["BankBankAWritesOwnKeys"]
    assert write_a["Effect"] == "Allow"
    assert write_a["Principal"] == {"AWS": ["arn:aws:iam:::user/bank-a"]}
    assert write_a["Resource"] == [
        "arn:aws:s3:::fed/consortium/*/rounds/*/updates/bank-a/*",
        "arn:aws:s3:::fed/consortium/*/privacy/bank-a.json",
    ]
    deny_a = by_sid["BankBankANeverWritesOtherBanksKeys"]
    assert deny_a["Effect"] == "Deny"
    assert deny_a["Resource"] == [
        "arn:aws:s3:::fed/consortium/*/rounds/*/updates/bank-b/*",
        "arn:aws:s3:::fed/consortium/*/privacy/bank-b.json",
    ]
    assert by_sid["BankBankBWritesOwnKeys"]["Principal"] == {"AWS": ["arn:aws:iam::123456789012:role/bank-b"]}
    coordinator = by_sid["CoordinatorReadWriteUnderPrefix"]
    assert coordinator["Principal"] == {"AWS": ["arn:aws:iam:::user/coordinator"]}
    assert coordinator["Resource"] == ["arn:aws:s3:::fed/consortium/*"]
    assert by_sid["BanksListPrefix"]["Condition"] == {
        "StringLikeIfExists": {"s3:prefix": ["consortium", "consortium/*"]}
    }
    # No statement lets a bank delete: the only bank statements with a delete are Denies.
    for s in policy["Statement"]:
        if any("Delete" in a for a in s["Action"]) and s["Effect"] == "Allow":
            assert s["Principal"] == {"AWS": ["arn:aws:iam:::user/coordinator"]}


def test_bank_principal_and_invalid_inputs() -> None:
    assert bank_principal("bank-a") == "arn:aws:iam:::user/bank-a"
    assert bank_principal("acme$bank-a") == "arn:aws:iam::acme:user/bank-a"
    with pytest.raises(ValueError, match="user id"):
        bank_principal("a/b")
    ok = {"bucket": "fed", "prefix": "p", "coordinator": "coord"}
    with pytest.raises(ValueError, match="at least one bank"):
        consortium_bucket_policy(**ok, banks={})
    with pytest.raises(ValueError, match="bank name"):
        consortium_bucket_policy(**ok, banks={"bank/a": "a"})
    with pytest.raises(ValueError, match="coordinator's principal"):
        consortium_bucket_policy(**ok, banks={"bank-a": "coord"})
    with pytest.raises(ValueError, match="shares its principal"):
        consortium_bucket_policy(**ok, banks={"bank-a": "x", "bank-b": "x"})
    with pytest.raises(ValueError, match="wildcards"):
        consortium_bucket_policy(**{**ok, "prefix": "p/*"}, banks={"bank-a": "a"})


def test_bank_writes_its_own_keys_and_reads_the_global_adapter(consortium: Consortium) -> None:
    c = consortium
    c.bank_a.put_object(Bucket=c.bucket, Key=update_key("bank-a"), Body=b"update-a", Metadata={"sha256": "x"})
    c.bank_a.put_object(Bucket=c.bucket, Key=update_key("bank-a", "meta.json"), Body=b"{}")
    c.bank_a.put_object(Bucket=c.bucket, Key=privacy_key("bank-a"), Body=b'{"epsilon": 1.0}')
    # A retry may overwrite its own update.
    c.bank_a.put_object(Bucket=c.bucket, Key=update_key("bank-a"), Body=b"update-a-retry")

    assert c.bank_a.get_object(Bucket=c.bucket, Key=GLOBAL_KEY)["Body"].read() == b"global-round-1"
    assert c.bank_a.get_object(Bucket=c.bucket, Key=CONFIG_KEY)["Body"].read().startswith(b"federation")
    listed = c.bank_a.list_objects_v2(Bucket=c.bucket, Prefix=f"{PREFIX}/{RUN}/rounds/0001/")
    assert {o["Key"] for o in listed["Contents"]} >= {GLOBAL_KEY, update_key("bank-a")}
    # A missing key is a 404, not a 403: the store's exists() works for a bank.
    head = error_code(lambda: c.bank_a.head_object(Bucket=c.bucket, Key=f"{PREFIX}/{RUN}/rounds/0002/MANIFEST.json"))
    assert head == "404"
    # The coordinator reads what the bank uploaded (the bank owns the object).
    got = c.coordinator.get_object(Bucket=c.bucket, Key=update_key("bank-a"))
    assert got["Body"].read() == b"update-a-retry"


def test_bank_cannot_touch_other_banks_or_coordinator_keys(consortium: Consortium) -> None:
    c = consortium
    c.bank_b.put_object(Bucket=c.bucket, Key=update_key("bank-b", round_index=2), Body=b"update-b")

    def put_a(key: str) -> Callable[[], Any]:
        return lambda: c.bank_a.put_object(Bucket=c.bucket, Key=key, Body=b"forged by bank-a")

    assert error_code(put_a(update_key("bank-b", round_index=2))) == "AccessDenied"  # overwrite B's update
    assert error_code(put_a(update_key("bank-b", "new.bin", round_index=3))) == "AccessDenied"  # new key of B
    assert error_code(put_a(f"{PREFIX}/{RUN}/rounds/0002/updates/bank-b/x/updates/bank-a/y")) == "AccessDenied"
    assert error_code(put_a(privacy_key("bank-b"))) == "AccessDenied"
    assert error_code(put_a(GLOBAL_KEY)) == "AccessDenied"
    assert error_code(put_a(f"{PREFIX}/{RUN}/rounds/0002/global/adapter.safetensors")) == "AccessDenied"
    assert error_code(put_a(MANIFEST_KEY)) == "AccessDenied"
    assert error_code(put_a(CONFIG_KEY)) == "AccessDenied"
    assert error_code(put_a("elsewhere/x")) == "AccessDenied"
    # Nothing was changed by those attempts.
    assert c.coordinator.get_object(Bucket=c.bucket, Key=update_key("bank-b", round_index=2))["Body"].read() == (
        b"update-b"
    )
    assert c.coordinator.get_object(Bucket=c.bucket, Key=GLOBAL_KEY)["Body"].read() == b"global-round-1"
    # No deletes, no ACL changes, not even on its own update; nothing outside the prefix.
    own = update_key("bank-a", "own.bin", round_index=2)
    c.bank_a.put_object(Bucket=c.bucket, Key=own, Body=b"mine")
    assert error_code(lambda: c.bank_a.delete_object(Bucket=c.bucket, Key=own)) == "AccessDenied"
    assert error_code(lambda: c.bank_a.delete_object(Bucket=c.bucket, Key=GLOBAL_KEY)) == "AccessDenied"
    acl = error_code(lambda: c.bank_a.put_object_acl(Bucket=c.bucket, Key=own, ACL="public-read"))
    assert acl == "AccessDenied"
    assert error_code(lambda: c.bank_a.get_object(Bucket=c.bucket, Key="elsewhere/secret.txt")) == "AccessDenied"
    assert error_code(lambda: c.bank_a.list_objects_v2(Bucket=c.bucket, Prefix="elsewhere/")) == "AccessDenied"
    policy = json.dumps({"Version": "2012-10-17", "Statement": []})
    assert error_code(lambda: c.bank_a.put_bucket_policy(Bucket=c.bucket, Policy=policy)) == "AccessDenied"
    assert c.coordinator.get_object(Bucket=c.bucket, Key=own)["Body"].read() == b"mine"


def test_wrong_secret_and_unknown_key_are_rejected(ceph_s3: CephS3, consortium: Consortium) -> None:
    access, secret = consortium.keys_a
    wrong = ceph_s3.client(access, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    key = update_key("bank-a", "with-wrong-secret")
    assert error_code(lambda: wrong.put_object(Bucket=consortium.bucket, Key=key, Body=b"x")) == (
        "SignatureDoesNotMatch"
    )
    unknown = ceph_s3.client("NOSUCHACCESSKEY00000", secret)
    code = error_code(lambda: unknown.get_object(Bucket=consortium.bucket, Key=GLOBAL_KEY))
    assert code == "InvalidAccessKeyId"
    assert error_code(lambda: consortium.bank_a.head_object(Bucket=consortium.bucket, Key=key)) == "404"


def test_gateway_outage_is_a_connection_error_and_recovers(ceph_s3: CephS3, consortium: Consortium) -> None:
    c = consortium
    ceph_s3.stop_gateway()
    try:
        assert not ceph_s3.gateway_running()
        with pytest.raises(EndpointConnectionError):
            c.bank_a.get_object(Bucket=c.bucket, Key=GLOBAL_KEY)
    finally:
        ceph_s3.start_gateway()
    # Same endpoint, same data (the cluster kept running), same policy.
    assert c.bank_a.get_object(Bucket=c.bucket, Key=GLOBAL_KEY)["Body"].read() == b"global-round-1"
    assert error_code(lambda: c.bank_a.put_object(Bucket=c.bucket, Key=GLOBAL_KEY, Body=b"x")) == "AccessDenied"


def _consortium_file(tmp_path: Any, uri: str, endpoint: str | None = None) -> str:
    path = tmp_path / "consortium.yaml"
    store: dict[str, Any] = {"uri": uri}
    if endpoint:
        store |= {"endpoint_url": endpoint, "path_style": True}
    tree = {"federation": {"banks": [{"name": "bank-a"}, {"name": "bank-b"}]}, "store": store}
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return str(path)


def test_cli_prints_the_policy_of_a_consortium_config(tmp_path: Any) -> None:
    config = _consortium_file(tmp_path, "s3://fedlora-exchange/consortium-2026")
    args = ["consortium", "bucket-policy", "--config", config, "--coordinator", "arn:aws:iam::1:role/pipeline"]
    code, out = run_cli([*args, "--bank", "bank-a=arn:aws:iam::2:role/a", "--bank", "bank-b=bank-b-user"])
    assert code == 0, out
    assert json.loads(out) == consortium_bucket_policy(
        bucket="fedlora-exchange",
        prefix="consortium-2026",
        coordinator="arn:aws:iam::1:role/pipeline",
        banks={"bank-a": "arn:aws:iam::2:role/a", "bank-b": "bank-b-user"},
    )
    code, out = run_cli([*args, "--bank", "bank-a=arn:aws:iam::2:role/a"])
    assert code == 2 and "--bank needed for ['bank-b']" in out


def test_cli_applies_the_policy_and_the_server_enforces_it(ceph_s3: CephS3, tmp_path: Any, monkeypatch: Any) -> None:
    suffix = uuid.uuid4().hex[:8]
    uid_a, uid_b = f"cli-a-{suffix}", f"cli-b-{suffix}"
    keys_a = ceph_s3.create_user(uid_a)
    ceph_s3.create_user(uid_b)
    bucket = f"cli-consortium-{suffix}"
    coordinator = ceph_s3.client()
    coordinator.create_bucket(Bucket=bucket)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ceph_s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ceph_s3.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", ceph_s3.region)
    config = _consortium_file(tmp_path, f"s3://{bucket}/{PREFIX}", ceph_s3.endpoint)
    code, out = run_cli(
        [
            *["consortium", "bucket-policy", "--config", config, "--coordinator", ceph_s3.admin_uid],
            *["--bank", f"bank-a={uid_a}", "--bank", f"bank-b={uid_b}", "--apply"],
        ]
    )
    assert code == 0, out
    assert "policy applied" in out
    bank_a = ceph_s3.client(*keys_a)
    bank_a.put_object(Bucket=bucket, Key=f"{PREFIX}/run-1/rounds/0001/updates/bank-a/adapter.safetensors", Body=b"a")
    denied = f"{PREFIX}/run-1/rounds/0001/updates/bank-b/adapter.safetensors"
    assert error_code(lambda: bank_a.put_object(Bucket=bucket, Key=denied, Body=b"x")) == "AccessDenied"
