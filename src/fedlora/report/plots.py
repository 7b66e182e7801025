"""The report's figures (matplotlib, Agg backend); each function writes one PNG.

Axes are honest: quality by round is drawn on a fixed span (AUC from 0.5, or below when a value
is, to 1; accuracy from 0 to 1) with the chance line, so round-to-round noise does not look
like progress; ROC and reliability plots are square with their diagonal.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedlora.records import RunSummary
from fedlora.report.baselines import BaselineView
from fedlora.report.views import BinaryView, ClassView

__all__ = [
    "plot_alone_vs_consortium",
    "plot_confusion",
    "plot_distributions",
    "plot_epsilon",
    "plot_quality_by_round",
    "plot_reliability",
    "plot_roc",
]

DPI = 110
CLASS_COLOURS = ("#1f77b4", "#d62728")
"""No default (blue), default (red)."""


def _number(value: float | None) -> float:
    """``None`` as NaN (a gap in the plot), as matplotlib draws it."""
    return math.nan if value is None else float(value)


def _save(fig: Figure, path: Path) -> None:
    """Write the figure, legends placed outside the axes included."""
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _short(name: str, limit: int = 28) -> str:
    """A bank's name cut to ``limit`` characters for a legend or a tick (the tables carry it whole)."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _legend(ax: Axes, entries: int) -> None:
    """A legend below the axes when it would cover the lines (many entries), else inside."""
    if entries > 4:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    else:
        ax.legend(fontsize=8)


def _released(summary: RunSummary, key: str) -> tuple[list[int], list[float]] | None:
    """The DP-released ``key`` of each round's *previous* global adapter, at that adapter's round."""
    points = [
        (int(d["of_global_round"]), _number(d.get(key)))
        for d in (r.dp_evaluation or {} for r in summary.rounds)
        if d and key in d
    ]
    return ([x for x, _ in points], [y for _, y in points]) if points else None


def plot_quality_by_round(summary: RunSummary, path: Path, *, text_task: bool, baselines: BaselineView | None) -> None:
    """AUC (credit data) or accuracy and weighted F1 (text tasks) of each round's global adapter.

    Central values are the pooled test rows (simulation, inline run); DP values are the banks'
    noised releases about the *previous* global adapter, so they are drawn at that adapter's round.
    Pooled baselines (``--baselines``) are horizontal lines. The y axis spans 0.5–1 for AUC (lower only
    when a value is below 0.5) and 0–1 for accuracy.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    rounds = summary.rounds
    xs = [r.round for r in rounds]
    entries = 0
    values: list[float] = []
    if text_task:
        for key, label in (("accuracy", "accuracy"), ("f1", "weighted F1")):
            ys = [_number(r.metrics.get(key)) for r in rounds]
            ax.plot(xs, ys, marker="o", label=f"{label}, pooled test rows")
            values += ys
            entries += 1
        dp = _released(summary, "accuracy")
        if dp:
            ax.plot(*dp, marker="s", linestyle="--", label="accuracy DP-released by the banks (noisy)")
            entries += 1
        ax.set_ylabel("accuracy / weighted F1")
        low = 0.0
    else:
        central = [_number(r.auc) for r in rounds]
        if any(not math.isnan(v) for v in central):
            ax.plot(xs, central, marker="o", label="global adapter, pooled test rows")
            entries += 1
        dp = _released(summary, "auc")
        if dp:
            ax.plot(*dp, marker="s", linestyle="--", label="DP-released by the banks (noisy)")
            entries += 1
        values = central + (dp[1] if dp else [])
        ax.axhline(0.5, color="#999", linewidth=0.8)
        ax.plot([], [], color="#999", linewidth=0.8, label="chance (AUC 0.5)")
        entries += 1
        ax.set_ylabel("AUC")
        finite = [v for v in values if not math.isnan(v)]
        low = min(0.5, math.floor(min(finite, default=0.5) * 10) / 10)
    if baselines is not None:
        for i, (label, value) in enumerate(baselines.pooled.items()):
            if value is not None:
                ax.axhline(value, linestyle=(0, (1, 1 + i)), color=f"C{4 + i}", linewidth=1.4, label=label)
                entries += 1
                low = min(low, math.floor(value * 10) / 10)
    ax.set_ylim(low, 1.0)
    ax.set_xlabel("round (global adapter after it)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Test accuracy by round" if text_task else "Test AUC by round")
    ax.grid(alpha=0.3)
    _legend(ax, entries)
    _save(fig, path)


def plot_epsilon(summary: RunSummary, path: Path) -> None:
    """Each bank's run ε after each round, with its target as a dashed line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    banks = sorted({b for r in summary.rounds for b in r.epsilon})
    for bank in banks:
        xs = [r.round for r in summary.rounds if bank in r.epsilon]
        ys = [_number(r.epsilon[bank]) for r in summary.rounds if bank in r.epsilon]
        ax.plot(xs, ys, marker="o", label=_short(bank))
    for target in {info.get("target_epsilon") for info in summary.privacy.values()}:
        if target is not None and math.isfinite(target):
            ax.axhline(target, linestyle="--", linewidth=0.8, color="gray")
    ax.set_xlabel("round")
    ax.set_ylabel("ε spent this run (upper bound)")
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Privacy spent by round (dashed: target)")
    ax.grid(alpha=0.3)
    if banks:
        _legend(ax, len(banks))
    _save(fig, path)


def _square(ax: Axes) -> None:
    ax.plot([0, 1], [0, 1], color="#999", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)


def plot_roc(view: BinaryView, path: Path) -> None:
    """The ROC curve with its AUC; the diagonal is a random score."""
    fig, ax = plt.subplots(figsize=(4.4, 4.4))
    ax.plot(view.fpr, view.tpr, drawstyle="default", label=f"AUC {view.auc:.3f}")
    _square(ax)
    ax.set_xlabel("false-positive rate (good customers flagged)")
    ax.set_ylabel("true-positive rate (defaults caught)")
    ax.set_title("ROC" + (" (from DP histograms)" if view.noisy else ""))
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_reliability(view: BinaryView, path: Path) -> None:
    """Observed default rate against the mean predicted P(default) of groups of rows (diagonal: calibrated)."""
    fig, ax = plt.subplots(figsize=(4.4, 4.4))
    r = view.reliability
    ax.plot(r.predicted, r.observed, marker="o", label="groups of rows")
    _square(ax)
    ax.set_xlabel("mean predicted P(default)")
    ax.set_ylabel("observed default rate")
    ax.set_title("Calibration" + (" (from DP histograms)" if view.noisy else ""))
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def plot_distributions(view: BinaryView, path: Path, class_names: tuple[str, ...]) -> None:
    """The share of each class's rows per score bin.

    Pooled scores use bins of P(default); DP releases their public bins, equal in log-odds, drawn on
    a log-odds axis labelled in P(default) (bins of unequal width in P would distort the shares).
    """
    fig, ax = plt.subplots(figsize=(4.4, 4.4))
    edges = view.edges
    widths = [b - a for a, b in itertools.pairwise(edges)]
    for c, name in enumerate(class_names[:2]):
        ax.bar(edges[:-1], view.shares[c], width=widths, align="edge", alpha=0.5, color=CLASS_COLOURS[c], label=name)
    if view.logit_edges:
        ticks = [0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99]
        ax.set_xticks([math.log(p / (1 - p)) for p in ticks], [f"{p:g}" for p in ticks])
        ax.set_xlim(edges[0], edges[-1])
        ax.set_xlabel("predicted P(default), log-odds scale")
    else:
        ax.set_xlim(0, 1)
        ax.set_xlabel("predicted P(default)")
    ax.set_ylabel("share of the class's rows")
    ax.set_title("Scores by class" + (" (from DP histograms)" if view.noisy else ""))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_confusion(view: ClassView, path: Path) -> None:
    """The confusion matrix of a K-class task (rows: true class, columns: predicted class)."""
    k = len(view.class_names)
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * k, 1.4 + 0.9 * k))
    ax.imshow(view.matrix, cmap="Blues")
    peak = max((max(row) for row in view.matrix), default=0)
    for i, row in enumerate(view.matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
    ax.set_xticks(range(k), view.class_names, rotation=30, ha="right")
    ax.set_yticks(range(k), view.class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix (accuracy {view.accuracy:.3f})")
    _save(fig, path)


def plot_alone_vs_consortium(baselines: BaselineView, path: Path) -> None:
    """Each bank's test metric alone (its baselines) and with the consortium's model, as horizontal bars."""
    banks = list(baselines.per_bank)
    series = baselines.columns
    fig, ax = plt.subplots(figsize=(6.4, 1.8 + 0.2 * len(series) * len(banks)))
    height = 0.8 / len(series)
    for i, label in enumerate(series):
        values = [_number(baselines.per_bank[b][i]) for b in banks]
        ax.barh([j + i * height for j in range(len(banks))], values, height=height, label=label)
    middle = (len(series) - 1) * height / 2
    ax.set_yticks([j + middle for j in range(len(banks))], [_short(b) for b in banks])
    ax.invert_yaxis()
    if baselines.metric == "AUC":
        ax.axvline(0.5, color="#999", linewidth=0.8)
        ax.set_xlim(0.4, 1.0)
    else:
        ax.set_xlim(0.0, 1.0)
    ax.set_xlabel(f"{baselines.metric} on the bank's own test rows")
    ax.set_title("Each bank: alone vs consortium")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.5 / len(banks) - 0.1), ncol=2, frameon=False)
    _save(fig, path)
