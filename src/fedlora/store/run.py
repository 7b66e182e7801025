"""Where a run lives: its store (S3 or a directory), its committed rounds and its own config.

A run is named by ``store.uri``/run (or ``output.dir``/run). A round is committed when its
``rounds/NNNN/MANIFEST.json`` exists; ``config.yaml`` is the run's own config, of which only
the *location* sections (:data:`LOCATION_SECTIONS`) may differ when the run is resumed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedlora.config import Config, load_config_text
from fedlora.names import check_name
from fedlora.store.base import Store
from fedlora.store.local import LocalStore
from fedlora.store.s3 import S3Store, parse_s3_uri

__all__ = ["LOCATION_SECTIONS", "committed_rounds", "open_run_store", "semantic_config", "stored_config"]

# Config sections that may differ when a run is resumed (where things live, not what is computed).
LOCATION_SECTIONS = ("store", "tracking", "output", "kubeflow")


def open_store(config: Config, uri: str, *, under: str = "") -> Store:
    """The store at ``uri`` (``s3://bucket/prefix`` with the ``store.*`` settings, or a directory), below ``under``."""
    if uri.startswith("s3://"):
        bucket, prefix = parse_s3_uri(uri)
        s3 = config.store
        return S3Store(
            bucket=bucket,
            prefix="/".join(p for p in (prefix, under) if p),
            endpoint_url=s3.endpoint_url,
            region=s3.region,
            path_style=s3.path_style,
            sse=s3.sse,
            sse_kms_key_id=s3.sse_kms_key_id,
            retry_seconds=s3.retry_seconds,
        )
    return LocalStore(Path(uri) / under if under else Path(uri))


def open_run_store(config: Config, run: str) -> Store:
    """The store of run ``run``: ``store.uri``/run (S3 or a directory), or ``output.dir``/run.

    Raises:
        InvalidName: ``run`` is not an identifier (every shell opens a run's store here, so a run
            name that is a path never reaches a store).
    """
    check_name(run, kind="run")
    uri = config.store.uri
    if uri is None:
        return LocalStore(Path(config.output.dir) / run)
    return open_store(config, uri, under=run)


def committed_rounds(store: Store) -> list[int]:
    """Rounds whose manifest exists, in order."""
    rounds = []
    for key in store.list("rounds/"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "MANIFEST.json":
            rounds.append(int(parts[1]))
    return sorted(rounds)


def semantic_config(config: Config) -> dict[str, Any]:
    """The sections of ``config`` that decide what is computed (everything but :data:`LOCATION_SECTIONS`)."""
    return {k: v for k, v in config.model_dump(mode="json").items() if k not in LOCATION_SECTIONS}


def stored_config(store: Store, config: Config) -> Config:
    """The run's own config from the store, with this process's location sections (store, tracking, ...)."""
    text = store.get("config.yaml").decode("utf-8")
    stored = load_config_text(text, source=store.uri("config.yaml"))
    return stored.model_copy(update={k: getattr(config, k) for k in LOCATION_SECTIONS})
