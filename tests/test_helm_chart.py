"""The bank's Helm chart (helm/fedlora-bank): render, schema, lint, Kubernetes schemas, checkov, the agent's contract.

Everything runs offline: helm_python renders and lints with Helm's own engine, kubernetes-validate checks
every manifest against the Kubernetes OpenAPI schemas, checkov (in its own venv, .venv-checkov) scans the
rendered manifests together with the Jobs the bank's agent creates from the chart's template (served by a fake
Kubernetes API, tests/kube_fake.py).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes.utils import parse_quantity

from fedlora.bank_agent import RoundRequest
from fedlora.config import config_to_yaml, load_config
from fedlora.kube import TEMPLATE_KEY, TEMPLATE_LABELS, TRAINER_CONTAINER
from fedlora.kube.agent_jobs import JobExecutor
from fedlora.kube.launcher import BankJobLauncher
from kube_fake import FakeCluster, serve

helm_python = pytest.importorskip("helm_python")

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "fedlora-bank"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
K8S_VERSIONS = ["1.30.0", "1.33.0", kubernetes_validate.latest_version()]
RELEASE = "fedlora-bank"
# the one cluster-scoped object, only when a value asks (namespace.create)
CLUSTER_SCOPED = {"Namespace"}
# what may create a pod: an object that grants `create` on one of these is a way to shape a pod here
WORKLOADS = {"jobs", "pods", "cronjobs", "deployments", "replicasets", "statefulsets", "daemonsets", "*"}

MINIMAL: dict[str, Any] = {
    "bank": {"name": "bank-m"},
    "ledger": {"pvc": {"claimName": "bank-m-ledger"}},
    "store": {"uri": "s3://fedlora-exchange/consortium-m"},
    "data": {"pvc": {"claimName": "bank-m-data"}},
    "networkPolicy": {
        "egress": {
            "store": {"cidrs": ["10.20.0.0/16"], "ports": [443]},
            "kubernetesApi": {"cidrs": ["10.20.0.1/32"], "ports": [443]},
        }
    },
}


def _ci(name: str) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "ci" / name).read_text())
    return values


# scenario -> (values, release namespace)
SCENARIOS: dict[str, tuple[dict[str, Any], str]] = {
    "pvc": (_ci("pvc-values.yaml"), "bank-a"),
    "bucket": (_ci("bucket-values.yaml"), "bank-b"),
    "managed-namespace": (_ci("managed-namespace-values.yaml"), "fedlora-system"),
    "minimal": (MINIMAL, "bank-m"),
    "agent": (_ci("agent-values.yaml"), "bank-d"),
}


def merged(values: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(values)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def render(values: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
    """Render the chart and return its manifests (NOTES.txt left out)."""
    out = helm_python.Chart.load(str(CHART)).render(values, name=RELEASE, namespace=namespace)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(out.items()):
        if path.endswith(".txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def launcher_job(docs: list[dict[str, Any]], bank: str) -> dict[str, Any]:
    """What the bank's agent creates from this release's template for round 1 of run ``r1``: its ConfigMap, served
    by a fake API server, read and filled in by the agent's ``job`` executor (its own labels included)."""
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    namespace, name = configmap["metadata"]["namespace"], configmap["metadata"]["name"]
    config = load_config(None, [f"federation.banks=[{{name: {bank}}}]", "federation.min_banks=1", "kubeflow.mode=pull"])
    request = RoundRequest(run="r1", bank=bank, round_index=1, config_text=config_to_yaml(config), config=config)
    state = FakeCluster()
    state.configmaps[(namespace, name)] = configmap
    with serve(state) as api:
        assert JobExecutor(BankJobLauncher(api, namespace=namespace, template_configmap=name)).take(request) is None
    (job,) = state.posted
    return job


def agent_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The pod template of the agent's CronJob."""
    (cronjob,) = by_kind(docs, "CronJob")
    pod: dict[str, Any] = cronjob["spec"]["jobTemplate"]["spec"]["template"]
    return pod


def agent_subject(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The agent's ServiceAccount as a RoleBinding subject."""
    (account,) = [a for a in by_kind(docs, "ServiceAccount") if a["metadata"]["name"].endswith("-agent")]
    return {
        "kind": "ServiceAccount",
        "name": account["metadata"]["name"],
        "namespace": account["metadata"]["namespace"],
    }


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(values, ns) for name, (values, ns) in SCENARIOS.items()}


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def trainer(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["name"] == TRAINER_CONTAINER
    return dict(container)


# --------------------------------------------------------------------------------------------- lint


@pytest.mark.parametrize("kube_version", ["v1.30.0", "v1.33.0"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_lint_strict(scenario: str, kube_version: str) -> None:
    values, ns = SCENARIOS[scenario]
    report = helm_python.lint(str(CHART), values, strict=True, namespace=ns, kube_version=kube_version)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_lint_with_default_values_names_the_required_values() -> None:
    report = helm_python.lint(str(CHART), None, strict=True)
    text = "\n".join(report["errors"])
    for path in ["/bank/name", "/store/uri", "/data/pvc/claimName"]:
        assert path in text


# ------------------------------------------------------------------------------ Kubernetes schemas


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_manifests_valid(rendered: dict[str, list[dict[str, Any]]], scenario: str, version: str) -> None:
    docs = rendered[scenario]
    bank = SCENARIOS[scenario][0]["bank"]["name"]
    for doc in [*docs, launcher_job(docs, bank)]:
        kubernetes_validate.validate(doc, version, strict=True)


def test_every_object_is_namespaced_in_the_bank_namespace(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for scenario, docs in rendered.items():
        values, release_ns = SCENARIOS[scenario]
        expected_ns = (
            values.get("namespace", {}).get("name") if values.get("namespace", {}).get("create") else release_ns
        )
        kinds = sorted(d["kind"] for d in docs)
        if scenario == "managed-namespace":
            assert "Namespace" in kinds
            assert "ResourceQuota" not in kinds
            assert "LimitRange" not in kinds
            assert [a["metadata"]["name"] for a in by_kind(docs, "ServiceAccount")] == [f"{RELEASE}-agent"]
        else:
            assert {"ResourceQuota", "LimitRange", "ServiceAccount"} <= set(kinds)
        assert not {"ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy"} & set(kinds)
        assert ("Namespace" in kinds) == values.get("namespace", {}).get("create", False)
        assert {"CronJob", "Role", "RoleBinding"} <= set(kinds)  # the agent is on by default
        for doc in docs:
            if doc["kind"] in CLUSTER_SCOPED:
                assert doc["kind"] != "Namespace" or doc["metadata"]["name"] == expected_ns
                assert "namespace" not in doc["metadata"]
            else:
                assert doc["metadata"]["namespace"] == expected_ns, (scenario, doc["kind"])


def test_managed_namespace_is_restricted(rendered: dict[str, list[dict[str, Any]]]) -> None:
    (namespace,) = by_kind(rendered["managed-namespace"], "Namespace")
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    assert labels["cost-center"] == "risk-analytics"


def test_managed_namespace_must_differ_from_the_release_namespace() -> None:
    values, _ = SCENARIOS["managed-namespace"]
    with pytest.raises(helm_python.HelmError, match="install the release in another namespace"):
        render(values, values["namespace"]["name"])


# --------------------------------------------------------------------------- the agent's contract


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_job_template_is_accepted_by_the_agent(rendered: dict[str, list[dict[str, Any]]], scenario: str) -> None:
    values, _ = SCENARIOS[scenario]
    docs = rendered[scenario]
    (configmap,) = by_kind(docs, "ConfigMap")
    assert configmap["metadata"]["name"] == values.get("jobTemplate", {}).get("name", "fedlora-bank-job-template")
    assert TEMPLATE_LABELS.items() <= configmap["metadata"]["labels"].items()
    assert sorted(configmap["data"]) == [TEMPLATE_KEY]

    job = launcher_job(docs, values["bank"]["name"])
    container = trainer(job)
    env = {e["name"]: e for e in container["env"]}
    # the request: run, bank, round and the run's config, nothing else
    assert container["args"] == ["train-bank", "--run", "r1", "--bank", values["bank"]["name"], "--round", "1"]
    assert env["FEDLORA_REQUEST_ROUND"]["value"] == "1"
    assert job["metadata"]["labels"]["fedlora.io/run"] == "r1"
    # the bank's decisions stand
    assert env["FEDLORA_STORE_URI"]["value"] == values["store"]["uri"]
    assert env["FEDLORA_BANK_NAME"]["value"] == values["bank"]["name"]
    assert env["HF_HOME"]["value"].startswith("/cache/")
    assert env["FEDLORA_CACHE"]["value"].startswith("/cache/")
    pod = job["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert "emptyDir" in volumes[mounts["/cache"]]
    assert "limits" in container["resources"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["automountServiceAccountToken"] is False
    # the NetworkPolicy for trainers selects the launched pod
    if values.get("networkPolicy", {}).get("enabled", True):
        policy = next(p for p in by_kind(docs, "NetworkPolicy") if p["spec"]["podSelector"].get("matchLabels"))
        pod_labels = job["spec"]["template"]["metadata"]["labels"]
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()


def test_data_source_pvc(rendered: dict[str, list[dict[str, Any]]]) -> None:
    job = launcher_job(rendered["pvc"], "bank-a")
    env = {e["name"]: e for e in trainer(job)["env"]}
    assert env["FEDLORA_BANK_DATA"]["value"] == "/data/bank/credit/2026-10.parquet"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["bank-data"]["persistentVolumeClaim"] == {"claimName": "bank-a-credit-data", "readOnly": True}
    assert trainer(job)["image"].endswith("@" + SCENARIOS["pvc"][0]["image"]["digest"])
    assert not any("valueFrom" in e for e in trainer(job)["env"])  # workload identity, no static keys


def test_data_source_bucket_and_credentials_from_existing_secrets(rendered: dict[str, list[dict[str, Any]]]) -> None:
    job = launcher_job(rendered["bucket"], "bank-b")
    env = {e["name"]: e for e in trainer(job)["env"]}
    assert env["FEDLORA_BANK_DATA"]["value"] == "s3://bank-b-private/credit/"
    assert env["FEDLORA_BANK_DATA_ENDPOINT_URL"]["value"] == "https://rgw.bank-b.internal"
    assert env["FEDLORA_STORE_PATH_STYLE"]["value"] == "true"
    refs = {n: e["valueFrom"]["secretKeyRef"] for n, e in env.items() if "valueFrom" in e}
    assert refs == {
        "FEDLORA_BANK_SPLIT_KEY": {"name": "bank-b-split-key", "key": "key"},
        "FEDLORA_BANK_DATA_AWS_ACCESS_KEY_ID": {"name": "bank-b-data-keys", "key": "access-key"},
        "FEDLORA_BANK_DATA_AWS_SECRET_ACCESS_KEY": {"name": "bank-b-data-keys", "key": "secret-key"},
        "AWS_ACCESS_KEY_ID": {"name": "fedlora-exchange-keys", "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": "fedlora-exchange-keys", "key": "AWS_SECRET_ACCESS_KEY"},
    }
    assert not any(v.get("persistentVolumeClaim") for v in job["spec"]["template"]["spec"]["volumes"])
    # no credentials anywhere as literal values, and no Secret objects in the chart
    for scenario, docs in rendered.items():
        assert not by_kind(docs, "Secret"), scenario


# ------------------------------------------------------ RBAC: the consortium is granted nothing in the namespace


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels and matchExpressions) selects ``labels``."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if not {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]:
            return False
    return True


def _creates_workloads(rule: dict[str, Any]) -> bool:
    """Whether an RBAC rule lets its subject create something that runs a pod."""
    return bool({"create", "*"} & set(rule.get("verbs", []))) and bool(WORKLOADS & set(rule.get("resources", [])))


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_consortium_is_bound_to_nothing_in_the_banks_namespace(
    rendered: dict[str, list[dict[str, Any]]], scenario: str
) -> None:
    """Issue 27, finding 1: the only RoleBinding's only subject is the agent's own ServiceAccount, in this namespace."""
    docs = rendered[scenario]
    assert not {"ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy"} & {d["kind"] for d in docs}
    agent = agent_subject(docs)
    bindings = by_kind(docs, "RoleBinding")
    assert bindings
    for binding in bindings:
        assert binding["subjects"] == [agent], binding["metadata"]["name"]
        assert binding["roleRef"]["kind"] == "Role"
    assert not [d for d in docs if "fedlora-pipeline" in json.dumps(d)]  # the consortium's account: named nowhere


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_only_the_agents_own_account_may_create_a_workload(
    rendered: dict[str, list[dict[str, Any]]], scenario: str
) -> None:
    docs = rendered[scenario]
    roles = [*by_kind(docs, "Role"), *by_kind(docs, "ClusterRole")]
    creating = {r["metadata"]["name"] for r in roles if any(_creates_workloads(rule) for rule in r["rules"])}
    agent = agent_subject(docs)
    for binding in [*by_kind(docs, "RoleBinding"), *by_kind(docs, "ClusterRoleBinding")]:
        if binding["roleRef"]["name"] in creating:
            assert binding["subjects"] == [agent]
    (role,) = by_kind(docs, "Role")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): r for r in role["rules"]}
    assert set(rules) == {(("batch",), ("jobs",)), (("",), ("pods",)), (("",), ("configmaps",))}
    assert set(rules[("batch",), ("jobs",)]["verbs"]) == {"create", "get", "list", "watch"}  # no delete, no update
    assert set(rules[("",), ("pods",)]["verbs"]) == {"get", "list"}  # no create, no pods/log, no pods/exec
    template = SCENARIOS[scenario][0].get("jobTemplate", {}).get("name", "fedlora-bank-job-template")
    assert rules[("",), ("configmaps",)] == {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": [template],
        "verbs": ["get"],
    }


def test_without_the_agent_nobody_may_create_anything() -> None:
    docs = render(merged(MINIMAL, {"agent": {"enabled": False}}), "bank-m")
    kinds = {d["kind"] for d in docs}
    assert not {"CronJob", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & kinds
    assert [a["metadata"]["name"] for a in by_kind(docs, "ServiceAccount")] == [f"{RELEASE}-trainer"]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_agents_job_is_selected_by_the_trainer_network_policy(
    rendered: dict[str, list[dict[str, Any]]], scenario: str
) -> None:
    """The agent's labels must not break the bank's own NetworkPolicies."""
    values, _ = SCENARIOS[scenario]
    docs = rendered[scenario]
    job = launcher_job(docs, values["bank"]["name"])
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    if values.get("networkPolicy", {}).get("enabled", True):
        policies = by_kind(docs, "NetworkPolicy")
        egress = [p for p in policies if "Egress" in p["spec"]["policyTypes"] and p["spec"].get("egress")]
        selecting = [p["metadata"]["name"] for p in egress if selects(p["spec"]["podSelector"], pod_labels)]
        assert selecting == [f"{RELEASE}-trainer"], f"labels {pod_labels}"


def test_network_policies(rendered: dict[str, list[dict[str, Any]]]) -> None:
    policies = {p["metadata"]["name"]: p for p in by_kind(rendered["bucket"], "NetworkPolicy")}
    deny = policies[f"{RELEASE}-default-deny"]["spec"]  # a namespace the bank already had: this release's pods only
    own = {"app.kubernetes.io/name": "fedlora-bank", "app.kubernetes.io/instance": RELEASE}
    assert deny == {"podSelector": {"matchLabels": own}, "policyTypes": ["Ingress", "Egress"]}
    spec = policies[f"{RELEASE}-trainer"]["spec"]
    assert spec["ingress"] == []
    egress = spec["egress"]
    assert {p["port"] for p in egress[0]["ports"]} == {53}
    assert egress[0]["to"][1] == {"ipBlock": {"cidr": "169.254.20.10/32"}}
    assert egress[1] == {
        "to": [{"ipBlock": {"cidr": "198.51.100.20/32"}}],
        "ports": [{"protocol": "TCP", "port": 9000}],
    }
    assert egress[2] == {"to": [{"ipBlock": {"cidr": "10.40.8.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]}
    assert len(egress) == 3  # no Kubernetes API, no extras
    managed = by_kind(rendered["managed-namespace"], "NetworkPolicy")
    assert [p["metadata"]["name"] for p in managed] == [f"{RELEASE}-trainer", f"{RELEASE}-agent"]
    assert managed[1]["spec"]["egress"][-1] == {
        "to": [{"ipBlock": {"cidr": "10.96.0.1/32"}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    }


def test_network_policy_off_renders_none() -> None:
    docs = render(merged(MINIMAL, {"networkPolicy": {"enabled": False}}), "bank-m")
    assert not by_kind(docs, "NetworkPolicy")


# --------------------------------------------------------------------------- bad values, clearly


BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("typo", {"store": {"urii": "s3://x/y"}}, "additional properties 'urii' not allowed"),
    ("top-level-typo", {"netwrokPolicy": {}}, "additional properties 'netwrokPolicy' not allowed"),
    ("bank-name", {"bank": {"name": "Bank A"}}, "/bank/name"),
    ("latest", {"image": {"tag": "latest"}}, "/image/tag"),
    ("pull-policy", {"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ("digest", {"image": {"digest": "md5:abc"}}, "/image/digest"),
    ("store-uri", {"store": {"uri": "https://bucket/x"}}, "/store/uri"),
    ("sse", {"store": {"sse": "rot13"}}, "/store/sse"),
    ("kms-without-kms", {"store": {"sseKmsKeyId": "k"}}, "/store/sse"),
    ("data-source", {"data": {"source": "ftp"}}, "/data/source"),
    ("bucket-without-uri", {"data": {"source": "bucket"}}, "/data/bucket/uri"),
    ("no-cpu-limit", {"trainer": {"resources": {"limits": {"cpu": None}}}}, "/trainer/resources/limits"),
    ("quantity", {"trainer": {"resources": {"limits": {"cpu": "lots", "memory": "1Gi"}}}}, "/trainer/resources"),
    ("root", {"trainer": {"runAsUser": 0}}, "/trainer/runAsUser"),
    ("cidr", {"networkPolicy": {"egress": {"store": {"cidrs": ["10.0.0.0"]}}}}, "/networkPolicy/egress/store/cidrs/0"),
    ("namespace-create", {"namespace": {"create": True}}, "/namespace/name"),
    # values of the consortium's access, removed with it (issue 27): an old values file is refused, not ignored
    ("consortium", {"consortium": {"serviceAccount": {"name": "runner"}}}, "additional properties 'consortium'"),
    ("admission", {"admissionPolicy": {"enabled": True}}, "additional properties 'admissionPolicy'"),
    ("logs", {"logs": {"streamToConsortium": True}}, "additional properties 'logs'"),
    ("dataset-id", {"ledger": {"datasetId": "../other"}}, "/ledger/datasetId"),
    ("role-arn", {"workloadIdentity": {"trainerRoleArn": "bank-a-role"}}, "/workloadIdentity/trainerRoleArn"),
    ("token-lifetime", {"workloadIdentity": {"expirationSeconds": 60}}, "/workloadIdentity/expirationSeconds"),
    ("job-labels", {"jobTemplate": {"jobLabels": {"kueue.x-k8s.io/queue-name": 3}}}, "/jobTemplate/jobLabels"),
    ("split-key", {"data": {"splitKey": {"existingSecret": "k", "key": ""}}}, "/data/splitKey/key"),
]


@pytest.mark.parametrize(
    ("override", "expected"), [(o, e) for _, o, e in BAD_VALUES], ids=[c for c, _, _ in BAD_VALUES]
)
def test_bad_values_rejected_by_the_schema(override: dict[str, Any], expected: str) -> None:
    values = merged(MINIMAL, override)
    with pytest.raises(helm_python.HelmValuesError) as info:
        render(values, "bank-m")
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"networkPolicy": {"egress": {"store": {"cidrs": []}}}}, "networkPolicy.egress.store.cidrs is empty"),
        (
            {"data": {"source": "bucket", "bucket": {"uri": "s3://private-data/x"}}},
            "networkPolicy.egress.data.cidrs is empty while data.source=bucket",
        ),
        ({"trainer": {"extraEnv": [{"name": "DB_PASSWORD", "value": "x"}]}}, "credentials are not allowed"),
        ({"trainer": {"extraEnv": [{"name": "FEDLORA_REQUEST_X", "value": "x"}]}}, "carry the request"),
        (
            {"networkPolicy": {"egress": {"kubernetesApi": {"cidrs": []}}}},
            "networkPolicy.egress.kubernetesApi.cidrs is empty while agent.enabled",
        ),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name"),
        (
            {"namespace": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}},
            "namespace.labels pod-security.kubernetes.io/enforce: the Pod Security labels are fixed at restricted",
        ),
    ],
)
def test_cross_field_checks_fail_the_render(override: dict[str, Any], expected: str) -> None:
    with pytest.raises(helm_python.HelmError, match=re.escape(expected)):
        render(merged(MINIMAL, override), "bank-m")


def test_schema_is_standard_json_schema() -> None:
    """helm_python enforces the schema itself; jsonschema checks it is a valid 2020-12 schema that agrees."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    chart = helm_python.Chart.load(str(CHART))
    validator = jsonschema.Draft202012Validator(schema)
    for values, _ in SCENARIOS.values():
        assert list(validator.iter_errors(chart.merge_values(values))) == []
    assert list(validator.iter_errors(chart.merge_values(merged(MINIMAL, {"image": {"tag": "latest"}}))))


# --------------------------------------------------------------------------------- documentation


def _schema_leaves(schema: dict[str, Any], node: dict[str, Any], prefix: str = "") -> list[str]:
    """Value paths down to free-form maps, lists and scalars (a label selector counts as one value)."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[1]
        if name == "labelSelector":
            return [prefix]
        node = schema["$defs"][name]
    props = node.get("properties")
    if node.get("type") != "object" or not props or node.get("additionalProperties") is not False:
        return [prefix]
    out: list[str] = []
    for key, sub in props.items():
        out.extend(_schema_leaves(schema, sub, f"{prefix}.{key}" if prefix else key))
    return out


def _documented_paths(text: str) -> set[str]:
    """Paths of values.yaml keys with a comment right above them."""
    documented: set[str] = set()
    stack: list[tuple[int, str]] = []
    previous_is_comment = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            previous_is_comment = True
            continue
        match = re.match(r"^( *)([A-Za-z0-9_./-]+):", line)
        if match:
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(2)))
            if previous_is_comment:
                documented.add(".".join(k for _, k in stack))
        previous_is_comment = False
    return documented


def test_every_value_is_documented() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    leaves = [p for p in _schema_leaves(schema, schema) if p != "global"]
    documented = _documented_paths((CHART / "values.yaml").read_text())
    assert [p for p in leaves if p not in documented] == []
    readme = (CHART / "README.md").read_text()
    assert [p for p in leaves if f"`{p}`" not in readme] == []


# ------------------------------------------------------------------------------------------ checkov


def _checkov_skips(doc: dict[str, Any]) -> list[str]:
    annotations = doc.get("metadata", {}).get("annotations") or {}
    return [v for k, v in annotations.items() if k.startswith("checkov.io/skip")]


@pytest.mark.skipif(not CHECKOV.exists(), reason="checkov is installed by `scripts/setup.sh dev` in .venv-checkov")
def test_checkov_passes(rendered: dict[str, list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory) -> None:
    """All scenarios plus the launcher's Jobs, scanned at once: no failed check, every skip has a reason."""
    folder = tmp_path_factory.mktemp("checkov")
    skips: list[str] = []
    for scenario, docs in rendered.items():
        bank = SCENARIOS[scenario][0]["bank"]["name"]
        for i, doc in enumerate([*docs, launcher_job(docs, bank)]):
            (folder / f"{scenario}-{i:02d}-{doc['kind'].lower()}.yaml").write_text(yaml.safe_dump(doc))
            skips.extend(_checkov_skips(doc))
    for skip in skips:
        assert re.fullmatch(r"CKV2?_K8S_\d+=.{20,}", skip), f"checkov skip without a written reason: {skip!r}"
    started = time.monotonic()
    result = subprocess.run(
        [str(CHECKOV), "--framework", "kubernetes", "--skip-download", "-d", str(folder), "-o", "json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [
        f"{c['check_id']} {c['check_name']} {c['resource']}" for r in reports for c in r["results"]["failed_checks"]
    ]
    summary = reports[0]["summary"]
    print(f"checkov {summary} in {elapsed:.1f}s; skips: {sorted(set(skips))}")
    assert failed == []
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 0
    assert summary["skipped"] == len(skips)
    shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------ issue 10 / 12 / 27: policy, ledger, model, CA, split


def test_bank_privacy_policy_and_ledger_reach_the_trainer(rendered: dict[str, list[dict[str, Any]]]) -> None:
    env = {e["name"]: e.get("value") for e in trainer(launcher_job(rendered["pvc"], "bank-a"))["env"]}
    assert json.loads(env["FEDLORA_BANK_POLICY"]) == {
        "maxEpsilonPerRun": 8,
        "lifetimeEpsilon": 16,
        "maxDelta": None,  # = 1/(10 n) in train-bank
        "minNoiseMultiplier": 0.5,
        "accountant": "prv",
        "releaseMetrics": False,
        "evaluationEpsilon": 0.5,
    }
    assert env["FEDLORA_BANK_LEDGER"] == "/var/lib/fedlora/ledger"
    bucket = {e["name"]: e.get("value") for e in trainer(launcher_job(rendered["bucket"], "bank-b"))["env"]}
    assert bucket["FEDLORA_BANK_LEDGER"] == "s3://bank-b-private/fedlora-ledger/"
    assert json.loads(bucket["FEDLORA_BANK_POLICY"])["maxDelta"] == 1e-5


def test_ledger_claim_is_created_kept_and_mounted_writable(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["pvc"]
    (claim,) = by_kind(docs, "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == f"{RELEASE}-ledger"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    job = launcher_job(docs, "bank-a")
    pod = job["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["ledger"]["persistentVolumeClaim"] == {"claimName": f"{RELEASE}-ledger"}
    mount = next(m for m in trainer(job)["volumeMounts"] if m["name"] == "ledger")
    assert mount["mountPath"] == "/var/lib/fedlora/ledger" and not mount.get("readOnly")
    (namespace,) = by_kind(rendered["managed-namespace"], "Namespace")
    assert namespace["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"ledger": {"pvc": {"claimName": ""}}}, "the bank's privacy ledger needs a home"),
        ({"ledger": {"uri": "s3://x-private/ledger/"}}, "either ledger.pvc or ledger.uri"),
        ({"ledger": {"pvc": {"claimName": ""}, "uri": "s3://x-private/ledger/"}}, "data.source=bucket"),
    ],
)
def test_chart_refuses_to_render_without_one_ledger(override: dict[str, Any], expected: str) -> None:
    with pytest.raises(helm_python.HelmError, match=re.escape(expected)):
        render(merged(MINIMAL, override), "bank-m")


def test_model_weights_from_a_read_only_claim_and_ca_bundle(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    job = launcher_job(rendered["pvc"], "bank-a")
    env = {e["name"]: e.get("value") for e in trainer(job)["env"]}
    assert env["HF_HUB_CACHE"] == "/models/hub" and env["HF_HUB_OFFLINE"] == "1"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "llama-3-1-8b-hub", "readOnly": True}
    mount = next(m for m in trainer(job)["volumeMounts"] if m["name"] == "model")
    assert mount["readOnly"] is True  # a Job cannot tamper with the bank's weights

    docs = rendered["bucket"]
    job = launcher_job(docs, "bank-b")
    env = {e["name"]: e.get("value") for e in trainer(job)["env"]}
    for variable in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        assert env[variable] == "/etc/fedlora/ca/ca.crt"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["ca-bundle"]["configMap"] == {"name": "bank-b-internal-ca"}


def test_dns_ports_are_a_value() -> None:
    docs = render(merged(MINIMAL, {"networkPolicy": {"dns": {"ports": [5353]}}}), "bank-m")
    policy = next(p for p in by_kind(docs, "NetworkPolicy") if p["spec"].get("egress"))
    assert policy["spec"]["egress"][0]["ports"] == [
        {"protocol": "UDP", "port": 5353},
        {"protocol": "TCP", "port": 5353},
    ]


# ------------------------------------------------------------------------------------------ the bank's agent


def test_agent_is_on_by_default_and_runs_the_job_executor(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for scenario, docs in rendered.items():
        values, _ = SCENARIOS[scenario]
        (cronjob,) = by_kind(docs, "CronJob")
        assert cronjob["metadata"]["name"] == f"{RELEASE}-agent"
        assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
        (container,) = agent_pod(docs)["spec"]["containers"]
        template = values.get("jobTemplate", {}).get("name", "fedlora-bank-job-template")
        runs = [a for r in values.get("agent", {}).get("runs", []) for a in ("--run", r)]
        assert container["args"] == [
            "bank-agent", "--bank", values["bank"]["name"], "--once", "--executor", "job", "--job-template", template,
            *runs,
        ]  # fmt: skip
    spec = by_kind(rendered["agent"], "CronJob")[0]["spec"]
    assert spec["schedule"] == "*/2 * * * *" and spec["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 300


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_agent_pod_is_light_cpu_only_and_reads_no_bank_data(
    rendered: dict[str, list[dict[str, Any]]], scenario: str
) -> None:
    """Finding 8: the agent holds no GPU and little memory; it mounts no data and gets no bank-data secret."""
    docs = rendered[scenario]
    pod = agent_pod(docs)["spec"]
    (container,) = pod["containers"]
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert set(resources[kind]) <= {"cpu", "memory"}, resources  # no nvidia.com/gpu, nothing else
    assert parse_quantity(resources["requests"]["memory"]) <= 512 * 2**20
    assert parse_quantity(resources["limits"]["memory"]) <= 512 * 2**20
    assert all("emptyDir" in v or "configMap" in v for v in pod["volumes"]), pod["volumes"]  # no PVC: no data
    env = {e["name"]: e for e in container["env"]}
    assert not [n for n in env if n.startswith("FEDLORA_BANK_")]  # no data, ledger, policy, split key
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in env.values() if "secretKeyRef" in e.get("valueFrom", {})}
    assert secrets <= {SCENARIOS[scenario][0].get("store", {}).get("existingSecret")}  # at most the exchange keys
    assert env["FEDLORA_AGENT_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert pod["serviceAccountName"] == agent_subject(docs)["name"] and pod["automountServiceAccountToken"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"]
    # the trainer Job the agent creates keeps the GPU, and no API token
    job = launcher_job(docs, SCENARIOS[scenario][0]["bank"]["name"])
    assert trainer(job)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_agent_network_policy(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The agent reaches DNS, the exchange and the API server; never the private data. The trainer never the API."""
    docs = rendered["bucket"]
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(docs, "NetworkPolicy")}
    agent = policies[f"{RELEASE}-agent"]
    labels = agent_pod(docs)["metadata"]["labels"]
    assert selects(agent["podSelector"], labels) and not selects(policies[f"{RELEASE}-trainer"]["podSelector"], labels)
    assert agent["ingress"] == []
    targets = [t for rule in agent["egress"] for t in rule["to"]]
    assert {"ipBlock": {"cidr": "198.51.100.20/32"}} in targets and {"ipBlock": {"cidr": "10.40.0.1/32"}} in targets
    assert {"ipBlock": {"cidr": "10.40.8.0/24"}} not in targets  # the private data endpoint
    trainer_targets = [t for rule in policies[f"{RELEASE}-trainer"]["egress"] for t in rule["to"]]
    assert {"ipBlock": {"cidr": "10.40.0.1/32"}} not in trainer_targets


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"agent": {"schedule": "every minute"}}, "/agent/schedule"),
        ({"agent": {"runs": ["a/b"]}}, "/agent/runs/0"),
        ({"agent": {"runs": ["A_b"]}}, "/agent/runs/0"),
        ({"agent": {"activeDeadlineSeconds": 5}}, "/agent/activeDeadlineSeconds"),
        ({"agent": {"enable": True}}, "additional properties 'enable' not allowed"),
        ({"agent": {"resources": {"limits": {"nvidia.com/gpu": 1}}}}, "/agent/resources/limits"),
    ],
)
def test_bad_agent_values_rejected_by_the_schema(override: dict[str, Any], expected: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as info:
        render(merged(MINIMAL, override), "bank-m")
    assert expected in str(info.value)


def test_agent_with_a_macro_schedule_renders() -> None:
    docs = render(merged(MINIMAL, {"agent": {"schedule": "@hourly"}}), "bank-m")
    (cronjob,) = by_kind(docs, "CronJob")
    assert cronjob["spec"]["schedule"] == "@hourly"


def test_split_and_dataset_settings_reach_the_trainer_only(rendered: dict[str, list[dict[str, Any]]]) -> None:
    env = {e["name"]: e for e in trainer(launcher_job(rendered["bucket"], "bank-b"))["env"]}
    assert env["FEDLORA_BANK_DATASET_ID"]["value"] == "retail-credit"
    assert env["FEDLORA_BANK_ROW_KEY_COLUMN"]["value"] == "customer_id"
    assert env["FEDLORA_BANK_SPLIT_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "bank-b-split-key", "key": "key"}}
    default = {e["name"]: e for e in trainer(launcher_job(rendered["minimal"], "bank-m"))["env"]}
    assert default["FEDLORA_BANK_DATASET_ID"]["value"] == "default"
    assert "FEDLORA_BANK_ROW_KEY_COLUMN" not in default and "FEDLORA_BANK_SPLIT_KEY" not in default


def test_chart_and_default_image_carry_the_package_version() -> None:
    """Chart.yaml's appVersion and the default trainer tag are written by hand: they must follow fedlora.__version__."""
    from fedlora import __version__

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert chart["appVersion"] == __version__
    assert values["image"]["tag"] == __version__


# ------------------------------------------------- issue 28, item 6: the cluster around the Jobs


def test_default_deny_covers_the_whole_namespace_only_when_the_chart_created_it() -> None:
    """In a namespace the bank already had, other pods keep their traffic; in the chart's own namespace nothing does."""
    values, namespace = SCENARIOS["managed-namespace"]
    docs = render(merged(values, {"networkPolicy": {"namespaceDefaultDeny": True}}), namespace)
    (deny,) = [p for p in by_kind(docs, "NetworkPolicy") if p["metadata"]["name"].endswith("-default-deny")]
    assert deny["spec"]["podSelector"] == {}
    (deny,) = [
        p for p in by_kind(render(MINIMAL, "bank-m"), "NetworkPolicy") if "default-deny" in p["metadata"]["name"]
    ]
    assert not selects(deny["spec"]["podSelector"], {"app": "someone-elses-service"})
    docs = render(MINIMAL, "bank-m")
    for pod_labels in (
        launcher_job(docs, "bank-m")["spec"]["template"]["metadata"]["labels"],
        agent_pod(docs)["metadata"]["labels"],
    ):
        assert selects(deny["spec"]["podSelector"], pod_labels)


def test_trainer_and_agent_pods_opt_out_of_istio_injection(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """An injected namespace: a sidecar would keep a finished Job running, and istio-init breaks restricted PSS."""
    docs = rendered["minimal"]
    for pod in (launcher_job(docs, "bank-m")["spec"]["template"], agent_pod(docs)):
        assert pod["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
        assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    docs = render(merged(MINIMAL, {"istio": {"inject": True}}), "bank-m")
    for pod in (launcher_job(docs, "bank-m")["spec"]["template"], agent_pod(docs)):
        assert "sidecar.istio.io/inject" not in json.dumps(pod["metadata"])


def test_job_labels_reach_the_job_for_kueue() -> None:
    values = merged(MINIMAL, {"jobTemplate": {"jobLabels": {"kueue.x-k8s.io/queue-name": "bank-m-gpu"}}})
    job = launcher_job(render(values, "bank-m"), "bank-m")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "bank-m-gpu"
    assert job["metadata"]["labels"]["fedlora.io/run"] == "r1"  # the agent's labels beside the bank's


def test_workload_identity_by_a_projected_token_and_its_egress() -> None:
    trainer_role, agent_role = (
        "arn:aws:iam::123456789012:role/bank-m-trainer",
        "arn:aws:iam::123456789012:role/bank-m-agent",
    )
    values = merged(
        MINIMAL,
        {
            "workloadIdentity": {"projectedToken": True, "trainerRoleArn": trainer_role, "agentRoleArn": agent_role},
            "networkPolicy": {
                "egress": {"identity": {"cidrs": ["10.20.9.0/24", "169.254.170.23/32"], "ports": [443, 80]}}
            },
        },
    )
    docs = render(values, "bank-m")
    for version in K8S_VERSIONS[:1]:
        for doc in [*docs, launcher_job(docs, "bank-m")]:
            kubernetes_validate.validate(doc, version, strict=True)
    for pod, role in ((launcher_job(docs, "bank-m")["spec"]["template"], trainer_role), (agent_pod(docs), agent_role)):
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["AWS_ROLE_ARN"] == role
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert env["AWS_WEB_IDENTITY_TOKEN_FILE"] == mounts["identity-token"] + "/token"
        (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "identity-token"]
        (source,) = volume["projected"]["sources"]
        assert source["serviceAccountToken"]["audience"] == "sts.amazonaws.com"
    assert launcher_job(docs, "bank-m")["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    for policy in by_kind(docs, "NetworkPolicy"):
        if policy["metadata"]["name"].endswith(("-trainer", "-agent")):
            assert {
                "to": [{"ipBlock": {"cidr": "10.20.9.0/24"}}, {"ipBlock": {"cidr": "169.254.170.23/32"}}],
                "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 80}],
            } in policy["spec"]["egress"]
    plain = render(MINIMAL, "bank-m")  # off by default: no token, no identity egress
    assert "identity-token" not in json.dumps(plain) and "AWS_ROLE_ARN" not in json.dumps(launcher_job(plain, "bank-m"))


def test_images_are_pulled_if_not_present_and_by_digest_when_given(rendered: dict[str, list[dict[str, Any]]]) -> None:
    job = launcher_job(rendered["minimal"], "bank-m")
    assert trainer(job)["imagePullPolicy"] == "IfNotPresent"
    assert agent_pod(rendered["minimal"])["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    digest = SCENARIOS["pvc"][0]["image"]["digest"]
    assert trainer(launcher_job(rendered["pvc"], "bank-a"))["image"].endswith("@" + digest)
    assert agent_pod(rendered["pvc"])["spec"]["containers"][0]["image"].endswith("@" + digest)
