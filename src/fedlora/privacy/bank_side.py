"""The bank's side of a round: its policy, its σ plan, its noise source and its published privacy report.

Only the bank decides its privacy policy and where its own ledger lives (:class:`BankSide`);
it calibrates σ from its own row count (:func:`plan_bank`), draws its noise from the OS
CSPRNG (:func:`bank_randomness`), publishes a *report* of its ledger to the exchange
(:func:`publish_privacy_report`, read back by :func:`load_bank_privacy`) and lets only
setting-level error messages leave it (:func:`public_message`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedlora.aggregation import participations
from fedlora.config import Config, ConfigError
from fedlora.errors import FederationError
from fedlora.privacy.accounting import (
    PrivacyConfigError,
    PrivacyPlan,
    declared_count,
    declared_training_count,
    default_delta,
    plan_privacy,
)
from fedlora.privacy.bank_ledger import BankLedger
from fedlora.privacy.policy import BankPolicy, PolicyError
from fedlora.privacy.randomness import Randomness, make_randomness
from fedlora.store.adapters import get_json, put_json
from fedlora.store.base import PrefixedStore, Store, StoreError
from fedlora.training import steps_per_round

if TYPE_CHECKING:
    from fedlora.runtime import Runtime

__all__ = [
    "BankSide",
    "bank_delta",
    "bank_randomness",
    "load_bank_privacy",
    "plan_bank",
    "privacy_key",
    "public_message",
    "publish_privacy_report",
    "training_count",
]

log = logging.getLogger(__name__)


def privacy_key(bank: str) -> str:
    """Where ``bank``'s privacy report lives in the run's store."""
    return f"privacy/{bank}.json"


@dataclass(frozen=True)
class BankSide:
    """What only the bank decides: its privacy policy and where its own ledger lives.

    In a bank's Job (``job=True``) both come from the bank's Helm release
    (``FEDLORA_BANK_POLICY``, ``FEDLORA_BANK_LEDGER``), messages that leave the bank are
    redacted, and seeded noise is refused. In ``fedlora simulate`` and inline Kubeflow runs
    the user is every bank: the config is each bank's policy and the ledgers live in the run's
    store under ``bank-ledgers/<bank>/``.
    """

    ledger_store: Store | None = None
    policy: BankPolicy | None = None
    job: bool = False
    dataset_id: str = "default"
    """The dataset identity the bank declares (``FEDLORA_BANK_DATASET_ID``): its ledger's key."""

    def policy_for(self, config: Config, bank: str) -> BankPolicy:
        return self.policy if self.policy is not None else BankPolicy.for_simulation(config, bank)

    def ledger_store_for(self, run_store: Store, bank: str) -> Store:
        return self.ledger_store if self.ledger_store is not None else PrefixedStore(run_store, f"bank-ledgers/{bank}")


def bank_delta(policy: BankPolicy, declared_examples: int) -> float:
    """The bank's δ: its policy's ``maxDelta``, else ``1/(10·n_declared)``; the lifetime ledger is composed at it."""
    return policy.max_delta if policy.max_delta is not None else default_delta(declared_count(declared_examples))


def training_count(config: Config, total_rows: int) -> int:
    """The training count ``bank`` plans with: from its declared total and the request's split fractions.

    See :func:`fedlora.privacy.accounting.declared_training_count`: nothing finer than the declared
    total of the bank's rows enters the plan or any refusal.
    """
    train_fraction = 1.0 - config.data.val_fraction - config.data.test_fraction
    return declared_training_count(total_rows, train_fraction=train_fraction)


def plan_bank(config: Config, bank: str, num_examples: int, *, policy: BankPolicy, runtime: Runtime) -> PrivacyPlan:
    """Calibrate ``bank``'s σ from its own (declared) row count for its target (ε, δ) over the rounds it trains.

    Those rounds are :func:`fedlora.aggregation.participations` (every round unless ``fraction_fit`` < 1).

    δ is the request's when it is within the bank's δ (:func:`bank_delta`: ``maxDelta``, else
    ``1/(10·n_declared)``), else the request is refused; without a request δ it is the bank's δ.
    The evaluation releases are reserved up front when the policy releases metrics. Plans are
    cached in the runtime (a deterministic search of seconds with the PRV accountant).

    Args:
        config: The request.
        bank: The bank.
        num_examples: The bank's training count (:func:`training_count`; only its declared value is used).
        policy: The bank's policy.
        runtime: Where plans are cached.

    Raises:
        PrivacyConfigError: the request's δ is above the bank's, or the schedule cannot be honoured.
    """
    declared = declared_count(num_examples)
    allowed = bank_delta(policy, declared)
    delta = config.privacy.delta
    if delta is None:
        delta = allowed
    elif delta > allowed:
        rule = (
            f"maxDelta={policy.max_delta:g}"
            if policy.max_delta is not None
            else f"1/(10·n) = {allowed:.3g} for its training rows (n ≈ {declared}; maxDelta unset)"
        )
        raise PrivacyConfigError(f"bank {bank}: the request asks for δ={delta:g}; the bank allows at most {rule}")
    training = config.training_for(bank, declared)  # the batch follows the declared count
    # σ for the rounds this bank trains (1 ≤ count ≤ rounds), not every round of the run: it answers any other
    # round "not_selected", and its ledger refuses a charge past its cap whatever the coordinator asks.
    rounds = max(1, participations(config, bank))
    key = (
        config.target_epsilon_for(bank),
        delta,
        declared,
        training.model_dump_json(),
        rounds,
        config.privacy.max_grad_norm,
        config.privacy.noise_multiplier,
        policy.accountant,
        policy.evaluation_epsilon if policy.release_metrics else None,
    )
    if key not in runtime.plans:
        runtime.plans[key] = plan_privacy(
            bank=bank,
            num_examples=declared,
            target_epsilon=key[0],
            delta=delta,
            batch_size=training.batch_size,
            steps_per_round=steps_per_round(num_examples=declared, config=training),
            rounds=rounds,
            max_grad_norm=config.privacy.max_grad_norm,
            noise_multiplier=config.privacy.noise_multiplier,
            accountant=policy.accountant,
            evaluation_epsilon=key[-1],
        )
    return dataclasses.replace(runtime.plans[key], bank=bank)


def load_bank_privacy(store: Store, bank: str) -> dict[str, Any] | None:
    """The privacy report ``bank`` published in the exchange (a report: the bank's ledger is the truth)."""
    key = privacy_key(bank)
    return dict(get_json(store, key)) if store.exists(key) else None


def publish_privacy_report(store: Store, plan: PrivacyPlan, ledger: BankLedger, run: str) -> float:
    """Write the bank's privacy report for this run to the exchange; return the run's ε."""
    charges = ledger.charges(run)
    epsilon = ledger.epsilon(charges)
    history = [[m.noise_multiplier, m.sample_rate, m.steps] for c in charges for m in c.mechanisms]
    put_json(
        store,
        privacy_key(plan.bank),
        {
            "plan": dataclasses.asdict(plan),
            "ledger": {"delta": ledger.delta, "accountant": ledger.accountant, "history": history},
            "charged_rounds": sorted({c.round for c in charges}),
            "epsilon_spent": epsilon,
            "training_steps": sum(m.steps for c in charges for m in c.mechanisms[:1]),
            "note": "a report published by the bank; its ledger, in its own storage, is the source of truth",
        },
    )
    return epsilon


def _bank_seed(config: Config, bank: str, round_index: int) -> int:
    offset = [b.name for b in config.federation.banks].index(bank)
    return int(np.random.SeedSequence([config.seed, offset, round_index]).generate_state(1)[0])


def bank_randomness(config: Config, bank: str, round_index: int) -> Randomness:
    """The OS CSPRNG, unless the run asked for replayable research noise (refused in a bank's Job)."""
    if not config.privacy.insecure_seeded_noise:
        return make_randomness()
    log.warning("bank %s: INSECURE seeded noise (privacy.insecure_seeded_noise): research only, no DP guarantee", bank)
    return make_randomness(insecure_seed=_bank_seed(config, bank, round_index))


def public_message(exc: BaseException) -> str:
    """An error message that may leave the bank: the rule and the place, never a data value."""
    public = getattr(exc, "public_message", None)
    if isinstance(public, str):
        return public
    if isinstance(exc, StoreError):  # keys and paths (the ledger's dataset, a bucket) stay in the bank: the kind only
        return f"store error: {exc.kind} (details stay in the bank's own report)"
    if isinstance(exc, (ConfigError, PrivacyConfigError, PolicyError, FederationError)):
        return str(exc)  # about settings and keys, not rows
    return f"{type(exc).__name__} (details stay in the bank's own report)"
