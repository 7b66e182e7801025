"""The trainer Job template: one definition shared by the bank's Helm chart and the bank agent's launcher.

Each bank's Helm release stores a ``batch/v1`` Job *without a name* in a ConfigMap in the bank's namespace
(data key :data:`TEMPLATE_KEY`, labels :data:`TEMPLATE_LABELS`). The bank's own agent
(:mod:`fedlora.kube.launcher`) reads it, checks it with :func:`parse_job_template` and fills in one training
request with :func:`render_job`. The consortium never shapes a pod in a bank's namespace.

Who decides what:

* The **request** (run, bank and round, checked identifiers, and the run's config) fills in only the trainer
  container's ``args`` (the image's entrypoint is ``fedlora``, e.g.
  ``["train-bank", "--run", "...", "--bank", "bank-a", "--round", "3"]``), environment variables whose names
  start with :data:`LAUNCHER_ENV_PREFIX` (``FEDLORA_REQUEST_``), and the Job's name and labels.
* The **bank** decides everything else: image, service account, resources (including ``nvidia.com/gpu``),
  node selector, tolerations, volumes, deadline, its data path (``FEDLORA_BANK_DATA``), its exchange store
  (``FEDLORA_STORE_URI``), credentials (``AWS_*`` from Secrets) and the pod security below.

Environment precedence (:func:`render_job`): the template's ``env`` entries are kept as they are and come
first. A launcher entry whose name the template already sets is dropped: **the bank's template wins** for
every name it sets. The exception is ``FEDLORA_REQUEST_*``: those names belong to the launcher, a template
may not set them (:func:`parse_job_template` rejects it), and the launcher's values are always used. Launcher
entries with other names the template does not set are appended. (Kubernetes gives ``env`` precedence over
``envFrom``, so a bank that pins a name through ``envFrom`` only should also list it under ``env``.) The bank
agent passes ``FEDLORA_REQUEST_*`` only.

Pod security the template must keep (checked for the trainer and every init container; a container's
``securityContext`` overrides the pod's for ``runAsNonRoot``, ``runAsUser`` and ``seccompProfile``):
``runAsNonRoot: true`` and no ``runAsUser: 0``, ``seccompProfile.type: RuntimeDefault``,
``allowPrivilegeEscalation: false``, not ``privileged``, ``capabilities.drop`` includes ``ALL`` and nothing in
``capabilities.add``, ``readOnlyRootFilesystem: true``; no ``hostNetwork``/``hostPID``/``hostIPC`` and no
``hostPath`` volumes. This is the Kubernetes ``restricted`` Pod Security Standard plus a read-only root.

(Just over 400 lines on purpose: the checks are the contract a bank's chart must meet, and they
stay beside :func:`render_job`, which relies on them.)
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from fedlora.errors import FedLoRAError

__all__ = [
    "LAUNCHER_ENV_PREFIX",
    "TEMPLATE_KEY",
    "TEMPLATE_LABELS",
    "TRAINER_CONTAINER",
    "JobTemplate",
    "JobTemplateError",
    "job_template_from_configmap",
    "parse_job_template",
    "render_job",
]

log = logging.getLogger(__name__)

TEMPLATE_KEY = "job-template.yaml"
"""Data key of the Job template in the bank's ConfigMap."""

TEMPLATE_LABELS = {"app.kubernetes.io/component": "job-template", "fedlora.io/job-template": "true"}
"""Labels the bank's job-template ConfigMap carries (the agent's launcher may select on them)."""

TRAINER_CONTAINER = "trainer"
"""Name of the one container in the Job's pod."""

LAUNCHER_ENV_PREFIX = "FEDLORA_REQUEST_"
"""Environment variables with this prefix belong to the agent's launcher (the training request)."""

_POD = "spec.template.spec"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class JobTemplateError(FedLoRAError, ValueError):
    """The Job template is malformed or weakens the pod security; the message names the source and paths.

    Attributes:
        source: Where the template came from.
        problems: One ``"<path> <what is wrong>"`` line per problem.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid trainer job template ({source}):\n{lines}")


@dataclass(frozen=True)
class JobTemplate:
    """A checked trainer Job template.

    Attributes:
        manifest: A ``batch/v1`` Job without ``metadata.name``; treat it as read-only.
        source: Where it came from, for messages (e.g. ``"configmap bank-a/fedlora-bank-job-template"``).
    """

    manifest: dict[str, Any]
    source: str


def _as_map(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _check_container(container: dict[str, Any], path: str, pod_security: dict[str, Any], problems: list[str]) -> None:
    """Append the security problems of one container to ``problems``."""
    sc_raw = container.get("securityContext")
    sc = _as_map(sc_raw)
    sc_path = f"{path}.securityContext"
    if sc_raw is not None and sc is None:
        problems.append(f"{sc_path} must be a mapping")
    sc = sc or {}

    def effective(key: str) -> tuple[Any, str]:
        if key in sc:
            return sc[key], f"{sc_path}.{key}"
        return pod_security.get(key), f"{_POD}.securityContext.{key} (or {sc_path}.{key})"

    non_root, where = effective("runAsNonRoot")
    if non_root is not True:
        problems.append(f"{where} must be true")
    user, where = effective("runAsUser")
    if user == 0:
        problems.append(f"{where} must not be 0 (root)")
    seccomp, where = effective("seccompProfile")
    seccomp_type = seccomp.get("type") if isinstance(seccomp, dict) else None
    if seccomp_type != "RuntimeDefault":
        problems.append(f"{where}.type must be RuntimeDefault")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{sc_path}.allowPrivilegeEscalation must be false")
    if sc.get("privileged") is True:
        problems.append(f"{sc_path}.privileged must not be true")
    caps = _as_map(sc.get("capabilities")) or {}
    drop = caps.get("drop")
    if not isinstance(drop, list) or "ALL" not in drop:
        problems.append(f"{sc_path}.capabilities.drop must include ALL")
    if caps.get("add"):
        problems.append(f"{sc_path}.capabilities.add must be empty")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{sc_path}.readOnlyRootFilesystem must be true")


def _check_env(container: dict[str, Any], path: str, problems: list[str]) -> None:
    env = container.get("env")
    if env is None:
        return
    if not isinstance(env, list):
        problems.append(f"{path}.env must be a list")
        return
    for i, entry in enumerate(env):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            problems.append(f"{path}.env[{i}] must be a mapping with a name")
        elif name.startswith(LAUNCHER_ENV_PREFIX):
            problems.append(f"{path}.env[{name}] must not be set: {LAUNCHER_ENV_PREFIX}* belongs to the launcher")


def _check(manifest: Any) -> list[str]:
    """Return every problem of the template (empty if it is acceptable)."""
    if not isinstance(manifest, dict):
        return ["<root> must be a mapping (a batch/v1 Job)"]
    problems: list[str] = []
    if manifest.get("apiVersion") != "batch/v1":
        problems.append(f"apiVersion must be batch/v1, not {manifest.get('apiVersion')!r}")
    if manifest.get("kind") != "Job":
        problems.append(f"kind must be Job, not {manifest.get('kind')!r}")
    metadata_raw = manifest.get("metadata")
    metadata = _as_map(metadata_raw)
    if metadata_raw is not None and metadata is None:
        problems.append("metadata must be a mapping")
    for key in ("name", "generateName"):
        if metadata and key in metadata:
            problems.append(f"metadata.{key} must not be set: the launcher names each Job")
    spec = _as_map(manifest.get("spec"))
    if spec is None:
        problems.append("spec must be a mapping")
        return problems
    for key in ("selector", "manualSelector"):
        if key in spec:
            problems.append(f"spec.{key} must not be set: Kubernetes generates the Job's selector")
    template = _as_map(spec.get("template"))
    pod = _as_map(template.get("spec")) if template else None
    if template is None or pod is None:
        problems.append(f"{_POD} must be a mapping")
        return problems
    if pod.get("restartPolicy") != "Never":
        problems.append(f"{_POD}.restartPolicy must be Never, not {pod.get('restartPolicy')!r}")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key) is True:
            problems.append(f"{_POD}.{key} must not be true")
    volumes = pod.get("volumes") or []
    if isinstance(volumes, list):
        for i, volume in enumerate(volumes):
            if isinstance(volume, dict) and "hostPath" in volume:
                problems.append(f"{_POD}.volumes[{volume.get('name', i)}].hostPath must not be used")
    else:
        problems.append(f"{_POD}.volumes must be a list")
    pod_security_raw = pod.get("securityContext")
    pod_security = _as_map(pod_security_raw)
    if pod_security_raw is not None and pod_security is None:
        problems.append(f"{_POD}.securityContext must be a mapping")
    pod_security = pod_security or {}

    containers = pod.get("containers")
    if not isinstance(containers, list) or len(containers) != 1 or not isinstance(containers[0], dict):
        count = len(containers) if isinstance(containers, list) else 0
        problems.append(f"{_POD}.containers must hold exactly one container named {TRAINER_CONTAINER}, found {count}")
        return problems
    trainer = containers[0]
    if trainer.get("name") != TRAINER_CONTAINER:
        problems.append(f"{_POD}.containers[0].name must be {TRAINER_CONTAINER}, not {trainer.get('name')!r}")
    path = f"{_POD}.containers[{TRAINER_CONTAINER}]"
    image = trainer.get("image")
    if not isinstance(image, str) or not image.strip():
        problems.append(f"{path}.image must be set")
    if "args" in trainer:
        problems.append(f"{path}.args must not be set: the launcher sets the training request")
    _check_env(trainer, path, problems)
    _check_container(trainer, path, pod_security, problems)

    init_containers = pod.get("initContainers") or []
    if not isinstance(init_containers, list):
        problems.append(f"{_POD}.initContainers must be a list")
        init_containers = []
    for i, init in enumerate(init_containers):
        if not isinstance(init, dict):
            problems.append(f"{_POD}.initContainers[{i}] must be a mapping")
            continue
        _check_container(init, f"{_POD}.initContainers[{init.get('name', i)}]", pod_security, problems)
    return problems


def parse_job_template(text: str, *, source: str) -> JobTemplate:
    """Parse and check a trainer Job template (YAML or JSON text).

    Args:
        text: The template, a ``batch/v1`` Job without ``metadata.name``.
        source: Where it came from, used in messages.

    Returns:
        The checked template.

    Raises:
        JobTemplateError: if the text is not YAML, is not a Job of the expected shape, or weakens the pod
            security; the message lists every wrong path.
    """
    try:
        manifest = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise JobTemplateError(source, [f"<root> is not valid YAML: {exc}"]) from exc
    problems = _check(manifest)
    if problems:
        raise JobTemplateError(source, problems)
    return JobTemplate(manifest=manifest, source=source)


def job_template_from_configmap(configmap: Mapping[str, Any]) -> JobTemplate:
    """Read the trainer Job template from a ConfigMap given as a dict.

    Args:
        configmap: The ConfigMap as plain data, e.g.
            ``kubernetes.client.ApiClient().sanitize_for_serialization(v1_config_map)`` or a rendered manifest.

    Returns:
        The checked template; its ``source`` is ``"configmap <namespace>/<name>"``.

    Raises:
        JobTemplateError: if the object is not a ConfigMap, lacks :data:`TEMPLATE_KEY`, or the template is bad.
    """
    metadata = _as_map(configmap.get("metadata")) or {}
    source = f"configmap {metadata.get('namespace', '?')}/{metadata.get('name', '?')}"
    kind = configmap.get("kind")
    if kind is not None and kind != "ConfigMap":
        raise JobTemplateError(source, [f"kind must be ConfigMap, not {kind!r}"])
    data = _as_map(configmap.get("data")) or {}
    text = data.get(TEMPLATE_KEY)
    if not isinstance(text, str):
        raise JobTemplateError(source, [f"data.{TEMPLATE_KEY} is missing"])
    return parse_job_template(text, source=source)


def _check_labels(labels: Mapping[str, str]) -> None:
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if (prefix and not _DNS_SUBDOMAIN.match(prefix)) or not _LABEL_NAME.match(name):
            raise ValueError(f"label key {key!r} is not a valid Kubernetes label key")
        if not isinstance(value, str) or not _LABEL_VALUE.match(value):
            raise ValueError(f"label {key}={value!r}: value is not a valid Kubernetes label value")


def _add_labels(template: Mapping[str, str], labels: Mapping[str, str], where: str) -> dict[str, str]:
    """The template's labels plus the launcher's for keys the template does not set (the bank's win)."""
    merged = dict(template)
    for key, value in labels.items():
        if key in merged and merged[key] != value:
            log.info(
                "label %s=%s of the %s is set by the bank's template; the launcher's %r is not used",
                key,
                merged[key],
                where,
                value,
            )
            continue
        merged[key] = value
    return merged


def _merge_env(template_env: list[dict[str, Any]], env: Mapping[str, str]) -> list[dict[str, Any]]:
    """Template entries first (minus any launcher-owned names), then the launcher's allowed entries."""
    kept = [e for e in template_env if not str(e.get("name", "")).startswith(LAUNCHER_ENV_PREFIX)]
    bank_names = {e.get("name") for e in kept}
    merged = list(kept)
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ValueError(f"environment variable name {name!r} is not valid")
        if not isinstance(value, str):
            raise ValueError(f"environment variable {name}: value must be a string, not {type(value).__name__}")
        if name in bank_names:
            log.info("env %s is set by the bank's job template; the launcher's value is not used", name)
            continue
        merged.append({"name": name, "value": value})
    return merged


def render_job(
    template: JobTemplate,
    *,
    name: str,
    namespace: str,
    args: list[str],
    env: dict[str, str],
    labels: dict[str, str],
    active_deadline_seconds: int | None = None,
) -> dict[str, Any]:
    """Fill one training request into the bank's template and return the full Job manifest.

    The template is deep-copied; the result sets ``metadata.name``/``namespace``, adds ``labels`` to the
    Job's and the pod template's labels where the template does not set the key (the bank's labels win: its
    NetworkPolicies select the pods by them), sets the trainer
    container's ``args``, merges ``env`` as described in the module docstring (the bank's template wins,
    except for ``FEDLORA_REQUEST_*``) and sets ``spec.activeDeadlineSeconds``. If the template already has a
    deadline, the shorter one is kept.

    Args:
        template: The bank's checked template.
        name: Job name (DNS label, at most 63 characters: Kubernetes copies it into the pod's labels).
        namespace: The bank's namespace.
        args: Arguments of the ``fedlora`` entrypoint, e.g. ``["train-bank", "--bank", "bank-a", ...]``.
        env: The training request's environment (``FEDLORA_REQUEST_*``; other names only where the bank's
            template does not set them).
        labels: Labels for the Job and its pod.
        active_deadline_seconds: Wall-clock limit of the Job, in seconds.

    Returns:
        A ``batch/v1`` Job as a dict, ready for ``BatchV1Api.create_namespaced_job``.

    Raises:
        ValueError: if a name, label, argument, environment entry or deadline is not valid.
    """
    if not _DNS_LABEL.match(name):
        raise ValueError(f"job name {name!r} must be a DNS label (lowercase alphanumerics and '-', <= 63 chars)")
    if not _DNS_LABEL.match(namespace):
        raise ValueError(f"namespace {namespace!r} must be a DNS label")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError("args must be a list of strings")
    _check_labels(labels)
    if active_deadline_seconds is not None and (
        isinstance(active_deadline_seconds, bool)
        or not isinstance(active_deadline_seconds, int)
        or active_deadline_seconds <= 0
    ):
        raise ValueError(f"active_deadline_seconds must be a positive integer, not {active_deadline_seconds!r}")

    job = copy.deepcopy(template.manifest)
    metadata = job.get("metadata") or {}
    job["metadata"] = metadata
    metadata["name"] = name
    metadata["namespace"] = namespace
    metadata["labels"] = _add_labels(metadata.get("labels") or {}, labels, "Job")

    spec = job["spec"]
    pod_template = spec["template"]
    pod_metadata = pod_template.get("metadata") or {}
    pod_template["metadata"] = pod_metadata
    pod_metadata["labels"] = _add_labels(pod_metadata.get("labels") or {}, labels, "pod")

    containers = pod_template["spec"]["containers"]
    trainer = next(c for c in containers if c.get("name") == TRAINER_CONTAINER)
    trainer["args"] = list(args)
    trainer["env"] = _merge_env(trainer.get("env") or [], env)

    if active_deadline_seconds is not None:
        current = spec.get("activeDeadlineSeconds")
        spec["activeDeadlineSeconds"] = (
            min(current, active_deadline_seconds) if isinstance(current, int) else active_deadline_seconds
        )
    return job
