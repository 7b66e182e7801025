"""The trainer Job template shared by the bank's Helm chart and the bank agent's launcher."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
import yaml

from fedlora.kube import (
    TEMPLATE_KEY,
    TEMPLATE_LABELS,
    TRAINER_CONTAINER,
    JobTemplate,
    JobTemplateError,
    job_template_from_configmap,
    parse_job_template,
    render_job,
)

K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
POD = "spec.template.spec"
TRAINER = f"{POD}.containers[trainer]"
TSC = f"{TRAINER}.securityContext"


def good_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"labels": {"app.kubernetes.io/name": "fedlora-bank"}},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "fedlora-bank"}},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": "fedlora-bank-trainer",
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "nodeSelector": {"nvidia.com/gpu.present": "true"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "ghcr.io/example/fedlora:0.1.0",
                            "imagePullPolicy": "IfNotPresent",
                            "env": [
                                {"name": "FEDLORA_BANK_DATA", "value": "/data/bank"},
                                {"name": "FEDLORA_STORE_URI", "value": "s3://exchange/consortium/bank-a"},
                                {
                                    "name": "AWS_ACCESS_KEY_ID",
                                    "valueFrom": {"secretKeyRef": {"name": "bank-s3", "key": "access-key-id"}},
                                },
                            ],
                            "resources": {
                                "requests": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"},
                                "limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
                            },
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
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "data", "persistentVolumeClaim": {"claimName": "bank-data", "readOnly": True}},
                    ],
                },
            },
        },
    }


def parse(manifest: dict[str, Any]) -> JobTemplate:
    return parse_job_template(yaml.safe_dump(manifest), source="test template")


def trainer_of(manifest: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = manifest["spec"]["template"]["spec"]["containers"][0]
    return container


REQUEST = {
    "name": "fedlora-run1-r3-bank-a",
    "namespace": "bank-a",
    "args": ["train-bank", "--run", "s3://exchange/run1", "--bank", "bank-a", "--round", "3"],
    "env": {"FEDLORA_REQUEST_ROUND": "3", "FEDLORA_REQUEST_RUN": "run1"},
    "labels": {"fedlora.io/run": "run1", "fedlora.io/round": "3", "fedlora.io/bank": "bank-a"},
}


def test_good_template_parses() -> None:
    template = parse(good_manifest())
    assert template.source == "test template"
    assert template.manifest == good_manifest()
    assert TRAINER_CONTAINER == "trainer"
    assert TEMPLATE_KEY == "job-template.yaml"
    assert TEMPLATE_LABELS["fedlora.io/job-template"] == "true"


def test_container_level_pod_security_is_accepted() -> None:
    m = good_manifest()
    pod = m["spec"]["template"]["spec"]
    del pod["securityContext"]
    trainer_of(m)["securityContext"].update({"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}})
    parse(m)


def _set(path: list[Any], value: Any) -> Any:
    def mutate(m: dict[str, Any]) -> None:
        node: Any = m
        for key in path[:-1]:
            node = node[key]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return mutate


_DELETE = object()
_PODSPEC = ["spec", "template", "spec"]
_TRAINER = [*_PODSPEC, "containers", 0]
_SC = [*_TRAINER, "securityContext"]

# (case id, mutation, expected path and words in the message)
BAD: list[tuple[str, Any, str]] = [
    ("ro-rootfs-false", _set([*_SC, "readOnlyRootFilesystem"], False), f"{TSC}.readOnlyRootFilesystem must be true"),
    (
        "ro-rootfs-missing",
        _set([*_SC, "readOnlyRootFilesystem"], _DELETE),
        f"{TSC}.readOnlyRootFilesystem must be true",
    ),
    ("priv-esc", _set([*_SC, "allowPrivilegeEscalation"], True), f"{TSC}.allowPrivilegeEscalation must be false"),
    (
        "priv-esc-missing",
        _set([*_SC, "allowPrivilegeEscalation"], _DELETE),
        f"{TSC}.allowPrivilegeEscalation must be false",
    ),
    (
        "caps-not-dropped",
        _set([*_SC, "capabilities"], {"drop": ["NET_RAW"]}),
        f"{TSC}.capabilities.drop must include ALL",
    ),
    (
        "caps-added",
        _set([*_SC, "capabilities"], {"drop": ["ALL"], "add": ["SYS_ADMIN"]}),
        f"{TSC}.capabilities.add must be empty",
    ),
    ("privileged", _set([*_SC, "privileged"], True), f"{TSC}.privileged must not be true"),
    ("no-container-sc", _set(_SC, _DELETE), f"{TSC}.readOnlyRootFilesystem must be true"),
    (
        "pod-root-allowed",
        _set([*_PODSPEC, "securityContext", "runAsNonRoot"], False),
        f"{POD}.securityContext.runAsNonRoot",
    ),
    ("container-root-allowed", _set([*_SC, "runAsNonRoot"], False), f"{TSC}.runAsNonRoot must be true"),
    ("run-as-root", _set([*_SC, "runAsUser"], 0), f"{TSC}.runAsUser must not be 0"),
    (
        "seccomp-missing",
        _set([*_PODSPEC, "securityContext", "seccompProfile"], _DELETE),
        f"{POD}.securityContext.seccompProfile (or {TSC}.seccompProfile).type must be RuntimeDefault",
    ),
    (
        "seccomp-unconfined",
        _set([*_SC, "seccompProfile"], {"type": "Unconfined"}),
        f"{TSC}.seccompProfile.type must be RuntimeDefault",
    ),
    ("host-network", _set([*_PODSPEC, "hostNetwork"], True), f"{POD}.hostNetwork must not be true"),
    (
        "host-path",
        _set([*_PODSPEC, "volumes", 0], {"name": "tmp", "hostPath": {"path": "/tmp"}}),
        f"{POD}.volumes[tmp].hostPath must not be used",
    ),
    ("api-version", _set(["apiVersion"], "batch/v1beta1"), "apiVersion must be batch/v1"),
    ("kind", _set(["kind"], "CronJob"), "kind must be Job"),
    ("named", _set(["metadata", "name"], "fixed"), "metadata.name must not be set"),
    ("generate-name", _set(["metadata", "generateName"], "x-"), "metadata.generateName must not be set"),
    ("selector", _set(["spec", "selector"], {"matchLabels": {"a": "b"}}), "spec.selector must not be set"),
    ("restart-policy", _set([*_PODSPEC, "restartPolicy"], "OnFailure"), f"{POD}.restartPolicy must be Never"),
    ("no-pod-spec", _set(["spec", "template"], _DELETE), f"{POD} must be a mapping"),
    (
        "no-containers",
        _set([*_PODSPEC, "containers"], []),
        f"{POD}.containers must hold exactly one container named trainer",
    ),
    ("container-name", _set([*_TRAINER, "name"], "main"), f"{POD}.containers[0].name must be trainer"),
    ("no-image", _set([*_TRAINER, "image"], _DELETE), f"{TRAINER}.image must be set"),
    ("empty-image", _set([*_TRAINER, "image"], " "), f"{TRAINER}.image must be set"),
    ("args-set", _set([*_TRAINER, "args"], ["simulate"]), f"{TRAINER}.args must not be set"),
    (
        "request-env",
        _set([*_TRAINER, "env"], [{"name": "FEDLORA_REQUEST_ROUND", "value": "1"}]),
        f"{TRAINER}.env[FEDLORA_REQUEST_ROUND] must not be set",
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), [(m, e) for _, m, e in BAD], ids=[c for c, _, _ in BAD])
def test_bad_template_names_the_path(mutate: Any, expected: str) -> None:
    m = good_manifest()
    mutate(m)
    with pytest.raises(JobTemplateError) as info:
        parse(m)
    message = str(info.value)
    assert expected in message
    assert "test template" in message


def test_two_containers_rejected() -> None:
    m = good_manifest()
    m["spec"]["template"]["spec"]["containers"].append(copy.deepcopy(trainer_of(m)) | {"name": "sidecar"})
    with pytest.raises(JobTemplateError, match=r"containers must hold exactly one container named trainer, found 2"):
        parse(m)


def test_insecure_init_container_rejected() -> None:
    m = good_manifest()
    m["spec"]["template"]["spec"]["initContainers"] = [{"name": "fetch", "image": "busybox:1.36"}]
    with pytest.raises(JobTemplateError, match=r"initContainers\[fetch\]\.securityContext\.readOnlyRootFilesystem"):
        parse(m)


def test_all_problems_are_listed() -> None:
    m = good_manifest()
    sc = trainer_of(m)["securityContext"]
    sc["readOnlyRootFilesystem"] = False
    sc["allowPrivilegeEscalation"] = True
    with pytest.raises(JobTemplateError) as info:
        parse(m)
    assert len(info.value.problems) == 2


@pytest.mark.parametrize("text", ["{", "- a\n- b\n", "just text"])
def test_not_a_job_rejected(text: str) -> None:
    with pytest.raises(JobTemplateError, match="test template"):
        parse_job_template(text, source="test template")


def configmap(text: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "fedlora-bank-job-template", "namespace": "bank-a", "labels": dict(TEMPLATE_LABELS)},
        "data": {TEMPLATE_KEY: text},
    }


def test_from_configmap() -> None:
    template = job_template_from_configmap(configmap(yaml.safe_dump(good_manifest())))
    assert template.source == "configmap bank-a/fedlora-bank-job-template"
    assert template.manifest == good_manifest()


def test_from_configmap_errors_name_the_configmap() -> None:
    cm = configmap(yaml.safe_dump(good_manifest()))
    del cm["data"][TEMPLATE_KEY]
    with pytest.raises(JobTemplateError, match=r"configmap bank-a/fedlora-bank-job-template.*\n.*data\.job-template"):
        job_template_from_configmap(cm)
    m = good_manifest()
    trainer_of(m)["securityContext"]["readOnlyRootFilesystem"] = False
    with pytest.raises(JobTemplateError, match=r"configmap bank-a/fedlora-bank-job-template"):
        job_template_from_configmap(configmap(yaml.safe_dump(m)))
    with pytest.raises(JobTemplateError, match="kind must be ConfigMap"):
        job_template_from_configmap(cm | {"kind": "Secret"})


def test_from_sanitized_kubernetes_object() -> None:
    kubernetes = pytest.importorskip("kubernetes")
    obj = kubernetes.client.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=kubernetes.client.V1ObjectMeta(name="tpl", namespace="bank-b"),
        data={TEMPLATE_KEY: yaml.safe_dump(good_manifest())},
    )
    data = kubernetes.client.ApiClient().sanitize_for_serialization(obj)
    assert job_template_from_configmap(data).source == "configmap bank-b/tpl"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_render_job_is_a_valid_job(version: str) -> None:
    template = parse(good_manifest())
    job = render_job(template, **REQUEST, active_deadline_seconds=3600)  # type: ignore[arg-type]
    kubernetes_validate.validate(job, version, strict=True)
    assert job["metadata"]["name"] == REQUEST["name"]
    assert job["metadata"]["namespace"] == "bank-a"
    assert job["metadata"]["labels"] == {"app.kubernetes.io/name": "fedlora-bank", **REQUEST["labels"]}  # type: ignore[dict-item]
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"]["fedlora.io/run"] == "run1"
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "fedlora-bank"
    assert trainer_of(job)["args"] == REQUEST["args"]
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    # the bank's choices are untouched
    assert trainer_of(job)["image"] == "ghcr.io/example/fedlora:0.1.0"
    assert trainer_of(job)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["serviceAccountName"] == "fedlora-bank-trainer"


def test_render_job_does_not_touch_the_template() -> None:
    template = parse(good_manifest())
    render_job(template, **REQUEST)  # type: ignore[arg-type]
    assert template.manifest == good_manifest()


def test_env_precedence() -> None:
    template = parse(good_manifest())
    job = render_job(
        template,
        name="j",
        namespace="bank-a",
        args=[],
        env={
            "FEDLORA_REQUEST_ROUND": "3",  # launcher-owned: always used
            "FEDLORA_STORE_URI": "s3://elsewhere/",  # set by the bank: the bank wins
            "PYTHONUNBUFFERED": "1",  # not set by the bank: appended
        },
        labels={},
    )
    env = trainer_of(job)["env"]
    names = [e["name"] for e in env]
    assert names == [
        "FEDLORA_BANK_DATA",
        "FEDLORA_STORE_URI",
        "AWS_ACCESS_KEY_ID",
        "FEDLORA_REQUEST_ROUND",
        "PYTHONUNBUFFERED",
    ]
    by_name = {e["name"]: e for e in env}
    assert by_name["FEDLORA_STORE_URI"]["value"] == "s3://exchange/consortium/bank-a"
    assert by_name["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "bank-s3"
    assert by_name["FEDLORA_REQUEST_ROUND"]["value"] == "3"


def test_launcher_owns_request_env_even_in_unchecked_templates() -> None:
    m = good_manifest()
    trainer_of(m)["env"].append({"name": "FEDLORA_REQUEST_ROUND", "value": "stale"})
    job = render_job(
        JobTemplate(m, "unchecked"), name="j", namespace="n", args=[], env={"FEDLORA_REQUEST_ROUND": "3"}, labels={}
    )
    values = [e.get("value") for e in trainer_of(job)["env"] if e["name"] == "FEDLORA_REQUEST_ROUND"]
    assert values == ["3"]


def test_bank_deadline_caps_the_launcher() -> None:
    m = good_manifest()
    m["spec"]["activeDeadlineSeconds"] = 600
    template = parse(m)
    assert render_job(template, **REQUEST, active_deadline_seconds=3600)["spec"]["activeDeadlineSeconds"] == 600  # type: ignore[arg-type]
    assert render_job(template, **REQUEST, active_deadline_seconds=60)["spec"]["activeDeadlineSeconds"] == 60  # type: ignore[arg-type]
    assert render_job(template, **REQUEST)["spec"]["activeDeadlineSeconds"] == 600  # type: ignore[arg-type]


def test_template_without_metadata_renders() -> None:
    m = good_manifest()
    del m["metadata"]
    del m["spec"]["template"]["metadata"]
    job = render_job(parse(m), **REQUEST)  # type: ignore[arg-type]
    kubernetes_validate.validate(job, K8S_VERSIONS[0], strict=True)
    assert job["spec"]["template"]["metadata"]["labels"] == REQUEST["labels"]


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"name": "Bad_Name"}, "job name"),
        ({"name": "x" * 64}, "job name"),
        ({"namespace": "Bank A"}, "namespace"),
        ({"labels": {"fedlora.io/run": "has space"}}, "label"),
        ({"labels": {"bad key!": "v"}}, "label key"),
        ({"env": {"1=bad": "v"}}, "environment variable name"),
        ({"env": {"FEDLORA_REQUEST_ROUND": 3}}, "must be a string"),
        ({"args": ["ok", 3]}, "args"),
        ({"active_deadline_seconds": 0}, "active_deadline_seconds"),
        ({"active_deadline_seconds": True}, "active_deadline_seconds"),
    ],
)
def test_render_job_rejects_bad_request(override: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        render_job(parse(good_manifest()), **(REQUEST | override))  # type: ignore[arg-type]


def test_the_banks_labels_are_never_overwritten_by_the_launchers() -> None:
    """The bank's NetworkPolicies select on its template's labels: a launcher label of the same key must not win."""
    from fedlora.kube.launcher import JOB_LABELS

    template = parse_job_template(yaml.safe_dump(good_manifest()), source="test")
    clash = {**JOB_LABELS, "app.kubernetes.io/name": "fedlora-trainer", "fedlora.io/run": "run1"}
    job = render_job(template, name="j", namespace="bank-a", args=[], env={}, labels=clash)
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels["app.kubernetes.io/name"] == "fedlora-bank"
        assert labels["fedlora.io/run"] == "run1"
        assert labels["app.kubernetes.io/managed-by"] == "fedlora-bank-agent"
    assert "app.kubernetes.io/name" not in JOB_LABELS
