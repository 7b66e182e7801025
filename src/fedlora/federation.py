"""The federation's steps, shared by every shell: initialize, train a bank, aggregate a round, finalize.

``fedlora simulate`` calls them in a loop in one process; the Kubeflow components call one
each; a bank's Job calls :func:`train_bank`. All state lives in the run's store, so any
step can run in a fresh process, and a run interrupted between (or inside) rounds resumes
from the last committed round:

* ``privacy/<bank>.json`` holds the bank's privacy plan and ledger. A bank charges its
  ledger *before* it publishes an update (a crash in between over-counts, never
  under-counts), and an update that was published is never trained again: a retried or
  resumed step finds ``outcome.json`` and returns it, so no round is charged twice.
* ``rounds/NNNN/MANIFEST.json`` is written last: a round without it is not committed, and
  a resumed run redoes only what is missing.
* ``tracking.json`` names the MLflow run, so every process logs to the same run.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedlora.client import BankState, ClientResult, run_client_round
from fedlora.config import Config, config_to_yaml
from fedlora.errors import FederationError
from fedlora.model.encoding import RowSet
from fedlora.model.lora import AdapterState, load_adapter_state, trainable_names
from fedlora.privacy.accounting import PrivacyConfigError, PrivacyPlan, declared_count
from fedlora.privacy.bank_ledger import BankLedger, BudgetSpent, ClaimRefused, dataset_fingerprint
from fedlora.privacy.bank_side import (
    BankSide,
    bank_randomness,
    load_bank_privacy,
    plan_bank,
    publish_privacy_report,
)
from fedlora.privacy.dp_evaluation import ScoreHistograms, noised, pooled_metrics, score_histograms
from fedlora.privacy.policy import BankPolicy
from fedlora.privacy.randomness import Randomness
from fedlora.records import NOT_PRIVATE, BankOutcome, BankStatus, RoundRecord, round_metrics
from fedlora.report import write_report
from fedlora.runtime import BankSets, Runtime
from fedlora.server import AggregationError, Update, aggregate, max_update_norm, sample_banks
from fedlora.server_optimizer import apply_server_optimizer
from fedlora.store.adapters import get_json, load_adapter, put_json, save_adapter
from fedlora.store.base import Store, StoreError, global_prefix, round_prefix, update_prefix
from fedlora.store.run import committed_rounds, open_run_store, semantic_config, stored_config
from fedlora.tracking import flatten, open_tracker, register_final, tracked
from fedlora.training import DPSettings, predict_default_probability, steps_per_round

log = logging.getLogger(__name__)

OUTCOME_FILE = "outcome.json"


# --- the steps ---------------------------------------------------------------------------


def select_banks(config: Config, round_index: int) -> list[str]:
    """The banks that train in ``round_index`` (seeded, identical in every process)."""
    return sample_banks(
        [b.name for b in config.federation.banks],
        fraction_fit=config.federation.fraction_fit,
        min_banks=config.federation.min_banks,
        round_index=round_index,
        seed=config.seed,
    )


def initialize(config: Config, *, run: str, runtime: Runtime | None = None, resume: bool = False) -> dict[str, Any]:
    """Validate everything, calibrate σ for every bank this process can read, write round 0.

    Nothing is written until the data, model and privacy settings have all been validated.
    Idempotent: on an existing run (``resume``) only what is missing is written, and a
    config that changes what is computed is refused.

    Raises:
        FederationError: the run exists (without ``resume``) or its config differs.

    """
    runtime = runtime or Runtime(config)
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
        sets = runtime.bank(spec.name)
        if config.privacy.enabled:
            with runtime.timer.phase("load"):  # validates δ < 1/n etc. before anything is written
                policy = BankPolicy.for_simulation(config, spec.name)
                plans[spec.name] = plan_bank(config, spec.name, len(sets.train), policy=policy, runtime=runtime)
    initial = runtime.initial_adapter
    with runtime.timer.phase("tracking"):
        tracker = open_tracker(config, store, run=run, runtime=runtime, create=True)
        if not exists:
            tracked("log_params", tracker.log_params, flatten(config.model_dump(mode="json")))
    with runtime.timer.phase("store"):
        if not exists:
            store.put("config.yaml", config_to_yaml(config).encode("utf-8"))
        if not store.exists(f"{global_prefix(0)}/meta.json"):
            save_adapter(store, global_prefix(0), initial, {"round": 0, "kind": "global"})
    return {
        "run": run,
        "store_uri": store.uri(""),
        "banks": [b.name for b in config.federation.banks],
        "privacy": {bank: dataclasses.asdict(plan) for bank, plan in plans.items()},  # shown, not stored
        "committed_rounds": committed_rounds(store),
    }


def train_bank(
    config: Config,
    *,
    run: str,
    bank: str,
    round_index: int,
    runtime: Runtime | None = None,
    side: BankSide | None = None,
) -> BankOutcome:
    """One bank's round: check the request, charge the ledger, release DP metrics, train, publish.

    Order: the request is checked against the bank's policy; the plan is computed from the
    bank's own rows; the round is *claimed* on the bank's own ledger (the charge is written
    before anything is released); the noised evaluation histograms (if the policy releases
    metrics) and the DP-SGD adapter are published; ``outcome.json`` is written last. A
    published outcome is returned as is (a retried Job trains nothing twice), and a round
    already claimed by another Job is refused.

    Raises:
        FederationError: the previous round is not committed or the bank is unknown.

    """
    if bank not in {b.name for b in config.federation.banks}:
        raise FederationError(f"unknown bank {bank!r}; banks: {[b.name for b in config.federation.banks]}")
    runtime = runtime or Runtime(config)
    side = side or BankSide()
    store = open_run_store(config, run)
    prefix = update_prefix(round_index, bank)
    if store.exists(f"{prefix}/{OUTCOME_FILE}"):
        return read_bank_outcome(config, run=run, bank=bank, round_index=round_index)
    if bank not in select_banks(config, round_index):
        return BankOutcome(bank=bank, round=round_index, status="not_selected", message="not sampled this round")
    previous = round_index - 1
    if previous > 0 and not store.exists(f"{round_prefix(previous)}/MANIFEST.json"):
        raise FederationError(f"round {previous} of run {run} is not committed; cannot start round {round_index}")
    policy = side.policy_for(config, bank)
    refusals = policy.refusals(config, bank, job=side.job) if (side.job or config.privacy.enabled) else []
    if refusals:
        outcome = BankOutcome(bank=bank, round=round_index, status="refused", message="; ".join(refusals))
        put_json(store, f"{prefix}/{OUTCOME_FILE}", outcome.to_json())
        return outcome
    with runtime.timer.phase("store"):
        incoming = load_adapter(store, global_prefix(previous)).tensors
    sets = runtime.bank(bank)
    ledger_store = side.ledger_store_for(store, bank)
    fingerprint = dataset_fingerprint(runtime.bank_data(bank).frames.values())
    if not config.privacy.enabled:  # a non-private simulation baseline (a bank's Job refused it above)
        return _train_and_publish(config, runtime, store, sets, incoming, run=run, bank=bank, round_index=round_index)
    try:
        plan = plan_bank(config, bank, len(sets.train), policy=policy, runtime=runtime)
    except PrivacyConfigError as exc:  # the request's schedule cannot be honoured on this bank's rows
        if not side.job:
            raise
        outcome = BankOutcome(bank=bank, round=round_index, status="refused", message=exc.public_message)
        put_json(store, f"{prefix}/{OUTCOME_FILE}", outcome.to_json())
        return outcome
    if plan.noise_multiplier < policy.min_noise_multiplier:
        outcome = BankOutcome(
            bank=bank,
            round=round_index,
            status="refused",
            message=f"the request's schedule calibrates to σ={plan.noise_multiplier:.3f}, below the bank's "
            f"minNoiseMultiplier {policy.min_noise_multiplier:g}",
        )
        put_json(store, f"{prefix}/{OUTCOME_FILE}", outcome.to_json())
        return outcome
    ledger = BankLedger(ledger_store, fingerprint, delta=plan.delta, accountant=plan.accountant)
    steps = plan.steps_per_round
    try:
        ledger.claim(
            run=run,
            round_index=round_index,
            mechanisms=plan.round_mechanisms(steps=steps, evaluate=policy.release_metrics),
            run_cap=plan.target_epsilon,
            lifetime_cap=policy.lifetime_epsilon,
        )
    except ClaimRefused as exc:
        status: BankStatus = "budget_exhausted" if isinstance(exc, BudgetSpent) else "refused"
        spent = ledger.epsilon(ledger.charges(run))
        outcome = BankOutcome(
            bank=bank, round=round_index, status=status, epsilon=spent, delta=plan.delta, message=f"not training: {exc}"
        )
        if status == "budget_exhausted":  # a concurrent Job may hold the round: its outcome is the one to publish
            put_json(store, f"{prefix}/{OUTCOME_FILE}", outcome.to_json())
        return outcome
    epsilon = publish_privacy_report(store, plan, ledger, run)  # the charge is made; the report may go first
    randomness = bank_randomness(config, bank, round_index)
    release = (
        _dp_evaluation(runtime, sets.test, incoming, plan=plan, randomness=randomness)
        if policy.release_metrics
        else None
    )
    dp = DPSettings(
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.max_grad_norm,
        sample_rate=plan.sample_rate,
        expected_batch_size=plan.sample_rate * plan.declared_examples,
    )
    result = run_client_round(
        runtime.model,
        BankState(bank, sets.train, sets.val, sets.test),
        incoming,
        round_index=round_index,
        training=config.training,
        steps=steps,
        dp=dp,
        sample_rate=plan.sample_rate,
        randomness=randomness,
        device=runtime.device,
    )
    _account_time(runtime, result)
    ledger.keep_report(run, round_index, _private_report(result))
    outcome = BankOutcome(
        bank=bank,
        round=round_index,
        status="ok",
        num_examples=plan.declared_examples,
        epsilon=epsilon,
        delta=plan.delta,
        steps=result.train.steps,
        evaluation=release.to_json() if release is not None else None,
        update_uri=store.uri(prefix),
    )
    _publish_update(store, prefix, result.adapter, outcome)
    return outcome


def _account_time(runtime: Runtime, result: ClientResult) -> None:
    runtime.timer.add("evaluate", result.eval_seconds)
    runtime.timer.add("train", result.train_seconds)


def _private_report(result: ClientResult) -> dict[str, Any]:
    """What the bank learns about its round and keeps: exact validation metrics, loss, batch sizes."""
    return {
        "incoming_val": result.incoming_val.as_dict(),
        "train": dataclasses.asdict(result.train),
        "num_examples": result.num_examples,
        "train_seconds": result.train_seconds,
    }


def _dp_evaluation(
    runtime: Runtime, test: RowSet, incoming: AdapterState, *, plan: PrivacyPlan, randomness: Randomness
) -> ScoreHistograms:
    """Score the bank's test rows with the incoming adapter and release the noised histograms (already charged)."""
    assert plan.evaluation_noise_multiplier is not None
    with runtime.timer.phase("evaluate"):
        load_adapter_state(runtime.model, incoming)
        scores = predict_default_probability(
            runtime.model, test, batch_size=runtime.config.training.eval_batch_size, device=runtime.device
        )
    exact = score_histograms(test.labels.numpy(), scores)
    return noised(exact, noise_multiplier=plan.evaluation_noise_multiplier, randomness=randomness)


def _publish_update(store: Store, prefix: str, adapter: AdapterState, outcome: BankOutcome) -> None:
    """Adapter first, ``outcome.json`` last: an outcome always points at a complete update."""
    with_meta = {
        "bank": outcome.bank,
        "round": outcome.round,
        "kind": "update",
        "num_examples": outcome.num_examples,
        "epsilon": outcome.epsilon,
        "delta": outcome.delta,
        "steps": outcome.steps,
    }
    save_adapter(store, prefix, adapter, with_meta)
    put_json(store, f"{prefix}/{OUTCOME_FILE}", outcome.to_json())


def _train_and_publish(
    config: Config,
    runtime: Runtime,
    store: Store,
    sets: BankSets,
    incoming: AdapterState,
    *,
    run: str,
    bank: str,
    round_index: int,
) -> BankOutcome:
    """The non-private baseline round (simulation only): no clipping, no noise, no ledger."""
    n = len(sets.train)
    result = run_client_round(
        runtime.model,
        BankState(bank, sets.train, sets.val, sets.test),
        incoming,
        round_index=round_index,
        training=config.training,
        steps=steps_per_round(num_examples=n, config=config.training),
        dp=None,
        sample_rate=min(1.0, config.training.batch_size / n),
        randomness=bank_randomness(config, bank, round_index),
        device=runtime.device,
    )
    _account_time(runtime, result)
    prefix = update_prefix(round_index, bank)
    outcome = BankOutcome(
        bank=bank,
        round=round_index,
        status="ok",
        num_examples=declared_count(n),
        steps=result.train.steps,
        update_uri=store.uri(prefix),
        message="not private (privacy.enabled=false)",
    )
    _publish_update(store, prefix, result.adapter, outcome)
    return outcome


def read_bank_outcome(config: Config, *, run: str, bank: str, round_index: int) -> BankOutcome:
    """The outcome a bank's step wrote for ``round_index`` (e.g. from its Job in another namespace)."""
    store = open_run_store(config, run)
    return BankOutcome.from_json(get_json(store, f"{update_prefix(round_index, bank)}/{OUTCOME_FILE}"))


def _update_bound(config: Config, store: Store, outcome: BankOutcome, num_params: int) -> float | None:
    report = load_bank_privacy(store, outcome.bank) if config.privacy.enabled else None
    plan = report["plan"] if report else {}
    bound = max_update_norm(
        optimizer=config.training.optimizer,
        learning_rate=config.training.learning_rate,
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
    config: Config, store: Store, round_index: int, trained: list[BankOutcome], reference: dict[str, Any]
) -> tuple[list[Update], dict[str, str]]:
    updates: list[Update] = []
    rejected: dict[str, str] = {}
    num_params = sum(int(t.numel()) for t in reference.values())
    frozen = frozenset(n for n in reference if "lora_A" in n) if config.lora.ffa else frozenset()
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
    manifest = f"{round_prefix(round_index)}/MANIFEST.json"
    if store.exists(manifest):
        return RoundRecord.from_json(get_json(store, manifest))
    with runtime.timer.phase("store"):
        previous = load_adapter(store, global_prefix(round_index - 1)).tensors
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
    _commit_round(runtime, store, record, averaged.adapter, selected)
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


@dataclass(frozen=True)
class _Averaged:
    """The round's new global adapter, whose updates went into it, which were rejected and why it stopped."""

    adapter: AdapterState
    accepted: list[str]
    rejected: dict[str, str]
    stopped: str | None = None


def _aggregate_or_stop(
    config: Config,
    runtime: Runtime,
    store: Store,
    round_index: int,
    selected: list[BankOutcome],
    previous: AdapterState,
) -> _Averaged:
    """Average the valid updates and take the server optimizer's step (:mod:`fedlora.server_optimizer`).

    Keeps ``previous`` (and stops) when every selected bank's budget is spent.

    Raises:
        FederationError: fewer than ``federation.min_banks`` valid updates.

    """
    trained = [o for o in selected if o.status == "ok"]
    exhausted = [o.bank for o in selected if o.status == "budget_exhausted"]
    if not trained and exhausted and len(exhausted) == len(selected):
        stopped = f"round {round_index}: every selected bank's privacy budget is spent; stopping"
        return _Averaged(adapter=previous, accepted=[], rejected={}, stopped=stopped)
    with runtime.timer.phase("store"):
        updates, rejected = _read_updates(config, store, round_index, trained, previous)
    with runtime.timer.phase("aggregate"):
        try:
            agg = aggregate(updates, previous, min_banks=config.federation.min_banks)
        except AggregationError as exc:
            failed = _messages(selected, "failed")
            raise FederationError(
                f"round {round_index} failed: {exc}; failed banks: {failed or 'none'}, "
                f"rejected: {rejected or 'none'}, budget spent: {exhausted or 'none'}"
            ) from exc
    with runtime.timer.phase("aggregate"):
        adapter = apply_server_optimizer(config.federation, store, round_index, previous, agg.adapter)
    return _Averaged(adapter=adapter, accepted=agg.accepted, rejected=rejected | agg.rejected)


def _evaluate_centrally(config: Config, runtime: Runtime, record: RoundRecord, adapter: AdapterState) -> RoundRecord:
    """Add the pooled and per-bank test metrics of ``adapter`` where this process holds every bank's test rows.

    Elsewhere the coordinator sees no bank's rows: only the banks' DP releases (``dp_evaluation``) say anything.
    """
    if config.kubeflow.mode != "inline" or not runtime.all_readable():
        return record
    evaluation = runtime.evaluate(adapter)
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
    runtime: Runtime, store: Store, record: RoundRecord, adapter: AdapterState, selected: list[BankOutcome]
) -> None:
    """Write the global adapter, then the manifest (the round is committed when the manifest exists)."""
    examples = sum(o.num_examples for o in selected if o.status == "ok" and o.bank in record.banks)
    meta = {"round": record.round, "kind": "global", "banks": record.banks, "num_examples": examples}
    with runtime.timer.phase("store"):
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
    pooled = pooled_metrics(list(releases.values()))
    return {
        "of_global_round": round_index - 1,
        "banks": sorted(releases),
        **pooled.as_dict(),
        "roc": pooled.roc,
        "method": "sum of the banks' Gaussian-noised per-label score histograms (each charged to its ledger)",
    }


def _publish_dir(store: Store, local: Path, key_prefix: str) -> None:
    """Copy the files under ``local`` into the store (no-op when the store *is* that directory)."""
    if store.local_path(key_prefix) == local.resolve():
        return
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        store.put(f"{key_prefix}/{path.relative_to(local).as_posix()}", path.read_bytes())


def finalize(
    config: Config, *, run: str, runtime: Runtime | None = None, local_dir: Path | None = None
) -> dict[str, Any]:
    """Write the final adapter (ours and PEFT's format), the summary and the report; register in MLflow.

    Raises:
        FederationError: no round was committed.

    """
    runtime = runtime or Runtime(config)
    store = open_run_store(config, run)
    rounds = [
        RoundRecord.from_json(get_json(store, f"{round_prefix(r)}/MANIFEST.json"))
        for r in committed_rounds(store)
        if r > 0
    ]
    if not rounds:
        raise FederationError(f"run {store.uri('')} has no committed round")
    last = rounds[-1]
    work = Path(local_dir) if local_dir is not None else Path(tempfile.mkdtemp(prefix="fedlora-final-"))
    with runtime.timer.phase("store"):
        final = load_adapter(store, global_prefix(last.round)).tensors
        meta = save_adapter(store, "final", final, {"round": last.round, "kind": "final"})
        load_adapter_state(runtime.model, final)
        peft_dir = work / "final" / "peft"
        tmp = work / "final" / ".peft.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        runtime.model.save_pretrained(str(tmp))  # type: ignore[operator]
        shutil.rmtree(peft_dir, ignore_errors=True)
        tmp.replace(peft_dir)
        _publish_dir(store, peft_dir, "final/peft")
    privacy = _privacy_summary(config, store)
    stopped = next((r.stopped_early for r in rounds if r.stopped_early), None)
    summary: dict[str, Any] = {
        "run": run,
        "run_dir": str(work),
        "store_uri": store.uri(""),
        "model": config.model.name,
        "dataset": config.data.dataset,
        "aggregation": "fedavg-ffa-lora (exact)" if config.lora.ffa else "fedavg-lora (A and B averaged separately)",
        "privacy_mode": f"dp-sgd per-example ({config.privacy.accountant})" if config.privacy.enabled else "none",
        "trainable_parameters": sum(runtime.model.get_parameter(n).numel() for n in trainable_names(runtime.model)),
        "final": {
            "auc": last.auc,
            "metrics": last.metrics,
            "per_bank_test": last.per_bank_test,
            "epsilon": last.epsilon,
            "adapter": store.uri("final/adapter.safetensors"),
            "peft_adapter": str(peft_dir),
            "sha256": meta["sha256"],
        },
        "rounds": [r.to_json() for r in ([r for r in rounds if not r.stopped_early] or rounds)],
        "privacy": privacy,
        "stopped_early": stopped,
    }
    if all(r.get("auc") is not None for r in summary["rounds"]):
        report = write_report(summary, work / "report")
        summary["report"] = str(report)
        _publish_dir(store, work / "report", "report")
    register_final(config, open_tracker(config, store, run=run, runtime=runtime), run, summary, work)
    summary["timings"] = dict(runtime.timer.seconds)
    put_json(store, "summary.json", summary)
    return summary


def _privacy_summary(config: Config, store: Store) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    if not config.privacy.enabled:
        return summary
    for spec in config.federation.banks:
        report = load_bank_privacy(store, spec.name)
        if report is None:
            continue
        plan = report["plan"]
        summary[spec.name] = {
            "noise_multiplier": plan["noise_multiplier"],
            "sample_rate": plan["sample_rate"],
            "steps": report.get("training_steps", 0),
            "delta": plan["delta"],
            "max_grad_norm": plan["max_grad_norm"],
            "accountant": plan["accountant"],
            "target_epsilon": plan["target_epsilon"],
            "planned_steps": plan["planned_steps"],
            "evaluation_noise_multiplier": plan.get("evaluation_noise_multiplier"),
            "epsilon": report["epsilon_spent"] if report["charged_rounds"] else 0.0,
            "charged_rounds": report["charged_rounds"],
            "source": "the bank's published report (its own ledger is authoritative)",
        }
    return summary


__all__ = [
    "OUTCOME_FILE",
    "FederationError",
    "aggregate_round",
    "finalize",
    "initialize",
    "read_bank_outcome",
    "select_banks",
    "train_bank",
]
