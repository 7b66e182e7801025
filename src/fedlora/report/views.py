"""What the report shows about the final model, computed from what its reader may see (no plotting here).

Two sources, never mixed:

* :class:`PooledScores`: every test row's score, held only by ``fedlora simulate`` (one process
  plays every bank). The report labels the views drawn from them as the simulation's pooled view.
* The banks' DP releases: per-label score histograms on public logit bins
  (:mod:`fedlora.privacy.dp_evaluation`), noised and charged by each bank. The coordinator of a
  real consortium sees only these; everything derived from their sum is post-processing.

Both give a :class:`BinaryView` (ROC, reliability, score distribution by class) for credit
data; K-class text tasks get a :class:`ClassView` (confusion matrix) from pooled scores only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from fedlora.privacy.dp_evaluation import LOGIT_EDGES, ScoreHistograms, pooled_metrics

__all__ = [
    "CREDIT_CLASSES",
    "BinaryView",
    "ClassView",
    "PooledScores",
    "Reliability",
    "binary_view_from_histograms",
    "binary_view_from_scores",
    "class_view_from_counts",
    "class_view_from_scores",
]

CREDIT_CLASSES = ("no default", "default")
"""Class names of the credit datasets (label 1 = default)."""

SCORE_BINS = np.linspace(0.0, 1.0, 21)
"""Bins of P(default) for the score distributions drawn from pooled scores (width 0.05)."""

RELIABILITY_MIN_ROWS = 30.0
"""Adjacent bins are merged until each reliability point stands on at least this many (noisy) rows."""

RELIABILITY_SIGNAL_TO_NOISE = 5.0
"""…and until its noisy row count is this many times the standard deviation of the noise on it."""


@dataclass(frozen=True)
class PooledScores:
    """Every bank's test rows scored by the final adapter, pooled (only a simulation holds these).

    Attributes:
        labels: Class ids, shape ``(n,)``.
        scores: P(class 1) of shape ``(n,)`` for two classes, class probabilities ``(n, K)`` otherwise.
        class_names: The classes' names in id order (``("no default", "default")`` for credit data).
        adapter_round: The round whose global adapter was scored (the final adapter's round).

    """

    labels: np.ndarray
    scores: np.ndarray
    class_names: tuple[str, ...]
    adapter_round: int

    @property
    def binary(self) -> bool:
        return self.scores.ndim == 1


@dataclass(frozen=True)
class Reliability:
    """A reliability (calibration) curve: mean predicted P(default) against the observed default rate.

    Attributes:
        predicted: Mean predicted probability of each group of rows.
        observed: Share of defaults among the group's rows.
        rows: The group's (noisy, for DP releases) row count.

    """

    predicted: list[float]
    observed: list[float]
    rows: list[float]


@dataclass(frozen=True)
class BinaryView:
    """The final model as a two-class scorer: ROC, reliability and the score distribution of each class.

    Attributes:
        source: Who could compute this and from what (shown under the plots).
        adapter_round: The round whose global adapter these describe.
        auc: Area under ``(fpr, tpr)``.
        fpr: False-positive rates of the ROC curve, from (0, 0) to (1, 1).
        tpr: True-positive rates of the ROC curve.
        reliability: The calibration curve.
        edges: Bin edges of the distributions: P(default), or log-odds when ``logit_edges``.
        shares: ``shares[c][b]``: share of class ``c``'s rows with a score in bin ``b`` (each row sums to 1).
        rows: Rows of each class (noisy for DP releases).
        noisy: Whether this view is post-processing of noised DP releases.
        logit_edges: Whether ``edges`` are log-odds (the public bins of the DP releases, equal in log-odds).

    """

    source: str
    adapter_round: int
    auc: float
    fpr: list[float]
    tpr: list[float]
    reliability: Reliability
    edges: list[float]
    shares: list[list[float]]
    rows: list[float]
    noisy: bool
    logit_edges: bool = False


@dataclass(frozen=True)
class ClassView:
    """The final model of a K-class text task: its confusion matrix on the pooled test rows.

    Attributes:
        source: Who could compute this and from what.
        adapter_round: The round whose global adapter this describes.
        class_names: Class names in id order.
        matrix: ``matrix[i][j]``: test rows of true class ``i`` predicted as class ``j`` (argmax;
            noisy and rounded for DP releases).
        accuracy: Share of the rows on the diagonal.

    """

    source: str
    adapter_round: int
    class_names: tuple[str, ...]
    matrix: list[list[int]]
    accuracy: float


def _shares(counts: np.ndarray) -> tuple[list[list[float]], list[float]]:
    totals = counts.sum(axis=1)
    shares = [
        (row / total).tolist() if total > 0 else [0.0] * len(row) for row, total in zip(counts, totals, strict=True)
    ]
    return shares, totals.tolist()


def _merged_reliability(predicted: np.ndarray, good: np.ndarray, bad: np.ndarray, *, noise_std: float) -> Reliability:
    """Group adjacent bins into reliability points that stand on enough rows to be read.

    A group closes when its (noisy) row count reaches :data:`RELIABILITY_MIN_ROWS` and
    :data:`RELIABILITY_SIGNAL_TO_NOISE` times the noise on it (``noise_std`` per count, two counts
    per bin: ``noise_std·√(2·bins)``). ``predicted`` is each bin's representative probability; a
    group's is the row-weighted mean.
    """
    out = Reliability([], [], [])
    weight = mass = defaults = 0.0
    bins = 0
    for p, g, b in zip(predicted, good, bad, strict=True):
        weight += p * (g + b)
        mass += g + b
        defaults += b
        bins += 1
        needed = max(RELIABILITY_MIN_ROWS, RELIABILITY_SIGNAL_TO_NOISE * noise_std * math.sqrt(2 * bins))
        if mass >= needed:
            out.predicted.append(weight / mass)
            out.observed.append(defaults / mass)
            out.rows.append(mass)
            weight = mass = defaults = 0.0
            bins = 0
    if mass > 0 and out.rows:  # a small remainder joins the last group
        last = out.rows[-1]
        total = last + mass
        out.predicted[-1] = (out.predicted[-1] * last + weight) / total
        out.observed[-1] = (out.observed[-1] * last + defaults) / total
        out.rows[-1] = total
    elif mass > 0:
        out.predicted.append(weight / mass)
        out.observed.append(defaults / mass)
        out.rows.append(mass)
    return out


def binary_view_from_scores(scores: PooledScores, *, source: str) -> BinaryView:
    """ROC, reliability (equal-count groups of about 10 % of the rows) and distributions from every row's score.

    Raises:
        ValueError: the scores are K-class probabilities, or one class is absent.

    """
    y = np.asarray(scores.labels, dtype=np.int64)
    p = np.asarray(scores.scores, dtype=np.float64)
    if p.ndim != 1 or len(np.unique(y)) != 2:
        raise ValueError("a two-class view needs P(default) scores and rows of both classes")
    fpr, tpr, _ = roc_curve(y, p)
    order = np.argsort(p, kind="stable")
    groups = np.array_split(order, min(10, len(p)))
    reliability = Reliability(
        predicted=[float(p[g].mean()) for g in groups if len(g)],
        observed=[float(y[g].mean()) for g in groups if len(g)],
        rows=[float(len(g)) for g in groups if len(g)],
    )
    counts = np.stack([np.histogram(p[y == c], bins=SCORE_BINS)[0] for c in (0, 1)]).astype(np.float64)
    shares, rows = _shares(counts)
    return BinaryView(
        source=source,
        adapter_round=scores.adapter_round,
        auc=float(roc_auc_score(y, p)),
        fpr=fpr.tolist(),
        tpr=tpr.tolist(),
        reliability=reliability,
        edges=SCORE_BINS.tolist(),
        shares=shares,
        rows=rows,
        noisy=False,
    )


def binary_view_from_histograms(
    counts: np.ndarray, *, noise_std: float, adapter_round: int, source: str
) -> BinaryView | None:
    """The same views read off summed noised histograms (post-processing of DP releases; no new release).

    Negative noisy counts are clipped to zero. The ROC has one point per public bin edge; a
    reliability point's predicted probability is the row-weighted mean of its bins' centre
    probabilities (the exact scores inside a bin stay in the banks), and its group of bins is
    wide enough for ``noise_std`` (the noise's standard deviation per summed count). The
    distributions keep the public bins, equal in log-odds. Returns None when a class's noisy
    total is not positive.
    """
    total = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)
    if total.shape != (2, len(LOGIT_EDGES) - 1) or total[0].sum() <= 0 or total[1].sum() <= 0:
        return None
    pooled = pooled_metrics([ScoreHistograms(total)])
    centres = 1.0 / (1.0 + np.exp(-(LOGIT_EDGES[:-1] + LOGIT_EDGES[1:]) / 2))
    shares, rows = _shares(total)
    return BinaryView(
        source=source,
        adapter_round=adapter_round,
        auc=pooled.auc,
        fpr=pooled.roc["fpr"],
        tpr=pooled.roc["tpr"],
        reliability=_merged_reliability(centres, total[0], total[1], noise_std=noise_std),
        edges=LOGIT_EDGES.tolist(),
        shares=shares,
        rows=rows,
        noisy=True,
        logit_edges=True,
    )


def class_view_from_scores(scores: PooledScores, *, source: str) -> ClassView:
    """The confusion matrix of ``argmax`` predictions against the true classes."""
    y = np.asarray(scores.labels, dtype=np.int64)
    p = np.asarray(scores.scores, dtype=np.float64)
    k = p.shape[1] if p.ndim == 2 else 2
    predicted = p.argmax(axis=1) if p.ndim == 2 else (p >= 0.5).astype(np.int64)
    matrix = confusion_matrix(y, predicted, labels=list(range(k)))
    return ClassView(
        source=source,
        adapter_round=scores.adapter_round,
        class_names=scores.class_names,
        matrix=matrix.tolist(),
        accuracy=float(np.trace(matrix) / max(1, matrix.sum())),
    )


def class_view_from_counts(
    counts: np.ndarray, *, class_names: tuple[str, ...], adapter_round: int, source: str
) -> ClassView | None:
    """The confusion matrix of summed noised ``K × K`` releases (clipped at 0, rounded); None if empty or misshapen."""
    total = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)
    k = len(class_names)
    if total.shape != (k, k) or total.sum() <= 0:
        return None
    return ClassView(
        source=source,
        adapter_round=adapter_round,
        class_names=class_names,
        matrix=np.rint(total).astype(int).tolist(),
        accuracy=float(np.trace(total) / total.sum()),
    )
