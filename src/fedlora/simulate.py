"""The local federation (``fedlora simulate``): every bank and the coordinator in one process.

The model is loaded once and reused by every bank and round (adapters are swapped, never
the model). Banks publish only their noised adapter to the store; the coordinator reads the
updates back from the store (sha256-verified), validates and averages them, and commits the
round with a manifest written last.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fedlora.client import BankState, ClientResult, run_client_round
from fedlora.config import Config, config_to_yaml
from fedlora.data.banks import BankData, build_bank_data
from fedlora.evaluation import Metrics, compute_metrics
from fedlora.model.encoding import EncodedSet, encode
from fedlora.model.loading import load_base_model
from fedlora.model.lora import AdapterState, adapter_state, attach_lora, load_adapter_state, trainable_names
from fedlora.privacy.accounting import PrivacyLedger, PrivacyPlan, plan_privacy
from fedlora.privacy.randomness import make_randomness
from fedlora.report import write_report
from fedlora.server import AggregationError, Update, aggregate, sample_banks
from fedlora.store.adapters import load_adapter, put_json, save_adapter
from fedlora.store.base import StoreError, global_prefix, round_prefix, update_prefix
from fedlora.store.local import LocalStore
from fedlora.tracking import MLflowTracker, NullTracker, Tracker, flatten
from fedlora.training import predict_default_probability, steps_per_round

log = logging.getLogger(__name__)


class SimulationError(RuntimeError):
    """The federation could not complete (too few banks, nothing written half-way)."""


class ProgressSink(Protocol):
    """Receives progress events (the CLI draws them; tests may record them)."""

    def start(self, *, rounds: int, banks: list[str]) -> None:
        """The federation starts."""
        ...

    def bank_started(self, *, round_index: int, bank: str) -> None:
        """A bank starts its round."""
        ...

    def bank_finished(self, result: ClientResult | None, *, round_index: int, bank: str, error: str | None) -> None:
        """A bank finished its round (result) or failed (error)."""
        ...

    def round_finished(self, record: dict[str, Any]) -> None:
        """A round was aggregated and committed."""
        ...


class SilentProgress:
    """Ignores progress events."""

    def start(self, *, rounds: int, banks: list[str]) -> None:
        return None

    def bank_started(self, *, round_index: int, bank: str) -> None:
        return None

    def bank_finished(self, result: ClientResult | None, *, round_index: int, bank: str, error: str | None) -> None:
        return None

    def round_finished(self, record: dict[str, Any]) -> None:
        return None


@dataclass
class PhaseTimer:
    """Wall seconds per phase (load, train, evaluate, aggregate, store, tracking)."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds


def _json_epsilon(value: float) -> float | None:
    return None if math.isinf(value) else float(value)


def _make_run_dir(config: Config) -> Path:
    name = config.output.run_name or datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = Path(config.output.dir) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise SimulationError(
            f"run directory {run_dir} already exists and is not empty; choose another output.run_name"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _make_tracker(config: Config, run_dir: Path) -> Tracker:
    if not config.tracking.enabled:
        return NullTracker()
    root = Path(config.output.dir).resolve()
    uri = config.tracking.uri or f"sqlite:///{root / 'mlflow.db'}"
    artifacts = None if config.tracking.uri else (root / "mlartifacts").as_uri()
    return MLflowTracker(
        uri=uri, experiment=config.tracking.experiment, run_name=run_dir.name, artifact_location=artifacts
    )


def make_privacy_plans(config: Config, data: dict[str, BankData]) -> dict[str, PrivacyPlan]:
    """Validate every bank's privacy settings and calibrate its σ (before anything is written)."""
    plans: dict[str, PrivacyPlan] = {}
    cache: dict[tuple[float, float | None, int, int], PrivacyPlan] = {}
    for bank in config.federation.banks:
        n = len(data[bank.name].train)
        target = bank.target_epsilon or config.privacy.target_epsilon
        steps = steps_per_round(num_examples=n, config=config.training)
        key = (target, config.privacy.delta, n, steps)
        if key in cache:
            plans[bank.name] = dataclasses.replace(cache[key], bank=bank.name)
            continue
        plans[bank.name] = cache[key] = plan_privacy(
            bank=bank.name,
            num_examples=n,
            target_epsilon=target,
            delta=config.privacy.delta,
            batch_size=config.training.batch_size,
            steps_per_round=steps,
            rounds=config.federation.rounds,
            max_grad_norm=config.privacy.max_grad_norm,
            noise_multiplier=config.privacy.noise_multiplier,
            accountant=config.privacy.accountant,
        )
    return plans


@dataclass(frozen=True)
class Evaluation:
    """Test metrics of one adapter, per bank and pooled."""

    pooled: Metrics
    per_bank: dict[str, Metrics]


def evaluate_adapter(
    model: torch.nn.Module,
    adapter: AdapterState,
    tests: dict[str, EncodedSet],
    *,
    batch_size: int,
    device: torch.device,
) -> Evaluation:
    """Score every bank's held-out test data with ``adapter``; pooled = all test rows together."""
    load_adapter_state(model, adapter)
    labels, scores, per_bank = [], [], {}
    for bank, data in tests.items():
        p = predict_default_probability(model, data, batch_size=batch_size, device=device)
        y = data.labels.numpy()
        per_bank[bank] = compute_metrics(y, p)
        labels.append(y)
        scores.append(p)
    return Evaluation(pooled=compute_metrics(np.concatenate(labels), np.concatenate(scores)), per_bank=per_bank)


class Simulation:
    """One run of the local federation; :meth:`run` returns the summary dictionary."""

    def __init__(self, config: Config, *, progress: ProgressSink | None = None) -> None:
        self.config = config
        self.progress = progress or SilentProgress()
        self.timer = PhaseTimer()

    def _prepare(self) -> None:
        cfg = self.config
        with self.timer.phase("load"):
            data = build_bank_data(cfg)
            self.plans = make_privacy_plans(cfg, data) if cfg.privacy.enabled else {}
            loaded = load_base_model(cfg.model.name, quantization=cfg.model.quantization, seed=cfg.seed)
            self.device = loaded.device
            self.model = attach_lora(loaded, cfg.lora, seed=cfg.seed)
            self.banks: dict[str, BankState] = {}
            for offset, bank in enumerate(cfg.federation.banks):
                d = data[bank.name]
                plan = self.plans.get(bank.name)
                self.banks[bank.name] = BankState(
                    name=bank.name,
                    train=encode(d.train, loaded.tokenizer, max_length=cfg.model.max_length),
                    val=encode(d.val, loaded.tokenizer, max_length=cfg.model.max_length),
                    test=encode(d.test, loaded.tokenizer, max_length=cfg.model.max_length),
                    plan=plan,
                    ledger=PrivacyLedger(delta=plan.delta, accountant=plan.accountant) if plan else None,
                    randomness=make_randomness(secure=cfg.privacy.secure_rng, seed=cfg.seed * 1000 + offset + 1),
                )
            self.steps = {
                name: steps_per_round(num_examples=len(b.train), config=cfg.training) for name, b in self.banks.items()
            }

    def run(self) -> dict[str, Any]:
        """Run every round; write adapters, ledgers, summary and report; return the summary."""
        started = time.perf_counter()
        self._prepare()
        cfg = self.config
        self.run_dir = _make_run_dir(cfg)
        store = LocalStore(self.run_dir)
        with self.timer.phase("tracking"):
            tracker = _make_tracker(cfg, self.run_dir)
            tracker.log_params(flatten(cfg.model_dump(mode="json")))
        status = "FAILED"
        try:
            summary = self._rounds(store, tracker)
            summary["wall_seconds"] = time.perf_counter() - started
            summary["timings"] = dict(self.timer.seconds)
            self._finish(store, tracker, summary)
            status = "FINISHED"
            return summary
        finally:
            tracker.finish(status=status)

    def _rounds(self, store: LocalStore, tracker: Tracker) -> dict[str, Any]:
        cfg = self.config
        store.put("config.yaml", config_to_yaml(cfg).encode("utf-8"))
        global_adapter = adapter_state(self.model)
        with self.timer.phase("store"):
            save_adapter(store, global_prefix(0), global_adapter, {"round": 0, "kind": "global"})
        names = [b.name for b in cfg.federation.banks]
        self.progress.start(rounds=cfg.federation.rounds, banks=names)
        epsilon: dict[str, float] = {n: (0.0 if cfg.privacy.enabled else math.inf) for n in names}
        rounds: list[dict[str, Any]] = []
        stop_reason = ""
        for r in range(1, cfg.federation.rounds + 1):
            selected = sample_banks(
                names,
                fraction_fit=cfg.federation.fraction_fit,
                min_banks=cfg.federation.min_banks,
                round_index=r,
                seed=cfg.seed,
            )
            results, failures = self._client_phase(store, global_adapter, selected, r)
            for res in results:
                epsilon[res.bank] = res.epsilon
            trained = [res for res in results if res.status == "ok"]
            exhausted = [res.bank for res in results if res.status == "budget_exhausted"]
            if not trained and exhausted and len(exhausted) == len(selected):
                stop_reason = f"round {r}: every selected bank's privacy budget is spent; stopping"
                log.warning(stop_reason)
                break
            updates, rejected = self._read_updates(store, r, trained)
            with self.timer.phase("aggregate"):
                try:
                    agg = aggregate(updates, global_adapter, min_banks=cfg.federation.min_banks)
                except AggregationError as exc:
                    raise SimulationError(
                        f"round {r} failed: {exc}; failed banks: {failures or 'none'}, "
                        f"budget spent: {exhausted or 'none'}"
                    ) from exc
            rejected.update(agg.rejected)
            global_adapter = agg.adapter
            with self.timer.phase("evaluate"):
                evaluation = evaluate_adapter(
                    self.model,
                    global_adapter,
                    {n: b.test for n, b in self.banks.items()},
                    batch_size=cfg.training.eval_batch_size,
                    device=self.device,
                )
            record = self._round_record(r, trained, agg.accepted, failures, rejected, exhausted, evaluation, epsilon)
            with self.timer.phase("store"):
                save_adapter(
                    store,
                    global_prefix(r),
                    global_adapter,
                    {
                        "round": r,
                        "kind": "global",
                        "banks": agg.accepted,
                        "num_examples": sum(res.num_examples for res in trained if res.bank in agg.accepted),
                    },
                )
                for name, bank in self.banks.items():
                    if bank.ledger is not None:
                        put_json(store, f"privacy/{name}.json", bank.ledger.to_json())
                put_json(store, f"{round_prefix(r)}/MANIFEST.json", record)
            with self.timer.phase("tracking"):
                tracker.log_metrics(self._round_metrics(record), step=r)
            rounds.append(record)
            self.progress.round_finished(record)
        if not rounds:
            raise SimulationError(stop_reason or "no round completed")
        return self._summary(store, rounds, global_adapter, stop_reason)

    def _client_phase(
        self, store: LocalStore, global_adapter: AdapterState, selected: list[str], r: int
    ) -> tuple[list[ClientResult], dict[str, str]]:
        results: list[ClientResult] = []
        failures: dict[str, str] = {}
        for name in selected:
            self.progress.bank_started(round_index=r, bank=name)
            try:
                res = run_client_round(
                    self.model,
                    self.banks[name],
                    global_adapter,
                    round_index=r,
                    training=self.config.training,
                    steps=self.steps[name],
                    device=self.device,
                )
            except Exception as exc:  # one bank's failure must not end the round
                failures[name] = f"{type(exc).__name__}: {exc}"
                log.error("bank %s failed in round %d: %s", name, r, failures[name])
                self.progress.bank_finished(None, round_index=r, bank=name, error=failures[name])
                continue
            self.timer.add("evaluate", res.eval_seconds)
            self.timer.add("train", res.train_seconds)
            if res.adapter is not None:
                with self.timer.phase("store"):
                    save_adapter(
                        store,
                        update_prefix(r, name),
                        res.adapter,
                        {
                            "bank": name,
                            "round": r,
                            "kind": "update",
                            "num_examples": res.num_examples,
                            "epsilon": _json_epsilon(res.epsilon),
                            "delta": self.plans[name].delta if name in self.plans else None,
                            "steps": res.train.steps if res.train else 0,
                        },
                    )
            results.append(res)
            self.progress.bank_finished(res, round_index=r, bank=name, error=None)
        return results, failures

    def _read_updates(
        self, store: LocalStore, r: int, trained: list[ClientResult]
    ) -> tuple[list[Update], dict[str, str]]:
        updates: list[Update] = []
        rejected: dict[str, str] = {}
        with self.timer.phase("store"):
            for res in trained:
                try:
                    stored = load_adapter(store, update_prefix(r, res.bank))
                except StoreError as exc:
                    rejected[res.bank] = str(exc)
                    log.warning("rejected update of bank %s: %s", res.bank, exc)
                    continue
                updates.append(Update(res.bank, stored.tensors, int(stored.meta["num_examples"])))
        return updates, rejected

    def _round_record(
        self,
        r: int,
        trained: list[ClientResult],
        accepted: list[str],
        failures: dict[str, str],
        rejected: dict[str, str],
        exhausted: list[str],
        evaluation: Evaluation,
        epsilon: dict[str, float],
    ) -> dict[str, Any]:
        weights = [res.train.examples_seen for res in trained if res.train]
        losses = [res.train.mean_loss for res in trained if res.train]
        loss = float(np.average(losses, weights=weights)) if weights and sum(weights) else math.nan
        return {
            "round": r,
            "auc": evaluation.pooled.auc,
            "ks": evaluation.pooled.ks,
            "loss": loss,
            "metrics": evaluation.pooled.as_dict(),
            "per_bank_test": {b: m.as_dict() for b, m in evaluation.per_bank.items()},
            "incoming_val_auc": {res.bank: res.incoming_val.auc for res in trained},
            "epsilon": {b: _json_epsilon(e) for b, e in epsilon.items()},
            "banks": accepted,
            "failed": failures,
            "rejected": rejected,
            "budget_exhausted": exhausted,
            "steps": {res.bank: res.train.steps for res in trained if res.train},
        }

    @staticmethod
    def _round_metrics(record: dict[str, Any]) -> dict[str, float]:
        metrics = {f"test_{k}": v for k, v in record["metrics"].items() if k != "n"}
        metrics["train_loss"] = record["loss"]
        for bank, eps in record["epsilon"].items():
            if eps is not None:
                metrics[f"epsilon_{bank}"] = eps
        for bank, m in record["per_bank_test"].items():
            metrics[f"test_auc_{bank}"] = m["auc"]
        metrics["banks_accepted"] = float(len(record["banks"]))
        metrics["banks_failed"] = float(len(record["failed"]) + len(record["rejected"]))
        return metrics

    def _summary(
        self, store: LocalStore, rounds: list[dict[str, Any]], final: AdapterState, stop: str
    ) -> dict[str, Any]:
        cfg = self.config
        with self.timer.phase("store"):
            meta = save_adapter(store, "final", final, {"round": rounds[-1]["round"], "kind": "final"})
            load_adapter_state(self.model, final)
            peft_tmp = self.run_dir / "final" / ".peft.tmp"
            self.model.save_pretrained(str(peft_tmp))
            peft_tmp.replace(self.run_dir / "final" / "peft")
        last = rounds[-1]
        privacy = {
            name: {
                "noise_multiplier": plan.noise_multiplier,
                "sample_rate": plan.sample_rate,
                "steps": self.banks[name].ledger.steps if self.banks[name].ledger else 0,  # type: ignore[union-attr]
                "delta": plan.delta,
                "max_grad_norm": plan.max_grad_norm,
                "accountant": plan.accountant,
                "target_epsilon": plan.target_epsilon,
                "planned_steps": plan.planned_steps,
            }
            for name, plan in self.plans.items()
        }
        return {
            "run_dir": str(self.run_dir),
            "model": cfg.model.name,
            "dataset": cfg.data.dataset,
            "aggregation": "fedavg-ffa-lora (exact)" if cfg.lora.ffa else "fedavg-lora (A and B averaged separately)",
            "privacy_mode": f"dp-sgd per-example ({cfg.privacy.accountant})" if cfg.privacy.enabled else "none",
            "trainable_parameters": sum(self.model.get_parameter(n).numel() for n in trainable_names(self.model)),
            "final": {
                "auc": last["auc"],
                "metrics": last["metrics"],
                "per_bank_test": last["per_bank_test"],
                "epsilon": last["epsilon"],
                "adapter": str(self.run_dir / "final" / "adapter.safetensors"),
                "peft_adapter": str(self.run_dir / "final" / "peft"),
                "sha256": meta["sha256"],
            },
            "rounds": rounds,
            "privacy": privacy,
            "stopped_early": stop or None,
        }

    def _finish(self, store: LocalStore, tracker: Tracker, summary: dict[str, Any]) -> None:
        report = write_report(summary, self.run_dir / "report")
        summary["report"] = str(report)
        with self.timer.phase("tracking"):
            tracker.log_artifact(self.run_dir / "final", artifact_path="final_adapter")
            tracker.log_artifact(self.run_dir / "report", artifact_path="report")
            tracker.set_tags(
                {f"epsilon.{b}": str(e) for b, e in summary["final"]["epsilon"].items()}
                | {"aggregation": summary["aggregation"], "privacy_mode": summary["privacy_mode"]}
            )
        summary["timings"] = dict(self.timer.seconds)
        put_json(store, "summary.json", summary)


def simulate(config: Config, *, progress: ProgressSink | None = None) -> dict[str, Any]:
    """Run the local federation described by ``config`` and return its summary."""
    return Simulation(config, progress=progress).run()
