"""The bank agent's Job launcher: one trainer Job per round, in the agent's own namespace, from the bank's template.

Only the bank's own agent (``fedlora bank-agent --executor job``, :mod:`fedlora.kube.agent_jobs`) creates
trainer Jobs; the consortium has no right in a bank's namespace. The launcher

1. reads the bank's trainer Job template from the ConfigMap its Helm release installed
   (:func:`fedlora.kube.job_template.job_template_from_configmap`; the bank decides image, service account,
   GPU resources, node placement, data volume, pod security and deadline);
2. fills in one training request (:func:`fedlora.kube.job_template.render_job`: ``args`` of the ``fedlora``
   entrypoint and ``FEDLORA_REQUEST_*`` variables, nothing else) and creates it under a name derived from
   (run, bank, round) (:func:`job_name`): a second create of the same round answers 409 AlreadyExists, which
   is the lease: a round gets at most one Job at a time;
3. reads a Job's final condition on a later pass (:func:`fedlora.kube.job_watch.job_state`), never its log.

Finished Jobs are left to the template's ``ttlSecondsAfterFinished``: the bank keeps their logs and events.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from fedlora.kube.job_template import JobTemplate, JobTemplateError, job_template_from_configmap, render_job
from fedlora.kube.job_watch import job_state, read_job

__all__ = [
    "JOB_LABELS",
    "SERVICE_ACCOUNT_NAMESPACE",
    "BankJobLauncher",
    "JobStatus",
    "api_client",
    "job_name",
    "label_value",
    "own_namespace",
]

log = logging.getLogger(__name__)

JOB_LABELS = {"app.kubernetes.io/managed-by": "fedlora-bank-agent"}
"""Labels on every Job the agent creates (plus ``fedlora.io/run``, ``/bank`` and ``/round``).

Only keys the bank's template does not set: the template's own labels (``app.kubernetes.io/name``,
``/instance``, ``/component``) are what the bank's NetworkPolicies select on, so they are never overwritten."""

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
"""Where a pod with a mounted ServiceAccount token finds its own namespace."""

_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_NOT_LABEL = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class JobStatus:
    """What a round's Job is doing.

    Attributes:
        name: The Job's name.
        exists: False when there is no such Job (never created, or removed by its TTL).
        finished: True once the Job has a final condition.
        succeeded: True when that condition is ``Complete``.
        reason: The condition's reason (``Complete``, ``BackoffLimitExceeded``, ``DeadlineExceeded``...), or "".
    """

    name: str
    exists: bool
    finished: bool = False
    succeeded: bool = False
    reason: str = ""


def job_name(*, run: str, bank: str, round_index: int) -> str:
    """A DNS-1123 label, unique per run/bank/round: ``fedlora-<bank>-r<round>-<hash>``.

    The hash (10 hex digits of sha256 over run, bank and round) keeps names of different
    runs apart; the bank part is shortened so that the name fits 63 characters (Kubernetes
    copies it into the pod's ``job-name`` label). Deterministic: the same round always gets the
    same name, so a second create is refused by the API server (the agent's lease).
    """
    digest = hashlib.sha256(f"{run}\0{bank}\0{round_index}".encode()).hexdigest()[:10]
    suffix = f"-r{round_index}-{digest}"
    slug = _NOT_DNS.sub("-", bank.lower()).strip("-") or "bank"
    slug = slug[: 63 - len("fedlora-") - len(suffix)].rstrip("-")
    return f"fedlora-{slug}{suffix}"


def label_value(text: str) -> str:
    """``text`` as a valid label value (63 characters at most; a hash keeps long values distinct)."""
    value = _NOT_LABEL.sub("-", text).strip("-_.")
    if len(value) > 63:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        value = f"{value[:54].rstrip('-_.')}-{digest}"
    return value


def own_namespace(path: Path = SERVICE_ACCOUNT_NAMESPACE) -> str | None:
    """The namespace this pod runs in (from its ServiceAccount mount), or None outside a pod."""
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def api_client(kubeconfig: str | None = None, *, context: str | None = None) -> client.ApiClient:
    """An API client: the pod's service account in a cluster, else a kubeconfig.

    Args:
        kubeconfig: A kubeconfig file; default ``$KUBECONFIG`` or ``~/.kube/config`` when not in a pod.
        context: A context of the kubeconfig (default: its current context).

    Raises:
        kubernetes.config.ConfigException: no usable configuration.
    """
    from kubernetes import config as kube_config

    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = client.Configuration()
        kube_config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    # the client reads $KUBECONFIG once, at import: read it now
    return kube_config.new_client_from_config(config_file=kubeconfig or os.environ.get("KUBECONFIG"), context=context)


class BankJobLauncher:
    """Reads the bank's template, creates a round's trainer Job in the bank's namespace, reads its status.

    Args:
        api: A configured Kubernetes API client (see :func:`api_client`).
        namespace: The bank's namespace (the agent's own).
        template_configmap: The ConfigMap holding the bank's trainer Job template.
    """

    def __init__(self, api: client.ApiClient, *, namespace: str, template_configmap: str) -> None:
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.namespace = namespace
        self.template_configmap = template_configmap

    def template(self) -> JobTemplate:
        """Read and check the bank's template ConfigMap.

        Raises:
            JobTemplateError: the ConfigMap is missing or holds a bad template.
            ApiException: the API refused to read it (other than 404).
        """
        try:
            configmap = self.core.read_namespaced_config_map(self.template_configmap, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise JobTemplateError(
                    f"configmap {self.namespace}/{self.template_configmap}",
                    ["not found: is the bank's Helm release installed in this namespace?"],
                ) from exc
            raise
        return job_template_from_configmap(self.core.api_client.sanitize_for_serialization(configmap))

    def render(
        self,
        template: JobTemplate,
        *,
        name: str,
        args: list[str],
        env: dict[str, str],
        labels: dict[str, str],
    ) -> dict[str, Any]:
        """The Job manifest: ``template`` filled with one request (the template's deadline, TTL and labels kept).

        Raises:
            ValueError: a name, label, argument or environment entry is not valid.
        """
        return render_job(
            template, name=name, namespace=self.namespace, args=args, env=env, labels={**JOB_LABELS, **labels}
        )

    def create(self, manifest: dict[str, Any]) -> bool:
        """Create the Job; False when a Job of that name exists already (the round is taken: do nothing).

        Raises:
            ApiException: the API refused the Job (other than 409 AlreadyExists), e.g. quota or admission.
        """
        try:
            self.batch.create_namespaced_job(self.namespace, manifest)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def status(self, name: str) -> JobStatus:
        """The Job's status (see :class:`JobStatus`).

        Raises:
            ApiException: the API refused to read it (other than 404).
        """
        job = read_job(self.batch, self.namespace, name)
        if job is None:
            return JobStatus(name, exists=False)
        state = job_state(job)
        if state is None:
            return JobStatus(name, exists=True)
        return JobStatus(name, exists=True, finished=True, succeeded=state[0], reason=state[1])
