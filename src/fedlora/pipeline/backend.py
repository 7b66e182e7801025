"""Which KFP backends the pipeline works on: the server's version, read before a run is created.

The pipeline is checked against the KFP backend's own source (tags 2.2.0 to 2.17.0; the table and
each line it rests on are in ``docs/kubeflow.md``). What decides:

* **2.3.0 is the minimum.** KFP 2.2 mounts no writable scratch directories in the task pod (the
  ``/.local``, ``/.cache``, ``/.config``, ``/s3``, ``/minio``, ``/gcs`` emptyDirs first appear in
  ``backend/src/v2/compiler/argocompiler/container.go`` at 2.3.0:37-47), so our non-root image
  (``USER 10001``) cannot write its output artifacts there.
* **Optional Secret keys from 2.15.0.** Before, the driver builds each ``secretKeyRef`` without
  ``optional`` (``backend/src/v2/driver/driver.go`` 2.5.0:893-902; set from 2.15.0 in
  ``driver/k8s.go``:341): a key missing from the ``--secret`` Secret keeps the pod in
  ``CreateContainerConfigError``. So below 2.15 ``fedlora submit`` wants the Secret's keys named
  (``--secret-key``) and maps only those.
* **Task retries from 2.5.0** (``argocompiler/container.go`` 2.5.0:329, ``getTaskRetryStrategy``);
  before, the retry policy is ignored: a crashed task fails the run, which resumes when submitted
  again with the same ``output_run_name``.
* **``{{$.pipeline_job_name}}`` from 2.5.0** (``driver/driver.go`` 2.5.0:1644): ``fedlora submit``
  names every run itself, so it never depends on it.

The API server reports its version as ``tag_name`` in ``/apis/v2beta1/healthz``
(``backend/src/apiserver/main.go`` 2.2.0:216, 2.3.0:217, 2.17.0:487). kfp 2.17's ``Client.get_kfp_healthz``
returns a model that drops that field, so the raw JSON is read through the client's own API client.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MINIMUM_KFP_VERSION",
    "OPTIONAL_SECRET_KEYS_FROM",
    "RETRIES_FROM",
    "Backend",
    "UnsupportedBackend",
    "check_backend",
    "read_backend_version",
]

MINIMUM_KFP_VERSION = (2, 3, 0)
"""The oldest KFP backend the pipeline runs on (2.2 gives a non-root task no writable scratch dirs)."""

RETRIES_FROM = (2, 5, 0)
"""The first backend that turns a task's retry policy into an Argo retryStrategy."""

OPTIONAL_SECRET_KEYS_FROM = (2, 15, 0)
"""The first backend that honours ``optional`` on a Secret mapped to environment variables."""

_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")


class UnsupportedBackend(ValueError):  # noqa: N818 (a refusal, as names.InvalidName)
    """The KFP backend cannot run this pipeline as asked; the message names the version and the reason."""


@dataclass(frozen=True)
class Backend:
    """What a KFP backend offers, from its version.

    Attributes:
        tag: The server's ``tag_name`` (``"unknown"`` for a build without one).
        version: ``(major, minor, patch)``, or None when the tag is not a release version.
        warnings: What the user should know before the run starts (printed by ``fedlora submit``).
    """

    tag: str
    version: tuple[int, int, int] | None
    warnings: list[str] = field(default_factory=list)

    @property
    def retries(self) -> bool:
        """Whether task retries run (unknown version: assumed not)."""
        return self.version is not None and self.version >= RETRIES_FROM

    @property
    def optional_secret_keys(self) -> bool:
        """Whether a Secret key missing from ``--secret`` is simply not set (unknown version: assumed not)."""
        return self.version is not None and self.version >= OPTIONAL_SECRET_KEYS_FROM


def _parse(tag: str) -> tuple[int, int, int] | None:
    match = _VERSION.match(tag.strip())
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def _dotted(version: tuple[int, int, int]) -> str:
    return ".".join(map(str, version))


def check_backend(tag: str, *, secret: str | None = None, secret_keys: tuple[str, ...] = ()) -> Backend:
    """What the backend of version ``tag`` offers; refuse one that cannot run the pipeline as asked.

    Args:
        tag: The server's ``tag_name`` (e.g. ``2.4.1``).
        secret: The ``--secret`` Secret, if any.
        secret_keys: The keys the user says the Secret holds (``--secret-key``); empty: all six, optional.

    Raises:
        UnsupportedBackend: the version is below :data:`MINIMUM_KFP_VERSION`, or below 2.15 with a
            ``--secret`` whose keys are not named.
    """
    version = _parse(tag)
    backend = Backend(tag=tag, version=version)
    if version is None:
        backend.warnings.append(
            f"the KFP API reports version {tag!r}, not a release: FedLoRA supports KFP >= "
            f"{_dotted(MINIMUM_KFP_VERSION)}; task retries and optional Secret keys are assumed absent"
        )
        return backend
    if version < MINIMUM_KFP_VERSION:
        raise UnsupportedBackend(
            f"KFP {tag} is older than {_dotted(MINIMUM_KFP_VERSION)}, the oldest FedLoRA supports: before 2.3 the "
            "backend mounts no writable scratch directories in a task's pod, so the non-root FedLoRA image cannot "
            "write its outputs (upgrade Kubeflow Pipelines; Kubeflow 1.9 ships 2.2, 1.10 ships 2.4)"
        )
    if secret and not secret_keys and version < OPTIONAL_SECRET_KEYS_FROM:
        raise UnsupportedBackend(
            f"KFP {tag} ignores optional Secret keys (honoured from 2.15): every key --secret maps must exist in "
            f"Secret {secret!r}, or the pod never starts (CreateContainerConfigError). Name the keys it holds with "
            "--secret-key (e.g. --secret-key AWS_ACCESS_KEY_ID --secret-key AWS_SECRET_ACCESS_KEY)"
        )
    if not backend.retries:
        backend.warnings.append(
            f"KFP {tag} does not retry tasks (from 2.5): a crashed task fails the run; submit it again with the "
            "same output_run_name to resume after the last committed round"
        )
    return backend


def read_backend_version(client: Any) -> str:
    """The KFP API server's ``tag_name`` from ``/apis/v2beta1/healthz``, through ``client``'s own session.

    Args:
        client: A ``kfp.Client`` (its host, token, cookies and TLS settings are used).

    Returns:
        The tag (``"unknown"`` when the server does not say).
    """
    import kfp_server_api

    api = kfp_server_api.HealthzServiceApi(client._healthz_api.api_client)  # kfp keeps its API client private
    response = api.healthz_service_get_healthz(_preload_content=False)
    data = json.loads(response.data or b"{}")
    return str(data.get("tag_name") or "unknown")
