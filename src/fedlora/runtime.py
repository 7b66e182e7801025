"""What one process loads once and reuses: the base model with LoRA, the banks' encoded data, timers.

The local simulation keeps one :class:`Runtime` for every bank and round (adapters are
swapped, the model is never reloaded); a Kubeflow task or a bank's Job builds its own.
Bank data is loaded lazily and only for the banks asked for, so a bank's Job never needs
another bank's files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_curve

from fedlora.config import COLUMN_READING_PRESETS, Config
from fedlora.data.banks import BankData, build_bank_data
from fedlora.data.datasets import get_schema
from fedlora.data.features import SchemaFeaturesError, head_feature_width
from fedlora.data.text_tasks import TextTask, get_text_task, is_text_task
from fedlora.evaluation import Metrics, compute_metrics
from fedlora.model import AdapterState
from fedlora.model.cache import cache_frozen_layers
from fedlora.model.centring import centre_head_on_public_rows
from fedlora.model.completion import cache_frozen_prefix, encode_completion
from fedlora.model.encoding import EncodedSet, RowSet, encode
from fedlora.model.heads import MeanPooledBertForSequenceClassification, add_feature_inputs
from fedlora.model.loading import load_base_model, load_causal_lm, resolves_here
from fedlora.model.lora import adapter_state, attach_lora, load_adapter_state
from fedlora.privacy.accounting import PrivacyPlan
from fedlora.tracking import Tracker
from fedlora.training import predict_scores

log = logging.getLogger(__name__)


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


class CacheProgress:
    """Logs the one-off frozen-layer pass over a bank's rows when it takes long: percent and seconds.

    Silent for a pass shorter than ``quiet_seconds``; after that a line at most every
    ``every_seconds`` and one when the pass ends. Only percentages and seconds are logged, never
    a row count: the log stays in the bank, but it is read by people the bank lets read it (the
    platform team, its log pipeline), and ``n`` is published only rounded.
    """

    def __init__(self, bank: str, *, total: int, quiet_seconds: float = 5.0, every_seconds: float = 30.0) -> None:
        self.bank = bank
        self.total = max(total, 1)
        self.quiet_seconds = quiet_seconds
        self.every_seconds = every_seconds
        self.started = time.perf_counter()
        self.last_line: float | None = None

    @staticmethod
    def offsets(parts: Sequence[Sized]) -> list[int]:
        """Where each split's rows start in the bank's whole pass (train, then val, then test)."""
        return [int(v) for v in np.cumsum([0] + [len(p) for p in parts[:-1]])]

    def at(self, offset: int) -> Callable[[int, int], None]:
        """The callback of one split whose rows start at ``offset`` of the bank's pass."""

        def report(done: int, _total: int) -> None:
            now = time.perf_counter()
            elapsed = now - self.started
            finished = offset + done >= self.total
            due = self.last_line is None and elapsed >= self.quiet_seconds
            due = due or (self.last_line is not None and (finished or now - self.last_line >= self.every_seconds))
            if due:
                percent = 100 * (offset + done) // self.total
                log.info(
                    "%s: frozen layers computed once for %d%% of its rows (%.0f s; training then runs the top layers)",
                    self.bank,
                    percent,
                    elapsed,
                )
                self.last_line = now

        return report


@dataclass(frozen=True)
class EncodedSplits:
    """One bank's tokenized train / validation / test rows (or their cached frozen-layer activations)."""

    train: RowSet
    val: RowSet
    test: RowSet


@dataclass(frozen=True)
class Evaluation:
    """Test metrics of one adapter, pooled over the banks and per bank, plus a thinned ROC curve."""

    pooled: Metrics
    per_bank: dict[str, Metrics]
    roc: dict[str, list[float]]


def thin_roc(labels: np.ndarray, scores: np.ndarray, *, points: int = 50) -> dict[str, list[float]]:
    """The ROC curve (fpr, tpr, thresholds) thinned to at most ``points`` points, for plots."""
    if len(np.unique(labels)) < 2:
        return {"fpr": [], "tpr": [], "thresholds": []}
    fpr, tpr, thresholds = roc_curve(labels, scores)
    keep = np.unique(np.linspace(0, len(fpr) - 1, num=min(points, len(fpr))).round().astype(int))
    finite = np.clip(thresholds[keep], 0.0, 1.0)  # the first threshold is +inf by convention
    return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist(), "thresholds": finite.tolist()}


class Runtime:
    """What one process loads once, for one config: the model and each bank's data (on first use), plans, trackers.

    Process-wide caches live here, not in module globals, so a test (or a process serving
    several runs) starts from a fresh :class:`Runtime` instead of state it never resets.
    """

    def __init__(
        self,
        config: Config,
        *,
        bank_files: dict[str, str] | None = None,
        split_key: bytes | None = None,
        row_key_column: str | None = None,
    ) -> None:
        """Create a runtime.

        Args:
            config: the run's configuration.
            bank_files: per-bank data paths that replace ``federation.banks[].data`` in this
                process (a bank's Job mounts its data at a path only the bank knows).
            split_key: the bank's secret key of its row split (``FEDLORA_BANK_SPLIT_KEY``); None =
                the public key of the config's seed (:func:`fedlora.data.banks.build_bank_data`).
            row_key_column: the bank's customer-id column (``FEDLORA_BANK_ROW_KEY_COLUMN``); None =
                ``data.row_key_column``.

        """
        self.config = config
        self.bank_files = bank_files or {}
        self.split_key = split_key
        self.row_key_column = row_key_column
        self.timer = PhaseTimer()
        self._model: torch.nn.Module | None = None
        self._device = torch.device("cpu")
        self._tokenizer: object | None = None
        self._raw: dict[str, BankData] = {}
        self._sets: dict[str, EncodedSplits] = {}
        self.plans: dict[tuple[object, ...], PrivacyPlan] = {}
        """Privacy plans computed in this process (σ calibration takes seconds; keyed by every input)."""
        self._initial: AdapterState | None = None
        self.trackers: dict[str, Tracker] = {}
        """Trackers of the runs this process touched, by store URI (a run can be marked FAILED with its store down)."""

    def _config_with_files(self) -> Config:
        if not self.bank_files:
            return self.config
        banks = [
            b.model_copy(update={"data": self.bank_files.get(b.name, b.data)}) for b in self.config.federation.banks
        ]
        federation = self.config.federation.model_copy(update={"banks": banks})
        return self.config.model_copy(update={"federation": federation})

    def bank_data(self, name: str) -> BankData:
        """``name``'s validated rows; every readable bank is loaded at once (one partition pass)."""
        if name not in self._raw:
            only = None if self.all_readable() else [name]
            with self.timer.phase("load"):
                self._raw.update(
                    build_bank_data(
                        self._config_with_files(),
                        only=only,
                        split_key=self.split_key,
                        row_key_column=self.row_key_column,
                    )
                )
        return self._raw[name]

    def bank_names(self) -> set[str]:
        return {b.name for b in self.config.federation.banks}

    def can_read(self, bank: str) -> bool:
        """Whether this process can read ``bank``'s data (its partition of the bundled data, or its file)."""
        spec = next(b for b in self.config.federation.banks if b.name == bank)
        path = self.bank_files.get(bank, spec.data)
        return path is None or Path(path).exists()

    @property
    def model(self) -> torch.nn.Module:
        """The base model with LoRA attached (initial adapter = the seeded LoRA init)."""
        if self._model is None:
            cfg = self.config
            with self.timer.phase("load"):
                if self.text_task is not None:  # the seed's objective: a causal LM, completion loss
                    loaded = load_causal_lm(cfg.model.name, quantization=cfg.model.quantization, seed=cfg.seed)
                    self._device, self._tokenizer = loaded.device, loaded.tokenizer
                    self._model = attach_lora(loaded, cfg.lora, seed=cfg.seed)
                    self._initial = adapter_state(self._model)
                    return self._model
                loaded = load_base_model(cfg.model.name, quantization=cfg.model.quantization, seed=cfg.seed)
                schema = get_schema(cfg.data.dataset)
                if cfg.model.schema_features:
                    if not isinstance(loaded.model, MeanPooledBertForSequenceClassification):
                        raise SchemaFeaturesError(
                            f"model.schema_features needs an encoder preset ({', '.join(COLUMN_READING_PRESETS)}); "
                            f"model {cfg.model.name!r} has no mean-pooled head to widen; "
                            "set model.schema_features=false"
                        )
                    add_feature_inputs(loaded.model, head_feature_width(schema))
                if cfg.model.centre_features:
                    centre_head_on_public_rows(
                        loaded, schema, max_length=cfg.model.max_length, feature_scale=cfg.model.schema_feature_scale
                    )
                self._device = loaded.device
                self._tokenizer = loaded.tokenizer
                self._model = attach_lora(loaded, cfg.lora, seed=cfg.seed)
                self._initial = adapter_state(self._model)
        return self._model

    def can_load_model(self) -> bool:
        """Whether this process holds the base model or can load it here (a control pod without it cannot)."""
        return self._model is not None or resolves_here(self.config.model.name)

    @property
    def text_task(self) -> TextTask | None:
        """The run's text task (``data.dataset=tfns``, with ``data.labels``), None for credit data."""
        data = self.config.data
        return get_text_task(data.dataset, data.labels) if is_text_task(data.dataset) else None

    @property
    def initial_adapter(self) -> AdapterState:
        """The seeded initial adapter (round 0's global, :mod:`fedlora.initial`), whatever the model holds now."""
        _ = self.model
        assert self._initial is not None
        return {k: v.clone() for k, v in self._initial.items()}

    def serves(self, config: Config) -> bool:
        """Whether this runtime's model and data are the ones ``config`` asks for (reusable across runs)."""
        same = ("seed", "data", "model", "lora", "federation")
        return all(getattr(config, k) == getattr(self.config, k) for k in same) and (
            config.training.eval_batch_size == self.config.training.eval_batch_size
        )

    @property
    def device(self) -> torch.device:
        _ = self.model
        return self._device

    def bank(self, name: str) -> EncodedSplits:
        """``name``'s tokenized data (its own file only is read when it has one)."""
        if name not in self._sets:
            data = self.bank_data(name)
            _ = self.model  # loads the tokenizer
            if self.text_task is not None:
                self._sets[name] = self._completion_rows(data)
                return self._sets[name]
            max_length = self.config.model.max_length
            with self.timer.phase("load"):
                encoded = [
                    encode(part, self._tokenizer, max_length=max_length)  # type: ignore[arg-type]
                    for part in (data.train, data.val, data.test)
                ]
            with self.timer.phase("cache"):
                progress = CacheProgress(name, total=sum(len(e) for e in encoded))
                sets = [
                    self._cached(e, progress.at(offset))
                    for e, offset in zip(encoded, progress.offsets(encoded), strict=True)
                ]
            self._sets[name] = EncodedSplits(train=sets[0], val=sets[1], test=sets[2])
        return self._sets[name]

    def _completion_rows(self, data: BankData) -> EncodedSplits:
        """A text task's prompts and answers, tokenized (:mod:`fedlora.model.completion`), frozen layers cached."""
        task = self.text_task
        assert task is not None
        with self.timer.phase("load"):
            rows = [
                encode_completion(part, self._tokenizer, labels=task.labels, max_length=self.config.model.max_length)  # type: ignore[arg-type]
                for part in (data.train, data.val, data.test)
            ]
        if self.config.model.cache_frozen_layers:  # the decoder layers below the lowest adapter, once
            with self.timer.phase("cache"):
                batch = self.config.training.eval_batch_size
                progress = CacheProgress(data.name, total=sum(len(r) for r in rows))
                rows = [
                    cache_frozen_prefix(
                        self.model, r, batch_size=batch, device=self.device, progress=progress.at(offset)
                    )
                    for r, offset in zip(rows, progress.offsets(rows), strict=True)
                ]
        return EncodedSplits(*rows)

    def _cached(self, encoded: EncodedSet, progress: Callable[[int, int], None]) -> RowSet:
        """The frozen layers' activations, computed once (``model.cache_frozen_layers``), else the tokens."""
        if not self.config.model.cache_frozen_layers:
            return encoded
        return cache_frozen_layers(
            self.model, encoded, batch_size=self.config.training.eval_batch_size, device=self.device, progress=progress
        )

    def all_readable(self) -> bool:
        return all(self.can_read(b) for b in self.bank_names())

    def evaluate(self, adapter: AdapterState) -> Evaluation:
        """Score every bank's held-out test rows with ``adapter`` (simulation and inline runs only)."""
        cfg = self.config
        with self.timer.phase("evaluate"):
            load_adapter_state(self.model, adapter)
            labels, scores, per_bank = [], [], {}
            for spec in cfg.federation.banks:
                test = self.bank(spec.name).test
                p = predict_scores(self.model, test, batch_size=cfg.training.eval_batch_size, device=self.device)
                y = test.labels.numpy()
                per_bank[spec.name] = compute_metrics(y, p)
                labels.append(y)
                scores.append(p)
            y_all, p_all = np.concatenate(labels), np.concatenate(scores)
            roc = thin_roc(y_all, p_all) if p_all.ndim == 1 else {"fpr": [], "tpr": [], "thresholds": []}
            return Evaluation(pooled=compute_metrics(y_all, p_all), per_bank=per_bank, roc=roc)
