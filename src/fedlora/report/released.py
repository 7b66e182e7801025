"""The banks' DP-released score histograms as the coordinator holds them (read back from the run's store).

Each bank that releases metrics publishes, in its round outcome (``updates/<bank>/outcome.json``),
Gaussian-noised per-label histograms of its test scores (a text task: its confusion counts) for
the *incoming* global adapter, charged to its own ledger (:mod:`fedlora.privacy.dp_evaluation`).
The round's manifest keeps only the pooled metrics and ROC; the report also needs the summed
counts (reliability, score distributions, confusion matrix), which this module re-reads.
Summing and clipping released values is post-processing: nothing new leaves a bank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedlora.privacy.dp_evaluation import ScoreHistograms
from fedlora.records import BankOutcome, RoundRecord
from fedlora.store.adapters import get_json
from fedlora.store.base import Store, update_prefix

__all__ = ["ReleasedHistograms", "latest_released_histograms"]

OUTCOME_FILE = "outcome.json"
"""A bank's published round outcome (:data:`fedlora.bank_round.OUTCOME_FILE`)."""


@dataclass(frozen=True)
class ReleasedHistograms:
    """The sum of the banks' noised histograms of one global adapter.

    Attributes:
        counts: Summed noisy counts: shape ``(2, bins)`` for score histograms (row 0: no default,
            row 1: default), ``(K, K)`` for a text task's confusion counts (true × predicted).
        kind: ``logit_bins`` or ``confusion``.
        noise_std: Standard deviation of the Gaussian noise on each summed count, ``√(Σ_banks σ_b²)``
            (NaN when a release does not say its σ).
        adapter_round: The round whose global adapter the banks scored (the round before the release).
        banks: The banks whose releases are summed.

    """

    counts: np.ndarray
    kind: str
    adapter_round: int
    banks: list[str]
    noise_std: float


def latest_released_histograms(store: Store, rounds: list[RoundRecord]) -> ReleasedHistograms | None:
    """The newest round's pooled DP release, summed from the banks' outcomes (None when no bank released).

    Args:
        store: The run's store (the exchange the coordinator reads).
        rounds: The committed rounds, oldest first.

    """
    for record in reversed(rounds):
        released = (record.dp_evaluation or {}).get("banks") or []
        histograms, banks, kinds, variance = [], [], set(), 0.0
        for bank in released:
            key = f"{update_prefix(record.round, bank)}/{OUTCOME_FILE}"
            if not store.exists(key):
                continue
            evaluation = BankOutcome.from_json(get_json(store, key)).evaluation
            if evaluation:
                release = ScoreHistograms.from_json(evaluation)
                histograms.append(release.counts)
                variance += math.nan if release.noise_multiplier is None else release.noise_multiplier**2
                banks.append(bank)
                kinds.add(str(evaluation.get("kind", "logit_bins")))
        if histograms and len(kinds) == 1 and len({h.shape for h in histograms}) == 1:
            return ReleasedHistograms(
                counts=np.sum(histograms, axis=0),
                kind=kinds.pop(),
                adapter_round=int(record.dp_evaluation["of_global_round"]),  # type: ignore[index]
                banks=banks,
                noise_std=math.sqrt(variance),
            )
    return None
