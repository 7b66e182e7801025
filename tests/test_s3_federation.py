"""The federation with its exchange on a real Ceph S3 and tracking on a real MLflow server.

``ceph_s3`` and ``mlflow_server`` are the session fixtures of tests/conftest.py (real radosgw
and ``mlflow server``; nothing is mocked). S3 credentials reach FedLoRA only through the
standard AWS chain (the environment).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load as load_safetensors

from fedlora.bank_round import run_bank_round
from fedlora.config import Config, load_config
from fedlora.federation import initialize
from fedlora.privacy.bank_side import BankSide
from fedlora.privacy.policy import BankPolicy
from fedlora.records import BankOutcome, RoundRecord
from fedlora.runtime import Runtime
from fedlora.simulate import simulate
from fedlora.store.adapters import get_json, load_adapter, put_json, save_adapter
from fedlora.store.base import StoreError
from fedlora.store.local import LocalStore
from fedlora.store.policy import bank_principal, consortium_bucket_policy
from fedlora.store.run import committed_rounds, open_run_store
from fedlora.store.s3 import S3Store
from helpers import run_cli as _run_cli
from helpers import set_args as _sets
from helpers import tiny_overrides_for as _tiny
from services import CephS3, MLflowServer, free_port

BANKS = ["bank-a", "bank-b", "bank-c"]
MODEL_NAME = "fedlora-credit-risk"


def _s3_sets(ceph: CephS3, **extra: Any) -> list[str]:
    sets = [f"store.endpoint_url={ceph.endpoint}", "store.path_style=true"]
    return sets + [f"store.{k}={v}" for k, v in extra.items()]


def _set_credentials(mp: pytest.MonkeyPatch, access: str, secret: str, region: str = "us-east-1") -> None:
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        mp.delenv(var, raising=False)
    mp.setenv("AWS_ACCESS_KEY_ID", access)
    mp.setenv("AWS_SECRET_ACCESS_KEY", secret)
    mp.setenv("AWS_DEFAULT_REGION", region)


def _keys(ceph: CephS3, bucket: str, prefix: str) -> list[str]:
    client = ceph.client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return sorted(keys)


def _new_bucket(ceph: CephS3, name: str) -> str:
    bucket = f"{name}-{uuid.uuid4().hex[:8]}"
    ceph.client().create_bucket(Bucket=bucket)
    return bucket


# --- 1. one end-to-end CLI run against Ceph + MLflow, inspected by several tests -------------


@dataclass
class S3Run:
    code: int
    output: str
    summary: dict[str, Any]
    bucket: str
    prefix: str
    run: str
    keys: list[str]
    tracking: dict[str, Any]
    seconds: float
    bodies: dict[str, bytes] = field(default_factory=dict)


@pytest.fixture(scope="module")
def s3_run(ceph_s3: CephS3, mlflow_server: MLflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Run]:
    """``fedlora simulate --store s3://... --tracking-uri http://...`` with the tiny federation."""
    tmp = tmp_path_factory.mktemp("s3-e2e")
    bucket = _new_bucket(ceph_s3, "fedlora-e2e")
    prefix, run = "exchange/consortium", "e2e"
    summary_path = tmp / "summary.json"
    with pytest.MonkeyPatch.context() as mp:
        _set_credentials(mp, ceph_s3.access_key, ceph_s3.secret_key, ceph_s3.region)
        args = [
            "simulate",
            *_sets([*_tiny(tmp / "runs", run), "tracking.enabled=true", f"tracking.experiment=s3-e2e-{bucket}"]),
            *_sets(_s3_sets(ceph_s3)),
            "--store",
            f"s3://{bucket}/{prefix}",
            "--tracking-uri",
            mlflow_server.uri,
            "--json",
            str(summary_path),
        ]
        started = time.monotonic()
        code, output = _run_cli(args)
        seconds = time.monotonic() - started
    assert code == 0, output
    keys = _keys(ceph_s3, bucket, f"{prefix}/")
    admin = ceph_s3.client()
    bodies = {k: admin.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}
    tracking = json.loads(bodies[f"{prefix}/{run}/tracking.json"])
    yield S3Run(
        code=code,
        output=output,
        summary=json.loads(summary_path.read_text()),
        bucket=bucket,
        prefix=prefix,
        run=run,
        keys=keys,
        tracking=tracking,
        seconds=seconds,
        bodies=bodies,
    )


def test_simulate_on_s3_writes_the_run_layout_under_prefix_and_run(s3_run: S3Run) -> None:
    base = f"{s3_run.prefix}/{s3_run.run}/"
    assert s3_run.code == 0
    assert all(k.startswith(base) for k in s3_run.keys), s3_run.keys
    relative = {k[len(base) :] for k in s3_run.keys}
    expected = {
        "config.yaml",
        "tracking.json",
        "rounds/0000/global/meta.json",  # round 0 is a spec: each bank builds the seeded adapter (fedlora.initial)
        "rounds/0001/MANIFEST.json",
        "rounds/0001/global/adapter.safetensors",
        "rounds/0002/MANIFEST.json",
        "rounds/0002/global/adapter.safetensors",
        "rounds/0002/global/meta.json",
        "final/adapter.safetensors",
        "final/meta.json",
        "final/peft/adapter_config.json",
        "summary.json",
        "report/index.html",
        *[f"privacy/{b}.json" for b in BANKS],
        *[
            f"rounds/000{r}/updates/{b}/{f}"
            for r in (1, 2)
            for b in BANKS
            for f in ("adapter.safetensors", "meta.json", "outcome.json")
        ],
    }
    assert expected <= relative, sorted(expected - relative)
    # The summary names the S3 locations, and the final adapter is the last round's global one.
    summary = s3_run.summary
    assert summary["store_uri"] == f"s3://{s3_run.bucket}/{base[:-1]}"
    assert summary["final"]["adapter"] == f"s3://{s3_run.bucket}/{base}final/adapter.safetensors"
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    final = load_safetensors(s3_run.bodies[f"{base}final/adapter.safetensors"])
    last = load_safetensors(s3_run.bodies[f"{base}rounds/0002/global/adapter.safetensors"])
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    assert json.loads(s3_run.bodies[f"{base}summary.json"])["final"]["sha256"] == summary["final"]["sha256"]
    assert f"s3://{s3_run.bucket}/{base}final/adapter.safetensors" in s3_run.output.replace("\n", "")
    for bank in BANKS:
        ledger = json.loads(s3_run.bodies[f"{base}privacy/{bank}.json"])
        assert ledger["charged_rounds"] == [1, 2]
        assert 0 < ledger["epsilon_spent"] <= 8.0


def test_every_object_verifies_and_the_bucket_holds_adapters_not_rows(s3_run: S3Run, ceph_s3: CephS3) -> None:
    admin = ceph_s3.client()
    base = f"{s3_run.prefix}/{s3_run.run}/"
    for key, body in s3_run.bodies.items():
        head = admin.head_object(Bucket=s3_run.bucket, Key=key)
        assert head["Metadata"].get("sha256") == hashlib.sha256(body).hexdigest(), key
        assert "csv" not in key.lower() and "parquet" not in key.lower(), key
    suffixes = {Path(k).suffix for k in s3_run.keys}
    assert suffixes <= {".safetensors", ".json", ".yaml", ".html", ".png", ".md"}, suffixes
    # Every tensor file holds the same LoRA/head tensors as the first global adapter: weights, never data.
    names = set(load_safetensors(s3_run.bodies[f"{base}rounds/0001/global/adapter.safetensors"]))
    assert names and all("lora_" in n or "classifier" in n or "score" in n for n in names), names
    for key, body in s3_run.bodies.items():
        if key.endswith(".safetensors") and "/peft/" not in key:
            assert set(load_safetensors(body)) == names, key
    # No raw row of the bank data (its categorical values) appears in any object.
    with resources.files("fedlora.data").joinpath("german_credit.csv").open("r", encoding="utf-8") as f:
        first_row = pd.read_csv(f, dtype=object).iloc[0]
    markers = [str(first_row["purpose"]), str(first_row["personal_status_and_sex"]), str(first_row["property"])]
    for key, body in s3_run.bodies.items():
        for marker in markers:
            assert marker.encode() not in body, (key, marker)
    # The adapters read back through the product's own integrity check.
    store = S3Store(bucket=s3_run.bucket, prefix=base[:-1], client=admin)
    assert get_json(store, "rounds/0000/global/meta.json")["initial"] == "seeded"
    for prefix in ["rounds/0001/global", "rounds/0002/global", "final"]:
        assert load_adapter(store, prefix).meta["sha256"]
    for r in (1, 2):
        for bank in BANKS:
            stored = load_adapter(store, f"rounds/{r:04d}/updates/{bank}")
            assert stored.meta["bank"] == bank and stored.meta["round"] == r


def test_mlflow_run_has_params_metrics_per_round_and_artifacts_in_ceph(
    s3_run: S3Run, mlflow_server: MLflowServer, ceph_s3: CephS3
) -> None:
    assert s3_run.tracking["uri"] == mlflow_server.uri
    run_id = s3_run.tracking["run_id"]
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == s3_run.run
    params = run.data.params
    assert params["privacy.target_epsilon"] == "8.0"
    assert params["federation.rounds"] == "2"
    assert params["model.name"] == "tiny-bert"
    assert params["store.uri"] == f"s3://{s3_run.bucket}/{s3_run.prefix}"
    final_eps = s3_run.summary["final"]["epsilon"]
    for metric in ["test_auc", *[f"epsilon_{b}" for b in BANKS]]:  # training losses stay in the banks
        history = sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2], (metric, history)
    eps_a = sorted(client.get_metric_history(run_id, "epsilon_bank-a"), key=lambda m: m.step)
    assert 0 < eps_a[0].value < eps_a[1].value <= 8.0
    assert eps_a[1].value == pytest.approx(final_eps["bank-a"])
    auc = sorted(client.get_metric_history(run_id, "test_auc"), key=lambda m: m.step)
    assert [m.value for m in auc] == pytest.approx([r["auc"] for r in s3_run.summary["rounds"]])
    assert run.data.tags["epsilon.bank-a"] == str(final_eps["bank-a"])
    assert run.data.tags["fedlora.run"] == s3_run.run

    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"final_adapter", "report"} <= top, top
    peft = {a.path for a in client.list_artifacts(run_id, "final_adapter/peft")}
    assert "final_adapter/peft/adapter_config.json" in peft, peft
    # The artifact bytes are objects in the Ceph bucket behind the MLflow server.
    stored = _keys(ceph_s3, mlflow_server.bucket, "")
    config_keys = [k for k in stored if k.endswith(f"{run_id}/artifacts/final_adapter/peft/adapter_config.json")]
    assert len(config_keys) == 1, [k for k in stored if run_id in k]
    body = ceph_s3.client().get_object(Bucket=mlflow_server.bucket, Key=config_keys[0])["Body"].read()
    assert json.loads(body)["peft_type"] == "LORA"
    assert any(k.endswith(f"{run_id}/artifacts/report/index.html") for k in stored)


def test_final_adapter_is_registered_with_its_privacy_guarantee(s3_run: S3Run, mlflow_server: MLflowServer) -> None:
    run_id = s3_run.tracking["run_id"]
    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    versions = [v for v in client.search_model_versions(f"name='{MODEL_NAME}'") if v.run_id == run_id]
    assert len(versions) == 1, versions
    version = versions[0]
    assert s3_run.summary["registered_model"] == {"name": MODEL_NAME, "version": version.version}
    assert version.source.endswith(f"{run_id}/artifacts/final_adapter")
    privacy = s3_run.summary["privacy"]
    for bank in BANKS:
        assert version.tags[f"epsilon.{bank}"] == str(privacy[bank]["epsilon"])
        assert version.tags[f"delta.{bank}"] == str(privacy[bank]["delta"])
    assert version.tags["accountant"] == "prv"
    assert version.tags["fedlora.run"] == s3_run.run
    assert version.tags["rounds"] == "2"
    description = version.description
    assert "ε=" in description and "δ=" in description, description
    for bank in BANKS:
        assert f"{bank}: (ε={privacy[bank]['epsilon']}, δ=" in description, description
    # The registered source is downloadable (from the Ceph bucket, through the server).
    assert {a.path for a in client.list_artifacts(run_id, "final_adapter")} >= {"final_adapter/peft"}


# --- 3. bad input: a clear message, a non-zero exit and nothing in the exchange ------------------


def _bad_bank_file(tmp_path: Path) -> Path:
    with resources.files("fedlora.data").joinpath("german_credit.csv").open("r", encoding="utf-8") as f:
        raw = pd.read_csv(f, dtype=object).head(80)
    path = tmp_path / "bank-a.csv"
    raw.drop(columns=["age_in_years"]).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    "case",
    ["unreachable-s3", "wrong-secret", "unknown-key", "no-such-bucket", "unreachable-mlflow", "bad-bank-file"],
)
def test_bad_input_fails_clearly_and_writes_nothing(
    case: str,
    ceph_s3: CephS3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = _new_bucket(ceph_s3, "fedlora-bad")
    prefix = f"exchange/{case}"
    _set_credentials(monkeypatch, ceph_s3.access_key, ceph_s3.secret_key, ceph_s3.region)
    sets = _tiny(tmp_path / "runs", "bad") + _s3_sets(ceph_s3, retry_seconds=1)
    store_bucket = bucket
    if case == "unreachable-s3":
        sets.append(f"store.endpoint_url=http://127.0.0.1:{free_port()}")
        expected = ["S3 still unavailable after"]
    elif case == "wrong-secret":
        secret = ceph_s3.secret_key
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret[:-1] + ("A" if secret[-1] != "A" else "B"))
        expected = ["SignatureDoesNotMatch", "wrong secret key"]
    elif case == "unknown-key":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "NOSUCHACCESSKEY00000")
        expected = ["InvalidAccessKeyId", "unknown access key"]
    elif case == "no-such-bucket":
        store_bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
        expected = ["NoSuchBucket", f"bucket '{store_bucket}' does not exist"]
    elif case == "unreachable-mlflow":
        sets += ["tracking.enabled=true", f"tracking.uri=http://127.0.0.1:{free_port()}"]
        expected = ["MLflow server", "is unreachable", "tracking.uri"]
    else:
        bad = _bad_bank_file(tmp_path)
        sets.append(f"federation.banks=[{{name: bank-a, data: {bad}}}, {{name: bank-b}}, {{name: bank-c}}]")
        expected = [str(bad), "missing column(s) ['age_in_years']"]
    started = time.monotonic()
    code, output = _run_cli(["simulate", *_sets(sets), "--store", f"s3://{store_bucket}/{prefix}"])
    elapsed = time.monotonic() - started
    flat = " ".join(output.split())  # rich wraps long lines
    assert code == 1, output
    assert "error:" in flat, output
    for text in expected:
        assert text in flat, (text, output)
    assert "Traceback" not in output
    assert elapsed < 60, elapsed
    # Nothing was written to the exchange (nor anywhere in the bucket).
    assert _keys(ceph_s3, bucket, "") == []
    if case == "no-such-bucket":
        names = [b["Name"] for b in ceph_s3.client().list_buckets()["Buckets"]]
        assert store_bucket not in names


# --- 4. per-bank access under the consortium bucket policy ---------------------------------------


def test_bank_writes_only_its_own_update_under_the_consortium_policy(
    ceph_s3: CephS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suffix = uuid.uuid4().hex[:8]
    uid_a, uid_b = f"bank-a-{suffix}", f"bank-b-{suffix}"
    keys_a, keys_b = ceph_s3.create_user(uid_a), ceph_s3.create_user(uid_b)
    bucket = _new_bucket(ceph_s3, "fedlora-consortium")
    policy = consortium_bucket_policy(
        bucket=bucket,
        prefix="consortium",
        coordinator=bank_principal(ceph_s3.admin_uid),
        banks={"bank-a": bank_principal(uid_a), "bank-b": bank_principal(uid_b)},
    )
    ceph_s3.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    run = "run-1"
    config = load_config(
        None,
        [
            *_tiny(tmp_path / "runs", run),
            "federation.banks=[{name: bank-a}, {name: bank-b}]",
            f"store.uri=s3://{bucket}/consortium",
            *_s3_sets(ceph_s3, retry_seconds=5),
        ],
    )
    runtime = Runtime(config)

    # The coordinator (admin) initializes the run: config, round 0 (a spec), ledgers.
    _set_credentials(monkeypatch, ceph_s3.access_key, ceph_s3.secret_key)
    initialize(config, run=run, runtime=runtime)
    coordinator = open_run_store(config, run)
    assert coordinator.exists("rounds/0000/global/meta.json")

    # Bank B publishes its update with its own keys (an S3Store built on its client).
    bank_b = S3Store(bucket=bucket, prefix=f"consortium/{run}", client=ceph_s3.client(*keys_b))
    b_tensors = {k: v + 0.5 for k, v in runtime.initial_adapter.items()}  # round 0: the seeded initial adapter
    b_meta = save_adapter(bank_b, "rounds/0001/updates/bank-b", b_tensors, {"bank": "bank-b", "round": 1})

    # Bank A, with its keys in the environment, runs its real round through the product code
    # (its ledger in its own storage, as its chart sets it; the tiny schedule needs σ < 0.5).
    _set_credentials(monkeypatch, *keys_a)
    side = BankSide(
        ledger_store=LocalStore(tmp_path / "bank-a-ledger"),
        policy=BankPolicy.model_validate({"minNoiseMultiplier": 0}),
        job=True,
    )
    outcome = run_bank_round(config, run=run, bank="bank-a", round_index=1, runtime=runtime, side=side)
    assert isinstance(outcome, BankOutcome) and outcome.status == "ok", outcome
    assert outcome.update_uri == f"s3://{bucket}/consortium/{run}/rounds/0001/updates/bank-a"
    bank_a = open_run_store(config, run)
    assert bank_a.exists("rounds/0001/updates/bank-a/outcome.json")
    assert not bank_a.exists("rounds/0002/MANIFEST.json")  # a missing key is "no", not AccessDenied
    a_update = load_adapter(bank_a, "rounds/0001/updates/bank-a")
    assert a_update.meta["bank"] == "bank-a"

    # ... but cannot write bank B's update, its ledger, or the coordinator's keys.
    forged = {k: torch.zeros_like(v) for k, v in a_update.tensors.items()}
    with pytest.raises(StoreError, match="AccessDenied") as info:
        save_adapter(bank_a, "rounds/0001/updates/bank-b", forged, {"bank": "bank-b", "round": 1})
    assert "rounds/0001/updates/bank-b/adapter.safetensors failed: AccessDenied" in str(info.value)
    assert "not allowed" in str(info.value)
    for key in ["privacy/bank-b.json", "rounds/0001/MANIFEST.json", "rounds/0001/global/meta.json", "config.yaml"]:
        with pytest.raises(StoreError, match="AccessDenied"):
            put_json(bank_a, key, {"forged": True})
    forger = BankSide(ledger_store=LocalStore(tmp_path / "forger-ledger"), policy=side.policy, job=True)
    with pytest.raises(StoreError, match="AccessDenied"):  # training bank B's round with A's keys
        run_bank_round(config, run=run, bank="bank-b", round_index=1, runtime=runtime, side=forger)

    # Bank B's update is unchanged (its sha256 still verifies) and the coordinator reads both.
    _set_credentials(monkeypatch, ceph_s3.access_key, ceph_s3.secret_key)
    coordinator = open_run_store(config, run)
    b_back = load_adapter(coordinator, "rounds/0001/updates/bank-b")
    assert b_back.meta == b_meta
    assert all(torch.equal(b_back.tensors[k], b_tensors[k]) for k in b_tensors)
    assert load_adapter(coordinator, "rounds/0001/updates/bank-a").meta == a_update.meta
    assert get_json(coordinator, "privacy/bank-a.json")["charged_rounds"] == [1]
    assert not coordinator.exists("privacy/bank-b.json")  # B published no report; nobody wrote one for it
    assert not coordinator.exists("rounds/0001/MANIFEST.json")
    assert not coordinator.exists("rounds/0001/updates/bank-b/outcome.json")


# --- 5. S3 outages during a run ------------------------------------------------------------------


class PauseAfterRound:
    """A progress sink that holds the simulation after round ``at`` until the test lets it go."""

    def __init__(self, at: int = 1) -> None:
        self.at = at
        self.reached = threading.Event()
        self.go_on = threading.Event()
        self.records: list[RoundRecord] = []

    def start(self, *, rounds: int, banks: list[str]) -> None:
        return None

    def bank_started(self, *, round_index: int, bank: str) -> None:
        return None

    def bank_finished(self, result: Any, *, round_index: int, bank: str, error: str | None) -> None:
        return None

    def round_finished(self, record: RoundRecord) -> None:
        self.records.append(record)
        if record.round == self.at:
            self.reached.set()
            assert self.go_on.wait(timeout=300)


class Background:
    """``simulate`` in a thread; the gateway is stopped and started from the main thread only
    (the services kill a daemon when the thread that started it exits: PR_SET_PDEATHSIG)."""

    def __init__(self, config: Config, sink: PauseAfterRound, resume: str | None = None) -> None:
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(config, sink, resume), daemon=True)
        self.thread.start()

    def _run(self, config: Config, sink: PauseAfterRound, resume: str | None) -> None:
        try:
            self.result = simulate(config, progress=sink, resume=resume).to_json()
        except BaseException as exc:
            self.error = exc


def _outage_config(ceph: CephS3, tmp_path: Path, bucket: str, run: str, retry_seconds: float) -> Config:
    return load_config(
        None,
        [
            *_tiny(tmp_path / "runs", run),
            f"store.uri=s3://{bucket}/exchange",
            *_s3_sets(ceph, retry_seconds=retry_seconds),
        ],
    )


def _verify_rounds(store: Any, rounds: list[int]) -> None:
    assert committed_rounds(store) == rounds
    assert get_json(store, "rounds/0000/global/meta.json")["round"] == 0
    for r in rounds:
        manifest = get_json(store, f"rounds/{r:04d}/MANIFEST.json")
        assert manifest["round"] == r and manifest["banks"] == BANKS
        assert load_adapter(store, f"rounds/{r:04d}/global").meta["round"] == r
        for bank in BANKS:
            assert load_adapter(store, f"rounds/{r:04d}/updates/{bank}").meta["bank"] == bank


@pytest.fixture
def gateway_back(ceph_s3: CephS3) -> Iterator[None]:
    yield
    ceph_s3.start_gateway()


def test_run_rides_out_a_gateway_outage_between_rounds(
    ceph_s3: CephS3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    gateway_back: None,
) -> None:
    caplog.set_level(logging.WARNING, logger="fedlora.store.s3")
    _set_credentials(monkeypatch, ceph_s3.access_key, ceph_s3.secret_key, ceph_s3.region)
    bucket = _new_bucket(ceph_s3, "fedlora-outage")
    config = _outage_config(ceph_s3, tmp_path, bucket, "outage", retry_seconds=60)
    sink = PauseAfterRound(at=1)
    job = Background(config, sink)
    assert sink.reached.wait(timeout=300), job.error
    admin = ceph_s3.client()
    assert admin.head_object(Bucket=bucket, Key="exchange/outage/rounds/0001/MANIFEST.json")
    ceph_s3.stop_gateway()
    sink.go_on.set()  # round 2 starts against a dead gateway
    time.sleep(5)
    assert job.thread.is_alive() and job.error is None, job.error
    ceph_s3.start_gateway()
    job.thread.join(timeout=300)
    assert not job.thread.is_alive()
    assert job.error is None, repr(job.error)
    assert job.result is not None and [r["round"] for r in job.result["rounds"]] == [1, 2]
    retried = [r.getMessage() for r in caplog.records if "transient S3 error" in r.getMessage()]
    assert retried, "the run never hit the outage"
    store = open_run_store(config, "outage")
    _verify_rounds(store, [1, 2])
    assert load_adapter(store, "final").meta["round"] == 2
    assert get_json(store, "summary.json")["final"]["sha256"] == job.result["final"]["sha256"]
    for bank in BANKS:
        assert get_json(store, f"privacy/{bank}.json")["charged_rounds"] == [1, 2]


def test_run_fails_clearly_when_s3_stays_down_and_resumes_afterwards(
    ceph_s3: CephS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gateway_back: None
) -> None:
    _set_credentials(monkeypatch, ceph_s3.access_key, ceph_s3.secret_key, ceph_s3.region)
    bucket = _new_bucket(ceph_s3, "fedlora-down")
    config = _outage_config(ceph_s3, tmp_path, bucket, "down", retry_seconds=2)
    sink = PauseAfterRound(at=1)
    job = Background(config, sink)
    assert sink.reached.wait(timeout=300), job.error
    admin = ceph_s3.client()
    manifest_key = "exchange/down/rounds/0001/MANIFEST.json"
    manifest_before = admin.get_object(Bucket=bucket, Key=manifest_key)["Body"].read()
    ceph_s3.stop_gateway()
    started = time.monotonic()
    sink.go_on.set()
    job.thread.join(timeout=120)
    assert not job.thread.is_alive()
    assert isinstance(job.error, StoreError), repr(job.error)
    assert "S3 still unavailable after" in str(job.error) and "over 2s" in str(job.error), str(job.error)
    assert f"s3://{bucket}/exchange/down/" in str(job.error)
    assert time.monotonic() - started < 60

    ceph_s3.start_gateway()
    # Round 1 is committed and intact; round 2 is not.
    assert admin.get_object(Bucket=bucket, Key=manifest_key)["Body"].read() == manifest_before
    store = open_run_store(config, "down")
    _verify_rounds(store, [1])
    assert get_json(store, "rounds/0001/MANIFEST.json")["epsilon"] == sink.records[0].epsilon
    assert not store.exists("rounds/0002/MANIFEST.json")
    assert not store.exists("summary.json")

    # Once S3 is back, the run resumes from round 1 and completes.
    summary = simulate(config, resume="down").to_json()
    assert summary["resumed_after_round"] == 1
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    _verify_rounds(store, [1, 2])


def test_resume_against_a_misspelt_bucket_names_the_bucket(
    ceph_s3: CephS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--resume`` probes ``config.yaml`` with exists(), which reads a missing bucket as a missing run.

    The user then hunts for a run that is there, under the bucket they meant; the message
    should say the bucket does not exist (see test_s3_store.py's exists() test).
    """
    _set_credentials(monkeypatch, ceph_s3.access_key, ceph_s3.secret_key, ceph_s3.region)
    typo = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    sets = [f"output.dir={tmp_path / 'runs'}", "tracking.enabled=false", *_s3_sets(ceph_s3, retry_seconds=1)]
    code, output = _run_cli(["simulate", *_sets(sets), "--store", f"s3://{typo}/exchange", "--resume", "e2e"])
    flat = " ".join(output.split())
    assert code == 1, output
    assert f"bucket '{typo}' does not exist" in flat, output
