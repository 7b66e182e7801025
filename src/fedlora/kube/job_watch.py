"""Watching a bank's running Job: its final condition, its pods' logs, why its pod failed.

What :class:`fedlora.kube.launcher.BankJobLauncher` does between creating a Job and deleting it:
:func:`wait_for_job` watches the Job (re-reading it after a 410 or an error, with backoff) until its
``Complete`` or ``Failed`` condition or the deadline; :class:`LogFollower` streams the trainer's log
on a daemon thread when the bank allows it; :func:`diagnose_pods` says why the last pod did not succeed.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from fedlora.kube.job_template import TRAINER_CONTAINER

__all__ = ["LogFollower", "api_error", "diagnose_pods", "job_state", "read_job", "wait_for_job"]

log = logging.getLogger(__name__)

_TAIL_LINES = 50


def job_state(job: dict[str, Any] | None) -> tuple[bool, str] | None:
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


def read_job(batch: client.BatchV1Api, namespace: str, name: str) -> dict[str, Any] | None:
    """The Job as a dict, or None when it does not exist."""
    try:
        job = batch.read_namespaced_job(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    result: dict[str, Any] = batch.api_client.sanitize_for_serialization(job)
    return result


def wait_for_job(
    batch: client.BatchV1Api,
    namespace: str,
    name: str,
    *,
    deadline: float,
    timeout_seconds: int,
    poll_seconds: float,
    watch_seconds: int,
    clock: Callable[[], float],
) -> tuple[bool, str, bool]:
    """Watch the Job until a final condition or the deadline; re-read on 410 and on errors.

    Returns:
        ``(succeeded, reason, ended)``; ``ended`` is True when the Job reached a final condition.
    """
    backoff = poll_seconds
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            return False, f"timed out after {timeout_seconds} s", False
        try:
            job = read_job(batch, namespace, name)
            if job is None:
                return False, "the job was deleted by someone else before it finished", False
            state = job_state(job)
            if state is not None:
                return (*state, True)
            version = (job.get("metadata") or {}).get("resourceVersion")
            stream = watch.Watch().stream(
                batch.list_namespaced_job,
                namespace,
                field_selector=f"metadata.name={name}",
                resource_version=version,
                timeout_seconds=max(1, int(min(remaining, watch_seconds))),
                _request_timeout=(30, watch_seconds + 30),  # a silent, half-open connection ends too
            )
            for event in stream:
                if event["type"] == "DELETED":
                    return False, "the job was deleted by someone else before it finished", False
                state = job_state(event["raw_object"])
                if state is not None:
                    return (*state, True)
                if clock() >= deadline:
                    break
            backoff = poll_seconds
        except ApiException as exc:
            if exc.status == 410:  # our resourceVersion is too old: read again, watch again
                continue
            if exc.status in (401, 403):
                return False, f"lost access to the job: {api_error(exc)}", False
            log.warning("watching job %s/%s: %s; retrying in %.0f s", namespace, name, api_error(exc), backoff)
            time.sleep(min(backoff, max(0.0, deadline - clock())))
            backoff = min(backoff * 2, 30.0)
        except Exception as exc:  # connection resets, proxies closing long watches
            log.warning("watching job %s/%s: %s; retrying in %.0f s", namespace, name, exc, backoff)
            time.sleep(min(backoff, max(0.0, deadline - clock())))
            backoff = min(backoff * 2, 30.0)


def diagnose_pods(core: client.CoreV1Api, namespace: str, name: str) -> str:
    """Why the Job's last pod did not succeed, from its status (``" (pod x: Pending, Unschedulable: ...)"``)."""
    try:
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
    except Exception as exc:  # a diagnosis is a bonus; the Job's condition is the result
        log.debug("pods of job %s/%s: %s", namespace, name, exc)
        return ""
    if not pods:
        return " (no pod was created: see the Job's events, e.g. quota or admission)"
    pod = core.api_client.sanitize_for_serialization(max(pods, key=lambda p: str(p.metadata.creation_timestamp or "")))
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


class LogFollower:
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


def api_error(exc: ApiException) -> str:
    """A one-line description of an API error (status, reason and the server's message)."""
    message = ""
    body = getattr(exc, "body", None)
    if body:
        try:
            message = str(json.loads(body).get("message", ""))
        except (ValueError, AttributeError):
            message = str(body)[:200]
    text = f"{exc.status} {exc.reason}"
    return f"{text}: {message}" if message else text
