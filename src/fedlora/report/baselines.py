"""The "alone vs consortium" baselines of ``fedlora simulate --baselines``, in one shape for the plots and tables.

Credit data stores flat AUCs (``per_bank[bank]["alone_lr_auc"]`` …, ``pooled[name]``); text tasks
store accuracy and weighted F1 per baseline (``per_bank[bank][name]["accuracy"]``,
``per_bank[bank]["consortium"]``, ``pooled[name]``). :func:`baseline_view` reads either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["BASELINE_LABELS", "BaselineView", "baseline_view"]

BASELINE_LABELS = {
    "lr_pooled_nonprivate": "LR on all banks' rows pooled, non-private (no consortium can do this)",
    "dp_lr_averaged": "DP-LR, the banks' models averaged",
    "zero_shot": "zero-shot base model",
    "head_only": "linear head on the frozen model",
    "tfidf_lr": "TF-IDF + LR",
    "dp_head_only": "DP linear head at the bank's ε",
    "dp_head_only_averaged": "DP linear heads, averaged",
}
"""Names of the baselines for people."""

_CREDIT_COLUMNS = [("alone: LR", "alone_lr_auc"), ("alone: DP-LR at its ε", "alone_dp_lr_auc")]


@dataclass(frozen=True)
class BaselineView:
    """Baselines as rows of numbers of one metric.

    Attributes:
        metric: ``AUC`` (credit data) or ``accuracy`` (text tasks).
        columns: Per-bank column names; the last is the consortium's model.
        per_bank: Each bank's values, in ``columns`` order (None: not computed).
        epsilon: The ε each bank's DP baseline ran at (None: no DP baseline).
        pooled: Baselines on every bank's test rows pooled, by name for people (no consortium entry).

    """

    metric: str
    columns: list[str]
    per_bank: dict[str, list[float | None]]
    epsilon: dict[str, float | None]
    pooled: dict[str, float | None]


def _metric(value: Any) -> float | None:
    if isinstance(value, dict):
        value = value.get("accuracy")
    return None if value is None else float(value)


def baseline_view(baselines: dict[str, Any]) -> BaselineView:
    """The baselines of either shape as a :class:`BaselineView`."""
    per_bank: dict[str, dict[str, Any]] = baselines.get("per_bank") or {}
    pooled_raw: dict[str, Any] = baselines.get("pooled") or {}
    text = any(isinstance(v, dict) for row in per_bank.values() for v in row.values())
    if not text:
        return BaselineView(
            metric="AUC",
            columns=[c for c, _ in _CREDIT_COLUMNS] + ["consortium (FedLoRA)"],
            per_bank={
                b: [_metric(row.get(k)) for _, k in _CREDIT_COLUMNS] + [_metric(row.get("consortium_auc"))]
                for b, row in per_bank.items()
            },
            epsilon={b: row.get("epsilon") for b, row in per_bank.items()},
            pooled={BASELINE_LABELS.get(k, k): _metric(v) for k, v in pooled_raw.items()},
        )
    names: list[str] = []
    for row in per_bank.values():
        names += [k for k, v in row.items() if isinstance(v, dict) and k != "consortium" and k not in names]
    return BaselineView(
        metric="accuracy",
        columns=[f"alone: {BASELINE_LABELS.get(n, n)}" for n in names] + ["consortium (FedLoRA)"],
        per_bank={
            b: [_metric(row.get(n)) for n in names] + [_metric(row.get("consortium"))] for b, row in per_bank.items()
        },
        epsilon={b: row.get("epsilon") for b, row in per_bank.items()},
        pooled={BASELINE_LABELS.get(k, k): _metric(v) for k, v in pooled_raw.items() if k != "consortium"},
    )
