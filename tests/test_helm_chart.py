"""The bank's Helm chart (helm/fedlora-bank): render, schema, lint, Kubernetes schemas, checkov, launcher contract.

Everything runs offline: helm_python renders and lints with Helm's own engine, kubernetes-validate checks
every manifest against the Kubernetes OpenAPI schemas, checkov (in its own venv, .venv-checkov) scans the
rendered manifests together with the Jobs the pipeline's launcher would create from the chart's template.
"""

from __future__ import annotations

import contextlib
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

from fedlora.kube import TEMPLATE_KEY, TEMPLATE_LABELS, TRAINER_CONTAINER
from fedlora.kube.job_template import STREAM_LOGS_KEY
from fedlora.kube.launcher import BankJobLauncher, job_name
from kube_fake import FakeCluster, serve

helm_python = pytest.importorskip("helm_python")

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "fedlora-bank"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
K8S_VERSIONS = ["1.30.0", "1.33.0", kubernetes_validate.latest_version()]
RELEASE = "fedlora-bank"
# cluster-scoped objects, each only when a value asks (namespace.create, admissionPolicy.enabled)
CLUSTER_SCOPED = {"Namespace", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}

MINIMAL: dict[str, Any] = {
    "bank": {"name": "bank-m"},
    "consortium": {"serviceAccount": {"name": "fedlora-pipeline", "namespace": "kubeflow"}},
    "ledger": {"pvc": {"claimName": "bank-m-ledger"}},
    "store": {"uri": "s3://fedlora-exchange/consortium-m"},
    "data": {"pvc": {"claimName": "bank-m-data"}},
    "networkPolicy": {"egress": {"store": {"cidrs": ["10.20.0.0/16"], "ports": [443]}}},
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

LAUNCH = {
    "args": ["train-bank", "--run", "s3://fedlora-exchange/runs/r1", "--bank", "BANK", "--round", "1"],
    "env": {"FEDLORA_REQUEST_ROUND": "1", "FEDLORA_REQUEST_RUN": "r1", "FEDLORA_STORE_URI": "s3://elsewhere/"},
    "labels": {"fedlora.io/run": "r1", "fedlora.io/round": "1"},
    "active_deadline_seconds": 7200,
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
    """What the pipeline's launcher creates from this release's template: its ConfigMap, served by a fake API
    server, read and filled in by ``BankJobLauncher.render`` (the launcher's own labels included)."""
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    namespace, name = configmap["metadata"]["namespace"], configmap["metadata"]["name"]
    state = FakeCluster()
    state.configmaps[(namespace, name)] = configmap
    args = [a.replace("BANK", bank) for a in LAUNCH["args"]]  # type: ignore[attr-defined]
    with serve(state) as api:
        return BankJobLauncher(api).render(
            namespace=namespace,
            template_configmap=name,
            name=job_name(run="r1", bank=bank, round_index=1),
            args=args,
            env=LAUNCH["env"],  # type: ignore[arg-type]
            labels={**LAUNCH["labels"], "fedlora.io/bank": bank},  # type: ignore[dict-item]
            timeout_seconds=LAUNCH["active_deadline_seconds"],  # type: ignore[arg-type]
        )


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
    for path in ["/bank/name", "/store/uri", "/consortium/serviceAccount/name", "/data/pvc/claimName"]:
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
            assert "ServiceAccount" not in kinds  # an existing one
        else:
            assert {"ResourceQuota", "LimitRange", "ServiceAccount"} <= set(kinds)
        assert not {"ClusterRole", "ClusterRoleBinding"} & set(kinds)
        assert ("Namespace" in kinds) == values.get("namespace", {}).get("create", False)
        asks_policy = values.get("admissionPolicy", {}).get("enabled", True)  # on by default
        assert ("ValidatingAdmissionPolicy" in kinds) == asks_policy
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


# ------------------------------------------------------------------------ the launcher's contract


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_job_template_is_accepted_by_the_launcher(rendered: dict[str, list[dict[str, Any]]], scenario: str) -> None:
    values, _ = SCENARIOS[scenario]
    docs = rendered[scenario]
    (configmap,) = by_kind(docs, "ConfigMap")
    assert configmap["metadata"]["name"] == values.get("jobTemplate", {}).get("name", "fedlora-bank-job-template")
    assert TEMPLATE_LABELS.items() <= configmap["metadata"]["labels"].items()
    assert sorted(configmap["data"]) == sorted([TEMPLATE_KEY, STREAM_LOGS_KEY])
    assert configmap["data"][STREAM_LOGS_KEY] == str(values.get("logs", {}).get("streamToConsortium", False)).lower()

    job = launcher_job(docs, values["bank"]["name"])
    container = trainer(job)
    env = {e["name"]: e for e in container["env"]}
    # the consortium's request
    assert container["args"][0] == "train-bank"
    assert env["FEDLORA_REQUEST_ROUND"]["value"] == "1"
    assert job["metadata"]["labels"]["fedlora.io/run"] == "r1"
    # the bank's decisions stand: its exchange prefix wins over the launcher's
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
        "FEDLORA_BANK_DATA_AWS_ACCESS_KEY_ID": {"name": "bank-b-data-keys", "key": "access-key"},
        "FEDLORA_BANK_DATA_AWS_SECRET_ACCESS_KEY": {"name": "bank-b-data-keys", "key": "secret-key"},
        "AWS_ACCESS_KEY_ID": {"name": "fedlora-exchange-keys", "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": "fedlora-exchange-keys", "key": "AWS_SECRET_ACCESS_KEY"},
    }
    assert not any(v.get("persistentVolumeClaim") for v in job["spec"]["template"]["spec"]["volumes"])
    # no credentials anywhere as literal values, and no Secret objects in the chart
    for scenario, docs in rendered.items():
        assert not by_kind(docs, "Secret"), scenario


# ----------------------------------------------------------------------------- admission policy


def _tampered(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Jobs the consortium could create with its RBAC that differ from the bank's template."""

    def variant(change: Any) -> dict[str, Any]:
        out = copy.deepcopy(job)
        change(out["spec"]["template"]["spec"], out["spec"]["template"]["spec"]["containers"][0], out)
        return out

    return {
        "image": variant(lambda p, c, j: c.update(image="evil.example/exfil:1")),
        "command": variant(lambda p, c, j: c.update(command=["sh", "-c", "cat /data/bank/*"])),
        "subcommand": variant(lambda p, c, j: c.update(args=["simulate"])),
        "service-account": variant(lambda p, c, j: p.update(serviceAccountName="default")),
        "api-token": variant(lambda p, c, j: p.update(automountServiceAccountToken=True)),
        "extra-env": variant(lambda p, c, j: c["env"].append({"name": "AWS_ENDPOINT_URL", "value": "https://x"})),
        "store-override": variant(lambda p, c, j: c["env"].append({"name": "FEDLORA_STORE_URI", "value": "s3://x/"})),
        "env-from": variant(lambda p, c, j: c.update(envFrom=[{"secretRef": {"name": "bank-secrets"}}])),
        "host-path": variant(lambda p, c, j: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}})),
        "other-claim": variant(
            lambda p, c, j: p["volumes"].append({"name": "x", "persistentVolumeClaim": {"claimName": "other"}})
        ),
        "sidecar": variant(lambda p, c, j: p["containers"].append(dict(c, name="sidecar"))),
        "init": variant(lambda p, c, j: p.update(initContainers=[dict(c, name="init")])),
        "capabilities": variant(lambda p, c, j: c["securityContext"]["capabilities"].update(add=["NET_ADMIN"])),
        "host-network": variant(lambda p, c, j: p.update(hostNetwork=True)),
        "labels": variant(
            lambda p, c, j: j["spec"]["template"]["metadata"]["labels"].pop("app.kubernetes.io/component")
        ),
    }


def admission(
    docs: list[dict[str, Any]],
    *,
    obj: dict[str, Any] | None,
    old: dict[str, Any] | None = None,
    operation: str = "CREATE",
    user: str | None = None,
) -> list[str] | None:
    """Evaluate the chart's admission policies as the API server would for one request.

    Returns the denial messages ([] = admitted), or None when no policy matches the request. The CEL runs in
    cel-python (a CEL implementation; the API server uses cel-go); an evaluation error denies, as with
    ``failurePolicy: Fail``.
    """
    celpy = pytest.importorskip("celpy", reason="cel-python evaluates the admission policy's CEL")
    env = celpy.Environment()
    namespace = (obj or old or {}).get("metadata", {}).get("namespace")
    request = {"operation": operation, "userInfo": {"username": user or ""}, "namespace": namespace}
    activation: dict[str, Any] = {
        "object": celpy.json_to_cel(obj),
        "oldObject": celpy.json_to_cel(old),
        "request": celpy.json_to_cel(request),
    }
    matched, denials = False, []
    for policy in by_kind(docs, "ValidatingAdmissionPolicy"):
        spec = policy["spec"]
        constraints = spec["matchConstraints"]
        if constraints["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] != namespace:
            continue
        if not any(operation in rule["operations"] for rule in constraints["resourceRules"]):
            continue
        conditions = [env.program(env.compile(c["expression"])) for c in spec.get("matchConditions", [])]
        if not all(bool(c.evaluate(activation)) for c in conditions):
            continue
        matched = True
        variables = {}
        for v in spec.get("variables", []):
            activation["variables"] = celpy.celtypes.MapType(variables)
            with contextlib.suppress(Exception):  # an unusable variable fails the validations that use it
                program = env.program(env.compile(v["expression"]))
                variables[celpy.celtypes.StringType(v["name"])] = program.evaluate(activation)
        activation["variables"] = celpy.celtypes.MapType(variables)
        for validation in spec["validations"]:
            try:
                result = env.program(env.compile(validation["expression"])).evaluate(activation)
            except Exception:
                result = False
            if isinstance(result, Exception) or not bool(result):
                denials.append(validation["message"])
    return denials if matched else None


def consortium_user(values: dict[str, Any]) -> str:
    sa = values["consortium"]["serviceAccount"]
    return f"system:serviceaccount:{sa['namespace']}:{sa['name']}"


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


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_launchers_job_is_selected_by_the_trainer_policies_and_admitted(
    rendered: dict[str, list[dict[str, Any]]], scenario: str
) -> None:
    """Blocker: the launcher's labels must not break the bank's own NetworkPolicies or admission policy."""
    values, _ = SCENARIOS[scenario]
    docs = rendered[scenario]
    job = launcher_job(docs, values["bank"]["name"])
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    policies = by_kind(docs, "NetworkPolicy")
    if values.get("networkPolicy", {}).get("enabled", True):
        egress = [p for p in policies if "Egress" in p["spec"]["policyTypes"] and p["spec"].get("egress")]
        assert egress, "the chart has no egress policy for the trainer"
        selecting = [p["metadata"]["name"] for p in egress if selects(p["spec"]["podSelector"], pod_labels)]
        assert selecting, f"no egress NetworkPolicy selects the launched pod (labels {pod_labels})"
    denials = admission(docs, obj=job, user=consortium_user(values))
    if by_kind(docs, "ValidatingAdmissionPolicy"):
        assert denials == [], denials


def test_admission_policy_admits_the_launcher_and_nothing_else(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["pvc"]
    (policy, *_) = by_kind(docs, "ValidatingAdmissionPolicy")
    (binding, *_) = by_kind(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert "Deny" in binding["spec"]["validationActions"]
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "bank-a"}}
    user = consortium_user(SCENARIOS["pvc"][0])
    assert user == "system:serviceaccount:consortium-kubeflow:fedlora-pipeline"
    assert user in spec["matchConditions"][0]["expression"]

    job = launcher_job(docs, "bank-a")
    assert admission(docs, obj=job, user=user) == []
    assert admission(docs, obj=job, user="system:serviceaccount:bank-a:bank-operator") is None  # the bank's own
    for name, tampered in _tampered(job).items():
        assert admission(docs, obj=tampered, user=user), f"the admission policy admits a tampered Job ({name})"


# ---------------------------------------------------------------------- RBAC and NetworkPolicies


def test_consortium_may_only_run_jobs(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["bucket"]
    (role,) = by_kind(docs, "Role")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): r for r in role["rules"]}
    assert set(rules) == {(("batch",), ("jobs",)), (("",), ("pods",)), (("",), ("pods/log",)), (("",), ("configmaps",))}
    assert set(rules[("batch",), ("jobs",)]["verbs"]) == {"create", "get", "list", "watch", "delete"}
    assert set(rules[("",), ("pods",)]["verbs"]) == {"get", "list"}  # the launcher never watches pods
    assert rules[("",), ("pods/log",)]["verbs"] == ["get"]  # bank-b streams its log (logs.streamToConsortium)
    (quiet,) = by_kind(rendered["pvc"], "Role")  # the default: the log stays in the bank, no pods/log
    assert [r for r in quiet["rules"] if "pods/log" in r["resources"]] == []
    assert rules[("",), ("configmaps",)] == {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": ["fedlora-bank-job-template"],
        "verbs": ["get"],
    }
    (binding,) = by_kind(docs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "fedlora-pipeline", "namespace": "kubeflow-user-consortium"}
    ]


def test_network_policies(rendered: dict[str, list[dict[str, Any]]]) -> None:
    policies = {p["metadata"]["name"]: p for p in by_kind(rendered["bucket"], "NetworkPolicy")}
    deny = policies[f"{RELEASE}-default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
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
    assert [p["metadata"]["name"] for p in managed] == [f"{RELEASE}-trainer"]
    assert managed[0]["spec"]["egress"][-1] == {
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
    ("consortium", {"consortium": {"serviceAccount": {"name": "runner"}}}, "/consortium/serviceAccount/namespace"),
]


@pytest.mark.parametrize(
    ("override", "expected"), [(o, e) for _, o, e in BAD_VALUES], ids=[c for c, _, _ in BAD_VALUES]
)
def test_bad_values_rejected_by_the_schema(override: dict[str, Any], expected: str) -> None:
    values = merged(MINIMAL, override)
    if override == {"consortium": {"serviceAccount": {"name": "runner"}}}:
        values["consortium"] = override["consortium"]
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
        ({"trainer": {"extraEnv": [{"name": "FEDLORA_REQUEST_X", "value": "x"}]}}, "belong to the consortium"),
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


# ------------------------------------------- issue 10 / 12: policy, ledger, model, CA, logs, delete


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


def test_ledger_claim_is_created_kept_mounted_writable_and_admitted(rendered: dict[str, list[dict[str, Any]]]) -> None:
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
    user = consortium_user(SCENARIOS["pvc"][0])
    assert admission(docs, obj=job, user=user) == []
    swapped = copy.deepcopy(job)  # the consortium points the ledger at a fresh claim: refused
    next(v for v in swapped["spec"]["template"]["spec"]["volumes"] if v["name"] == "ledger")["persistentVolumeClaim"][
        "claimName"
    ] = "empty-ledger"
    assert admission(docs, obj=swapped, user=user)
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


def test_model_weights_from_a_read_only_claim_and_ca_bundle_are_admitted(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    job = launcher_job(rendered["pvc"], "bank-a")
    env = {e["name"]: e.get("value") for e in trainer(job)["env"]}
    assert env["HF_HUB_CACHE"] == "/models/hub" and env["HF_HUB_OFFLINE"] == "1"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "llama-3-1-8b-hub", "readOnly": True}
    user = consortium_user(SCENARIOS["pvc"][0])
    writable = copy.deepcopy(job)  # a writable model volume would let a Job tamper with the bank's weights
    next(m for m in writable["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] if m["name"] == "model")[
        "readOnly"
    ] = False
    assert admission(rendered["pvc"], obj=writable, user=user)

    docs = rendered["bucket"]
    job = launcher_job(docs, "bank-b")
    env = {e["name"]: e.get("value") for e in trainer(job)["env"]}
    for variable in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        assert env[variable] == "/etc/fedlora/ca/ca.crt"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["ca-bundle"]["configMap"] == {"name": "bank-b-internal-ca"}
    user = consortium_user(SCENARIOS["bucket"][0])
    assert admission(docs, obj=job, user=user) == []
    other = copy.deepcopy(job)
    other["spec"]["template"]["spec"]["volumes"].append({"name": "x", "configMap": {"name": "bank-b-secrets-as-cm"}})
    assert admission(docs, obj=other, user=user)


def test_consortium_may_delete_only_the_jobs_its_launcher_created(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["pvc"]
    user = consortium_user(SCENARIOS["pvc"][0])
    job = launcher_job(docs, "bank-a")
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "fedlora-launcher"
    assert admission(docs, obj=None, old=job, operation="DELETE", user=user) == []
    banks_own = copy.deepcopy(job)
    del banks_own["metadata"]["labels"]["app.kubernetes.io/managed-by"]
    assert admission(docs, obj=None, old=banks_own, operation="DELETE", user=user)
    assert admission(docs, obj=banks_own, user=user)  # and it cannot create a Job without the label either
    assert admission(docs, obj=None, old=banks_own, operation="DELETE", user="system:serviceaccount:bank-a:ops") is None


def test_admission_policy_is_on_by_default_and_the_binding_needs_it(capfd: pytest.CaptureFixture[str]) -> None:
    docs = render(MINIMAL, "bank-m")
    assert len(by_kind(docs, "ValidatingAdmissionPolicy")) == 2  # create/update and delete
    off = merged(MINIMAL, {"admissionPolicy": {"enabled": False}})
    with pytest.raises(helm_python.HelmError, match=re.escape("admissionPolicy.allowUnrestrictedConsortium=true")):
        render(off, "bank-m")
    opted_out = render(merged(off, {"admissionPolicy": {"allowUnrestrictedConsortium": True}}), "bank-m")
    assert by_kind(opted_out, "RoleBinding") and not by_kind(opted_out, "ValidatingAdmissionPolicy")
    # Helm's lint mode logs a template's `fail` instead of stopping (render has no kube version to set)
    capfd.readouterr()
    helm_python.lint(str(CHART), MINIMAL, strict=True, namespace="bank-m", kube_version="v1.29.0")
    logged = capfd.readouterr().err
    assert "needs Kubernetes >= 1.30" in logged and "this cluster is v1.29.0" in logged
    assert "allowUnrestrictedConsortium=true" in logged
    capfd.readouterr()
    helm_python.lint(str(CHART), MINIMAL, strict=True, namespace="bank-m", kube_version="v1.30.0")
    assert "needs Kubernetes >= 1.30" not in capfd.readouterr().err


def test_dns_ports_are_a_value() -> None:
    docs = render(merged(MINIMAL, {"networkPolicy": {"dns": {"ports": [5353]}}}), "bank-m")
    policy = next(p for p in by_kind(docs, "NetworkPolicy") if p["spec"].get("egress"))
    assert policy["spec"]["egress"][0]["ports"] == [
        {"protocol": "UDP", "port": 5353},
        {"protocol": "TCP", "port": 5353},
    ]


# ------------------------------------------------------------------------- pull mode: the bank's agent


def test_agent_is_off_by_default(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for scenario in ("pvc", "bucket", "managed-namespace", "minimal"):
        assert by_kind(rendered[scenario], "CronJob") == []


def test_agent_runs_bank_agent_in_the_trainers_own_pod(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The CronJob's pod is the trainer Job template's pod: only the arguments (and an agent label) differ."""
    docs = rendered["agent"]
    (cronjob,) = by_kind(docs, "CronJob")
    assert cronjob["metadata"]["name"] == f"{RELEASE}-agent" and cronjob["metadata"]["namespace"] == "bank-d"
    spec = cronjob["spec"]
    assert spec["schedule"] == "*/2 * * * *" and spec["concurrencyPolicy"] == "Forbid"
    assert spec["jobTemplate"]["spec"]["backoffLimit"] == 0
    assert spec["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 21600
    pod = copy.deepcopy(spec["jobTemplate"]["spec"]["template"])
    container = trainer({"spec": {"template": pod}})
    assert container["args"] == ["bank-agent", "--bank", "bank-d", "--once", "--run", "credit-risk-2026-q4"]
    assert pod["metadata"]["labels"].pop("fedlora.io/agent") == "true"
    (configmap,) = by_kind(docs, "ConfigMap")
    template = yaml.safe_load(configmap["data"][TEMPLATE_KEY])["spec"]["template"]
    del pod["spec"]["containers"][0]["args"]
    assert pod == template  # same image, ServiceAccount, security, env, volumes, resources, labels
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FEDLORA_STORE_URI"] == "s3://fedlora-exchange/consortium-2026"
    assert env["FEDLORA_BANK_LEDGER"] == "/var/lib/fedlora/ledger" and env["FEDLORA_BANK_DATA"].startswith(
        "/data/bank/"
    )
    assert json.loads(env["FEDLORA_BANK_POLICY"])["maxEpsilonPerRun"] == 4
    assert not [name for name in env if name.startswith("FEDLORA_REQUEST_")]  # the request comes from the exchange


def test_agent_pods_are_selected_by_the_trainer_network_policy(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["agent"]
    (cronjob,) = by_kind(docs, "CronJob")
    labels = cronjob["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(docs, "NetworkPolicy")}
    trainer_policy = policies[f"{RELEASE}-trainer"]
    assert selects(trainer_policy["podSelector"], labels)
    assert trainer_policy["ingress"] == []
    assert {"ipBlock": {"cidr": "52.218.0.0/17"}} in trainer_policy["egress"][1]["to"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"agent": {"enabled": True, "schedule": "every minute"}}, "/agent/schedule"),
        ({"agent": {"enabled": True, "runs": ["a/b"]}}, "/agent/runs/0"),
        ({"agent": {"enabled": True, "activeDeadlineSeconds": 5}}, "/agent/activeDeadlineSeconds"),
        ({"agent": {"enable": True}}, "additional properties 'enable' not allowed"),
    ],
)
def test_bad_agent_values_rejected_by_the_schema(override: dict[str, Any], expected: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as info:
        render(merged(MINIMAL, override), "bank-m")
    assert expected in str(info.value)


def test_agent_with_a_macro_schedule_renders() -> None:
    docs = render(merged(MINIMAL, {"agent": {"enabled": True, "schedule": "@hourly"}}), "bank-m")
    (cronjob,) = by_kind(docs, "CronJob")
    assert cronjob["spec"]["schedule"] == "@hourly"
    args = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["bank-agent", "--bank", "bank-m", "--once"]


def test_chart_and_default_image_carry_the_package_version() -> None:
    """Chart.yaml's appVersion and the default trainer tag are written by hand: they must follow fedlora.__version__."""
    from fedlora import __version__

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert chart["appVersion"] == __version__
    assert values["image"]["tag"] == __version__
