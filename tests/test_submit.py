"""``fedlora submit`` against an in-process stub of the KFP v2beta1 REST API: the request it sends."""

from __future__ import annotations

import json
import re
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
from fedlora.names import check_name
from fedlora.pipeline.parameters import PARAMETERS
from fedlora.pipeline.pipeline import CREDENTIAL_KEYS
from fedlora.pipeline.submit import Auth, run_arguments, submit
from helpers import JsonHandler


@dataclass
class KfpStub:
    """What the stub saw and what it holds."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    experiments: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    tag_name: str | None = "2.17.0"  # what the API server reports (backend/src/apiserver/main.go); None: no field

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
        if url.path == "/apis/v2beta1/healthz":  # the server's raw JSON: commit_sha, tag_name, multi_user
            health = {"commit_sha": "0123abc", "multi_user": False}
            return self._send(200, health if self.stub.tag_name is None else {**health, "tag_name": self.stub.tag_name})
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
    assert sorted(spec["root"]["dag"]["tasks"]) == ["finalize", "initialize", "round", "round-2"]
    parameters = body["runtime_config"]["parameters"]
    assert set(parameters) == {p.name for p in PARAMETERS}
    assert parameters == json.loads(json.dumps(run_arguments(config) | {"output_run_name": result.run_name}))
    assert re.fullmatch(r"fedlora-\d{8}-\d{6}-[0-9a-f]{4}", parameters["output_run_name"])  # named by submit
    assert result.backend == "2.17.0" and result.warnings == []
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
    name = stub.runs[0]["runtime_config"]["parameters"]["output_run_name"]
    assert stub.runs[0]["display_name"] == name and check_name(name, kind="run") == name


def test_every_submitted_run_gets_its_own_name_unless_the_config_names_it(
    kfp_api: tuple[KfpStub, str], consortium: Path
) -> None:
    """KFP before 2.5 leaves {{$.pipeline_job_name}} unresolved: submit names the runs, so none share a folder."""
    stub, host = kfp_api
    config = load_config(consortium)
    first, second = (submit(config, host=host, run_name="fedlora nightly") for _ in range(2))
    assert first.run_name != second.run_name
    names = [run["runtime_config"]["parameters"]["output_run_name"] for run in stub.runs]
    assert names == [first.run_name, second.run_name]
    assert [run["display_name"] for run in stub.runs] == ["fedlora nightly", "fedlora nightly"]
    resumed = submit(load_config(consortium, ["output.run_name=credit-2026-12"]), host=host)
    assert resumed.run_name == "credit-2026-12"  # the config's name: the run resumes there
    assert stub.runs[-1]["runtime_config"]["parameters"]["output_run_name"] == "credit-2026-12"


@pytest.mark.parametrize(
    ("tag", "secret_keys", "refused", "warned"),
    [
        ("2.2.0", ("AWS_ACCESS_KEY_ID",), "KFP 2.2.0 is older than 2.3.0", None),
        ("2.3.0", (), "KFP 2.3.0 ignores optional Secret keys", None),
        ("2.4.1", ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), None, "does not retry tasks"),
        ("2.5.0", (), "KFP 2.5.0 ignores optional Secret keys", None),
        ("2.15.0", (), None, None),
        ("2.17.0", (), None, None),
        ("unknown", (), None, "not a release"),
    ],
)
def test_submit_reads_the_backend_version_and_refuses_what_cannot_work(
    kfp_api: tuple[KfpStub, str],
    consortium: Path,
    tag: str,
    secret_keys: tuple[str, ...],
    refused: str | None,
    warned: str | None,
) -> None:
    stub, host = kfp_api
    stub.tag_name = tag
    args = ["submit", "--config", str(consortium), "--host", host, "--secret", "exchange"]
    args += [a for key in secret_keys for a in ("--secret-key", key)]
    result = CliRunner().invoke(main, args)
    assert stub.of("GET", "/apis/v2beta1/healthz")
    if refused:
        assert result.exit_code == 2 and refused in result.output, result.output
        assert not stub.of("POST", "/apis/v2beta1/runs")  # nothing created
        return
    assert result.exit_code == 0, result.output
    assert f"on KFP {tag}" in result.output
    assert (warned in result.output) if warned else "warning:" not in result.output
    spec = stub.of("POST", "/apis/v2beta1/runs")[0]["body"]["pipeline_spec"]
    for executor in spec["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
        (secret,) = executor["secretAsEnv"]
        assert [k["secretKey"] for k in secret["keyToEnv"]] == list(secret_keys or CREDENTIAL_KEYS)


def test_a_server_without_a_version_is_submitted_to_with_a_warning(
    kfp_api: tuple[KfpStub, str], consortium: Path
) -> None:
    stub, host = kfp_api
    stub.tag_name = None
    result = submit(load_config(consortium), host=host)
    assert result.backend == "unknown" and "not a release" in result.warnings[0]


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
