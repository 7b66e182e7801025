"""The records the steps hand each other and store: a bank's outcome, a committed round, the run's summary.

All are JSON-able dataclasses (``to_json`` / ``from_json``): a :class:`BankOutcome` travels
between pipeline tasks and is stored as ``updates/NNNN/<bank>/outcome.json``; a
:class:`RoundRecord` is a round's ``rounds/NNNN/MANIFEST.json``; a :class:`RunSummary` is the
run's ``summary.json``. ``from_json`` accepts documents written by older versions (missing
fields take their defaults).

ε of a bank that trains without differential privacy (``privacy.enabled: false``) is
:data:`NOT_PRIVATE` (``None``, shown as ∞ by :func:`format_epsilon`); ``0.0`` means a private
bank that has spent nothing yet.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

__all__ = [
    "NOT_PRIVATE",
    "BankOutcome",
    "BankStatus",
    "FinalAdapter",
    "RoundRecord",
    "RunSummary",
    "format_epsilon",
    "round_metrics",
]

BankStatus = Literal["ok", "budget_exhausted", "not_selected", "refused", "failed"]
"""What became of a bank in a round: trained, out of budget, not sampled, refused by its policy, failed."""

NOT_PRIVATE: None = None
"""The ε of a bank that trained without differential privacy (a simulation baseline)."""

_R = TypeVar("_R")


def _from_json(cls: type[_R], data: dict[str, Any]) -> _R:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def format_epsilon(epsilon: float | None, digits: int = 3) -> str:
    """ε for people: ``∞ (not private)`` for :data:`NOT_PRIVATE`, else the number."""
    return "∞ (not private)" if epsilon is NOT_PRIVATE else f"{epsilon:.{digits}f}"


@dataclass(frozen=True)
class BankOutcome:
    """What a bank published for a round (JSON-able: it travels between pipeline tasks).

    Everything here has left the bank, so it holds only DP releases and public values: the
    declared (rounded) example count, the run's ε from the bank's ledger, and, when the bank's
    policy releases metrics, its noised score histograms. Exact metrics, losses and counts
    stay in the bank's own ledger store.
    """

    bank: str
    round: int
    status: BankStatus
    num_examples: int = 0
    epsilon: float | None = None
    delta: float | None = None
    steps: int = 0
    evaluation: dict[str, Any] | None = None
    update_uri: str | None = None
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BankOutcome:
        return _from_json(cls, data)

    @classmethod
    def failed(cls, bank: str, round_index: int, message: str) -> BankOutcome:
        return cls(bank=bank, round=round_index, status="failed", message=message)


@dataclass(frozen=True)
class RoundRecord:
    """A committed round (``rounds/NNNN/MANIFEST.json``): who was averaged, ε so far, the evaluation.

    ``epsilon`` holds every bank's run ε after the round (:data:`NOT_PRIVATE` for a non-private
    bank). ``auc``/``ks``/``metrics``/``per_bank_test``/``roc`` are the central evaluation of
    the new global adapter, present only where one process holds every bank's test rows
    (simulation, inline run); ``dp_evaluation`` pools the banks' noised histograms of the
    *previous* global adapter. Training losses stay in the banks (``loss`` is ``None``).
    """

    round: int
    epsilon: dict[str, float | None] = field(default_factory=dict)
    banks: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    budget_exhausted: list[str] = field(default_factory=list)
    steps: dict[str, int] = field(default_factory=dict)
    stopped_early: str | None = None
    dp_evaluation: dict[str, Any] | None = None
    evaluation: str = "none at the coordinator (see dp_evaluation)"
    auc: float | None = None
    ks: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    per_bank_test: dict[str, dict[str, Any]] = field(default_factory=dict)
    roc: dict[str, list[float]] | None = None
    loss: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundRecord:
        return _from_json(cls, data)


@dataclass(frozen=True)
class FinalAdapter:
    """The run's final adapter and its last round's central evaluation (``summary.json``'s ``final``)."""

    auc: float | None
    metrics: dict[str, Any]
    per_bank_test: dict[str, dict[str, Any]]
    epsilon: dict[str, float | None]
    adapter: str
    peft_adapter: str
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FinalAdapter:
        return _from_json(cls, data)


@dataclass(frozen=True)
class RunSummary:
    """A finished run (``summary.json``): what was trained, the final adapter, every round, each bank's ε.

    ``privacy`` holds each bank's published plan and spent ε (from its own report), ``rounds``
    the committed rounds (only those before an early stop, when one stopped early).
    ``report``, ``registered_model`` and ``baselines`` are left out of the JSON when absent;
    ``wall_seconds`` and ``resumed_after_round`` are written by ``fedlora simulate`` only
    (both or neither: ``resumed_after_round`` is ``null`` for a run that was not resumed).
    """

    run: str
    run_dir: str
    store_uri: str
    model: str
    dataset: str
    aggregation: str
    privacy_mode: str
    trainable_parameters: int
    final: FinalAdapter
    rounds: list[RoundRecord]
    privacy: dict[str, dict[str, Any]] = field(default_factory=dict)
    stopped_early: str | None = None
    report: str | None = None
    registered_model: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, Any] | None = None
    wall_seconds: float | None = None
    resumed_after_round: int | None = None

    _OMITTED_WHEN_NONE = ("report", "registered_model", "baselines")

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["final"] = self.final.to_json()
        data["rounds"] = [r.to_json() for r in self.rounds]
        for key in self._OMITTED_WHEN_NONE:
            if data[key] is None:
                del data[key]
        if self.wall_seconds is None:  # not a simulation: neither of its two keys
            del data["wall_seconds"], data["resumed_after_round"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSummary:
        data = {**data, "final": FinalAdapter.from_json(data["final"])}
        data["rounds"] = [RoundRecord.from_json(r) for r in data["rounds"]]
        return _from_json(cls, data)


def round_metrics(record: RoundRecord) -> dict[str, float]:
    """The numbers of a round record that MLflow and the KFP UI plot."""
    metrics = {f"test_{k}": v for k, v in record.metrics.items() if k != "n"}
    if record.loss is not None:
        metrics["train_loss"] = record.loss
    for bank, eps in record.epsilon.items():
        if eps is not None:
            metrics[f"epsilon_{bank}"] = eps
    for bank, m in record.per_bank_test.items():
        metrics[f"test_auc_{bank}"] = m["auc"]
    dp_eval = record.dp_evaluation or {}
    for key in ("auc", "ks", "brier", "accuracy", "f1"):  # accuracy and weighted f1: a text task's confusion release
        value = dp_eval.get(key)
        if value is not None and math.isfinite(value):
            metrics[f"dp_{key}_of_previous_global"] = value
    metrics["banks_accepted"] = float(len(record.banks))
    metrics["banks_failed"] = float(len(record.failed) + len(record.rejected))
    return metrics
