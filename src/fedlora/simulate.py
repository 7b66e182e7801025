"""The local federation (``fedlora simulate``): every bank and the coordinator in one process.

The model is loaded once and reused by every bank and round (adapters are swapped, never
the model). Banks publish only their noised adapter to the store; the coordinator reads the
updates back from the store (sha256-verified), validates and averages them, and commits the
round with a manifest written last.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from fedlora.aggregation import select_banks
from fedlora.bank_round import run_bank_round
from fedlora.config import Config
from fedlora.errors import FederationError, FedLoRAError
from fedlora.federation import aggregate_round, initialize
from fedlora.finalize import finalize
from fedlora.records import BankOutcome, RoundRecord, RunSummary
from fedlora.report import latest_released_histograms, write_report
from fedlora.report.scores import pooled_test_scores
from fedlora.runtime import Runtime
from fedlora.store.adapters import load_adapter, put_json
from fedlora.store.base import Store
from fedlora.store.run import committed_rounds, open_run_store, stored_config
from fedlora.tracking import open_tracker

log = logging.getLogger(__name__)


class SimulationError(FedLoRAError, RuntimeError):
    """The federation could not complete (too few banks, nothing written half-way)."""


class ProgressSink(Protocol):
    """Receives progress events (the CLI draws them; tests may record them)."""

    def start(self, *, rounds: int, banks: list[str]) -> None:
        """The federation starts."""
        ...

    def bank_started(self, *, round_index: int, bank: str) -> None:
        """A bank starts its round."""
        ...

    def bank_finished(self, result: BankOutcome | None, *, round_index: int, bank: str, error: str | None) -> None:
        """A bank finished its round (result) or failed (error)."""
        ...

    def round_finished(self, record: RoundRecord) -> None:
        """A round was aggregated and committed."""
        ...


class SilentProgress:
    """Ignores progress events."""

    def start(self, *, rounds: int, banks: list[str]) -> None:
        return None

    def bank_started(self, *, round_index: int, bank: str) -> None:
        return None

    def bank_finished(self, result: BankOutcome | None, *, round_index: int, bank: str, error: str | None) -> None:
        return None

    def round_finished(self, record: RoundRecord) -> None:
        return None


def _run_name(config: Config) -> str:
    return config.output.run_name or datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


class Simulation:
    """One run of the local federation; :meth:`run` returns its :class:`~fedlora.records.RunSummary`."""

    def __init__(
        self,
        config: Config,
        *,
        progress: ProgressSink | None = None,
        resume: str | None = None,
        runtime: Runtime | None = None,
        baselines: bool = False,
    ) -> None:
        """Prepare a run.

        Args:
            config: the configuration (with ``resume``: only where the run lives; the run's
                own stored config decides what is computed).
            progress: receives progress events.
            resume: the name of an interrupted run to continue from its last committed round.
            runtime: a loaded model and data to reuse (benchmarks run many configs on one
                runtime); it must serve this config (same seed, data, model, LoRA, banks).
            baselines: also report what each bank gets alone on its own test rows (logistic
                regression, non-private and DP at the bank's ε) beside the consortium's model.

        """
        if runtime is not None and not runtime.serves(config):
            raise SimulationError("the given runtime was built for another seed, data, model, LoRA or bank set")
        self.config = config
        self.progress = progress or SilentProgress()
        self.resume = resume
        self.runtime = runtime
        self.baselines = baselines

    def run(self) -> RunSummary:
        """Run every remaining round; write adapters, ledgers, summary and report; return the summary."""
        started = time.perf_counter()
        run = self.resume or _run_name(self.config)
        store = open_run_store(self.config, run)
        config = self.config
        if self.resume is not None:
            if not store.exists("config.yaml"):
                raise SimulationError(f"no run {run!r} to resume at {store.uri('')}")
            config = stored_config(store, self.config)
        elif store.list(""):
            raise SimulationError(
                f"run {store.uri('')} already exists and is not empty; choose another output.run_name "
                f"or resume it with --resume {run}"
            )
        runtime = self.runtime or Runtime(config)
        try:
            initialize(config, run=run, runtime=runtime, resume=self.resume is not None)
        except FederationError as exc:
            raise SimulationError(str(exc)) from exc
        done = [r for r in committed_rounds(store) if r > 0]
        names = [b.name for b in config.federation.banks]
        self.progress.start(rounds=config.federation.rounds, banks=names)
        if done:
            log.info("resuming run %s after committed round %d", run, done[-1])
        try:
            for r in range(done[-1] + 1 if done else 1, config.federation.rounds + 1):
                outcomes = [self._bank(config, run, runtime, bank, r) for bank in select_banks(config, r)]
                try:
                    record = aggregate_round(config, run=run, round_index=r, outcomes=outcomes, runtime=runtime)
                except FederationError as exc:
                    raise SimulationError(str(exc)) from exc
                if record.stopped_early:
                    log.warning(record.stopped_early)
                    if r == 1:
                        raise SimulationError(record.stopped_early)
                    break
                self.progress.round_finished(record)
            summary = finalize(config, run=run, runtime=runtime, local_dir=Path(config.output.dir) / run)
        except BaseException:
            self._mark_failed(config, store, run, runtime)
            raise
        if self.baselines:
            summary = add_baselines(config, runtime, summary)
        if summary.report:  # the local copy gains the simulation's pooled view (the store's and MLflow's do not)
            _write_local_report(config, runtime, store, summary)
        summary = dataclasses.replace(
            summary, wall_seconds=time.perf_counter() - started, resumed_after_round=done[-1] if done else None
        )
        put_json(store, "summary.json", summary.to_json())
        local_dir = (Path(config.output.dir) / run).resolve()
        if store.local_path("summary.json") != local_dir / "summary.json":  # keep a local copy
            local = local_dir / "summary.json"
            local.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(summary.to_json(), indent=2, sort_keys=True, default=float) + "\n"
            local.write_text(text, encoding="utf-8")
        return summary

    def _bank(self, config: Config, run: str, runtime: Runtime, bank: str, r: int) -> BankOutcome:
        self.progress.bank_started(round_index=r, bank=bank)
        try:
            outcome = run_bank_round(config, run=run, bank=bank, round_index=r, runtime=runtime)
        except Exception as exc:  # one bank's failure must not end the round
            message = f"{type(exc).__name__}: {exc}"
            log.error("bank %s failed in round %d: %s", bank, r, message)
            self.progress.bank_finished(None, round_index=r, bank=bank, error=message)
            return BankOutcome.failed(bank, r, message)
        self.progress.bank_finished(outcome, round_index=r, bank=bank, error=None)
        return outcome

    @staticmethod
    def _mark_failed(config: Config, store: Store, run: str, runtime: Runtime) -> None:
        try:
            open_tracker(config, store, run=run, runtime=runtime).finish(status="FAILED")
        except Exception as exc:  # the original error matters more
            log.debug("could not mark the MLflow run failed: %s", exc)


def add_baselines(config: Config, runtime: Runtime, summary: RunSummary) -> RunSummary:
    """The summary with each bank's "alone" baselines (same splits, same ε), for the report."""
    from fedlora.baselines import bank_alone_baselines
    from fedlora.data.datasets import get_schema

    if runtime.text_task is not None:
        return dataclasses.replace(summary, baselines=_text_baselines(config, runtime, summary))
    with runtime.timer.phase("baselines"):
        banks = {b.name: runtime.bank_data(b.name) for b in config.federation.banks}
        epsilon = (
            {b.name: config.target_epsilon_for(b.name) for b in config.federation.banks}
            if config.privacy.enabled
            else None
        )
        schema = get_schema(config.data.dataset)
        per_bank, pooled = bank_alone_baselines(banks, schema, epsilon=epsilon, seed=config.seed)
    consortium = summary.final.per_bank_test
    baselines = {
        "pooled": pooled,
        "per_bank": {
            b.bank: {
                "alone_lr_auc": b.alone_lr_auc,
                "alone_dp_lr_auc": b.alone_dp_lr_auc,
                "epsilon": b.epsilon,
                "consortium_auc": consortium.get(b.bank, {}).get("auc"),
            }
            for b in per_bank
        },
    }
    return dataclasses.replace(summary, baselines=baselines)


def _write_local_report(config: Config, runtime: Runtime, store: Store, summary: RunSummary) -> None:
    """Redraw the local report with the final adapter's pooled test scores (ROC, calibration, scores by class).

    Only this process holds every bank's rows, so these views stay in the local run directory:
    finalize has already published the report without them to the store and MLflow.
    """
    final_round = summary.rounds[-1].round
    scores = pooled_test_scores(runtime, load_adapter(store, "final").tensors, adapter_round=final_round)
    released = latest_released_histograms(store, summary.rounds)
    write_report(summary, Path(summary.report or "report/index.html").parent, scores=scores, released=released)


def _text_baselines(config: Config, runtime: Runtime, summary: RunSummary) -> dict[str, Any]:
    """A text task's baselines (:mod:`fedlora.text_baselines`) on the run's splits, beside the consortium's accuracy."""
    from fedlora.model.lora import load_adapter_state
    from fedlora.text_baselines import TextBankSplits, prompt_features, text_baselines

    task = runtime.text_task
    assert task is not None
    with runtime.timer.phase("baselines"):
        load_adapter_state(runtime.model, runtime.initial_adapter)  # the base model: FFA-LoRA starts at B = 0
        banks: dict[str, TextBankSplits] = {}
        for spec in config.federation.banks:
            data, rows = runtime.bank_data(spec.name), runtime.bank(spec.name)
            features = {
                split: prompt_features(
                    runtime.model,
                    getattr(rows, split),
                    batch_size=config.training.eval_batch_size,
                    device=runtime.device,
                )
                for split in ("train", "test")
            }
            banks[spec.name] = TextBankSplits(
                train_texts=data.train.texts, test_texts=data.test.texts, train=features["train"], test=features["test"]
            )
        epsilon = (
            {b.name: config.target_epsilon_for(b.name) for b in config.federation.banks}
            if config.privacy.enabled
            else None
        )
        baselines = text_baselines(banks, classes=len(task.labels), epsilon=epsilon, seed=config.seed)
    consortium = summary.final.per_bank_test
    for bank, alone in baselines["per_bank"].items():
        metrics = consortium.get(bank, {})
        alone["consortium"] = {"accuracy": metrics.get("accuracy"), "weighted_f1": metrics.get("f1")}
    final = summary.final.metrics
    baselines["pooled"]["consortium"] = {"accuracy": final.get("accuracy"), "weighted_f1": final.get("f1")}
    return baselines


def simulate(
    config: Config,
    *,
    progress: ProgressSink | None = None,
    resume: str | None = None,
    runtime: Runtime | None = None,
    baselines: bool = False,
) -> RunSummary:
    """Run (or, with ``resume``, continue) the local federation described by ``config``; return its summary."""
    return Simulation(config, progress=progress, resume=resume, runtime=runtime, baselines=baselines).run()
