"""Credit-risk metrics: AUC, KS, accuracy, F1 and Brier score (and their K-class forms for text tasks).

* AUC: area under the ROC curve (probability a random default is scored above a random
  non-default).
* KS: Kolmogorov–Smirnov statistic ``max_t |F_bad(t) − F_good(t)| = max(TPR − FPR)``, the
  classic scorecard separation measure.
* Brier: ``mean((p − y)²)`` (Brier, 1950), a proper scoring rule for calibration.
* Accuracy and F1 at threshold 0.5.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, roc_auc_score, roc_curve


@dataclass(frozen=True)
class Metrics:
    """Metrics of scores ``p`` (probability of default) against labels ``y``."""

    auc: float
    ks: float
    accuracy: float
    f1: float
    brier: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def compute_metrics(labels: np.ndarray, scores: np.ndarray) -> Metrics:
    """Compute :class:`Metrics`; AUC and KS are NaN when only one class is present.

    ``scores`` of shape ``(n, K)`` (class probabilities of a text task with K > 2 labels) give
    :func:`compute_class_metrics` instead.
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(scores, dtype=np.float64)
    if p.ndim == 2:
        return compute_class_metrics(y, p)
    both = len(np.unique(y)) == 2
    if both:
        auc = float(roc_auc_score(y, p))
        fpr, tpr, _ = roc_curve(y, p)
        ks = float(np.max(tpr - fpr))
    else:
        auc = ks = math.nan
    predicted = (p >= 0.5).astype(np.int64)
    return Metrics(
        auc=auc,
        ks=ks,
        accuracy=float(accuracy_score(y, predicted)),
        f1=float(f1_score(y, predicted, zero_division=0)),
        brier=float(brier_score_loss(y, p)) if both else float(np.mean((p - y) ** 2)),
        n=len(y),
    )


def compute_class_metrics(labels: np.ndarray, probabilities: np.ndarray) -> Metrics:
    """Metrics of K-class probabilities ``P ∈ R^{n×K}`` (a text task), in the fields of :class:`Metrics`.

    * accuracy of ``argmax_k P_ik``; ``f1``: the *weighted* F1 (per-class F1 weighted by each class's
      support, as FinLoRA reports);
    * ``auc``: one-vs-rest AUC averaged over the classes (macro; NaN unless every class is present);
    * ``ks``: NaN (a two-class statistic);
    * ``brier``: the multi-class Brier score ``mean_i Σ_k (P_ik − 1[y_i = k])²`` (Brier, 1950).
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    k = p.shape[1]
    predicted = p.argmax(axis=1)
    onehot = np.eye(k)[y]
    all_present = len(np.unique(y)) == k
    auc = float(roc_auc_score(y, p / p.sum(axis=1, keepdims=True), multi_class="ovr")) if all_present else math.nan
    return Metrics(
        auc=auc,
        ks=math.nan,
        accuracy=float(accuracy_score(y, predicted)),
        f1=float(f1_score(y, predicted, average="weighted", zero_division=0)),
        brier=float(np.mean(np.sum((p - onehot) ** 2, axis=1))),
        n=len(y),
    )
