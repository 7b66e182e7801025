"""Experiment tracking: an MLflow tracker and a no-op tracker behind one Protocol, and a run's tracker.

``tracking.json`` in the run's store names the MLflow run, so every process of a run
(simulation, pipeline tasks, bank Jobs) attaches to the same one (:func:`open_tracker`).
Tracking is a record, not the run's state: a failure mid-run is logged and the run goes on
(:func:`tracked`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fedlora.errors import FederationError, FedLoRAError
from fedlora.records import RunSummary
from fedlora.store.adapters import get_json, put_json

if TYPE_CHECKING:
    from fedlora.config import Config
    from fedlora.runtime import Runtime
    from fedlora.store.base import Store

log = logging.getLogger(__name__)


class TrackingError(FedLoRAError, RuntimeError):
    """The tracking backend cannot be used (not installed, unreachable)."""


class Tracker(Protocol):
    """Where parameters, per-round metrics and artifacts go."""

    def log_params(self, params: dict[str, Any]) -> None:
        """Record run parameters (flat ``section.key`` names)."""
        ...

    def log_metrics(self, metrics: dict[str, float], *, step: int) -> None:
        """Record metrics at a round."""
        ...

    def log_artifact(self, path: Path, *, artifact_path: str | None = None) -> None:
        """Upload a file or directory."""
        ...

    def set_tags(self, tags: dict[str, str]) -> None:
        """Attach tags to the run."""
        ...

    def register_model(self, *, name: str, artifact_path: str, tags: dict[str, str], description: str) -> str:
        """Register a logged artifact as a model version; return the version ("" when not tracked)."""
        ...

    def finish(self, *, status: str) -> None:
        """Close the run (``FINISHED`` or ``FAILED``)."""
        ...


class NullTracker:
    """Tracks nothing (``tracking.enabled: false``)."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        return None

    def log_metrics(self, metrics: dict[str, float], *, step: int) -> None:
        return None

    def log_artifact(self, path: Path, *, artifact_path: str | None = None) -> None:
        return None

    def set_tags(self, tags: dict[str, str]) -> None:
        return None

    def register_model(self, *, name: str, artifact_path: str, tags: dict[str, str], description: str) -> str:
        return ""

    def finish(self, *, status: str) -> None:
        return None


def _mlflow_client(uri: str) -> Any:
    """An ``MlflowClient`` for tracking and registry at ``uri`` (mlflow is an optional extra)."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise TrackingError(
            "tracking needs mlflow: pip install 'fedlora[tracking]' or --set tracking.enabled=false"
        ) from exc
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


class MLflowTracker:
    """Logs to one MLflow run by id, so every process of a run (simulation, pipeline tasks) can attach to it.

    Works with a local sqlite store (the default) or any tracking server URI; artifacts go
    wherever the experiment's artifact location points (a directory, or S3 through the server).
    """

    def __init__(self, *, uri: str, run_id: str) -> None:
        self.uri = uri
        self.run_id: str | None = run_id
        self._client = _mlflow_client(uri)

    @classmethod
    def start(cls, *, uri: str, experiment: str, run_name: str, artifact_location: str | None = None) -> MLflowTracker:
        """Create the experiment if needed and start a new run in it."""
        check_reachable(uri)
        client = _mlflow_client(uri)
        try:
            found = client.get_experiment_by_name(experiment)
            experiment_id = (
                found.experiment_id
                if found is not None
                else client.create_experiment(experiment, artifact_location=artifact_location)
            )
            run = client.create_run(experiment_id, run_name=run_name)
        except Exception as exc:  # mlflow raises many exception types for unreachable servers
            raise TrackingError(f"cannot start an MLflow run at {uri}: {exc}") from exc
        return cls(uri=uri, run_id=run.info.run_id)

    def _id(self) -> str:
        assert self.run_id is not None
        return self.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:500]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._client.log_batch(self._id(), params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], *, step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        finite = [
            Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None and math.isfinite(float(v))
        ]
        self._client.log_batch(self._id(), metrics=finite)

    def log_artifact(self, path: Path, *, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self._client.log_artifacts(self._id(), str(path), artifact_path=artifact_path)
        else:
            self._client.log_artifact(self._id(), str(path), artifact_path=artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._client.set_tag(self._id(), key, value[:5000])

    def register_model(self, *, name: str, artifact_path: str, tags: dict[str, str], description: str) -> str:
        """Register ``runs:/<run>/<artifact_path>`` as a new version of model ``name``; return the version."""
        from mlflow.exceptions import MlflowException

        try:
            self._client.get_registered_model(name)
        except MlflowException:
            self._client.create_registered_model(name, description="FedLoRA credit-risk adapters (DP-FedAvg LoRA)")
        run = self._client.get_run(self._id())
        source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
        version = self._client.create_model_version(
            name, source=source, run_id=self._id(), tags=tags, description=description
        )
        return str(version.version)

    def finish(self, *, status: str) -> None:
        self._client.set_terminated(self._id(), status=status)


def check_reachable(uri: str, *, timeout: float = 10.0) -> None:
    """Fail fast (instead of MLflow's minutes of retries) when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status != 200:
                raise TrackingError(f"MLflow server {uri} answered {response.status} on /health")
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingError(f"MLflow server {uri} is unreachable ({exc}); check tracking.uri / --tracking-uri") from exc


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def default_tracking_uri(config: Config) -> str:
    """``tracking.uri``, or a sqlite file in ``output.dir`` (the embedded default)."""
    return config.tracking.uri or f"sqlite:///{Path(config.output.dir).resolve() / 'mlflow.db'}"


def open_tracker(config: Config, store: Store, *, run: str, runtime: Runtime, create: bool = False) -> Tracker:
    """Attach to the run's MLflow run (``tracking.json``); with ``create``, start it when missing.

    The tracker is kept in ``runtime.trackers``, so a run can still be marked FAILED when its
    store has gone down since.

    Raises:
        FederationError: ``tracking.json`` is missing and ``create`` is not set.

    """
    if not config.tracking.enabled:
        return NullTracker()
    cached = runtime.trackers.get(store.uri(""))
    if cached is not None:
        return cached
    if store.exists("tracking.json"):
        info = get_json(store, "tracking.json")
        tracker = MLflowTracker(uri=config.tracking.uri or str(info["uri"]), run_id=str(info["run_id"]))
        runtime.trackers[store.uri("")] = tracker
        return tracker
    if not create:
        raise FederationError(f"{store.uri('tracking.json')} is missing; run the initialize step first")
    uri = default_tracking_uri(config)
    artifacts = None if config.tracking.uri else (Path(config.output.dir).resolve() / "mlartifacts").as_uri()
    tracker = MLflowTracker.start(
        uri=uri, experiment=config.tracking.experiment, run_name=run, artifact_location=artifacts
    )
    put_json(store, "tracking.json", {"uri": uri, "run_id": tracker.run_id, "experiment": config.tracking.experiment})
    runtime.trackers[store.uri("")] = tracker
    return tracker


def tracked(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; tracking is a record, not the run's state: a failure mid-run is logged, never fatal."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # mlflow raises many types for server outages
        log.warning("MLflow %s failed (the run goes on; its state is in the store): %s", what, exc)
        return None


def register_final(
    config: Config, tracker: Tracker, run: str, summary: RunSummary, work: Path
) -> dict[str, Any] | None:
    """Log the final adapter and report to MLflow and register the adapter with its privacy guarantee.

    Returns:
        The registered model's name and version, or None when none was registered.
    """
    guarantee = {f"epsilon.{bank}": str(info["epsilon"]) for bank, info in summary.privacy.items()} | {
        f"delta.{bank}": str(info["delta"]) for bank, info in summary.privacy.items()
    }
    tags = guarantee | {
        "accountant": config.privacy.accountant if config.privacy.enabled else "none",
        "aggregation": summary.aggregation,
        "privacy_mode": summary.privacy_mode,
        "rounds": str(len(summary.rounds)),
        "fedlora.run": run,
    }
    tracked("log_artifact", tracker.log_artifact, work / "final", artifact_path="final_adapter")
    if (work / "report").exists():
        tracked("log_artifact", tracker.log_artifact, work / "report", artifact_path="report")
    tracked("set_tags", tracker.set_tags, tags | {f"epsilon.{b}": str(e) for b, e in summary.final.epsilon.items()})
    registered: dict[str, Any] | None = None
    if config.tracking.registered_model:
        lines = [
            f"FedLoRA adapter of run {run} ({summary.aggregation}), {summary.privacy_mode}.",
            *[
                f"{bank}: (ε={info['epsilon']}, δ={info['delta']:.3g})-DP per example, {info['accountant']} "
                f"accountant, {info['steps']} steps, σ={info['noise_multiplier']:.4f}, C={info['max_grad_norm']}"
                for bank, info in summary.privacy.items()
            ],
        ]
        version = tracked(
            "register_model",
            tracker.register_model,
            name=config.tracking.registered_model,
            artifact_path="final_adapter",
            tags=tags,
            description="\n".join(lines),
        )
        if version:
            registered = {"name": config.tracking.registered_model, "version": version}
    tracked("finish", tracker.finish, status="FINISHED")
    return registered
