"""What each Kubeflow component does: one call into :mod:`fedlora.federation`, plus the KFP outputs.

Every component body is a single call of one function here. The functions take the KFP
output artifacts as small protocols (``log_metric``, ``log_roc_curve``, a ``path`` to write
Markdown to), so they run and are tested without a KFP executor. The Markdown they write is
built in :mod:`fedlora.pipeline.cards`; where a bank's round runs, in
:mod:`fedlora.pipeline.bank_dispatch`.

Data between tasks: the resolved config (YAML text) and the run name travel as string
parameters; the banks' outcomes travel through the run's store (a bank's Job in another
namespace writes ``outcome.json`` there). A bank whose task, Job or store write failed has
no outcome, and the aggregation counts it as a failed bank; the minimum-banks rule decides
whether the round goes on.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Protocol

from fedlora.aggregation import select_banks
from fedlora.bank_round import read_bank_outcome
from fedlora.config import Config, ConfigError, config_to_yaml, load_config_text
from fedlora.federation import aggregate_round, initialize
from fedlora.finalize import finalize
from fedlora.pipeline.bank_dispatch import dispatch_bank_round
from fedlora.pipeline.cards import bank_card, final_card, finite, location_warnings, plan_card, round_card, rounds_card
from fedlora.pipeline.parameters import resolve_config, to_overrides
from fedlora.pipeline.run_names import run_name_from_job
from fedlora.records import BankOutcome, RoundRecord, round_metrics

__all__ = [
    "aggregate_step",
    "federate_step",
    "finalize_step",
    "initialize_step",
    "round_step",
    "train_bank_step",
]

log = logging.getLogger(__name__)


class MetricsOutput(Protocol):
    """A KFP ``Output[Metrics]``."""

    def log_metric(self, metric: str, value: float) -> None: ...


class RocOutput(Protocol):
    """A KFP ``Output[ClassificationMetrics]``."""

    def log_roc_curve(self, fpr: list[float], tpr: list[float], threshold: list[float]) -> None: ...


class FileOutput(Protocol):
    """A KFP output artifact written as a file (``Output[Markdown]``)."""

    @property
    def path(self) -> str: ...


def _setup_logging() -> None:
    """Send fedlora's INFO logs to the task log (KFP shows the container's stdout/stderr)."""
    logger = logging.getLogger("fedlora")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _log_metrics(output: MetricsOutput, metrics: dict[str, Any]) -> None:
    """Log the finite numbers only (KFP stores metrics as JSON, which has no NaN/Infinity)."""
    for name, value in metrics.items():
        number = finite(value)
        if number is not None:
            output.log_metric(name, number)


def _write(output: FileOutput, text: str) -> None:
    with open(output.path, "w", encoding="utf-8") as handle:
        handle.write(text)


# --- the steps ---------------------------------------------------------------------------


def initialize_step(
    *, base_config: str, parameters: dict[str, Any], kfp_run_name: str, plan: FileOutput
) -> tuple[str, str]:
    """Resolve the config, write the run's config, round-0 adapter and privacy plans.

    The run is named ``output.run_name`` when given, else after the KFP run
    (:func:`~fedlora.pipeline.run_names.run_name_from_job`: made a valid name; an unresolved
    ``{{$.pipeline_job_name}}`` placeholder is refused before anything is written). Idempotent (a
    retried task resumes the same run; a different config for an existing run is refused).

    Args:
        base_config: The config YAML compiled into the pipeline.
        parameters: Pipeline parameter values by parameter name (``privacy_target_epsilon``);
            ``None`` keeps the compiled-in value.
        kfp_run_name: The KFP run's name, the run's name unless ``output.run_name`` is set.
        plan: Where the Markdown privacy plan goes.

    Returns:
        ``(config YAML, run name)`` for the downstream tasks.
    """
    _setup_logging()
    config = resolve_config(base_config, to_overrides(parameters))
    impossible = location_warnings(config)
    if impossible and os.environ.get("KUBERNETES_SERVICE_HOST"):  # a pod: these settings cannot work here
        raise ConfigError("this run cannot work on a cluster (nothing was written):\n  - " + "\n  - ".join(impossible))
    run = config.output.run_name or run_name_from_job(kfp_run_name)  # refuses an unresolved placeholder
    config = config.model_copy(update={"output": config.output.model_copy(update={"run_name": run})})
    info = initialize(config, run=run, resume=True)
    for warning in location_warnings(config):
        log.warning("%s", warning)
    _write(plan, plan_card(config, info))
    return config_to_yaml(config), run


def train_bank_step(
    *,
    config_yaml: str,
    run: str,
    bank: str,
    round_index: int,
    metrics: MetricsOutput,
    summary: FileOutput,
) -> str:
    """Train one bank for one round, inline or by the bank's own agent (``kubeflow.mode``).

    A bank's failure does not fail the task: it is reported (status ``failed`` in the
    Markdown summary and ``failed=1`` in the metrics) and the aggregation applies the
    minimum-banks rule.

    Returns:
        The bank's outcome as JSON.
    """
    _setup_logging()
    config = load_config_text(config_yaml, source="pipeline config")
    outcome = dispatch_bank_round(config, run=run, bank=bank, round_index=round_index)
    _log_metrics(
        metrics,
        {
            "ok": float(outcome.status == "ok"),
            "failed": float(outcome.status == "failed"),
            "refused": float(outcome.status == "refused"),
            "epsilon": outcome.epsilon,
            "num_examples": outcome.num_examples,
            "steps": outcome.steps,
        },
    )
    _write(summary, bank_card(outcome))
    return json.dumps(outcome.to_json(), sort_keys=True)


def _round_outcomes(config: Config, *, run: str, round_index: int) -> list[BankOutcome]:
    """Each bank's outcome from the store; a selected bank that published none counts as failed."""
    selected = set(select_banks(config, round_index))
    outcomes = []
    for spec in config.federation.banks:
        if spec.name not in selected:
            outcomes.append(BankOutcome(bank=spec.name, round=round_index, status="not_selected"))
            continue
        try:
            outcomes.append(read_bank_outcome(config, run=run, bank=spec.name, round_index=round_index))
        except Exception as exc:  # no outcome.json: the bank's task or Job failed (its summary says why)
            log.warning("bank %s published no outcome for round %d: %s", spec.name, round_index, exc)
            outcomes.append(
                BankOutcome.failed(spec.name, round_index, "published no update (its train task's summary says why)")
            )
    return outcomes


def aggregate_step(
    *,
    config_yaml: str,
    run: str,
    round_index: int,
    metrics: MetricsOutput,
    roc: RocOutput,
    summary: FileOutput,
) -> str:
    """Average the round's updates, evaluate, commit the round; log metrics, ROC and a summary.

    Raises:
        FederationError: fewer than ``federation.min_banks`` valid updates (the run stops).

    Returns:
        The round record as JSON (without the ROC points).
    """
    _setup_logging()
    config = load_config_text(config_yaml, source="pipeline config")
    outcomes = _round_outcomes(config, run=run, round_index=round_index)
    record = aggregate_round(config, run=run, round_index=round_index, outcomes=outcomes)
    _log_metrics(metrics, round_metrics(record))
    _log_roc(roc, record)
    _write(summary, round_card(record))
    return _record_json(record)


def _log_roc(roc: RocOutput, record: RoundRecord) -> None:
    curve = record.roc or {}
    if curve.get("fpr"):
        roc.log_roc_curve(list(curve["fpr"]), list(curve["tpr"]), list(curve["thresholds"]))


def _record_json(record: RoundRecord | None) -> str:
    """The round record as the step's JSON output, without the ROC points (``{}`` for no round)."""
    data = record.to_json() if record is not None else {}
    return json.dumps({k: v for k, v in data.items() if k != "roc"}, sort_keys=True, default=str)


def round_step(
    *,
    config_yaml: str,
    run: str,
    round_index: int,
    last_round: int = 0,
    metrics: MetricsOutput,
    roc: RocOutput,
    summary: FileOutput,
) -> str:
    """Rounds ``round_index``..``last_round`` (0: one round), each the banks' training then the aggregation.

    The unrolled graph's ``round-N`` task (:func:`fedlora.pipeline.coordinator.run_rounds`): it has a
    single upstream (the task before), so it relies on no trigger policy; a bank that fails is a failed
    outcome of the round, not a failed task. One round: its metrics, ROC and card. Several: also
    ``rNNN_test_auc``, ``rNNN_train_loss``, ``rNNN_banks_accepted``, ``rNNN_banks_failed`` per round and
    a line per round in the card (rewritten after each round), with the last round's full metrics.

    Raises:
        FederationError: fewer than ``federation.min_banks`` valid updates (the run stops).

    Returns:
        The last round's record as JSON (without the ROC points; ``{}`` when no round ran).
    """
    from fedlora.pipeline.coordinator import run_rounds

    _setup_logging()
    config = load_config_text(config_yaml, source="pipeline config")
    last = max(round_index, last_round)
    seen: list[RoundRecord] = []

    def on_round(record: RoundRecord) -> None:
        seen.append(record)
        if last > round_index:
            _write(summary, rounds_card(seen))

    records = run_rounds(config, run=run, first=round_index, last=last, on_round=on_round)
    return _report_rounds(records, metrics=metrics, roc=roc, summary=summary, per_round=last > round_index)


def _report_rounds(
    records: list[RoundRecord], *, metrics: MetricsOutput, roc: RocOutput, summary: FileOutput, per_round: bool
) -> str:
    """The KFP outputs of a task that ran ``records``: metrics (per round when ``per_round``), ROC, card."""
    if per_round:
        for record in records:
            values = round_metrics(record)
            prefix = f"r{record.round:03d}_"
            keep = ("test_auc", "train_loss", "banks_accepted", "banks_failed")
            _log_metrics(metrics, {prefix + k: values[k] for k in keep if k in values})
    last = records[-1] if records else None
    if last is not None:
        _log_metrics(metrics, round_metrics(last))
        _log_roc(roc, last)
    _write(summary, rounds_card(records) if per_round or last is None else round_card(last))
    return _record_json(last)


def federate_step(*, config_yaml: str, run: str, metrics: MetricsOutput, roc: RocOutput, summary: FileOutput) -> str:
    """Every remaining round in this one task (:func:`fedlora.pipeline.coordinator.run_rounds`).

    Per round: the round's MLflow metrics (step = round, as in the unrolled graph), a line of the
    Markdown table (rewritten after each round) and KFP metrics ``rNNN_test_auc``, ``rNNN_train_loss``,
    ``rNNN_banks_accepted``, ``rNNN_banks_failed``; the last round's full metrics and ROC curve.

    Raises:
        FederationError: a round had fewer than ``federation.min_banks`` valid updates (the run stops).

    Returns:
        The last round's record as JSON (without the ROC points).
    """
    from fedlora.pipeline.coordinator import run_rounds

    _setup_logging()
    config = load_config_text(config_yaml, source="pipeline config")
    seen: list[RoundRecord] = []

    def on_round(record: RoundRecord) -> None:
        seen.append(record)
        _write(summary, rounds_card(seen))

    records = run_rounds(config, run=run, on_round=on_round)
    return _report_rounds(records, metrics=metrics, roc=roc, summary=summary, per_round=True)


def finalize_step(*, config_yaml: str, run: str, metrics: MetricsOutput, summary: FileOutput) -> str:
    """Write the final adapter, the summary and the report; register the adapter in MLflow.

    Returns:
        The URI of the final adapter.
    """
    _setup_logging()
    config = load_config_text(config_yaml, source="pipeline config")
    result = finalize(config, run=run)
    final = result.final
    values: dict[str, Any] = {f"test_{k}": v for k, v in (final.metrics or {}).items() if k != "n"}
    values |= {f"epsilon_{bank}": eps for bank, eps in (final.epsilon or {}).items()}
    values["rounds"] = len(result.rounds)
    _log_metrics(metrics, values)
    _write(summary, final_card(run, result))
    return str(final.adapter)
