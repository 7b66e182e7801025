"""One bank's round, the federation step every shell runs for a bank: check, charge, release, train, publish.

``fedlora simulate`` and inline Kubeflow runs call :func:`run_bank_round` for every bank; a
bank's Job (``fedlora train-bank``) and its pull-mode agent call it for their own bank only.
The phases, in order:

1. **Check the request** (:func:`_check_request`): a published outcome is returned as is (a
   retried Job trains nothing twice); a bank not sampled sits out; the previous round must be
   committed; the bank's policy may refuse the request.
2. **Plan** (:func:`_plan_or_refuse`): σ is calibrated from the bank's own row count; a schedule
   the bank's rows or its ``minNoiseMultiplier`` cannot honour is refused.
3. **Claim** (:func:`_claim_or_refuse`): the round is charged to the bank's own ledger *before*
   anything is released (a crash in between over-counts, never under-counts).
4. **Release and train** (:func:`_train_and_publish`): the noised evaluation histograms (when
   the policy releases metrics), then the DP-SGD local round; the adapter is published and
   ``outcome.json`` is written last.

A non-private baseline (``privacy.enabled: false``, simulation only) skips 2 and 3; it trains
without noise, and with per-example clipping only when ``privacy.clip_when_disabled`` is set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedlora.aggregation import select_banks
from fedlora.config import Config
from fedlora.errors import FederationError
from fedlora.initial import load_global
from fedlora.local_round import LocalRoundResult, run_local_round
from fedlora.model import AdapterState
from fedlora.model.encoding import RowSet
from fedlora.model.lora import load_adapter_state
from fedlora.names import check_name
from fedlora.privacy.accounting import PrivacyConfigError, PrivacyPlan, declared_count
from fedlora.privacy.bank_ledger import BankLedger, BudgetSpent, ClaimRefused, dataset_fingerprint
from fedlora.privacy.bank_side import (
    BankSide,
    bank_delta,
    bank_randomness,
    plan_bank,
    publish_privacy_report,
    training_count,
)
from fedlora.privacy.dp_evaluation import ScoreHistograms, confusion_counts, noised, score_histograms
from fedlora.privacy.policy import BankPolicy
from fedlora.privacy.randomness import Randomness
from fedlora.records import NOT_PRIVATE, BankOutcome, BankStatus
from fedlora.runtime import EncodedSplits, Runtime
from fedlora.store.adapters import get_json, put_json, save_adapter
from fedlora.store.base import Store, round_prefix, update_prefix
from fedlora.store.run import open_run_store
from fedlora.training import (
    DPSettings,
    GradientCanaries,
    predict_scores,
    round_training,
    steps_per_round,
)

__all__ = ["OUTCOME_FILE", "read_bank_outcome", "run_bank_round"]

OUTCOME_FILE = "outcome.json"


@dataclass(frozen=True)
class _BankRound:
    """Who trains which round of which run, and where it publishes."""

    config: Config
    runtime: Runtime
    store: Store
    run: str
    bank: str
    round_index: int

    @property
    def prefix(self) -> str:
        return update_prefix(self.round_index, self.bank)

    def outcome(self, status: BankStatus, message: str, **values: Any) -> BankOutcome:
        return BankOutcome(bank=self.bank, round=self.round_index, status=status, message=message, **values)

    def publish(self, outcome: BankOutcome) -> BankOutcome:
        put_json(self.store, f"{self.prefix}/{OUTCOME_FILE}", outcome.to_json())
        return outcome


@dataclass(frozen=True)
class _Schedule:
    """How the bank trains this round and what its outcome declares (ε, δ: :data:`NOT_PRIVATE` without DP)."""

    steps: int
    sample_rate: float
    dp: DPSettings | None
    num_examples: int
    epsilon: float | None = NOT_PRIVATE
    delta: float | None = None
    message: str = ""

    @classmethod
    def private(cls, plan: PrivacyPlan, epsilon: float) -> _Schedule:
        """DP-SGD as the bank's plan says; the outcome declares the run's ε so far and δ."""
        dp = DPSettings(
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=plan.max_grad_norm,
            sample_rate=plan.sample_rate,
            expected_batch_size=plan.sample_rate * plan.declared_examples,
        )
        return cls(
            steps=plan.steps_per_round,
            sample_rate=plan.sample_rate,
            dp=dp,
            num_examples=plan.declared_examples,
            epsilon=epsilon,
            delta=plan.delta,
        )

    @classmethod
    def not_private(cls, config: Config, bank: str, num_rows: int) -> _Schedule:
        """The non-private baseline (simulation only): no noise; clipped only with ``privacy.clip_when_disabled``."""
        training = config.training_for(bank, declared_count(num_rows))
        sample_rate = min(1.0, training.batch_size / num_rows)
        clipped = config.privacy.clip_when_disabled
        dp = DPSettings(noise_multiplier=0.0, max_grad_norm=config.privacy.max_grad_norm, sample_rate=sample_rate)
        return cls(
            steps=steps_per_round(num_examples=num_rows, config=training),
            sample_rate=sample_rate,
            dp=dp if clipped else None,
            num_examples=declared_count(num_rows),
            message="not private (privacy.enabled=false" + (", clipped, no noise)" if clipped else ")"),
        )


def run_bank_round(
    config: Config,
    *,
    run: str,
    bank: str,
    round_index: int,
    runtime: Runtime | None = None,
    side: BankSide | None = None,
    canaries: GradientCanaries | None = None,
) -> BankOutcome:
    """One bank's round: check the request, charge the ledger, release DP metrics, train, publish.

    Order: the request is checked against the bank's policy; the plan is computed from the
    bank's own rows; the round is *claimed* on the bank's own ledger (the charge is written
    before anything is released); the noised evaluation histograms (if the policy releases
    metrics) and the DP-SGD adapter are published; ``outcome.json`` is written last. A
    published outcome is returned as is (a retried Job trains nothing twice), and a round
    already claimed by another Job is refused. ``canaries`` are an auditor's extra training
    examples (:mod:`fedlora.privacy.round_audit`); no shell passes them.

    Raises:
        FederationError: the previous round is not committed or the bank is unknown.

    """
    check_name(run, kind="run")  # a run name is a key prefix in the exchange and the bank's ledger, never a path
    if bank not in {b.name for b in config.federation.banks}:
        raise FederationError(f"unknown bank {bank!r}; banks: {[b.name for b in config.federation.banks]}")
    runtime = runtime or Runtime(config)
    side = side or BankSide()
    job = _BankRound(config, runtime, open_run_store(config, run), run, bank, round_index)
    policy = _check_request(job, side)
    if isinstance(policy, BankOutcome):
        return policy
    with runtime.timer.phase("store"):  # None: round 0's seeded initial adapter, built from the model once charged
        stored = load_global(job.store, round_index - 1)
    rows = runtime.bank_data(bank)
    ledger_store = side.ledger_store_for(job.store, bank)
    fingerprint = dataset_fingerprint(rows.frames.values())
    if not config.privacy.enabled:  # a non-private simulation baseline (a bank's Job refused it above)
        baseline = _Schedule.not_private(config, bank, len(rows.train))
        sets = runtime.bank(bank)
        return _train_and_publish(
            job,
            sets,
            _incoming(runtime, stored),
            baseline,
            bank_randomness(config, bank, round_index),
            canaries=canaries,
        )
    # planned from the declared total of the validated rows (a refusal reveals nothing finer than what the bank
    # publishes), before the rows are tokenized and run through the frozen layers (runtime.bank)
    plan = _plan_or_refuse(job, policy, training_count(config, sum(map(len, rows.frames.values()))), in_job=side.job)
    if isinstance(plan, BankOutcome):
        return plan
    ledger = BankLedger(
        ledger_store,
        side.dataset_id,
        delta=plan.delta,
        lifetime_delta=bank_delta(policy, plan.declared_examples),
        accountant=plan.accountant,
    )
    refused = _claim_or_refuse(job, plan, policy, ledger)
    if refused is not None:
        return refused
    # a changed dataset is the same customers: logged, kept in the bank's report, charged to the same budget
    rows_changed = ledger.record_fingerprint(fingerprint, run=run, round_index=round_index)
    sets = runtime.bank(bank)  # tokenized and through the frozen layers only once the round is charged
    incoming = _incoming(runtime, stored)
    epsilon = publish_privacy_report(job.store, plan, ledger, run)  # the charge is made; the report may go first
    randomness = bank_randomness(config, bank, round_index)
    release = (
        _dp_evaluation(runtime, sets.test, incoming, plan=plan, randomness=randomness)
        if policy.release_metrics
        else None
    )
    return _train_and_publish(
        job,
        sets,
        incoming,
        _Schedule.private(plan, epsilon),
        randomness,
        release=release,
        keep=lambda result: ledger.keep_report(
            run, round_index, {**_private_report(result), "rows_changed_since_last_version": rows_changed}
        ),
        canaries=canaries,
    )


def read_bank_outcome(config: Config, *, run: str, bank: str, round_index: int) -> BankOutcome:
    """The outcome a bank's step wrote for ``round_index`` (e.g. from its Job in another namespace)."""
    store = open_run_store(config, run)
    return BankOutcome.from_json(get_json(store, f"{update_prefix(round_index, bank)}/{OUTCOME_FILE}"))


# --- the phases ----------------------------------------------------------------------------


def _incoming(runtime: Runtime, stored: AdapterState | None) -> AdapterState:
    """The global adapter the bank starts from: the stored one, or (round 0 is a spec) the seeded initial adapter.

    The bank builds the latter from its own model (:mod:`fedlora.initial`): public inputs only, nothing
    crosses the bank's boundary.
    """
    return stored if stored is not None else runtime.initial_adapter


def _check_request(job: _BankRound, side: BankSide) -> BankPolicy | BankOutcome:
    """The bank's policy when it trains this round, else its outcome (already published, not sampled, refused).

    Raises:
        FederationError: the previous round is not committed.

    """
    config, store = job.config, job.store
    if store.exists(f"{job.prefix}/{OUTCOME_FILE}"):
        return read_bank_outcome(config, run=job.run, bank=job.bank, round_index=job.round_index)
    if job.bank not in select_banks(config, job.round_index):
        return job.outcome("not_selected", "not sampled this round")
    previous = job.round_index - 1
    if previous > 0 and not store.exists(f"{round_prefix(previous)}/MANIFEST.json"):
        raise FederationError(
            f"round {previous} of run {job.run} is not committed; cannot start round {job.round_index}"
        )
    policy = side.policy_for(config, job.bank)
    refusals = policy.refusals(config, job.bank, job=side.job) if (side.job or config.privacy.enabled) else []
    return job.publish(job.outcome("refused", "; ".join(refusals))) if refusals else policy


def _plan_or_refuse(job: _BankRound, policy: BankPolicy, num_rows: int, *, in_job: bool) -> PrivacyPlan | BankOutcome:
    """The bank's privacy plan from its own row count, or the published refusal of a schedule it cannot honour."""
    try:
        plan = plan_bank(job.config, job.bank, num_rows, policy=policy, runtime=job.runtime)
    except PrivacyConfigError as exc:  # the request's schedule cannot be honoured on this bank's rows
        if not in_job:
            raise
        return job.publish(job.outcome("refused", exc.public_message))
    if plan.noise_multiplier < policy.min_noise_multiplier:
        message = (
            f"the request's schedule calibrates to σ={plan.noise_multiplier:.3f}, below the bank's "
            f"minNoiseMultiplier {policy.min_noise_multiplier:g}"
        )
        return job.publish(job.outcome("refused", message))
    return plan


def _claim_or_refuse(job: _BankRound, plan: PrivacyPlan, policy: BankPolicy, ledger: BankLedger) -> BankOutcome | None:
    """Charge the round to the bank's ledger (None), or the outcome of a refused claim.

    A spent budget is published; a round claimed by another Job is refused in this Job's log
    only, so the holder's outcome is never shadowed.
    """
    try:
        ledger.claim(
            run=job.run,
            round_index=job.round_index,
            mechanisms=plan.round_mechanisms(steps=plan.steps_per_round, evaluate=policy.release_metrics),
            run_cap=plan.target_epsilon,
            lifetime_cap=policy.lifetime_epsilon,
        )
    except ClaimRefused as exc:
        status: BankStatus = "budget_exhausted" if isinstance(exc, BudgetSpent) else "refused"
        spent = ledger.epsilon(ledger.charges(job.run))
        outcome = job.outcome(status, f"not training: {exc}", epsilon=spent, delta=plan.delta)
        # a concurrent Job may hold the round: its outcome is the one to publish
        return job.publish(outcome) if status == "budget_exhausted" else outcome
    return None


def _train_and_publish(
    job: _BankRound,
    sets: EncodedSplits,
    incoming: AdapterState,
    schedule: _Schedule,
    randomness: Randomness,
    *,
    release: ScoreHistograms | None = None,
    keep: Callable[[LocalRoundResult], None] | None = None,
    canaries: GradientCanaries | None = None,
) -> BankOutcome:
    """Run the local round, let the bank ``keep`` its private report, publish the adapter, then the outcome."""
    runtime = job.runtime
    result = run_local_round(
        runtime.model,
        job.bank,
        sets,
        incoming,
        round_index=job.round_index,
        training=round_training(job.config.training, round_index=job.round_index, rounds=job.config.federation.rounds),
        steps=schedule.steps,
        dp=schedule.dp,
        sample_rate=schedule.sample_rate,
        randomness=randomness,
        device=runtime.device,
        canaries=canaries,
    )
    runtime.timer.add("evaluate", result.eval_seconds)
    runtime.timer.add("train", result.train_seconds)
    if keep is not None:
        keep(result)
    outcome = job.outcome(
        "ok",
        schedule.message,
        num_examples=schedule.num_examples,
        epsilon=schedule.epsilon,
        delta=schedule.delta,
        steps=result.train.steps,
        evaluation=release.to_json() if release is not None else None,
        update_uri=job.store.uri(job.prefix),
    )
    _publish_update(job, result.adapter, outcome)
    return outcome


def _private_report(result: LocalRoundResult) -> dict[str, Any]:
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
    """Score the bank's test rows with the incoming adapter and release the noised histograms (already charged).

    Two classes: per-label histograms of P(default); K > 2 classes (a text task): the confusion counts.
    """
    assert plan.evaluation_noise_multiplier is not None
    with runtime.timer.phase("evaluate"):
        load_adapter_state(runtime.model, incoming)
        scores = predict_scores(
            runtime.model, test, batch_size=runtime.config.training.eval_batch_size, device=runtime.device
        )
    labels = test.labels.numpy()
    exact = confusion_counts(labels, scores) if scores.ndim == 2 else score_histograms(labels, scores)
    return noised(exact, noise_multiplier=plan.evaluation_noise_multiplier, randomness=randomness)


def _publish_update(job: _BankRound, adapter: AdapterState, outcome: BankOutcome) -> None:
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
    save_adapter(job.store, job.prefix, adapter, with_meta)
    job.publish(outcome)
