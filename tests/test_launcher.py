"""The bank Job launcher against an in-process fake of the Kubernetes API.

The fake implements the endpoints the ``kubernetes`` client calls (read ConfigMap, create,
read, watch and delete Jobs, list pods, read pod logs) on an ``http.server`` thread; each
scenario decides how the bank's Job ends. Every manifest the launcher POSTs is validated
against the Kubernetes schemas (``kubernetes-validate``, strict) of two versions.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import kubernetes_validate
import pytest
import yaml
from kubernetes import client

from fedlora.kube.job_template import TEMPLATE_KEY, TEMPLATE_LABELS
from fedlora.kube.launcher import BankJobLauncher, JobResult, api_client, job_name, label_value
from helpers import JsonHandler

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


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeCluster:
    """State of the fake API server. ``scenario`` decides how new Jobs end: succeed, fail or hang."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.posted: list[dict[str, Any]] = []
        self.deleted: list[tuple[str, str, dict[str, Any]]] = []
        self.requests: list[tuple[str, str]] = []
        self.scenario = "succeed"
        self.run_seconds = 0.4
        self.gone_once = False  # the first watch answers 410 Gone
        self.log_lines = ["loading model", "round 1: step 1/2 loss 0.6931", "round 1: done, ε=1.02"]
        self.version = 100

    def add_template(self, namespace: str, name: str, manifest: dict[str, Any]) -> None:
        self.configmaps[(namespace, name)] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(TEMPLATE_LABELS)},
            "data": {TEMPLATE_KEY: yaml.safe_dump(manifest)},
        }

    def next_version(self) -> str:
        self.version += 1
        return str(self.version)

    def add_job(self, manifest: dict[str, Any], *, scenario: str | None = None) -> None:
        ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        job = copy.deepcopy(manifest)
        job["metadata"] |= {
            "uid": f"uid-{name}",
            "creationTimestamp": _now(),
            "resourceVersion": self.next_version(),
        }
        job["spec"]["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": f"uid-{name}"}}
        self.jobs[(ns, name)] = {"object": job, "created": time.monotonic(), "scenario": scenario or self.scenario}

    def job(self, ns: str, name: str) -> dict[str, Any] | None:
        entry = self.jobs.get((ns, name))
        if entry is None:
            return None
        obj = copy.deepcopy(entry["object"])
        done = entry["scenario"] in ("succeed", "fail") and time.monotonic() - entry["created"] >= self.run_seconds
        if entry["scenario"] == "succeed-before":
            done = True
        if not done:
            obj["status"] = {"active": 1, "startTime": obj["metadata"]["creationTimestamp"]}
        elif entry["scenario"] in ("succeed", "succeed-before"):
            obj["status"] = {
                "succeeded": 1,
                "conditions": [
                    {"type": "SuccessCriteriaMet", "status": "True"},
                    {"type": "Complete", "status": "True", "lastTransitionTime": _now()},
                ],
            }
        else:
            obj["status"] = {
                "failed": 1,
                "conditions": [
                    {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"},
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit",
                    },
                ],
            }
        if done:
            obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        return obj

    def pod(self, ns: str, job_name: str) -> dict[str, Any] | None:
        job = self.job(ns, job_name)
        if job is None:
            return None
        conditions = {c["type"] for c in job.get("status", {}).get("conditions", [])}
        phase = "Succeeded" if "Complete" in conditions else "Failed" if "Failed" in conditions else "Running"
        status: dict[str, Any] = {"phase": phase}
        if phase == "Failed":
            terminated = {"exitCode": 1, "reason": "Error"}
            status["containerStatuses"] = [
                {
                    "name": "trainer",
                    "image": "registry.bank-a.example/fedlora-trainer:0.1.0",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"terminated": terminated},
                }
            ]
        if self.jobs[(ns, job_name)]["scenario"] == "hang":  # no GPU node free
            status = {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                    }
                ],
            }
        template = job["spec"]["template"]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{job_name}-x7k2p",
                "namespace": ns,
                "labels": {**template["metadata"]["labels"], "job-name": job_name},
                "creationTimestamp": job["metadata"]["creationTimestamp"],
            },
            "spec": template["spec"],
            "status": status,
        }


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


class Handler(JsonHandler):
    cluster: FakeCluster

    def _stream(self, lines: Iterator[str], content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Connection", "close")
        self.end_headers()
        for line in lines:
            self.wfile.write(line.encode() + b"\n")
            self.wfile.flush()
        self.close_connection = True

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        cluster = self.cluster
        cluster.requests.append((method, self.path))
        # /api/v1/namespaces/{ns}/configmaps/{name}
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 6 and parts[4] == "configmaps":
            cm = cluster.configmaps.get((parts[3], parts[5]))
            if cm is None:
                return self._send(404, _status(404, "NotFound", f'configmaps "{parts[5]}" not found'))
            return self._send(200, cm)
        # /api/v1/namespaces/{ns}/pods?labelSelector=job-name=X
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 5 and parts[4] == "pods":
            selector = query.get("labelSelector", "")
            assert selector.startswith("job-name="), selector
            pod = cluster.pod(parts[3], selector.removeprefix("job-name="))
            items = [pod] if pod else []
            return self._send(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
        # /api/v1/namespaces/{ns}/pods/{pod}/log
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 7 and parts[6] == "log":
            assert query.get("container") == "trainer"
            return self._stream(iter(cluster.log_lines), "text/plain")
        # /apis/batch/v1/namespaces/{ns}/jobs[/{name}]
        if parts[:4] == ["apis", "batch", "v1", "namespaces"] and parts[5:6] == ["jobs"]:
            ns = parts[4]
            name = parts[6] if len(parts) > 6 else None
            if method == "POST":
                length = int(self.headers.get("Content-Length", "0"))
                manifest = json.loads(self.rfile.read(length))
                cluster.posted.append(manifest)
                key = (ns, manifest["metadata"]["name"])
                if key in cluster.jobs:
                    return self._send(409, _status(409, "AlreadyExists", f'jobs.batch "{key[1]}" already exists'))
                cluster.add_job(manifest)
                return self._send(201, cluster.job(*key))
            if method == "DELETE" and name:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length)) if length else {}
                cluster.deleted.append((ns, name, body))
                if cluster.jobs.pop((ns, name), None) is None:
                    return self._send(404, _status(404, "NotFound", f'jobs.batch "{name}" not found'))
                return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
            if method == "GET" and name:
                job = cluster.job(ns, name)
                if job is None:
                    return self._send(404, _status(404, "NotFound", f'jobs.batch "{name}" not found'))
                return self._send(200, job)
            if method == "GET" and query.get("watch", "").lower() == "true":
                return self._stream(self._watch(ns, query), "application/json")
        return self._send(404, _status(404, "NotFound", f"no route for {method} {url.path}"))

    def _watch(self, ns: str, query: dict[str, str]) -> Iterator[str]:
        cluster = self.cluster
        if cluster.gone_once:
            cluster.gone_once = False
            yield json.dumps({"type": "ERROR", "object": _status(410, "Expired", "too old resource version")})
            return
        name = query["fieldSelector"].removeprefix("metadata.name=")
        deadline = time.monotonic() + float(query.get("timeoutSeconds", "30"))
        while time.monotonic() < deadline:
            job = cluster.job(ns, name)
            if job is None:
                return
            if job.get("status", {}).get("conditions"):
                yield json.dumps({"type": "MODIFIED", "object": job})
                return
            time.sleep(0.05)


@pytest.fixture
def cluster() -> Iterator[tuple[FakeCluster, client.ApiClient]]:
    state = FakeCluster()
    state.add_template(NS, CM, bank_template())
    handler = type("BoundHandler", (Handler,), {"cluster": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
    api = client.ApiClient(configuration)
    try:
        yield state, api
    finally:
        server.shutdown()
        server.server_close()


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
    from fedlora.federation import BankOutcome
    from fedlora.pipeline import steps

    state, api = cluster
    published = BankOutcome(bank="bank-a", round=3, status="ok", num_examples=250, epsilon=0.9, loss=0.61)
    reads: list[tuple[str, str, int]] = []

    def read(config: Any, *, run: str, bank: str, round_index: int) -> BankOutcome:
        reads.append((run, bank, round_index))
        return published

    monkeypatch.setattr(steps, "read_bank_outcome", read)
    config = _namespaced_config()
    outcome = steps.run_bank_job(config, run="run-7", bank="bank-a", round_index=3, api=api)
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
    from fedlora.pipeline import steps

    state, api = cluster
    state.scenario = "fail"
    state.log_lines = ["loading model", "CUDA error: out of memory"]

    def nothing(*args: Any, **kwargs: Any) -> Any:
        raise FileNotFoundError("rounds/0001/updates/bank-a/outcome.json")

    monkeypatch.setattr(steps, "read_bank_outcome", nothing)
    outcome = steps.run_bank_job(_namespaced_config(), run="run-7", bank="bank-a", round_index=1, api=api)
    assert outcome.status == "failed" and outcome.bank == "bank-a" and outcome.round == 1
    assert "BackoffLimitExceeded" in outcome.message and "CUDA error: out of memory" in outcome.message
    assert not state.jobs  # cleaned up


def test_namespaced_step_bank_without_helm_release(cluster: tuple[FakeCluster, client.ApiClient]) -> None:
    from fedlora.pipeline import steps

    state, api = cluster
    outcome = steps.run_bank_job(_namespaced_config(), run="run-7", bank="b2", round_index=1, api=api)
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
    from fedlora.pipeline import steps

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    outcome = steps.run_bank_job(_namespaced_config(), run="r", bank="bank-a", round_index=1)
    assert outcome.status == "failed" and "no access to the Kubernetes API" in outcome.message


def test_namespaced_step_keeps_an_outcome_published_before_the_job_failed(
    cluster: tuple[FakeCluster, client.ApiClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedlora.federation import BankOutcome
    from fedlora.pipeline import steps

    state, api = cluster
    state.scenario = "fail"  # e.g. the pod was evicted after it had published its update
    published = BankOutcome(bank="bank-a", round=2, status="ok", num_examples=80)
    monkeypatch.setattr(steps, "read_bank_outcome", lambda *a, **k: published)
    assert steps.run_bank_job(_namespaced_config(), run="r", bank="bank-a", round_index=2, api=api) == published


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
