"""Run one bank's training round as a Kubernetes Job in the bank's own namespace.

A Kubeflow task cannot run in another namespace, so the pipeline's train step asks the
Kubernetes API for a Job in the bank's namespace instead:

1. read the bank's trainer Job template from the ConfigMap its Helm release installed
   (:func:`fedlora.kube.job_template.job_template_from_configmap`; the bank decides image,
   service account, GPU resources, node placement, data volume and pod security);
2. fill in the training request (:func:`fedlora.kube.job_template.render_job`: ``args`` of
   the ``fedlora`` entrypoint and ``FEDLORA_REQUEST_*`` variables, nothing else) and create it;
3. watch it until its ``Complete`` or ``Failed`` condition, or until the timeout
   (:mod:`fedlora.kube.job_watch`, which also streams the log and diagnoses a failed pod);
4. stream its pod's log into our log while it runs, only if the bank allows it (its ConfigMap's
   ``streamLogs``, the chart's ``logs.streamToConsortium``, off by default: the log may hold what
   only the bank should see);
5. delete it (propagation ``Background``, so its pods go too) whatever happened.

The result is a small :class:`JobResult`; the caller turns a failed or timed-out Job into a
failed bank for the round, it never raises for a bank's outage. A Job that already exists
under the same name (a retried pipeline task) is adopted while it runs, and replaced when it
has already finished.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from fedlora.kube.job_template import (
    JobTemplate,
    JobTemplateError,
    job_template_from_configmap,
    render_job,
)
from fedlora.kube.job_watch import LogFollower, api_error, diagnose_pods, job_state, read_job, wait_for_job

__all__ = [
    "JOB_LABELS",
    "BankJobLauncher",
    "JobResult",
    "api_client",
    "job_name",
    "label_value",
]

log = logging.getLogger(__name__)

JOB_LABELS = {"app.kubernetes.io/managed-by": "fedlora-launcher"}
"""Labels on every Job the launcher creates (plus ``fedlora.io/run``, ``/bank`` and ``/round``).

Only keys the bank's template does not set: the template's own labels (``app.kubernetes.io/name``,
``/instance``, ``/component``) are what the bank's NetworkPolicies and admission policy select on, so
they are never overwritten. The bank's admission policy lets the consortium delete only Jobs that
carry ``app.kubernetes.io/managed-by=fedlora-launcher``."""

_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_NOT_LABEL = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class JobResult:
    """How a bank's Job ended.

    Attributes:
        name: The Job's name.
        namespace: The bank's namespace.
        succeeded: True when the Job reached its ``Complete`` condition.
        reason: Why it ended, e.g. ``"Complete"``, ``"BackoffLimitExceeded: Job has reached the
            specified backoff limit"``, ``"timed out after 3600 s"``, ``"no job template: ..."``.
        logs_tail: The last lines of the trainer's log (at most 50).
        seconds: Wall seconds from creation to the end.
    """

    name: str
    namespace: str
    succeeded: bool
    reason: str
    logs_tail: str = ""
    seconds: float = 0.0


def job_name(*, run: str, bank: str, round_index: int) -> str:
    """A DNS-1123 label, unique per run/bank/round: ``fedlora-<bank>-r<round>-<hash>``.

    The hash (10 hex digits of sha256 over run, bank and round) keeps names of different
    runs apart; the bank part is shortened so that the name fits 63 characters (Kubernetes
    copies it into the pod's ``job-name`` label).
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


def api_client(kubeconfig: str | None = None, *, context: str | None = None) -> client.ApiClient:
    """An API client: the pod's service account in a cluster, else a kubeconfig.

    Args:
        kubeconfig: A kubeconfig file; default ``$KUBECONFIG`` or ``~/.kube/config`` when not in a pod.
        context: A context of the kubeconfig (default: its current context).

    Raises:
        kubernetes.config.ConfigException: no usable configuration.
    """
    import os

    from kubernetes import config as kube_config

    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = client.Configuration()
        kube_config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    # the client reads $KUBECONFIG once, at import: read it now
    return kube_config.new_client_from_config(config_file=kubeconfig or os.environ.get("KUBECONFIG"), context=context)


class BankJobLauncher:
    """Creates, watches, logs and deletes one bank's trainer Job.

    Args:
        api: A configured Kubernetes API client (see :func:`api_client`).
        poll_seconds: Pause between checks of the Job's pods for logs, and the first backoff
            after an API error (doubled up to 30 s).
        watch_seconds: Longest single watch request; the launcher re-reads the Job in between.
        log_sink: Where log lines go (default: our logger at INFO; the KFP task log shows it).
        clock: Monotonic clock, for tests.
    """

    def __init__(
        self,
        api: client.ApiClient,
        *,
        poll_seconds: float = 2.0,
        watch_seconds: int = 60,
        log_sink: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.poll_seconds = poll_seconds
        self.watch_seconds = watch_seconds
        self.log_sink = log_sink or (lambda line: log.info("%s", line))
        self.clock = clock

    def template(self, *, namespace: str, template_configmap: str) -> JobTemplate:
        """Read and check the bank's template ConfigMap.

        Raises:
            JobTemplateError: the ConfigMap is missing or holds a bad template.
            ApiException: the API refused to read it (other than 404).
        """
        try:
            configmap = self.core.read_namespaced_config_map(template_configmap, namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise JobTemplateError(
                    f"configmap {namespace}/{template_configmap}",
                    ["not found: is the bank's Helm release installed in this namespace?"],
                ) from exc
            raise
        return job_template_from_configmap(self.core.api_client.sanitize_for_serialization(configmap))

    def render(
        self,
        *,
        namespace: str,
        template_configmap: str,
        name: str,
        args: list[str],
        env: dict[str, str],
        labels: dict[str, str],
        timeout_seconds: int,
        template: JobTemplate | None = None,
    ) -> dict[str, Any]:
        """Read the bank's template ConfigMap (unless ``template`` is given) and return the Job manifest.

        Raises:
            JobTemplateError: the ConfigMap is missing or holds a bad template.
            ApiException: the API refused to read it (other than 404).
        """
        template = template or self.template(namespace=namespace, template_configmap=template_configmap)
        return render_job(
            template,
            name=name,
            namespace=namespace,
            args=args,
            env=env,
            labels={**JOB_LABELS, **labels},
            active_deadline_seconds=timeout_seconds,
        )

    def run(
        self,
        *,
        namespace: str,
        template_configmap: str,
        name: str,
        args: list[str],
        env: dict[str, str],
        labels: dict[str, str],
        timeout_seconds: int,
    ) -> JobResult:
        """Run the Job to its end (or the timeout), stream its logs, delete it, and say how it ended.

        Never raises for the Job's own failure, a missing template, a refused request or a
        timeout: those come back as ``succeeded=False`` with the reason.
        """
        started = self.clock()
        try:
            template = self.template(namespace=namespace, template_configmap=template_configmap)
            manifest = self.render(
                namespace=namespace,
                template_configmap=template_configmap,
                name=name,
                args=args,
                env=env,
                labels=labels,
                timeout_seconds=timeout_seconds,
                template=template,
            )
        except (JobTemplateError, ValueError) as exc:
            return JobResult(name, namespace, False, f"bad job template: {exc}")
        except ApiException as exc:
            return JobResult(name, namespace, False, f"cannot read the job template: {api_error(exc)}")

        follower = LogFollower(self.core, namespace, name, self.log_sink, self.poll_seconds, template.stream_logs)
        if not template.stream_logs:
            self.log_sink(
                f"[{namespace}/{name}] the bank keeps its Job's log in its namespace (its chart's "
                "logs.streamToConsortium is false): only the Job's status and the outcome it publishes come back"
            )
        try:
            self._create(namespace, name, manifest)
        except ApiException as exc:
            return JobResult(name, namespace, False, f"cannot create the job: {api_error(exc)}")
        log.info("job %s/%s created; waiting up to %d s", namespace, name, timeout_seconds)
        ended = False
        grace = min(30.0, 5 * self.poll_seconds + 5)
        try:
            follower.start()
            succeeded, reason, ended = wait_for_job(
                self.batch,
                namespace,
                name,
                deadline=started + timeout_seconds,
                timeout_seconds=timeout_seconds,
                poll_seconds=self.poll_seconds,
                watch_seconds=self.watch_seconds,
                clock=self.clock,
            )
            if not succeeded:
                reason += diagnose_pods(self.core, namespace, name)
        finally:
            if ended:  # the pod has exited: collect the last of its log before the pod goes away
                tail = follower.finish(timeout=grace)
                self._delete(namespace, name)
            else:  # timed out or interrupted: stop the pod first, which also ends its log stream
                self._delete(namespace, name)
                tail = follower.finish(timeout=grace)
        seconds = self.clock() - started
        level = logging.INFO if succeeded else logging.WARNING
        log.log(level, "job %s/%s ended after %.0f s: %s", namespace, name, seconds, reason)
        return JobResult(name, namespace, succeeded, reason, tail, seconds)

    # --- steps ---------------------------------------------------------------------------

    def _create(self, namespace: str, name: str, manifest: dict[str, Any]) -> None:
        """Create the Job; adopt a running one of the same name, replace a finished one."""
        try:
            self.batch.create_namespaced_job(namespace, manifest)
            return
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = read_job(self.batch, namespace, name)
        if existing is not None and job_state(existing) is None:
            log.info("job %s/%s already exists and runs (a retried task): following it", namespace, name)
            return
        log.info("job %s/%s already exists and has finished: replacing it", namespace, name)
        self._delete(namespace, name)
        deadline = self.clock() + 120
        while read_job(self.batch, namespace, name) is not None:
            if self.clock() > deadline:
                raise ApiException(status=409, reason=f"job {namespace}/{name} is still being deleted")
            time.sleep(self.poll_seconds)
        self.batch.create_namespaced_job(namespace, manifest)

    def _delete(self, namespace: str, name: str) -> None:
        """Delete the Job and (in the background) its pods; a missing Job is fine."""
        try:
            self.batch.delete_namespaced_job(
                name, namespace, body=client.V1DeleteOptions(propagation_policy="Background")
            )
            log.info("job %s/%s deleted", namespace, name)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("could not delete job %s/%s: %s", namespace, name, api_error(exc))
