"""Credit-risk metrics: AUC, KS, accuracy, F1 and Brier score.

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
    """Compute :class:`Metrics`; AUC and KS are NaN when only one class is present."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(scores, dtype=np.float64)
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
