"""Federated evaluation under DP: each bank releases noised score histograms, the coordinator pools them.

A bank scores its held-out test rows with the incoming global adapter and counts, per label
(default / no default), how many scores fall in each of ``B`` fixed bins of the logit
``log(p/(1−p))`` (edges are public constants, so they depend on no one's data). Adding or
removing one row changes exactly one count by one, so the concatenated ``2B``-vector of counts
has L2 sensitivity 1 and the Gaussian mechanism ``h + N(0, σ²·I)`` is (ε, δ)-DP with the ε the
bank's accountant gives for ``MechanismRun(σ, q=1, steps=1)``; every release is charged to the
bank's ledger like a DP-SGD step. Post-processing is free: the coordinator sums the noised
histograms of all banks, clips negative counts to zero and reads off

* AUC ``= Σ_b H₁[b]·(Σ_{b'<b} H₀[b'] + ½·H₀[b]) / (N₁·N₀)`` (ties within a bin count one half),
* KS ``= max_t |F₁(t) − F₀(t)|`` over the bin edges,
* Brier ``≈ Σ_b (H₁[b](1−c_b)² + H₀[b]·c_b²) / N`` with ``c_b`` the bin's centre probability,

plus a ROC curve for plots. No anchor (Flower, NVFlare, FATE) evaluates federated models under DP.

A text task with ``K`` labels releases instead its ``K × K`` confusion counts (true class ×
predicted class ``argmax_k P_ik``, :func:`confusion_counts`). A row is in exactly one cell, so
the count vector again has L2 sensitivity 1 and the same Gaussian mechanism and charge apply.
The coordinator sums, clips at zero and reads off accuracy ``tr(C)/ΣC`` and the weighted F1
(per-class F1 from the row and column sums, weighted by each class's row sum), as FinLoRA
reports them (:func:`pooled_class_metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedlora.privacy.randomness import Randomness

LOGIT_EDGES = np.linspace(-6.0, 6.0, 41)
"""Public bin edges on the logit scale (40 bins of width 0.3; scores beyond ±6 fall in the end bins)."""


@dataclass(frozen=True)
class ScoreHistograms:
    """Per-label counts of scores per bin: ``counts[0]`` no default, ``counts[1]`` default."""

    counts: np.ndarray  # shape (2, bins), float (noised counts may be fractional or negative)
    noise_multiplier: float | None = None
    kind: str = "logit_bins"
    """``logit_bins`` (two classes, per-label score histograms) or ``confusion`` (K classes, true × predicted)."""

    def to_json(self) -> dict[str, Any]:
        return {"counts": self.counts.tolist(), "noise_multiplier": self.noise_multiplier, "kind": self.kind}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScoreHistograms:
        return cls(
            np.asarray(data["counts"], dtype=np.float64), data.get("noise_multiplier"), data.get("kind", "logit_bins")
        )


def score_histograms(labels: np.ndarray, scores: np.ndarray) -> ScoreHistograms:
    """Exact per-label histograms of P(default) scores on the public logit bins (stays in the bank)."""
    p = np.clip(np.asarray(scores, dtype=np.float64), 1e-12, 1 - 1e-12)
    logits = np.log(p / (1 - p))
    bins = np.clip(np.searchsorted(LOGIT_EDGES, logits, side="right") - 1, 0, len(LOGIT_EDGES) - 2)
    counts = np.zeros((2, len(LOGIT_EDGES) - 1))
    y = np.asarray(labels, dtype=np.int64)
    np.add.at(counts, (y, bins), 1.0)
    return ScoreHistograms(counts)


def confusion_counts(labels: np.ndarray, probabilities: np.ndarray) -> ScoreHistograms:
    """Exact ``K × K`` counts of (true class, predicted class) of a K-class task (stays in the bank)."""
    p = np.asarray(probabilities, dtype=np.float64)
    k = p.shape[1]
    counts = np.zeros((k, k))
    np.add.at(counts, (np.asarray(labels, dtype=np.int64), p.argmax(axis=1)), 1.0)
    return ScoreHistograms(counts, kind="confusion")


def noised(histograms: ScoreHistograms, *, noise_multiplier: float, randomness: Randomness) -> ScoreHistograms:
    """The Gaussian mechanism on the count vector (L2 sensitivity 1): ``h + N(0, σ²)`` per count."""
    noise = randomness.normal(
        torch.Size(histograms.counts.shape), noise_multiplier, device=torch.device("cpu"), dtype=torch.float64
    )
    return ScoreHistograms(histograms.counts + noise.numpy(), noise_multiplier, histograms.kind)


@dataclass(frozen=True)
class PooledMetrics:
    """Metrics read off summed (noised) histograms; ``n`` is the noisy row count."""

    auc: float
    ks: float
    brier: float
    n: float
    roc: dict[str, list[float]]

    def as_dict(self) -> dict[str, float]:
        return {"auc": self.auc, "ks": self.ks, "brier": self.brier, "n": self.n}


def pooled_metrics(releases: list[ScoreHistograms]) -> PooledMetrics:
    """Sum the banks' releases and compute AUC, KS, Brier and a ROC curve (NaN when a class is empty)."""
    total = np.clip(np.sum([r.counts for r in releases], axis=0), 0.0, None)
    good, bad = total[0], total[1]
    n_good, n_bad = float(good.sum()), float(bad.sum())
    centres = 1.0 / (1.0 + np.exp(-(LOGIT_EDGES[:-1] + LOGIT_EDGES[1:]) / 2))
    n = n_good + n_bad
    brier = float((bad * (1 - centres) ** 2 + good * centres**2).sum() / n) if n > 0 else float("nan")
    if n_good <= 0 or n_bad <= 0:
        return PooledMetrics(float("nan"), float("nan"), brier, n, {"fpr": [], "tpr": []})
    below_good = np.concatenate([[0.0], np.cumsum(good)[:-1]])
    auc = float((bad * (below_good + 0.5 * good)).sum() / (n_bad * n_good))
    # Thresholds from the top bin down: rows scored at or above a bin's lower edge are "predicted default".
    tpr = np.concatenate([[0.0], np.cumsum(bad[::-1]) / n_bad])
    fpr = np.concatenate([[0.0], np.cumsum(good[::-1]) / n_good])
    ks = float(np.max(np.abs(tpr - fpr)))
    return PooledMetrics(auc, ks, brier, n, {"fpr": fpr.tolist(), "tpr": tpr.tolist()})


@dataclass(frozen=True)
class PooledClassMetrics:
    """Accuracy and weighted F1 read off summed (noised) confusion counts; ``n`` is the noisy row count."""

    accuracy: float
    weighted_f1: float
    n: float
    confusion: list[list[float]]

    def as_dict(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "f1": self.weighted_f1, "n": self.n}


def pooled_class_metrics(releases: list[ScoreHistograms]) -> PooledClassMetrics:
    """Sum the banks' confusion releases (clipped at 0); accuracy ``tr(C)/ΣC`` and F1 weighted by row sums."""
    total = np.clip(np.sum([r.counts for r in releases], axis=0), 0.0, None)
    n = float(total.sum())
    if n <= 0:
        return PooledClassMetrics(float("nan"), float("nan"), n, total.tolist())
    hits, truth, predicted = np.diag(total), total.sum(axis=1), total.sum(axis=0)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, truth, out=np.zeros_like(hits), where=truth > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
    return PooledClassMetrics(float(hits.sum() / n), float((f1 * truth).sum() / n), n, total.tolist())
