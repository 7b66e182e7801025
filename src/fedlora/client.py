"""One bank's round: evaluate the incoming global adapter, train with DP-SGD, publish the update.

The bank keeps its privacy ledger; before training it checks that this round's steps keep
it within its ε budget, and if not it does not train (and says so).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fedlora.config import TrainingConfig
from fedlora.evaluation import Metrics, compute_metrics
from fedlora.model.encoding import RowSet
from fedlora.model.lora import AdapterState, adapter_state, load_adapter_state
from fedlora.privacy.accounting import MechanismRun, PrivacyLedger, PrivacyPlan
from fedlora.privacy.randomness import Randomness
from fedlora.training import DPSettings, TrainStats, predict_default_probability, train_local

ClientStatus = Literal["ok", "budget_exhausted"]


@dataclass(frozen=True)
class BankState:
    """What a bank holds across rounds: its data, its privacy plan and ledger, its randomness."""

    name: str
    train: RowSet
    val: RowSet
    test: RowSet
    plan: PrivacyPlan | None
    ledger: PrivacyLedger | None
    randomness: Randomness


@dataclass(frozen=True)
class ClientResult:
    """A bank's answer for one round."""

    bank: str
    round: int
    status: ClientStatus
    num_examples: int
    incoming_val: Metrics
    train: TrainStats | None
    epsilon: float
    adapter: AdapterState | None
    message: str = ""
    eval_seconds: float = 0.0
    train_seconds: float = 0.0


def run_client_round(
    model: nn.Module,
    bank: BankState,
    global_adapter: AdapterState,
    *,
    round_index: int,
    training: TrainingConfig,
    steps: int,
    device: torch.device,
) -> ClientResult:
    """Evaluate ``global_adapter`` on the bank's validation data, then train locally.

    With DP (``bank.plan`` set) the round runs only if ``ε(ledger + this round) ≤ target``;
    the steps taken are recorded in the bank's ledger before the update is returned.
    """
    started = time.perf_counter()
    load_adapter_state(model, global_adapter)
    scores = predict_default_probability(model, bank.val, batch_size=training.eval_batch_size, device=device)
    incoming = compute_metrics(bank.val.labels.numpy(), scores)
    eval_seconds = time.perf_counter() - started
    n = len(bank.train)
    dp: DPSettings | None = None
    epsilon = 0.0
    if bank.plan is not None and bank.ledger is not None:
        run = MechanismRun(bank.plan.noise_multiplier, bank.plan.sample_rate, steps)
        epsilon_after = bank.ledger.epsilon_after(run)
        if epsilon_after > bank.plan.target_epsilon:
            spent = bank.ledger.epsilon()
            return ClientResult(
                bank=bank.name,
                round=round_index,
                status="budget_exhausted",
                num_examples=n,
                incoming_val=incoming,
                train=None,
                epsilon=spent,
                adapter=None,
                message=(
                    f"privacy budget spent: ε={spent:.3f} so far, {steps} more steps would reach "
                    f"ε={epsilon_after:.3f} > target {bank.plan.target_epsilon}; not training"
                ),
                eval_seconds=eval_seconds,
            )
        dp = DPSettings(
            noise_multiplier=bank.plan.noise_multiplier,
            max_grad_norm=bank.plan.max_grad_norm,
            sample_rate=bank.plan.sample_rate,
        )
        epsilon = epsilon_after
    started = time.perf_counter()
    sample_rate = dp.sample_rate if dp is not None else min(1.0, training.batch_size / n)
    stats = train_local(
        model,
        bank.train,
        config=training,
        steps=steps,
        sample_rate=sample_rate,
        dp=dp,
        randomness=bank.randomness,
        device=device,
    )
    if bank.ledger is not None and dp is not None:
        bank.ledger.record(MechanismRun(dp.noise_multiplier, dp.sample_rate, stats.steps))
    if dp is None:
        epsilon = math.inf
    return ClientResult(
        bank=bank.name,
        round=round_index,
        status="ok",
        num_examples=n,
        incoming_val=incoming,
        train=stats,
        epsilon=epsilon,
        adapter=adapter_state(model),
        eval_seconds=eval_seconds,
        train_seconds=time.perf_counter() - started,
    )
