"""Experiment tracking: an MLflow tracker and a no-op tracker behind one Protocol."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class TrackingError(RuntimeError):
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

    def finish(self, *, status: str) -> None:
        return None


class MLflowTracker:
    """Logs to MLflow (a local sqlite store by default, or any tracking server URI)."""

    def __init__(self, *, uri: str, experiment: str, run_name: str, artifact_location: str | None = None) -> None:
        try:
            import mlflow
        except ImportError as exc:
            raise TrackingError(
                "tracking needs mlflow: pip install 'fedlora[tracking]' or --set tracking.enabled=false"
            ) from exc
        self._mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        try:
            if artifact_location is not None and mlflow.get_experiment_by_name(experiment) is None:
                mlflow.create_experiment(experiment, artifact_location=artifact_location)
            mlflow.set_experiment(experiment)
            self._run = mlflow.start_run(run_name=run_name)
        except Exception as exc:  # mlflow raises many exception types for unreachable servers
            raise TrackingError(f"cannot start an MLflow run at {uri}: {exc}") from exc
        self.run_id: str | None = self._run.info.run_id
        self.uri = uri

    def log_params(self, params: dict[str, Any]) -> None:
        self._mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], *, step: int) -> None:
        finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        self._mlflow.log_metrics(finite, step=step)

    def log_artifact(self, path: Path, *, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._mlflow.set_tags(tags)

    def finish(self, *, status: str) -> None:
        self._mlflow.end_run(status=status)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
