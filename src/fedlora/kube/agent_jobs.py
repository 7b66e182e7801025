"""The bank agent's ``job`` executor: each pending round becomes a trainer Job from the bank's own template.

:class:`JobExecutor` is the :class:`fedlora.bank_agent.RoundExecutor` the bank's Helm chart runs
(``fedlora bank-agent --executor job``). For a round that waits for the bank it

* renders the bank's template (the job-template ConfigMap in the agent's own namespace) with only the
  request: ``args`` ``train-bank --run RUN --bank BANK --round R`` and ``FEDLORA_REQUEST_CONFIG`` (the run's
  stored ``config.yaml``; the Job's ``train-bank`` checks it against the bank's policy) plus
  ``FEDLORA_REQUEST_RUN``/``_BANK``/``_ROUND``; run and bank are identifiers, the round a positive integer;
* creates it under :func:`fedlora.kube.launcher.job_name` (run, bank, round): when that Job exists already
  (409) the round is taken and nothing is created;
* never waits: on a later pass, a Job that still runs needs nothing, a Job that completed published its own
  outcome, and a Job that failed without publishing one (killed, out of memory, deadline, unschedulable past
  its deadline) gets a ``failed`` outcome whose message names only the Job and its condition's reason
  (public Kubernetes words, never log text).

The Job's deadline and TTL are the template's (``jobTemplate.activeDeadlineSeconds``,
``ttlSecondsAfterFinished``): the request sets neither, and finished Jobs are not deleted by the agent.
"""

from __future__ import annotations

import logging

from kubernetes.client.exceptions import ApiException

from fedlora.bank_agent import RoundRequest, publish_failure
from fedlora.errors import FedLoRAError
from fedlora.kube.job_template import JobTemplateError
from fedlora.kube.job_watch import api_error
from fedlora.kube.launcher import BankJobLauncher, job_name
from fedlora.names import check_name
from fedlora.records import BankOutcome

__all__ = ["JobExecutor", "JobLaunchError", "request_args", "request_env"]

log = logging.getLogger(__name__)


class JobLaunchError(FedLoRAError):
    """The agent could not read the bank's template or create a Job (a setting or the API, never a data value)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.public_message = message


def request_args(request: RoundRequest) -> list[str]:
    """The trainer's arguments for ``request``: ``train-bank --run RUN --bank BANK --round R``.

    Raises:
        fedlora.names.InvalidName: run or bank is not an identifier.
        ValueError: the round is not a positive integer.
    """
    if isinstance(request.round_index, bool) or not isinstance(request.round_index, int) or request.round_index < 1:
        raise ValueError("round must be a positive integer")
    run = check_name(request.run, kind="run")
    bank = check_name(request.bank, kind="bank")
    return ["train-bank", "--run", run, "--bank", bank, "--round", str(request.round_index)]


def request_env(request: RoundRequest) -> dict[str, str]:
    """The ``FEDLORA_REQUEST_*`` variables for ``request``: the run's stored config and its names."""
    return {
        "FEDLORA_REQUEST_CONFIG": request.config_text,
        "FEDLORA_REQUEST_RUN": request.run,
        "FEDLORA_REQUEST_BANK": request.bank,
        "FEDLORA_REQUEST_ROUND": str(request.round_index),
    }


class JobExecutor:
    """Turn each pending round into one trainer Job in the bank's namespace (see the module docstring).

    Args:
        launcher: The launcher for the agent's own namespace and the bank's template ConfigMap.
    """

    def __init__(self, launcher: BankJobLauncher) -> None:
        self.launcher = launcher

    def take(self, request: RoundRequest) -> BankOutcome | None:
        """Create the round's Job, or look at the one that exists; a ``failed`` outcome once it failed silently.

        Raises:
            JobLaunchError: the template is missing or unsafe, or the API refused the Job (quota, RBAC).
        """
        args = request_args(request)
        name = job_name(run=request.run, bank=request.bank, round_index=request.round_index)
        labels = {"fedlora.io/run": request.run, "fedlora.io/bank": request.bank, "fedlora.io/round": args[-1]}
        where = f"{self.launcher.namespace}/{name}"
        try:
            manifest = self.launcher.render(
                self.launcher.template(), name=name, args=args, env=request_env(request), labels=labels
            )
            if self.launcher.create(manifest):
                log.info("run %s round %d: trainer job %s created", request.run, request.round_index, where)
                return None
            status = self.launcher.status(name)
        except JobTemplateError as exc:
            raise JobLaunchError(str(exc)) from exc
        except ApiException as exc:
            raise JobLaunchError(f"trainer job {where}: {api_error(exc)}") from exc
        if not status.exists or not status.finished:  # still running (or just removed): nothing to do
            log.debug("run %s round %d: trainer job %s is running", request.run, request.round_index, where)
            return None
        if status.succeeded:  # it published its outcome; the next look at the exchange sees it
            log.info("run %s round %d: trainer job %s completed", request.run, request.round_index, where)
            return None
        outcome = BankOutcome.failed(
            request.bank,
            request.round_index,
            f"bank {request.bank} round {request.round_index}: trainer job {name} failed ({status.reason})",
        )
        publish_failure(request.config, request.run, outcome)
        return outcome
