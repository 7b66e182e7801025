"""An in-process fake of the Kubernetes API endpoints the bank agent's Job launcher calls (not a test file).

Read ConfigMaps, create/read/watch/delete Jobs, list pods and read pod logs, served by
``http.server`` on a thread; ``FakeCluster.scenario`` decides how new Jobs end. Every request is
recorded (``requests``), so a test can show what the agent never asks for (logs, deletes).
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml
from kubernetes import client

from fedlora.kube.job_template import TEMPLATE_KEY, TEMPLATE_LABELS
from helpers import JsonHandler


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


@contextmanager
def serve(state: FakeCluster) -> Iterator[client.ApiClient]:
    """Serve ``state`` on a loopback port; yield a ``kubernetes`` API client pointed at it."""
    handler = type("BoundHandler", (Handler,), {"cluster": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield client.ApiClient(configuration)
    finally:
        server.shutdown()
        server.server_close()
