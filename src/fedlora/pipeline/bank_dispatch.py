"""Where a bank's round runs: inline in this task, as a Job in the bank's namespace, or by the bank's agent.

:func:`dispatch_bank_round` is the one dispatch both pipeline graphs use (the unrolled graph's
``train-<bank>`` task and the coordinator's loop): it never raises for the bank's own failure,
which becomes a ``failed`` :class:`~fedlora.records.BankOutcome`.
"""

from __future__ import annotations

import logging
from typing import Any

from fedlora.aggregation import select_banks
from fedlora.bank_round import read_bank_outcome, run_bank_round
from fedlora.config import Config, config_to_yaml
from fedlora.records import BankOutcome
from fedlora.runtime import Runtime

__all__ = ["dispatch_bank_round", "launch_bank_job"]

log = logging.getLogger(__name__)


def launch_bank_job(config: Config, *, run: str, bank: str, round_index: int, api: Any = None) -> BankOutcome:
    """Train ``bank`` in its own namespace: a Job from its Helm release's template (see :mod:`fedlora.kube`).

    The Job runs ``fedlora train-bank --run RUN --bank BANK --round R`` with the config in
    ``FEDLORA_REQUEST_CONFIG``; it writes its outcome to the store, which is read back here.

    Args:
        config: The run's resolved config.
        run: The run name.
        bank: The bank.
        round_index: The round (1-based).
        api: A ``kubernetes.client.ApiClient``; default: the task's in-cluster service account.

    Returns:
        The outcome the bank's Job published, or a failed outcome naming why (Job failed,
        timed out, template missing or unsafe, outcome unreadable). An outcome the bank did
        publish is used even when its Job ended badly afterwards (e.g. removed by a TTL).
    """
    from fedlora.kube.launcher import BankJobLauncher, api_client, job_name, label_value

    spec = next(b for b in config.federation.banks if b.name == bank)
    namespace = spec.namespace or spec.name
    try:
        api = api if api is not None else api_client()
    except Exception as exc:  # not in a cluster, no kubeconfig
        return BankOutcome.failed(bank, round_index, f"no access to the Kubernetes API: {exc}")
    launcher = BankJobLauncher(api, log_sink=lambda line: print(line, flush=True))
    result = launcher.run(
        namespace=namespace,
        template_configmap=spec.job_template,
        name=job_name(run=run, bank=bank, round_index=round_index),
        args=["train-bank", "--run", run, "--bank", bank, "--round", str(round_index)],
        env={
            "FEDLORA_REQUEST_CONFIG": config_to_yaml(config),
            "FEDLORA_REQUEST_RUN": run,
            "FEDLORA_REQUEST_BANK": bank,
            "FEDLORA_REQUEST_ROUND": str(round_index),
        },
        labels={
            "fedlora.io/run": label_value(run),
            "fedlora.io/bank": label_value(bank),
            "fedlora.io/round": str(round_index),
        },
        timeout_seconds=config.kubeflow.job_timeout_seconds,
    )
    try:  # the store is the only way back from the bank's namespace
        outcome = read_bank_outcome(config, run=run, bank=bank, round_index=round_index)
    except Exception as exc:
        if result.succeeded:
            return BankOutcome.failed(bank, round_index, f"job {namespace}/{result.name} completed but: {exc}")
        tail = result.logs_tail.splitlines()[-5:]
        detail = ("; last log lines: " + " | ".join(tail)) if tail else ""
        return BankOutcome.failed(bank, round_index, f"job {namespace}/{result.name}: {result.reason}{detail}")
    if not result.succeeded:
        log.warning("job %s/%s: %s, but the bank had published its outcome: using it", namespace, bank, result.reason)
    return outcome


def dispatch_bank_round(
    config: Config, *, run: str, bank: str, round_index: int, runtime: Runtime | None = None
) -> BankOutcome:
    """One bank's round, never raising for the bank's own failure: the one dispatch both graphs use.

    A bank left out of the run or not sampled is ``not_selected`` (no Job, no GPU); in
    ``namespaced`` mode the bank trains as a Job in its namespace (:func:`launch_bank_job`); in
    ``pull`` mode the bank's own agent trains in its cluster and this waits for its outcome
    (:func:`fedlora.pipeline.pull.await_bank_outcome`, a timeout is a failed outcome); in
    ``inline`` mode here, with ``runtime`` (the loaded model) when given.
    """
    if bank not in {b.name for b in config.federation.banks}:
        outcome = BankOutcome(bank=bank, round=round_index, status="not_selected", message="left out of this run")
    elif bank not in select_banks(config, round_index):  # no Job (and no GPU) for a bank that sits out
        outcome = BankOutcome(bank=bank, round=round_index, status="not_selected", message="not sampled this round")
    elif config.kubeflow.mode == "namespaced":
        outcome = launch_bank_job(config, run=run, bank=bank, round_index=round_index)
    elif config.kubeflow.mode == "pull":  # the bank's own agent trains in its cluster; wait for its outcome
        from fedlora.pipeline.pull import await_bank_outcome

        outcome = await_bank_outcome(config, run=run, bank=bank, round_index=round_index)
    else:
        try:
            outcome = run_bank_round(config, run=run, bank=bank, round_index=round_index, runtime=runtime)
        except Exception as exc:  # a bank's outage is a failed bank, not a failed run
            log.exception("bank %s, round %d failed", bank, round_index)
            # inline: this task holds the data itself (no bank boundary), so the full message is kept
            outcome = BankOutcome.failed(bank, round_index, f"{type(exc).__name__}: {exc}")
    if outcome.status == "failed":
        log.error("bank %s, round %d: FAILED: %s", bank, round_index, outcome.message)
    return outcome
