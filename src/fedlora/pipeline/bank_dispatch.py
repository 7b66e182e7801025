"""Where a bank's round runs: inline in this task, or by the bank's own agent in its cluster.

:func:`dispatch_bank_round` is the one dispatch both pipeline graphs use (through
:func:`fedlora.pipeline.coordinator.run_round`; the reusable ``train_bank`` component calls it
too): it never raises for the bank's own failure,
which becomes a ``failed`` :class:`~fedlora.records.BankOutcome`. The consortium creates nothing in
a bank's namespace: in ``pull`` mode (and ``namespaced``, its older spelling) the bank's agent
builds the trainer Job from the bank's own template, and this waits for the outcome it publishes.
"""

from __future__ import annotations

import logging

from fedlora.aggregation import select_banks
from fedlora.bank_agent import PULL_MODES
from fedlora.bank_round import run_bank_round
from fedlora.config import Config
from fedlora.pipeline.pull import await_bank_outcome
from fedlora.records import BankOutcome
from fedlora.runtime import Runtime

__all__ = ["dispatch_bank_round"]

log = logging.getLogger(__name__)


def dispatch_bank_round(
    config: Config, *, run: str, bank: str, round_index: int, runtime: Runtime | None = None
) -> BankOutcome:
    """One bank's round, never raising for the bank's own failure: the one dispatch both graphs use.

    A bank left out of the run or not sampled is ``not_selected`` (no Job, no GPU); in ``pull``
    (or ``namespaced``) mode the bank's own agent trains in its cluster and this waits for its
    outcome (:func:`fedlora.pipeline.pull.await_bank_outcome`, a timeout is a failed outcome); in
    ``inline`` mode here, with ``runtime`` (the loaded model) when given.
    """
    if bank not in {b.name for b in config.federation.banks}:
        outcome = BankOutcome(bank=bank, round=round_index, status="not_selected", message="left out of this run")
    elif bank not in select_banks(config, round_index):  # no Job (and no GPU) for a bank that sits out
        outcome = BankOutcome(bank=bank, round=round_index, status="not_selected", message="not sampled this round")
    elif config.kubeflow.mode in PULL_MODES:  # the bank's own agent trains in its cluster; wait for its outcome
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
