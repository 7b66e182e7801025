"""Reading a bank's trainer Job: whether it exists, and how it ended (its final condition).

What :class:`fedlora.kube.launcher.BankJobLauncher` reads on the bank agent's later passes. Only the Job's
status is read, never a pod's log: the log of a pod that read the bank's data stays in the bank's namespace.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

__all__ = ["api_error", "job_state", "read_job"]


def job_state(job: dict[str, Any] | None) -> tuple[bool, str] | None:
    """``(succeeded, reason)`` once the Job has a final condition, else None.

    The reason is the condition's ``reason`` only (``Complete``, ``BackoffLimitExceeded``,
    ``DeadlineExceeded``...): a fixed Kubernetes word, public; the condition's free-text message is not used.
    """
    status = (job or {}).get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return True, "Complete"
        if condition.get("type") == "Failed":
            return False, str(condition.get("reason") or "Failed")
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
