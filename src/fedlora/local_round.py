"""One bank's local round: evaluate the incoming global adapter (privately), then train.

The privacy decisions (is the request allowed, is the budget there, charge the ledger) are
taken before this runs, by :func:`fedlora.bank_round.run_bank_round` from the bank's own policy
and ledger; this module only evaluates and trains with the DP settings it is given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from fedlora.config import TrainingConfig
from fedlora.evaluation import Metrics, compute_metrics
from fedlora.model import AdapterState
from fedlora.model.lora import adapter_state, load_adapter_state
from fedlora.privacy.randomness import Randomness
from fedlora.runtime import EncodedSplits
from fedlora.training import DPSettings, GradientCanaries, TrainStats, predict_scores, train_local


@dataclass(frozen=True)
class LocalRoundResult:
    """A bank's round, as the bank sees it (exact metrics: they stay in the bank)."""

    bank: str
    round: int
    num_examples: int
    incoming_val: Metrics
    train: TrainStats
    adapter: AdapterState
    eval_seconds: float = 0.0
    train_seconds: float = 0.0


def run_local_round(
    model: nn.Module,
    bank: str,
    sets: EncodedSplits,
    global_adapter: AdapterState,
    *,
    round_index: int,
    training: TrainingConfig,
    steps: int,
    dp: DPSettings | None,
    sample_rate: float,
    randomness: Randomness,
    device: torch.device,
    canaries: GradientCanaries | None = None,
) -> LocalRoundResult:
    """Evaluate ``global_adapter`` on ``bank``'s validation rows, then run ``steps`` local steps (DP-SGD: ``dp``).

    ``canaries`` (an audit only, :mod:`fedlora.privacy.round_audit`) join the training rows; see
    :func:`fedlora.training.train_local`.
    """
    started = time.perf_counter()
    load_adapter_state(model, global_adapter)
    scores = predict_scores(model, sets.val, batch_size=training.eval_batch_size, device=device)
    incoming = compute_metrics(sets.val.labels.numpy(), scores)
    eval_seconds = time.perf_counter() - started
    started = time.perf_counter()
    stats = train_local(
        model,
        sets.train,
        config=training,
        steps=steps,
        sample_rate=sample_rate,
        dp=dp,
        randomness=randomness,
        device=device,
        canaries=canaries,
    )
    return LocalRoundResult(
        bank=bank,
        round=round_index,
        num_examples=len(sets.train),
        incoming_val=incoming,
        train=stats,
        adapter=adapter_state(model),
        eval_seconds=eval_seconds,
        train_seconds=time.perf_counter() - started,
    )
