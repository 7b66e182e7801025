"""Pull mode, the coordinator's side: wait for a bank's own agent to publish its round in the exchange.

In ``kubeflow.mode=pull`` the consortium reaches no bank's cluster. Each bank runs
``fedlora bank-agent`` (:mod:`fedlora.bank_agent`) in its own cluster; the agent reads the run's
``config.yaml`` from the exchange, trains when the run's next round needs the bank and publishes
``rounds/NNNN/updates/<bank>/outcome.json``. The coordinator's train step for that bank only
waits for that key:

* it looks at the store, then pauses 1 s, 2 s, 4 s, ... (doubling, at most ``kubeflow.poll_seconds``),
  so a quick bank is seen within a second or two and a slow one costs one request per
  ``poll_seconds``;
* an error reading the store (S3 down longer than ``store.retry_seconds``) is logged and the wait
  goes on: only the deadline ends it;
* after ``kubeflow.job_timeout_seconds`` without an outcome the bank is a ``failed`` outcome for the
  round (not a failed run); the aggregation's minimum-banks rule decides whether the round goes on.

``kubeflow.mode=namespaced`` (its older spelling) waits the same way: the consortium creates no Job or
pod in a bank's namespace; the bank's agent builds the trainer Job from the bank's own template.
"""

from __future__ import annotations

import logging
import time

from fedlora.bank_round import OUTCOME_FILE, read_bank_outcome
from fedlora.config import Config
from fedlora.records import BankOutcome
from fedlora.store.base import update_prefix
from fedlora.store.run import open_run_store

__all__ = ["FIRST_PAUSE_SECONDS", "await_bank_outcome"]

log = logging.getLogger(__name__)

FIRST_PAUSE_SECONDS = 1.0
"""The first pause between two looks; each next pause doubles, up to ``kubeflow.poll_seconds``."""


def await_bank_outcome(
    config: Config,
    *,
    run: str,
    bank: str,
    round_index: int,
    timeout_seconds: float | None = None,
) -> BankOutcome:
    """The outcome ``bank`` publishes for ``round_index``, waiting up to the timeout; never raises for the bank.

    Args:
        config: The run's resolved config (``kubeflow.poll_seconds``, ``kubeflow.job_timeout_seconds``).
        run: The run name.
        bank: The bank whose agent trains the round in its own cluster.
        round_index: The round (1-based).
        timeout_seconds: How long to wait; default ``kubeflow.job_timeout_seconds``.

    Returns:
        The bank's published outcome, or a ``failed`` outcome saying that none came in time.
    """
    timeout = float(config.kubeflow.job_timeout_seconds if timeout_seconds is None else timeout_seconds)
    store = open_run_store(config, run)
    key = f"{update_prefix(round_index, bank)}/{OUTCOME_FILE}"
    started = time.monotonic()
    deadline = started + timeout
    pause = min(FIRST_PAUSE_SECONDS, config.kubeflow.poll_seconds)
    last_error = ""
    log.info("round %d: waiting up to %.0fs for bank %s's agent to publish %s", round_index, timeout, bank, key)
    while True:
        try:
            if store.exists(key):
                outcome = read_bank_outcome(config, run=run, bank=bank, round_index=round_index)
                log.info(
                    "round %d: bank %s published its outcome (%s) after %.0fs",
                    round_index,
                    bank,
                    outcome.status,
                    time.monotonic() - started,
                )
                return outcome
        except Exception as exc:  # the store is down or the outcome unreadable: keep waiting until the deadline
            last_error = f"{type(exc).__name__}: {exc}"
            log.warning("round %d, bank %s: cannot read the store (%s); still waiting", round_index, bank, last_error)
        left = deadline - time.monotonic()
        if left <= 0:
            detail = f"; last store error: {last_error}" if last_error else ""
            return BankOutcome.failed(
                bank,
                round_index,
                f"pull mode: bank {bank} published no outcome for round {round_index} within {timeout:.0f}s "
                f"(is its bank-agent running and able to reach the exchange?){detail}",
            )
        time.sleep(min(pause, left))
        pause = min(pause * 2, config.kubeflow.poll_seconds)
