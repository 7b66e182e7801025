"""The coordinator's federation steps: initialize a run and aggregate a round.

The four steps every shell calls are :func:`initialize` and :func:`aggregate_round` here,
:func:`fedlora.bank_round.run_bank_round` (one bank's round) and
:func:`fedlora.finalize.finalize`. ``fedlora simulate`` calls them in a loop in one process;
the Kubeflow components call one each; a bank's Job calls ``run_bank_round``. All state lives
in the run's store, so any step can run in a fresh process, and a run interrupted between (or
inside) rounds resumes from the last committed round:

* ``privacy/<bank>.json`` holds the bank's privacy plan and ledger. A bank charges its
  ledger *before* it publishes an update (a crash in between over-counts, never
  under-counts), and an update that was published is never trained again: a retried or
  resumed step finds ``outcome.json`` and returns it, so no round is charged twice.
* ``rounds/0000/global/meta.json`` records round 0 as a spec (:mod:`fedlora.initial`): the seeded
  initial adapter, which each bank builds from the model it holds. The coordinator never loads the
  base model's weights, except where it trains or evaluates the banks itself (simulation, inline).
* ``rounds/NNNN/MANIFEST.json`` is written last: a round without it is not committed, and
  a resumed run redoes only what is missing.
* ``tracking.json`` names the MLflow run, so every process logs to the same run.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from fedlora.aggregation import AggregationError, AggregationResult, Update, aggregate, max_update_norm
from fedlora.config import Config, config_to_yaml
from fedlora.errors import FederationError
from fedlora.initial import InitialAdapter, load_global, write_seeded_spec
from fedlora.model import AdapterState
from fedlora.model.loading import check_model_name
from fedlora.privacy.accounting import PrivacyPlan
from fedlora.privacy.bank_side import (
    load_bank_privacy,
    plan_bank,
    training_count,
)
from fedlora.privacy.dp_evaluation import ScoreHistograms, pooled_class_metrics, pooled_metrics
from fedlora.privacy.policy import BankPolicy
from fedlora.records import NOT_PRIVATE, BankOutcome, BankStatus, RoundRecord, round_metrics
from fedlora.runtime import Runtime
from fedlora.server_optimizer import apply_server_optimizer
from fedlora.store.adapters import get_json, load_adapter, put_json, save_adapter
from fedlora.store.base import Store, StoreError, global_prefix, round_prefix, update_prefix
from fedlora.store.run import committed_rounds, open_run_store, semantic_config, stored_config
from fedlora.tracking import flatten, open_tracker, tracked

log = logging.getLogger(__name__)


def initialize(config: Config, *, run: str, runtime: Runtime | None = None, resume: bool = False) -> dict[str, Any]:
    """Validate everything, calibrate σ for every bank this process can read, write round 0 (a spec).

    Nothing is written until the data and privacy settings have been validated. The base model is
    not loaded: round 0 is the seeded initial adapter, which each bank builds (:mod:`fedlora.initial`).
    Idempotent: on an existing run (``resume``) only what is missing is written, and a
    config that changes what is computed is refused.

    Raises:
        FederationError: the run exists (without ``resume``) or its config differs.

    """
    runtime = runtime or Runtime(config)
    if config.kubeflow.mode == "inline" and runtime.all_readable():  # this process trains the banks: a path must exist
        check_model_name(config.model.name)
    store = open_run_store(config, run)
    store.check()
    exists = store.exists("config.yaml")
    if exists and not resume:
        raise FederationError(f"run {store.uri('')} already exists; resume it (--resume {run}) or pick another name")
    if exists and semantic_config(stored_config(store, config)) != semantic_config(config):
        raise FederationError(f"run {store.uri('')} was started with a different config; resume without changes")
    plans: dict[str, PrivacyPlan] = {}
    for spec in config.federation.banks:
        if config.kubeflow.mode != "inline" or not runtime.can_read(spec.name):  # the bank plans in its cluster
            log.info("bank %s: plans its own σ from its own rows in its first round", spec.name)
            continue
        frames = runtime.bank_data(spec.name).frames  # validated rows; no tokenizing or frozen pass yet
        train_rows = training_count(config, sum(map(len, frames.values())))
        if config.privacy.enabled:
            with runtime.timer.phase("load"):  # validates δ < 1/n, batch ≤ n etc. before anything is computed
                policy = BankPolicy.for_simulation(config, spec.name)
                plans[spec.name] = plan_bank(config, spec.name, train_rows, policy=policy, runtime=runtime)
    with runtime.timer.phase("tracking"):
        tracker = open_tracker(config, store, run=run, runtime=runtime, create=True)
        if not exists:
            tracked("log_params", tracker.log_params, flatten(config.model_dump(mode="json")))
    with runtime.timer.phase("store"):
        if not exists:
            store.put("config.yaml", config_to_yaml(config).encode("utf-8"))
        if not store.exists(f"{global_prefix(0)}/meta.json"):
            write_seeded_spec(store, config)
    return {
        "run": run,
        "store_uri": store.uri(""),
        "banks": [b.name for b in config.federation.banks],
        "privacy": {bank: dataclasses.asdict(plan) for bank, plan in plans.items()},  # shown, not stored
        "committed_rounds": committed_rounds(store),
    }


def holds_model(config: Config, runtime: Runtime) -> bool:
    """Whether this coordinator trains or evaluates the banks itself and so may load the model.

    Simulation and inline runs (every bank's rows readable here) whose model resolves in this
    process; never a pull-mode control pod, nor one whose ``model.name`` is not on its machine.
    """
    return config.kubeflow.mode == "inline" and runtime.all_readable() and runtime.can_load_model()


def _initial_of(config: Config, runtime: Runtime) -> InitialAdapter | None:
    """How this process builds the seeded initial adapter (round 0), or None where it never loads the model."""
    return (lambda: runtime.initial_adapter) if holds_model(config, runtime) else None


def _update_bound(config: Config, store: Store, outcome: BankOutcome, num_params: int) -> float | None:
    report = load_bank_privacy(store, outcome.bank) if config.privacy.enabled else None
    plan = report["plan"] if report else {}
    bound = max_update_norm(
        optimizer=config.training.optimizer,
        learning_rate=max(config.training.learning_rate, config.training.lora_learning_rate or 0.0),
        steps=outcome.steps,
        num_params=num_params,
        max_grad_norm=plan.get("max_grad_norm"),
        noise_multiplier=plan.get("noise_multiplier"),
        sample_rate=plan.get("sample_rate"),
        num_examples=outcome.num_examples,
    )
    # The bank publishes n rounded to two significant figures: its true n is within 5%; 10% of slack.
    return None if bound is None else bound * 1.1


def _read_updates(
    config: Config, store: Store, round_index: int, trained: list[BankOutcome]
) -> tuple[list[Update], dict[str, str]]:
    """The trained banks' updates, each with its change bound and frozen tensors.

    Both come from the update's own tensor names: one whose names differ from the reference's is
    rejected by the aggregation anyway.
    """
    updates: list[Update] = []
    rejected: dict[str, str] = {}
    for outcome in trained:
        try:
            stored = load_adapter(store, update_prefix(round_index, outcome.bank))
        except StoreError as exc:
            rejected[outcome.bank] = str(exc)
            log.warning("rejected update of bank %s: %s", outcome.bank, exc)
            continue
        if stored.meta.get("bank") != outcome.bank or stored.meta.get("round") != round_index:
            rejected[outcome.bank] = f"metadata names bank {stored.meta.get('bank')!r} round {stored.meta.get('round')}"
            continue
        num_params = sum(int(t.numel()) for t in stored.tensors.values())
        frozen = frozenset(n for n in stored.tensors if "lora_A" in n) if config.lora.ffa else frozenset()
        updates.append(
            Update(
                outcome.bank,
                stored.tensors,
                int(stored.meta["num_examples"]),
                max_change_norm=_update_bound(config, store, outcome, num_params),
                frozen=frozen,
            )
        )
    return updates, rejected


def committed_record(store: Store, round_index: int) -> RoundRecord | None:
    """The record of ``round_index`` when the round is committed (its manifest exists), else None."""
    manifest = f"{round_prefix(round_index)}/MANIFEST.json"
    return RoundRecord.from_json(get_json(store, manifest)) if store.exists(manifest) else None


def aggregate_round(
    config: Config,
    *,
    run: str,
    round_index: int,
    outcomes: list[BankOutcome],
    runtime: Runtime | None = None,
) -> RoundRecord:
    """Validate and average the round's updates, evaluate, write the global adapter, commit the round.

    When every selected bank's budget is spent, the round is committed with the global
    adapter unchanged and ``stopped_early`` set. Idempotent: a committed round is returned.

    Raises:
        FederationError: fewer than ``federation.min_banks`` valid updates.

    """
    runtime = runtime or Runtime(config)
    store = open_run_store(config, run)
    committed = committed_record(store, round_index)
    if committed is not None:
        return committed
    with runtime.timer.phase("store"):  # None: round 0's seeded adapter, which this process does not build
        previous = load_global(store, round_index - 1, initial=_initial_of(config, runtime))
        before = (
            RoundRecord.from_json(get_json(store, f"{round_prefix(round_index - 1)}/MANIFEST.json"))
            if round_index > 1
            else None
        )
    selected = [o for o in outcomes if o.status != "not_selected"]
    averaged = _aggregate_or_stop(config, runtime, store, round_index, selected, previous)
    record = RoundRecord(
        round=round_index,
        epsilon=_carry_epsilon(config, before, selected),
        banks=averaged.accepted,
        failed=_messages(selected, "failed"),
        rejected=averaged.rejected,
        refused=_messages(selected, "refused"),
        budget_exhausted=[o.bank for o in selected if o.status == "budget_exhausted"],
        steps={o.bank: o.steps for o in selected if o.status == "ok"},
        stopped_early=averaged.stopped,
        dp_evaluation=_pooled_dp_evaluation(selected, round_index),
    )
    record = _evaluate_centrally(config, runtime, record, averaged.adapter)
    _commit_round(config, runtime, store, record, averaged.adapter, selected)
    _log_round(config, runtime, store, run, record)
    return record


def _messages(selected: list[BankOutcome], status: BankStatus) -> dict[str, str]:
    return {o.bank: o.message for o in selected if o.status == status}


def _carry_epsilon(config: Config, before: RoundRecord | None, selected: list[BankOutcome]) -> dict[str, float | None]:
    """Every bank's run ε after this round: the previous round's, updated by the banks that charged their ledger.

    A private bank that never trained has spent 0.0; a non-private one is :data:`NOT_PRIVATE`.
    """
    epsilon: dict[str, float | None] = dict(before.epsilon) if before is not None else {}
    for spec in config.federation.banks:
        epsilon.setdefault(spec.name, 0.0 if config.privacy.enabled else NOT_PRIVATE)
    for o in selected:
        if o.status in ("ok", "budget_exhausted"):
            epsilon[o.bank] = o.epsilon
    return epsilon


def _aggregate_or_stop(
    config: Config,
    runtime: Runtime,
    store: Store,
    round_index: int,
    selected: list[BankOutcome],
    previous: AdapterState | None,
) -> AggregationResult:
    """Average the valid updates and take the server optimizer's step (:mod:`fedlora.server_optimizer`).

    Keeps ``previous`` (and stops) when every selected bank's budget is spent. ``previous`` is None in
    round 1 where this process does not build the seeded initial adapter: the updates are checked
    against each other (:func:`fedlora.aggregation.peer_reference`) and the round's global adapter is
    their average (a server optimizer takes its first step in round 2).

    Raises:
        FederationError: fewer than ``federation.min_banks`` valid updates.

    """
    trained = [o for o in selected if o.status == "ok"]
    exhausted = [o.bank for o in selected if o.status == "budget_exhausted"]
    if not trained and exhausted and len(exhausted) == len(selected):
        stopped = f"round {round_index}: every selected bank's privacy budget is spent; stopping"
        return AggregationResult(adapter=previous, accepted=[], rejected={}, stopped=stopped)
    with runtime.timer.phase("store"):
        updates, rejected = _read_updates(config, store, round_index, trained)
    with runtime.timer.phase("aggregate"):
        try:
            agg = aggregate(updates, previous, min_banks=config.federation.min_banks)
        except AggregationError as exc:
            failed = _messages(selected, "failed")
            raise FederationError(
                f"round {round_index} failed: {exc}; failed banks: {failed or 'none'}, "
                f"rejected: {rejected or 'none'}, budget spent: {exhausted or 'none'}"
            ) from exc
    averaged = agg.adapter
    assert averaged is not None  # aggregate() always averages (or raises)
    if previous is None:
        return AggregationResult(adapter=averaged, accepted=agg.accepted, rejected=rejected | agg.rejected)
    with runtime.timer.phase("aggregate"):
        adapter = apply_server_optimizer(config.federation, store, round_index, previous, averaged)
    return AggregationResult(adapter=adapter, accepted=agg.accepted, rejected=rejected | agg.rejected)


def _evaluate_centrally(
    config: Config, runtime: Runtime, record: RoundRecord, adapter: AdapterState | None
) -> RoundRecord:
    """Add the pooled and per-bank test metrics of ``adapter`` where this process holds every bank's test rows.

    Elsewhere the coordinator sees no bank's rows: only the banks' DP releases (``dp_evaluation``) say
    anything. An inline run whose model is not on this machine skips it (:func:`holds_model`).
    """
    if config.kubeflow.mode != "inline" or not runtime.all_readable():
        return record
    if not runtime.can_load_model():
        missing = f"model {config.model.name} is not on this machine"
        log.warning("round %d: no central evaluation (%s)", record.round, missing)
        return dataclasses.replace(record, evaluation=f"none at the coordinator: {missing} (see dp_evaluation)")
    evaluation = runtime.evaluate(adapter if adapter is not None else runtime.initial_adapter)
    return dataclasses.replace(
        record,
        evaluation="central: this process holds every bank's test rows (simulation / inline run)",
        auc=evaluation.pooled.auc,
        ks=evaluation.pooled.ks,
        metrics=evaluation.pooled.as_dict(),
        per_bank_test={b: m.as_dict() for b, m in evaluation.per_bank.items()},
        roc=evaluation.roc,
    )


def _commit_round(
    config: Config,
    runtime: Runtime,
    store: Store,
    record: RoundRecord,
    adapter: AdapterState | None,
    selected: list[BankOutcome],
) -> None:
    """Write the global adapter (None: still the seeded initial one, a spec), then the manifest (the commit)."""
    examples = sum(o.num_examples for o in selected if o.status == "ok" and o.bank in record.banks)
    meta = {"round": record.round, "kind": "global", "banks": record.banks, "num_examples": examples}
    with runtime.timer.phase("store"):
        if adapter is None:
            write_seeded_spec(store, config, record.round)
        else:
            save_adapter(store, global_prefix(record.round), adapter, meta)
        put_json(store, f"{round_prefix(record.round)}/MANIFEST.json", record.to_json())


def _log_round(config: Config, runtime: Runtime, store: Store, run: str, record: RoundRecord) -> None:
    """The round's metrics, and a tag per failed or rejected bank, to the run's tracker."""
    with runtime.timer.phase("tracking"):
        tracker = open_tracker(config, store, run=run, runtime=runtime)
        tracked("log_metrics", tracker.log_metrics, round_metrics(record), step=record.round)
        problems = {f"round{record.round}.failed.{b}": m for b, m in record.failed.items()}
        problems |= {f"round{record.round}.rejected.{b}": m for b, m in record.rejected.items()}
        if problems:
            tracked("set_tags", tracker.set_tags, problems)


def _pooled_dp_evaluation(selected: list[BankOutcome], round_index: int) -> dict[str, Any] | None:
    """Pool the banks' noised histograms (post-processing of DP releases) into AUC, KS and Brier."""
    releases = {o.bank: ScoreHistograms.from_json(o.evaluation) for o in selected if o.evaluation}
    if not releases:
        return None
    released = {"of_global_round": round_index - 1, "banks": sorted(releases)}
    if all(r.kind == "confusion" for r in releases.values()):
        by_class = pooled_class_metrics(list(releases.values()))
        return {
            **released,
            **by_class.as_dict(),
            "confusion": by_class.confusion,
            "method": "sum of the banks' Gaussian-noised confusion counts (each charged to its ledger)",
        }
    pooled = pooled_metrics(list(releases.values()))
    return {
        **released,
        **pooled.as_dict(),
        "roc": pooled.roc,
        "method": "sum of the banks' Gaussian-noised per-label score histograms (each charged to its ledger)",
    }


__all__ = ["aggregate_round", "initialize"]
