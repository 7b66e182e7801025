"""Run one bank's training round as a Kubernetes Job in the bank's own namespace.

A Kubeflow task cannot run in another namespace, so the pipeline's train step asks the
Kubernetes API for a Job in the bank's namespace instead:

1. read the bank's trainer Job template from the ConfigMap its Helm release installed
   (:func:`fedlora.kube.job_template.job_template_from_configmap`; the bank decides image,
   service account, GPU resources, node placement, data volume and pod security);
2. fill in the training request (:func:`fedlora.kube.job_template.render_job`: ``args`` of
   the ``fedlora`` entrypoint and ``FEDLORA_REQUEST_*`` variables, nothing else) and create it;
3. watch it until its ``Complete`` or ``Failed`` condition, or until the timeout;
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

import collections
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from fedlora.kube.job_template import (
    TRAINER_CONTAINER,
    JobTemplate,
    JobTemplateError,
    job_template_from_configmap,
    render_job,
)

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
_TAIL_LINES = 50


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


def _job_state(job: dict[str, Any] | None) -> tuple[bool, str] | None:
    """``(succeeded, reason)`` once the Job has a final condition, else None."""
    status = (job or {}).get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return True, "Complete"
        if condition.get("type") == "Failed":
            reason = condition.get("reason") or "Failed"
            message = condition.get("message")
            return False, f"{reason}: {message}" if message else reason
    return None


class _LogFollower:
    """Follows the trainer logs of a Job's pods (retries included) on a daemon thread."""

    def __init__(
        self,
        core: client.CoreV1Api,
        namespace: str,
        job: str,
        sink: Callable[[str], None],
        poll: float,
        enabled: bool = True,
    ):
        self.enabled = enabled  # False: the bank keeps its log; nothing is read
        self.core = core
        self.namespace = namespace
        self.job = job
        self.sink = sink
        self.poll = poll
        self.tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self.stop = threading.Event()
        self.done: set[str] = set()
        self.thread = threading.Thread(target=self._run, name=f"logs-{job}", daemon=True)

    def start(self) -> None:
        if self.enabled:
            self.thread.start()

    def finish(self, timeout: float) -> str:
        """Stop after a last pass over the pods; return the tail of what was seen."""
        self.stop.set()
        if self.enabled:
            self.thread.join(timeout)
        return "\n".join(self.tail)

    def _emit(self, pod: str, line: str) -> None:
        self.tail.append(line)
        self.sink(f"[{self.namespace}/{pod}] {line}")

    def _pods(self) -> list[dict[str, Any]]:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"job-name={self.job}")
        items = [self.core.api_client.sanitize_for_serialization(p) for p in pods.items]
        return sorted(items, key=lambda p: str(p.get("metadata", {}).get("creationTimestamp", "")))

    def _follow(self, pod: str) -> None:
        stream = watch.Watch().stream(
            self.core.read_namespaced_pod_log, name=pod, namespace=self.namespace, container=TRAINER_CONTAINER
        )
        for line in stream:
            self._emit(pod, str(line))

    def _pass(self) -> None:
        for pod in self._pods():
            name = str(pod["metadata"]["name"])
            phase = (pod.get("status") or {}).get("phase", "Pending")
            if name in self.done or phase in ("Pending", "Unknown"):
                continue
            self.done.add(name)
            try:
                self._follow(name)
            except ApiException as exc:
                log.debug("logs of pod %s/%s: %s", self.namespace, name, exc.reason)

    def _run(self) -> None:
        while True:
            last = self.stop.is_set()
            try:
                self._pass()
            except Exception as exc:  # log streaming is best effort; the Job's state decides the result
                log.debug("log follower of job %s/%s: %s", self.namespace, self.job, exc)
            if last:
                return
            self.stop.wait(self.poll)


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
            return JobResult(name, namespace, False, f"cannot read the job template: {_api_error(exc)}")

        follower = _LogFollower(self.core, namespace, name, self.log_sink, self.poll_seconds, template.stream_logs)
        if not template.stream_logs:
            self.log_sink(
                f"[{namespace}/{name}] the bank keeps its Job's log in its namespace (its chart's "
                "logs.streamToConsortium is false): only the Job's status and the outcome it publishes come back"
            )
        try:
            self._create(namespace, name, manifest)
        except ApiException as exc:
            return JobResult(name, namespace, False, f"cannot create the job: {_api_error(exc)}")
        log.info("job %s/%s created; waiting up to %d s", namespace, name, timeout_seconds)
        ended = False
        grace = min(30.0, 5 * self.poll_seconds + 5)
        try:
            follower.start()
            succeeded, reason, ended = self._wait(namespace, name, started + timeout_seconds, timeout_seconds)
            if not succeeded:
                reason += self._diagnose(namespace, name)
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
        existing = self._read(namespace, name)
        if existing is not None and _job_state(existing) is None:
            log.info("job %s/%s already exists and runs (a retried task): following it", namespace, name)
            return
        log.info("job %s/%s already exists and has finished: replacing it", namespace, name)
        self._delete(namespace, name)
        deadline = self.clock() + 120
        while self._read(namespace, name) is not None:
            if self.clock() > deadline:
                raise ApiException(status=409, reason=f"job {namespace}/{name} is still being deleted")
            time.sleep(self.poll_seconds)
        self.batch.create_namespaced_job(namespace, manifest)

    def _read(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            job = self.batch.read_namespaced_job(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        result: dict[str, Any] = self.batch.api_client.sanitize_for_serialization(job)
        return result

    def _wait(self, namespace: str, name: str, deadline: float, timeout_seconds: int) -> tuple[bool, str, bool]:
        """Watch the Job until a final condition or the deadline; re-read on 410 and on errors.

        Returns:
            ``(succeeded, reason, ended)``; ``ended`` is True when the Job reached a final condition.
        """
        backoff = self.poll_seconds
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                return False, f"timed out after {timeout_seconds} s", False
            try:
                job = self._read(namespace, name)
                if job is None:
                    return False, "the job was deleted by someone else before it finished", False
                state = _job_state(job)
                if state is not None:
                    return (*state, True)
                version = (job.get("metadata") or {}).get("resourceVersion")
                stream = watch.Watch().stream(
                    self.batch.list_namespaced_job,
                    namespace,
                    field_selector=f"metadata.name={name}",
                    resource_version=version,
                    timeout_seconds=max(1, int(min(remaining, self.watch_seconds))),
                    _request_timeout=(30, self.watch_seconds + 30),  # a silent, half-open connection ends too
                )
                for event in stream:
                    if event["type"] == "DELETED":
                        return False, "the job was deleted by someone else before it finished", False
                    state = _job_state(event["raw_object"])
                    if state is not None:
                        return (*state, True)
                    if self.clock() >= deadline:
                        break
                backoff = self.poll_seconds
            except ApiException as exc:
                if exc.status == 410:  # our resourceVersion is too old: read again, watch again
                    continue
                if exc.status in (401, 403):
                    return False, f"lost access to the job: {_api_error(exc)}", False
                log.warning("watching job %s/%s: %s; retrying in %.0f s", namespace, name, _api_error(exc), backoff)
                time.sleep(min(backoff, max(0.0, deadline - self.clock())))
                backoff = min(backoff * 2, 30.0)
            except Exception as exc:  # connection resets, proxies closing long watches
                log.warning("watching job %s/%s: %s; retrying in %.0f s", namespace, name, exc, backoff)
                time.sleep(min(backoff, max(0.0, deadline - self.clock())))
                backoff = min(backoff * 2, 30.0)

    def _diagnose(self, namespace: str, name: str) -> str:
        """Why the Job's last pod did not succeed, from its status (``" (pod x: Pending, Unschedulable: ...)"``)."""
        try:
            pods = self.core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
        except Exception as exc:  # a diagnosis is a bonus; the Job's condition is the result
            log.debug("pods of job %s/%s: %s", namespace, name, exc)
            return ""
        if not pods:
            return " (no pod was created: see the Job's events, e.g. quota or admission)"
        pod = self.core.api_client.sanitize_for_serialization(
            max(pods, key=lambda p: str(p.metadata.creation_timestamp or ""))
        )
        status = pod.get("status") or {}
        details = [str(status.get("phase", "Unknown"))]
        for condition in status.get("conditions") or []:
            if condition.get("status") == "False" and condition.get("reason"):
                details.append(f"{condition['reason']}: {condition.get('message', '')}".strip(": "))
        for container in status.get("containerStatuses") or []:
            state = container.get("state") or {}
            if "waiting" in state:
                waiting = state["waiting"]
                details.append(f"{container['name']} waiting: {waiting.get('reason', '')} {waiting.get('message', '')}")
            elif "terminated" in state:
                done = state["terminated"]
                details.append(f"{container['name']} exited {done.get('exitCode')}: {done.get('reason', '')}")
        return f" (pod {pod['metadata']['name']}: {'; '.join(d.strip() for d in details)})"

    def _delete(self, namespace: str, name: str) -> None:
        """Delete the Job and (in the background) its pods; a missing Job is fine."""
        try:
            self.batch.delete_namespaced_job(
                name, namespace, body=client.V1DeleteOptions(propagation_policy="Background")
            )
            log.info("job %s/%s deleted", namespace, name)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("could not delete job %s/%s: %s", namespace, name, _api_error(exc))


def _api_error(exc: ApiException) -> str:
    """A one-line description of an API error (status, reason and the server's message)."""
    message = ""
    body = getattr(exc, "body", None)
    if body:
        try:
            import json

            message = str(json.loads(body).get("message", ""))
        except (ValueError, AttributeError):
            message = str(body)[:200]
    text = f"{exc.status} {exc.reason}"
    return f"{text}: {message}" if message else text
