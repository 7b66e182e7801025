"""One round (:func:`run_round`) and a run of rounds (:func:`run_rounds`), the step of every graph.

The ``rounds`` graph's task runs :func:`run_rounds` over one round or a fixed chunk of rounds (about
6.5 KB of pipeline YAML a task, so the graph is kept within ``kubeflow.max_graph_tasks``);
``kubeflow.graph=coordinator``'s one ``federate-rounds`` task runs it over every round:

for each round r of the task not yet committed in the store, :func:`run_round`:
  1. every bank selected for r trains (:func:`fedlora.pipeline.bank_dispatch.dispatch_bank_round`, which never
     raises for a bank's own failure): in ``inline`` mode one after the other with the
     model loaded once; in ``pull`` mode (``namespaced`` is its older spelling) by the banks' own
     agents in their clusters, all banks of the round waited for **concurrently**
     (:mod:`fedlora.pipeline.pull`);
  2. :func:`fedlora.federation.aggregate_round` averages, evaluates, commits the round (manifest
     written last) and logs the round's metrics to MLflow (step = round).

The loop is resumable: a retried or restarted task starts after the last committed round, and in
the first open round a bank whose outcome is already in the store is not launched again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fedlora.aggregation import select_banks
from fedlora.bank_round import read_bank_outcome
from fedlora.config import Config
from fedlora.federation import aggregate_round, committed_record
from fedlora.pipeline import bank_dispatch
from fedlora.records import BankOutcome, RoundRecord
from fedlora.runtime import Runtime
from fedlora.store.adapters import get_json
from fedlora.store.base import round_prefix
from fedlora.store.run import committed_rounds, open_run_store

__all__ = ["RoundCallback", "committed_records", "run_round", "run_rounds"]

log = logging.getLogger(__name__)

RoundCallback = Callable[[RoundRecord], None]
"""Called after each committed round with its record (the banks' outcomes are in it)."""


def committed_records(config: Config, *, run: str) -> list[RoundRecord]:
    """The records (``MANIFEST.json``) of the run's committed rounds, in order (round 0 left out)."""
    store = open_run_store(config, run)
    return [
        RoundRecord.from_json(get_json(store, f"{round_prefix(r)}/MANIFEST.json"))
        for r in committed_rounds(store)
        if r > 0
    ]


def _published(config: Config, *, run: str, bank: str, round_index: int) -> BankOutcome | None:
    """The outcome a bank already published for this round (a restarted coordinator), else None."""
    try:
        return read_bank_outcome(config, run=run, bank=bank, round_index=round_index)
    except Exception:  # nothing published yet: the usual case
        return None


def _train_round(config: Config, *, run: str, round_index: int, runtime: Runtime) -> list[BankOutcome]:
    """Every selected bank's outcome for ``round_index`` (one per selected bank, in config order)."""
    banks = select_banks(config, round_index)
    done = {b: o for b in banks if (o := _published(config, run=run, bank=b, round_index=round_index))}
    for bank in done:
        log.info("round %d: bank %s had already published its outcome; not launched again", round_index, bank)
    todo = [b for b in banks if b not in done]
    dispatch = bank_dispatch.dispatch_bank_round  # looked up per round (tests replace it)
    if config.kubeflow.mode != "inline" and len(todo) > 1:  # Jobs or agents elsewhere: wait for all at once
        with ThreadPoolExecutor(max_workers=len(todo), thread_name_prefix=f"round{round_index}") as pool:
            futures = {b: pool.submit(dispatch, config, run=run, bank=b, round_index=round_index) for b in todo}
            done |= {b: f.result() for b, f in futures.items()}
    else:
        for bank in todo:
            done[bank] = dispatch(config, run=run, bank=bank, round_index=round_index, runtime=runtime)
    return [done[b] for b in banks]


def run_round(config: Config, *, run: str, round_index: int, runtime: Runtime | None = None) -> RoundRecord:
    """One round, the step of both graphs: every selected bank trains, then the aggregation commits the round.

    The unrolled graph's ``round-N`` task is this call; the coordinator's loop calls it once a
    round. A bank's failure is a ``failed`` outcome (the dispatch never raises for it), so the
    round goes on and ``federation.min_banks`` decides. Resumable: a committed round is returned as
    committed, and a bank that already published its outcome for the round is not launched again.

    Raises:
        FederationError: fewer than ``federation.min_banks`` valid updates.
    """
    runtime = runtime or Runtime(config)
    committed = committed_record(open_run_store(config, run), round_index)
    if committed is not None:
        log.info("run %s: round %d is already committed", run, round_index)
        return committed
    outcomes = _train_round(config, run=run, round_index=round_index, runtime=runtime)
    record = aggregate_round(config, run=run, round_index=round_index, outcomes=outcomes, runtime=runtime)
    log.info(
        "round %d committed: averaged %s, failed %s, rejected %s",
        round_index,
        record.banks,
        sorted(record.failed),
        sorted(record.rejected),
    )
    return record


def run_rounds(
    config: Config, *, run: str, first: int = 1, last: int | None = None, on_round: RoundCallback | None = None
) -> list[RoundRecord]:
    """Run the rounds ``first``..``last`` not yet committed; return the records of all those rounds (old and new).

    Nothing runs after a round that stopped early (every selected bank's budget spent).

    Args:
        config: The run's resolved config (from ``initialize``).
        run: The run's name.
        first: The first round of this task (a chunk of the unrolled graph), from 1.
        last: Its last round (default: ``federation.rounds``).
        on_round: Called after each newly committed round (KFP outputs, progress).

    Raises:
        FederationError: a round had fewer than ``federation.min_banks`` valid updates.
    """
    last = config.federation.rounds if last is None else min(last, config.federation.rounds)
    runtime = Runtime(config)  # loads the model on first use only (pull: for nothing but the aggregation)
    committed = committed_records(config, run=run)
    records = [r for r in committed if first <= r.round <= last]
    if committed and committed[-1].stopped_early:
        return records
    start = max(first, committed[-1].round + 1 if committed else 1)
    if start > first:
        log.info("run %s: rounds %d-%d are committed; continuing with round %d", run, first, start - 1, start)
    for round_index in range(start, last + 1):
        record = run_round(config, run=run, round_index=round_index, runtime=runtime)
        records.append(record)
        if on_round is not None:
            on_round(record)
        if record.stopped_early:
            log.warning("%s", record.stopped_early)
            break
    return records
