"""The bank Job launcher against an in-process fake of the Kubernetes API.

The fake implements the endpoints the ``kubernetes`` client calls (read ConfigMap, create,
read, watch and delete Jobs, list pods, read pod logs) on an ``http.server`` thread; each
scenario decides how the bank's Job ends. Every manifest the launcher POSTs is validated
against the Kubernetes schemas (``kubernetes-validate``, strict) of two versions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes import client

from fedlora.kube.launcher import BankJobLauncher, JobResult, api_client, job_name, label_value
from kube_fake import FakeCluster, serve

K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
NS = "bank-a"
CM = "fedlora-bank-job-template"


def bank_template() -> dict[str, Any]:
    """What the bank's Helm chart puts in its ConfigMap (no name, no args)."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"labels": {"app.kubernetes.io/instance": "bank-a"}},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": "fedlora-bank-trainer",
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "nodeSelector": {"nvidia.com/gpu.present": "true"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "registry.bank-a.example/fedlora-trainer:0.1.0",
                            "env": [
                                {"name": "FEDLORA_BANK_DATA", "value": "/data/bank"},
                                {"name": "HOME", "value": "/tmp"},
                            ],
                            "resources": {"limits": {"nvidia.com/gpu": "1", "memory": "16Gi"}},
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "tmp", "mountPath": "/tmp"},
                                {"name": "data", "mountPath": "/data/bank", "readOnly": True},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "tmp", "emptyDir": {"sizeLimit": "20Gi"}},
                        {"name": "data", "persistentVolumeClaim": {"claimName": "bank-a-data", "readOnly": True}},
                    ],
                }
            },
        },
    }


@pytest.fixture
def cluster() -> Iterator[tuple[FakeCluster, client.ApiClient]]:
    state = FakeCluster()
    state.add_template(NS, CM, bank_template())
    with serve(state) as api:
        yield state, api


def launch(api: client.ApiClient, lines: list[str], *, timeout: int = 30, template: str = CM) -> JobResult:
    launcher = BankJobLauncher(api, poll_seconds=0.05, watch_seconds=5, log_sink=lines.append)
    return launcher.run(
        namespace=NS,
        template_configmap=template,
        name=job_name(run="run-1", bank="bank-a", round_index=2),
        args=["train-bank", "--run", "run-1", "--bank", "bank-a", "--round", "2"],
        env={"FEDLORA_REQUEST_CONFIG": "seed: 0\n", "FEDLORA_REQUEST_RUN": "run-1"},
        labels={"fedlora.io/run": "run-1", "fedlora.io/bank": "bank-a", "fedlora.io/round": "2"},
        timeout_seconds=timeout,
    )


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


def test_success_creates_watches_streams_logs_and_deletes(cluster: tuple[FakeCluster, client.ApiClient]) -> None:
    state, api = cluster
    lines: list[str] = []
    result = launch(api, lines)
    name = job_name(run="run-1", bank="bank-a", round_index=2)
    assert result.succeeded, result
    assert result.reason == "Complete"
    assert result.name == name and result.namespace == NS
    assert "ε=1.02" in result.logs_tail
    assert any(line.startswith(f"[{NS}/{name}-x7k2p] round 1: step 1/2") for line in lines)
    (posted,) = state.posted
    assert_valid_and_secure(posted)
    trainer = posted["spec"]["template"]["spec"]["containers"][0]
    assert trainer["image"] == "registry.bank-a.example/fedlora-trainer:0.1.0"  # the bank decides
    assert trainer["args"] == ["train-bank", "--run", "run-1", "--bank", "bank-a", "--round", "2"]
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert env["FEDLORA_REQUEST_CONFIG"] == "seed: 0\n" and env["FEDLORA_BANK_DATA"] == "/data/bank"
    assert posted["spec"]["activeDeadlineSeconds"] == 30
    assert posted["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "fedlora-launcher"
    assert posted["metadata"]["labels"]["fedlora.io/round"] == "2"
    assert state.deleted == [(NS, name, {"propagationPolicy": "Background"})]
    assert (NS, name) not in state.jobs
    assert any("watch=true" in path.lower() for _, path in state.requests)


@pytest.mark.parametrize("key", ["false", None])
def test_a_banks_log_stays_in_its_namespace_unless_it_allows_streaming(
    cluster: tuple[FakeCluster, client.ApiClient], key: str | None
) -> None:
    """logs.streamToConsortium=false (the chart's default) or an older ConfigMap without the key: no log is read."""
    state, api = cluster
    state.add_template(NS, "quiet", bank_template(), stream_logs=False)
    if key is None:
        del state.configmaps[(NS, "quiet")]["data"]["streamLogs"]
    state.scenario = "fail"
    state.log_lines = ["column 'credit_amount', row 18: '12345678' is above the maximum"]
    lines: list[str] = []
    result = launch(api, lines, template="quiet")
    assert not result.succeeded and "BackoffLimitExceeded" in result.reason  # the status still comes back
    assert not [path for _, path in state.requests if path.split("?")[0].endswith("/log")]
    assert result.logs_tail == ""
    assert not any("12345678" in line for line in [*lines, result.reason])
    assert any("keeps its Job's log in its namespace" in line for line in lines)


def test_failed_job_is_a_failed_bank_and_is_deleted(cluster: tuple[FakeCluster, client.ApiClient]) -> None:
    state, api = cluster
    state.scenario = "fail"
    result = launch(api, [])
    assert not result.succeeded
    assert result.reason.startswith("BackoffLimitExceeded: Job has reached the specified backoff limit (pod ")
    assert result.reason.endswith(": Failed; trainer exited 1: Error)")
    assert len(state.deleted) == 1 and not state.jobs
    assert_valid_and_secure(state.posted[0])


def test_timeout_stops_and_deletes_the_job(cluster: tuple[FakeCluster, client.ApiClient]) -> None:
    state, api = cluster
    state.scenario = "hang"
    started = time.monotonic()
    result = launch(api, [], timeout=1)
    assert not result.succeeded
    assert result.reason.startswith("timed out after 1 s (pod fedlora-bank-a-r2-")
    assert "Pending; Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu." in result.reason
    assert time.monotonic() - started < 10
    assert state.deleted and state.deleted[0][2] == {"propagationPolicy": "Background"}
    assert not state.jobs
    assert state.posted[0]["spec"]["activeDeadlineSeconds"] == 1  # Kubernetes stops it too
    assert_valid_and_secure(state.posted[0])


def test_watch_expiry_410_is_survived(cluster: tuple[FakeCluster, client.ApiClient]) -> None:
    state, api = cluster
    state.gone_once = True
    result = launch(api, [])
    assert result.succeeded, result
    assert sum("watch=true" in path.lower() for _, path in state.requests) >= 2


def test_running_job_of_a_retried_task_is_adopted(cluster: tuple[FakeCluster, client.ApiClient]) -> None:
    state, api = cluster
    launcher = BankJobLauncher(api)
    name = job_name(run="run-1", bank="bank-a", round_index=2)
    manifest = launcher.render(
        namespace=NS, template_configmap=CM, name=name, args=["train-bank"], env={}, labels={}, timeout_seconds=30
    )
    state.add_job(manifest, scenario="succeed")
    result = launch(api, [])
    assert result.succeeded
    assert len(state.posted) == 1  # the POST answered 409; nothing was re-created
    assert [d[1] for d in state.deleted] == [name]


def test_finished_job_of_an_earlier_attempt_is_replaced(cluster: tuple[FakeCluster, client.ApiClient]) -> None:
    state, api = cluster
    launcher = BankJobLauncher(api)
    name = job_name(run="run-1", bank="bank-a", round_index=2)
    manifest = launcher.render(
        namespace=NS, template_configmap=CM, name=name, args=["train-bank"], env={}, labels={}, timeout_seconds=30
    )
    state.add_job(manifest, scenario="succeed-before")
    state.scenario = "fail"
    result = launch(api, [])
    assert not result.succeeded  # the new attempt's outcome, not the stale success
    assert len(state.posted) == 2
    for posted in state.posted:
        assert_valid_and_secure(posted)


def test_missing_template_is_a_failed_bank_without_a_job(cluster: tuple[FakeCluster, client.ApiClient]) -> None:
    state, api = cluster
    result = launch(api, [], template="no-such-configmap")
    assert not result.succeeded
    assert "not found" in result.reason and "Helm release" in result.reason
    assert not state.posted and not state.deleted


def test_unsafe_template_is_refused_without_a_job(cluster: tuple[FakeCluster, client.ApiClient]) -> None:
    state, api = cluster
    unsafe = bank_template()
    unsafe["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    state.add_template(NS, "unsafe", unsafe)
    result = launch(api, [], template="unsafe")
    assert not result.succeeded and "readOnlyRootFilesystem" in result.reason
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


def _namespaced_config(job_timeout: int = 60) -> Any:
    from fedlora.config import load_config

    return load_config(
        None,
        [
            "federation.banks=[{name: bank-a, namespace: bank-a, job_template: fedlora-bank-job-template}, {name: b2}]",
            "kubeflow.mode=namespaced",
            f"kubeflow.job_timeout_seconds={job_timeout}",
            "store.uri=s3://exchange/consortium",
            "federation.min_banks=1",
        ],
    )


def test_namespaced_step_returns_the_outcome_the_banks_job_published(
    cluster: tuple[FakeCluster, client.ApiClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedlora.config import load_config_text
    from fedlora.pipeline import bank_dispatch
    from fedlora.records import BankOutcome

    state, api = cluster
    published = BankOutcome(bank="bank-a", round=3, status="ok", num_examples=250, epsilon=0.9, steps=12)
    reads: list[tuple[str, str, int]] = []

    def read(config: Any, *, run: str, bank: str, round_index: int) -> BankOutcome:
        reads.append((run, bank, round_index))
        return published

    monkeypatch.setattr(bank_dispatch, "read_bank_outcome", read)
    config = _namespaced_config()
    outcome = bank_dispatch.launch_bank_job(config, run="run-7", bank="bank-a", round_index=3, api=api)
    assert outcome == published
    assert reads == [("run-7", "bank-a", 3)]
    (posted,) = state.posted
    assert_valid_and_secure(posted)
    assert posted["metadata"]["namespace"] == "bank-a"
    assert posted["metadata"]["name"] == job_name(run="run-7", bank="bank-a", round_index=3)
    trainer = posted["spec"]["template"]["spec"]["containers"][0]
    assert trainer["args"] == ["train-bank", "--run", "run-7", "--bank", "bank-a", "--round", "3"]
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert load_config_text(env["FEDLORA_REQUEST_CONFIG"]) == config  # the whole request, nothing else
    assert {n for n in env if n.startswith("FEDLORA_REQUEST_")} == {
        "FEDLORA_REQUEST_CONFIG",
        "FEDLORA_REQUEST_RUN",
        "FEDLORA_REQUEST_BANK",
        "FEDLORA_REQUEST_ROUND",
    }
    assert posted["spec"]["activeDeadlineSeconds"] == 60


def test_namespaced_step_turns_a_failed_job_into_a_failed_bank(
    cluster: tuple[FakeCluster, client.ApiClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedlora.pipeline import bank_dispatch

    state, api = cluster
    state.scenario = "fail"
    state.log_lines = ["loading model", "CUDA error: out of memory"]

    def nothing(*args: Any, **kwargs: Any) -> Any:
        raise FileNotFoundError("rounds/0001/updates/bank-a/outcome.json")

    monkeypatch.setattr(bank_dispatch, "read_bank_outcome", nothing)
    outcome = bank_dispatch.launch_bank_job(_namespaced_config(), run="run-7", bank="bank-a", round_index=1, api=api)
    assert outcome.status == "failed" and outcome.bank == "bank-a" and outcome.round == 1
    assert "BackoffLimitExceeded" in outcome.message and "CUDA error: out of memory" in outcome.message
    assert not state.jobs  # cleaned up


def test_namespaced_step_bank_without_helm_release(cluster: tuple[FakeCluster, client.ApiClient]) -> None:
    from fedlora.pipeline import bank_dispatch

    state, api = cluster
    outcome = bank_dispatch.launch_bank_job(_namespaced_config(), run="run-7", bank="b2", round_index=1, api=api)
    assert outcome.status == "failed"
    assert "configmap b2/fedlora-bank-job-template" in outcome.message and "Helm release" in outcome.message
    assert not state.posted


def test_logs_of_a_job_that_ends_at_once_are_read_before_deletion(
    cluster: tuple[FakeCluster, client.ApiClient],
) -> None:
    state, api = cluster
    state.run_seconds = 0.0
    lines: list[str] = []
    result = launch(api, lines)
    assert result.succeeded and "ε=1.02" in result.logs_tail and len(lines) == 3
    order = [method for method, path in state.requests if method == "DELETE" or path.split("?")[0].endswith("/log")]
    assert order[-1] == "DELETE" and "GET" in order


def test_namespaced_step_outside_a_cluster_is_a_failed_bank(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedlora.pipeline import bank_dispatch

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    outcome = bank_dispatch.launch_bank_job(_namespaced_config(), run="r", bank="bank-a", round_index=1)
    assert outcome.status == "failed" and "no access to the Kubernetes API" in outcome.message


def test_namespaced_step_keeps_an_outcome_published_before_the_job_failed(
    cluster: tuple[FakeCluster, client.ApiClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedlora.pipeline import bank_dispatch
    from fedlora.records import BankOutcome

    state, api = cluster
    state.scenario = "fail"  # e.g. the pod was evicted after it had published its update
    published = BankOutcome(bank="bank-a", round=2, status="ok", num_examples=80)
    monkeypatch.setattr(bank_dispatch, "read_bank_outcome", lambda *a, **k: published)
    outcome = bank_dispatch.launch_bank_job(_namespaced_config(), run="r", bank="bank-a", round_index=2, api=api)
    assert outcome == published


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
