"""The built images, run for real with podman (``pytest -m images``; build them first: scripts/build-images.sh).

Deselected by the default ``pytest`` run (``-m "not images"`` in pyproject's addopts); scripts/test-images.sh builds
the images and runs these. A missing image or podman fails the test, it does not skip.

* the control image compiles the pipeline, and runs the ``initialize`` and ``aggregate`` task bodies (what the
  Kubeflow components call) against an exchange directory mounted into it;
* the CPU trainer image runs one real bank round per bank (``fedlora train-bank``, tiny-bert, German Credit rows)
  the way the bank's Job runs it (helm/fedlora-bank/templates/_job.tpl): read-only root filesystem, uid 10001,
  every capability dropped, no new privileges, no network, emptyDirs at /tmp and /cache, the bank's environment,
  its data mounted read-only and its ledger mounted read-write.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedlora import __version__
from fedlora.images import CONTROL_IMAGE, TRAINER_IMAGE
from helpers import BANK_TEST_POLICY, german_rows

pytestmark = pytest.mark.images

CONTROL = os.environ.get("FEDLORA_CONTROL_IMAGE", CONTROL_IMAGE)
TRAINER = os.environ.get("FEDLORA_TRAINER_IMAGE", f"{TRAINER_IMAGE}-cpu")
UID = 10001
BANKS = ("bank-a", "bank-b")

# The pod's hardening, as the chart's securityContext sets it (the Kubeflow tasks get the same here).
HARDENED = [
    "--read-only",
    "--user",
    f"{UID}:{UID}",
    "--cap-drop",
    "all",
    "--security-opt",
    "no-new-privileges",
    "--network",
    "none",
    "--tmpfs",
    "/tmp:rw,size=1g",
]


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``podman --runtime runc ARGS`` (runc: crun fails on these cgroup-v1-hybrid machines)."""
    result = subprocess.run(
        ["podman", "--runtime", "runc", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args[:3])} ... exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="module", autouse=True)
def images_built() -> None:
    """Fail (never skip) when podman or an image is missing: the test's point is that the images exist."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run scripts/build-images.sh (it installs podman and builds the images)")
    for ref in (CONTROL, TRAINER):
        if podman("image", "exists", ref, check=False).returncode != 0:
            pytest.fail(f"image {ref} is missing: run scripts/build-images.sh")


def owned_dir(path: Path) -> Path:
    """A host directory the containers' user (uid 10001) may write, as an emptyDir or PVC with fsGroup is."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, UID, UID)
    return path


def run_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The last stdout line as JSON (fedlora commands and the drivers below print their result last)."""
    lines = result.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("{"), f"no JSON result:\n{result.stdout}\n{result.stderr}"
    return json.loads(lines[-1])


@pytest.mark.parametrize("ref", [CONTROL, TRAINER])
def test_image_is_labelled_non_root_and_has_no_compiler(ref: str) -> None:
    info = json.loads(podman("image", "inspect", ref).stdout)[0]
    labels = info["Config"]["Labels"]
    assert info["Config"]["User"] == f"{UID}:{UID}"
    assert labels["org.opencontainers.image.version"] == __version__
    assert len(labels["org.opencontainers.image.revision"]) == 40
    for key in ("title", "source", "licenses", "created"):
        assert labels[f"org.opencontainers.image.{key}"]
    probe = podman(
        "run", "--rm", *HARDENED, "--entrypoint", "sh", ref, "-c",
        "id -u; for c in gcc cc c++ clang make ld as; do command -v $c; done; "
        "python3 -c 'import fedlora; print(fedlora.__version__)'; touch /opt/fedlora/x 2>/dev/null || echo read-only",
    )  # fmt: skip
    assert probe.stdout.split() == [str(UID), __version__, "read-only"], probe.stdout + probe.stderr


def test_trainer_image_runs_the_banks_agent_up_to_the_kubernetes_api(tmp_path: Path) -> None:
    """The chart's agent CronJob runs the trainer image; its Job executor needs the Kubernetes client in it."""
    exchange = owned_dir(tmp_path / "exchange")
    result = podman(
        "run", "--rm", *HARDENED, "--env", "FEDLORA_STORE_URI=/exchange", "-v", f"{exchange}:/exchange", TRAINER,
        "bank-agent", "--bank", "bank-a", "--once", "--executor", "job", "--job-template", "fedlora-trainer",
        "--namespace", "bank-a",
        check=False,
    )  # fmt: skip
    # No cluster here: the agent gets as far as loading the API configuration (an ImportError would exit 1).
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no access to the Kubernetes API (ConfigException)" in result.stderr, result.stderr


def test_control_image_compiles_the_pipeline_for_its_own_reference(tmp_path: Path) -> None:
    out = owned_dir(tmp_path / "out")
    podman(
        "run", "--rm", *HARDENED, "-v", f"{out}:/out", CONTROL,
        "fedlora", "compile", "-o", "/out/pipeline.yaml", "--image", CONTROL, "--components", "/out/components",
    )  # fmt: skip
    spec = next(yaml.safe_load_all((out / "pipeline.yaml").read_text()))  # then the platform (Kubernetes) spec
    executors = spec["deploymentSpec"]["executors"]
    assert executors and {e["container"]["image"] for e in executors.values()} == {CONTROL}
    assert sorted(p.name for p in (out / "components").iterdir())  # the reusable components were written too


def config_overrides() -> list[str]:
    """Two banks, one round, tiny random encoder on German Credit, the exchange at /exchange, no tracking."""
    return [
        "data.dataset=german_credit",
        "model.schema_features=false",
        "model.name=tiny-bert",
        "federation.rounds=1",
        "federation.banks=[{name: bank-a}, {name: bank-b}]",
        "training.local_steps=2",
        "training.batch_size=16",
        "tracking.enabled=false",
        "store.uri=/exchange",
        "output.dir=/tmp/runs",
        "output.run_name=r1",
    ]


INITIALIZE = """
import json, os, types
from fedlora.config import config_to_yaml, load_config
from fedlora.pipeline.task_bodies import initialize_step
base = config_to_yaml(load_config(None, json.loads(os.environ["OVERRIDES"])))
config_yaml, run = initialize_step(
    base_config=base, parameters={}, kfp_run_name="images-test", plan=types.SimpleNamespace(path="/io/plan.md")
)
open("/io/run-config.yaml", "w").write(config_yaml)
print(json.dumps({"run": run}))
"""

AGGREGATE = """
import json, types
from fedlora.pipeline.task_bodies import aggregate_step
class Out:
    def __init__(self): self.values = {}
    def log_metric(self, name, value): self.values[name] = value
    def log_roc_curve(self, fpr, tpr, threshold): self.values["roc_points"] = len(fpr)
metrics, roc = Out(), Out()  # KFP's Output[Metrics] and Output[ClassificationMetrics]
record = aggregate_step(
    config_yaml=open("/io/run-config.yaml").read(), run="r1", round_index=1, metrics=metrics, roc=roc,
    summary=types.SimpleNamespace(path="/io/round-1.md"),
)
print(json.dumps({"record": json.loads(record), "metrics": metrics.values, "roc": roc.values}))
"""


def bank_job(bank: str, request_config: str, data: Path, ledger: Path, exchange: Path) -> dict[str, Any]:
    """Run BANK's round-1 Job in the CPU trainer image as the chart's Job template runs it."""
    env = {
        # the bank's own settings (its Helm values)
        "FEDLORA_BANK_NAME": bank,
        "FEDLORA_BANK_DATA": "/data/bank/credit.csv",
        "FEDLORA_BANK_LEDGER": "/var/lib/fedlora/ledger",
        "FEDLORA_BANK_DATASET_ID": f"{bank}-credit",
        "FEDLORA_BANK_POLICY": BANK_TEST_POLICY,
        "FEDLORA_STORE_URI": "/exchange",
        "HOME": "/tmp",
        "XDG_CACHE_HOME": "/cache",
        "HF_HOME": "/cache/huggingface",
        "FEDLORA_CACHE": "/cache/fedlora",
        "MPLCONFIGDIR": "/tmp/matplotlib",
        "HF_HUB_OFFLINE": "1",
        # the request the bank's agent copies into the Job
        "FEDLORA_REQUEST_CONFIG": request_config,
        "FEDLORA_REQUEST_RUN": "r1",
        "FEDLORA_REQUEST_BANK": bank,
        "FEDLORA_REQUEST_ROUND": "1",
    }
    env_args = [arg for name, value in env.items() for arg in ("--env", f"{name}={value}")]
    result = podman(
        "run", "--rm", *HARDENED, "--tmpfs", "/cache:rw,size=1g", *env_args,
        "-v", f"{data}:/data/bank:ro", "-v", f"{ledger}:/var/lib/fedlora/ledger", "-v", f"{exchange}:/exchange",
        TRAINER, "train-bank", "--run", "r1", "--bank", bank, "--round", "1",
    )  # fmt: skip
    return run_json(result)


def test_one_round_across_the_images_as_the_cluster_runs_it(tmp_path: Path) -> None:
    exchange = owned_dir(tmp_path / "exchange")
    io = owned_dir(tmp_path / "io")
    control = ["run", "--rm", *HARDENED, "-v", f"{exchange}:/exchange", "-v", f"{io}:/io", CONTROL]

    init = run_json(podman(*control[:-1], "--env", f"OVERRIDES={json.dumps(config_overrides())}", CONTROL,
                           "python3", "-c", INITIALIZE))  # fmt: skip
    assert init == {"run": "r1"}
    request_config = (io / "run-config.yaml").read_text()
    assert "/exchange" in request_config and (io / "plan.md").read_text().strip()

    ledgers = {}
    for index, bank in enumerate(BANKS):
        data = tmp_path / f"{bank}-data"
        data.mkdir()
        german_rows(data / "credit.csv", rows=200, start=200 * index)
        ledgers[bank] = owned_dir(tmp_path / f"{bank}-ledger")
        outcome = bank_job(bank, request_config, data, ledgers[bank], exchange)
        assert outcome["status"] == "ok", outcome
        assert outcome["bank"] == bank and outcome["round"] == 1
        assert 0 < outcome["epsilon"] <= 8 and outcome["steps"] > 0

    result = run_json(podman(*control, "python3", "-c", AGGREGATE))
    record, metrics = result["record"], result["metrics"]
    assert record["round"] == 1 and sorted(record["banks"]) == list(BANKS), record
    assert not record["failed"] and not record["rejected"] and not record["refused"], record
    assert metrics["banks_accepted"] == len(BANKS) and metrics["banks_failed"] == 0, metrics
    assert all(0 < metrics[f"epsilon_{bank}"] <= 8 for bank in BANKS), metrics
    assert (io / "round-1.md").read_text().strip()

    # Each bank's ledger holds its charge, in its own storage; the exchange holds adapters and JSON, never rows.
    for bank in BANKS:
        assert any(p.is_file() for p in ledgers[bank].rglob("*")), f"{bank}'s ledger is empty"
    published = [p for p in exchange.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in published)
    assert {p.suffix for p in published} <= {".safetensors", ".json", ".yaml", ".md", ".txt"}, published


def run_container_keeping_its_status(
    client: Any, image: str, command: list[str], volumes: dict[str, Any], **run_args: Any
) -> int:
    """kfp.local's ``run_docker_container`` without ``auto_remove``: podman 4.3 removes an auto-removed container
    before ``wait`` reads its exit status, and kfp then assumes 0, so a failed task passed as SUCCESS. Same
    calls otherwise (no pull: the image must be local); the container is removed once its status is read."""
    container = client.containers.run(
        image=image, command=command, detach=True, stdout=True, stderr=True, volumes=volumes, **run_args
    )
    try:
        code = int(container.wait()["StatusCode"])
        print(container.logs().decode(errors="replace"), end="")  # podman's stream ends early: read it after
        return code
    finally:
        container.remove(force=True)


def test_a_whole_pipeline_runs_every_task_in_the_control_image_through_kfp_docker_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kfp.local.DockerRunner on podman's Docker-compatible socket: the compiled graph, each task a container."""
    from kfp import components, local
    from kfp.local import docker_task_handler

    root = owned_dir(tmp_path / "pipeline_root")  # DockerRunner mounts it at the same path in each task
    store = owned_dir(root / "store")
    # The control image compiles the pipeline, as a consortium would: the YAML and the image are one version.
    overrides = [o for o in config_overrides() if not o.startswith(("store.uri", "output.run_name"))]
    podman(
        "run", "--rm", *HARDENED, "-v", f"{root}:/out", CONTROL, "fedlora", "compile", "-o", "/out/pipeline.yaml",
        "--image", CONTROL, *(arg for o in [*overrides, "kubeflow.mode=inline", f"store.uri={store}"]
                              for arg in ("--set", o)),
    )  # fmt: skip
    pipeline = components.load_component_from_file(str(root / "pipeline.yaml"))

    socket = tmp_path / "podman.sock"
    service = subprocess.Popen(
        ["podman", "--runtime", "runc", "system", "service", "--time=0", f"unix://{socket}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if socket.exists():
                break
            time.sleep(0.1)
        assert socket.exists(), "podman system service did not open its socket"
        monkeypatch.setenv("DOCKER_HOST", f"unix://{socket}")
        hardened = {
            "user": f"{UID}:{UID}",
            "read_only": True,
            "tmpfs": {"/tmp": "rw,size=1g"},
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "network_mode": "none",
        }
        monkeypatch.setattr(docker_task_handler, "run_docker_container", run_container_keeping_its_status)
        local.init(runner=local.DockerRunner(**hardened), pipeline_root=str(root), raise_on_error=True)
        started = time.perf_counter()
        pipeline(output_run_name="docker-run")
        seconds = time.perf_counter() - started
    finally:
        service.terminate()
        service.wait(timeout=30)

    # DockerRunner reports success when an auto-removed container vanished: check what the tasks wrote.
    run = store / "docker-run"
    assert (run / "rounds/0001/global/adapter.safetensors").is_file()
    for bank in BANKS:
        assert (run / f"rounds/0001/updates/{bank}/adapter.safetensors").is_file()
    assert (run / "final/adapter.safetensors").is_file()
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert [r["round"] for r in summary["rounds"]] == [1]
    print(f"kfp.local.DockerRunner on podman: 2 banks x 1 round in {seconds:.0f} s")
