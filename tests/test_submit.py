"""``fedlora submit`` against an in-process stub of the KFP v2beta1 REST API: the request it sends."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from click.testing import CliRunner

from fedlora.cli import main
from fedlora.config import load_config
from fedlora.pipeline.parameters import PARAMETERS
from fedlora.pipeline.submit import Auth, run_arguments, submit
from helpers import JsonHandler


@dataclass
class KfpStub:
    """What the stub saw and what it holds."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    experiments: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def of(self, method: str, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and r["path"] == path]


class Handler(JsonHandler):
    stub: KfpStub

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length)) if length else None
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.stub.requests.append(
            {
                "method": method,
                "path": url.path,
                "query": query,
                "body": body,
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
        )
        if url.path == "/apis/v2beta1/healthz":
            return self._send(200, {"multi_user": False})
        if url.path == "/apis/v2beta1/experiments" and method == "GET":
            wanted = json.loads(query["filter"])["predicates"][0]["stringValue"]
            found = [
                e
                for e in self.stub.experiments
                if e["display_name"] == wanted and e.get("namespace") == query.get("namespace")
            ]
            return self._send(200, {"experiments": found, "total_size": len(found)} if found else {})
        if url.path == "/apis/v2beta1/experiments" and method == "POST":
            experiment = {**body, "experiment_id": f"exp-{len(self.stub.experiments) + 1}"}
            self.stub.experiments.append(experiment)
            return self._send(200, experiment)
        if url.path == "/apis/v2beta1/runs" and method == "POST":
            run = {**body, "run_id": f"run-{len(self.stub.runs) + 1}", "state": "PENDING"}
            self.stub.runs.append(run)
            return self._send(200, run)
        return self._send(404, {"error": f"no route {method} {url.path}", "code": 5})


@pytest.fixture
def kfp_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[KfpStub, str]]:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/kfp/context.json from this machine
    for name in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    stub = KfpStub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Bound", (Handler,), {"stub": stub}))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def consortium(tmp_path: Path) -> Path:
    path = tmp_path / "consortium.yaml"
    tree = {
        "privacy": {"target_epsilon": 3.0},
        "federation": {
            "rounds": 2,
            "banks": [{"name": "bank-a", "namespace": "ns-a"}, {"name": "bank-b", "namespace": "ns-b"}],
        },
        "store": {"uri": "s3://exchange/consortium"},
        "tracking": {"uri": "http://mlflow:5000", "experiment": "credit"},
        "kubeflow": {"mode": "namespaced", "control_image": "registry.example/fedlora-control:0.1.0"},
    }
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def test_submit_sends_spec_parameters_experiment_and_namespace(kfp_api: tuple[KfpStub, str], consortium: Path) -> None:
    stub, host = kfp_api
    config = load_config(consortium)
    result = submit(
        config,
        host=host,
        namespace="consortium",
        experiment="credit-risk",
        run_name="fedlora nightly",
        service_account="fedlora-launcher",
        auth=Auth(existing_token="t0ken"),
    )
    assert result.run_id == "run-1"
    assert result.url == f"{host}/#/runs/details/run-1"

    (create_experiment,) = stub.of("POST", "/apis/v2beta1/experiments")
    assert create_experiment["body"]["display_name"] == "credit-risk"
    assert create_experiment["body"]["namespace"] == "consortium"
    (create_run,) = stub.of("POST", "/apis/v2beta1/runs")
    body = create_run["body"]
    assert create_run["headers"]["authorization"] == "Bearer t0ken"
    assert body["experiment_id"] == "exp-1"
    assert body["display_name"] == "fedlora nightly"
    assert body["service_account"] == "fedlora-launcher"
    spec = body["pipeline_spec"]["pipeline_spec"]  # with its Kubernetes platform_spec (pod labels)
    assert body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]
    assert spec["pipelineInfo"]["name"] == "fedlora"
    assert sorted(spec["root"]["dag"]["tasks"]) == ["finalize", "initialize", "round-1", "round-2"]
    assert sorted(spec["components"]["comp-round-1"]["dag"]["tasks"]) == [
        "aggregate-round-1",
        "train-bank-a",
        "train-bank-b",
    ]
    parameters = body["runtime_config"]["parameters"]
    assert set(parameters) == {p.name for p in PARAMETERS}
    assert parameters == json.loads(json.dumps(run_arguments(config)))
    assert parameters["privacy_target_epsilon"] == 3.0
    assert parameters["store_uri"] == "s3://exchange/consortium"
    assert parameters["tracking_uri"] == "http://mlflow:5000"
    assert parameters["kubeflow_mode"] == "namespaced"
    assert parameters["federation_banks"] == ["bank-a", "bank-b"]
    assert parameters["privacy_delta"] == 0.0  # None in the config: 0.1/n
    # caching is off for the run: every task reads and writes the run's store
    for task in spec["root"]["dag"]["tasks"].values():
        assert task.get("cachingOptions", {}).get("enableCache") is not True


def test_existing_experiment_is_reused(kfp_api: tuple[KfpStub, str], consortium: Path) -> None:
    stub, host = kfp_api
    stub.experiments.append({"experiment_id": "exp-42", "display_name": "credit", "namespace": "consortium"})
    submit(load_config(consortium), host=host, namespace="consortium")  # experiment: tracking.experiment
    assert not stub.of("POST", "/apis/v2beta1/experiments")
    (listing,) = stub.of("GET", "/apis/v2beta1/experiments")
    assert listing["query"]["namespace"] == "consortium"
    assert stub.runs[0]["experiment_id"] == "exp-42"
    assert stub.runs[0]["display_name"].startswith("fedlora ")


def test_cli_submit_prints_the_run_url_and_passes_cookies(kfp_api: tuple[KfpStub, str], consortium: Path) -> None:
    stub, host = kfp_api
    result = CliRunner().invoke(
        main,
        [
            "submit",
            "--config",
            str(consortium),
            "--set",
            "privacy.target_epsilon=1.5",
            "--host",
            host,
            "--namespace",
            "consortium",
            "--experiment",
            "credit-risk",
            "--cookies",
            "oauth2_proxy_kubeflow=abc",
            "--service-account",
            "fedlora-pipeline",
            "--ca-bundle",
            "corp-ca",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == f"{host}/#/runs/details/run-1"
    (create_run,) = stub.of("POST", "/apis/v2beta1/runs")
    assert create_run["headers"]["cookie"] == "oauth2_proxy_kubeflow=abc"
    assert create_run["body"]["service_account"] == "fedlora-pipeline"  # not default-editor
    spec = json.dumps(create_run["body"]["pipeline_spec"])
    assert "corp-ca" in spec and "/etc/fedlora/ca" in spec
    assert create_run["body"]["runtime_config"]["parameters"]["privacy_target_epsilon"] == 1.5
    assert stub.experiments[0]["namespace"] == "consortium"


def test_cli_submit_reports_an_unreachable_api(consortium: Path) -> None:
    result = CliRunner().invoke(main, ["submit", "--config", str(consortium), "--host", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "could not create the run" in result.output


def test_cli_submit_help_lists_auth_options() -> None:
    result = CliRunner().invoke(main, ["submit", "--help"])
    assert result.exit_code == 0
    for option in ("--token", "--cookies", "--sa-token-path", "--client-id", "--namespace", "--service-account"):
        assert option in result.output


def test_submit_refuses_the_unpublished_placeholder_image(kfp_api: tuple[KfpStub, str], consortium: Path) -> None:
    stub, host = kfp_api
    result = CliRunner().invoke(
        main, ["submit", "--config", str(consortium), "--set", "kubeflow.control_image=", "--host", host]
    )
    assert result.exit_code == 2
    assert "placeholder nothing publishes" in result.output and "--image" in result.output
    assert not stub.of("POST", "/apis/v2beta1/runs")
