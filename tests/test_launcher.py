"""The bank agent's Job launcher and ``job`` executor against an in-process fake of the Kubernetes API.

The fake implements the endpoints the ``kubernetes`` client calls (read ConfigMap, create, read,
watch and delete Jobs, list pods, read pod logs) on an ``http.server`` thread and records every
request; each scenario decides how the bank's Job ends. Every manifest the agent POSTs is validated
against the Kubernetes schemas (``kubernetes-validate``, strict) of two versions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes import client

from fedlora.bank_agent import RoundRequest
from fedlora.config import Config, config_to_yaml, load_config
from fedlora.kube.agent_jobs import JobExecutor, JobLaunchError, request_args
from fedlora.kube.launcher import BankJobLauncher, api_client, job_name, label_value, own_namespace
from fedlora.names import InvalidName
from kube_fake import FakeCluster, bank_template, serve

K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
NS = "bank-a"
CM = "fedlora-bank-job-template"


@pytest.fixture
def cluster() -> Iterator[tuple[FakeCluster, client.ApiClient]]:
    state = FakeCluster()
    state.add_template(NS, CM, bank_template())
    with serve(state) as api:
        yield state, api


def _config(tmp_path: Path) -> Config:
    return load_config(
        None, ["federation.banks=[{name: bank-a}, {name: bank-b}]", "kubeflow.mode=pull", f"store.uri={tmp_path}/x"]
    )


def request(tmp_path: Path, *, run: str = "run-7", bank: str = "bank-a", round_index: int = 3) -> RoundRequest:
    config = _config(tmp_path)
    return RoundRequest(run=run, bank=bank, round_index=round_index, config_text=config_to_yaml(config), config=config)


def executor(api: client.ApiClient, template: str = CM) -> JobExecutor:
    return JobExecutor(BankJobLauncher(api, namespace=NS, template_configmap=template))


def assert_valid_and_secure(manifest: dict[str, Any]) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(manifest, version, strict=True)
    pod = manifest["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (trainer,) = pod["containers"]
    sc = trainer["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert not sc.get("privileged")
    writable = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounts = {m["mountPath"]: m["name"] for m in trainer["volumeMounts"]}
    assert mounts["/tmp"] in writable  # scratch space under a read-only root


def _outcome(tmp_path: Path, run: str, bank: str, round_index: int) -> dict[str, Any] | None:
    path = tmp_path / "x" / run / f"rounds/{round_index:04d}/updates/{bank}/outcome.json"
    return json.loads(path.read_text()) if path.exists() else None


def test_the_job_is_the_banks_template_filled_with_run_bank_round_and_config_only(
    cluster: tuple[FakeCluster, client.ApiClient], tmp_path: Path
) -> None:
    state, api = cluster
    wanted = request(tmp_path)
    assert executor(api).take(wanted) is None  # created; the pass does not wait for it
    (posted,) = state.posted
    assert_valid_and_secure(posted)
    name = job_name(run="run-7", bank="bank-a", round_index=3)
    assert posted["metadata"]["name"] == name and posted["metadata"]["namespace"] == NS
    template = bank_template()
    pod, bank_pod = posted["spec"]["template"]["spec"], template["spec"]["template"]["spec"]
    (trainer,) = pod["containers"]
    assert trainer["args"] == ["train-bank", "--run", "run-7", "--bank", "bank-a", "--round", "3"]
    request_env = {e["name"]: e["value"] for e in trainer["env"] if e["name"].startswith("FEDLORA_REQUEST_")}
    assert request_env == {
        "FEDLORA_REQUEST_CONFIG": wanted.config_text,
        "FEDLORA_REQUEST_RUN": "run-7",
        "FEDLORA_REQUEST_BANK": "bank-a",
        "FEDLORA_REQUEST_ROUND": "3",
    }
    # everything else is the bank's template, untouched: the request shapes nothing in the pod
    trainer.pop("args")
    trainer["env"] = [e for e in trainer["env"] if not e["name"].startswith("FEDLORA_REQUEST_")]
    assert pod == bank_pod
    assert "activeDeadlineSeconds" not in posted["spec"]  # the bank's template decides the deadline
    assert posted["spec"]["ttlSecondsAfterFinished"] == 3600
    labels = posted["metadata"]["labels"]
    assert labels["app.kubernetes.io/instance"] == "bank-a"  # the bank's labels stay
    assert labels["app.kubernetes.io/managed-by"] == "fedlora-bank-agent"
    assert (labels["fedlora.io/run"], labels["fedlora.io/bank"], labels["fedlora.io/round"]) == ("run-7", "bank-a", "3")


def test_a_second_pass_creates_no_second_job_and_a_running_job_needs_nothing(
    cluster: tuple[FakeCluster, client.ApiClient], tmp_path: Path
) -> None:
    state, api = cluster
    state.scenario = "hang"
    agent = executor(api)
    assert agent.take(request(tmp_path)) is None
    assert agent.take(request(tmp_path)) is None  # the create answers 409 AlreadyExists: the round is taken
    assert list(state.jobs) == [(NS, job_name(run="run-7", bank="bank-a", round_index=3))]
    assert _outcome(tmp_path, "run-7", "bank-a", 3) is None
    # the agent never reads a pod's log and never deletes a Job (the template's TTL does)
    assert not [p for m, p in state.requests if m == "DELETE" or p.split("?")[0].endswith("/log")]


def test_a_failed_job_without_an_outcome_gets_a_published_failed_outcome(
    cluster: tuple[FakeCluster, client.ApiClient], tmp_path: Path
) -> None:
    state, api = cluster
    state.scenario, state.run_seconds = "fail", 0.0
    state.log_lines = ["column 'credit_amount', row 18: '12345678' is above the maximum"]
    agent = executor(api)
    assert agent.take(request(tmp_path)) is None  # created
    outcome = agent.take(request(tmp_path))  # a later pass: the Job has failed, nothing was published
    assert outcome is not None and outcome.status == "failed" and (outcome.bank, outcome.round) == ("bank-a", 3)
    name = job_name(run="run-7", bank="bank-a", round_index=3)
    assert outcome.message == f"bank bank-a round 3: trainer job {name} failed (BackoffLimitExceeded)"
    assert _outcome(tmp_path, "run-7", "bank-a", 3) == outcome.to_json()
    assert "12345678" not in json.dumps(outcome.to_json())
    assert len(state.jobs) == 1 and not state.deleted  # kept for the bank (logs, events) until its TTL


def test_a_completed_job_publishes_nothing_more(cluster: tuple[FakeCluster, client.ApiClient], tmp_path: Path) -> None:
    state, api = cluster
    state.run_seconds = 0.0
    agent = executor(api)
    assert agent.take(request(tmp_path)) is None
    assert agent.take(request(tmp_path)) is None  # Complete: the Job published its own outcome
    assert _outcome(tmp_path, "run-7", "bank-a", 3) is None


def test_missing_or_unsafe_template_creates_no_job(
    cluster: tuple[FakeCluster, client.ApiClient], tmp_path: Path
) -> None:
    state, api = cluster
    with pytest.raises(JobLaunchError, match=r"configmap bank-a/no-such-configmap(.|\n)*Helm release"):
        executor(api, "no-such-configmap").take(request(tmp_path))
    unsafe = bank_template()
    unsafe["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    state.add_template(NS, "unsafe", unsafe)
    with pytest.raises(JobLaunchError, match="readOnlyRootFilesystem"):
        executor(api, "unsafe").take(request(tmp_path))
    assert not state.posted


@pytest.mark.parametrize(
    ("run", "bank", "round_index"),
    [("../x", "bank-a", 1), ("A_b", "bank-a", 1), ("run-1", "bank/a", 1), ("run-1", "bank-a", 0)],
)
def test_a_request_that_is_not_identifiers_never_becomes_a_job(
    cluster: tuple[FakeCluster, client.ApiClient], tmp_path: Path, run: str, bank: str, round_index: int
) -> None:
    state, api = cluster
    with pytest.raises((InvalidName, ValueError)):
        executor(api).take(request(tmp_path, run=run, bank=bank, round_index=round_index))
    with pytest.raises((InvalidName, ValueError)):
        request_args(request(tmp_path, run=run, bank=bank, round_index=round_index))
    assert not state.posted


@pytest.mark.parametrize(
    ("run", "bank", "round_index"),
    [("run-1", "bank-a", 1), ("Run_2026/11/26 10:00", "b" * 63, 120), ("x" * 300, "bank-c", 3)],
)
def test_job_names_are_dns_labels_and_unique(run: str, bank: str, round_index: int) -> None:
    name = job_name(run=run, bank=bank, round_index=round_index)
    assert len(name) <= 63
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}, K8S_VERSIONS[0], strict=True
    )
    assert name != job_name(run=run + "x", bank=bank, round_index=round_index)
    assert name != job_name(run=run, bank=bank, round_index=round_index + 1)
    value = label_value(run)
    assert len(value) <= 63 and (value == run or not value.endswith("-"))


def test_own_namespace_from_the_service_account_mount(tmp_path: Path) -> None:
    (tmp_path / "namespace").write_text("bank-a\n")
    assert own_namespace(tmp_path / "namespace") == "bank-a"
    assert own_namespace(tmp_path / "missing") is None


def test_api_client_from_a_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"token": "abc"}}],
                "contexts": [{"name": "consortium", "context": {"cluster": "c", "user": "u", "namespace": "x"}}],
                "current-context": "consortium",
            }
        ),
        encoding="utf-8",
    )
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert api_client().configuration.host == "https://10.0.0.1:6443"
    assert api_client(str(kubeconfig), context="consortium").configuration.api_key["authorization"] == "Bearer abc"
