from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from fedlora.config import Config, load_config
from helpers import tiny_overrides_for

if TYPE_CHECKING:
    from services import CephS3, MLflowServer


@pytest.fixture
def tiny_overrides(tmp_path: Path) -> list[str]:
    """A fast federation: tiny random model, 2 rounds, 3 banks on a 300-row sample."""
    return tiny_overrides_for(tmp_path / "runs")


@pytest.fixture
def tiny_config(tiny_overrides: list[str]) -> Config:
    return load_config(None, tiny_overrides)


# --- real services (tests/services.py): Ceph S3 and an MLflow server, one of each per session ---


@pytest.fixture(scope="session")
def ceph_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephS3]:
    """A real single-node Ceph cluster with its S3 gateway (radosgw) on loopback.

    Yields a :class:`services.CephS3`: ``endpoint``, ``region``, admin ``access_key`` /
    ``secret_key``, ``create_user(uid)``, ``client(access, secret)``, ``stop_gateway()`` /
    ``start_gateway()``. Fails (never skips) when Ceph is not installed.
    """
    from services import SETUP_HINT, missing_ceph_binaries, start_ceph_s3

    missing = missing_ceph_binaries()
    if missing:
        pytest.fail(f"Ceph binaries not found ({', '.join(missing)}): {SETUP_HINT}", pytrace=False)
    ceph = start_ceph_s3(tmp_path_factory.mktemp("ceph"))
    try:
        yield ceph
    finally:
        ceph.stop()


@pytest.fixture(scope="session")
def mlflow_server(ceph_s3: CephS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLflowServer]:
    """A real ``mlflow server`` (sqlite backend store) whose artifacts go to the Ceph bucket ``mlflow-artifacts``.

    Yields a :class:`services.MLflowServer` with ``uri`` (the tracking URI) and ``bucket``.
    """
    from services import start_mlflow_server

    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow"), ceph_s3)
    try:
        yield server
    finally:
        server.stop()
