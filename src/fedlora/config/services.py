"""The sections of the services a run talks to: ``tracking``, ``store``, ``kubeflow`` and ``output``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedlora.config.base import _Section
from fedlora.images import CONTROL_IMAGE


class TrackingConfig(_Section):
    """MLflow tracking."""

    enabled: bool = Field(True, description="Log to MLflow.")
    uri: str | None = Field(None, description="MLflow tracking URI; None = sqlite file in output.dir.")
    experiment: str = Field("fedlora", description="MLflow experiment name.")
    registered_model: str | None = Field(
        "fedlora-credit-risk", description="Register the final adapter as a version of this model; None = don't."
    )


class StoreConfig(_Section):
    """The adapter exchange: a local directory or an S3 bucket (AWS, MinIO, Ceph)."""

    uri: str | None = Field(
        None, description="s3://bucket/prefix or a directory; runs live under it. None = output.dir (local)."
    )
    endpoint_url: str | None = Field(
        None, description="S3 endpoint (MinIO, Ceph); None = AWS_ENDPOINT_URL or AWS's own endpoint."
    )
    region: str | None = Field(None, description="S3 region; None = the standard AWS configuration chain.")
    path_style: bool = Field(False, description="Path-style S3 addressing (most MinIO/Ceph installs).")
    sse: Literal["none", "AES256", "aws:kms"] = Field("none", description="Server-side encryption of uploads.")
    sse_kms_key_id: str | None = Field(None, description="KMS key id when store.sse=aws:kms.")
    retry_seconds: float = Field(60.0, ge=0, description="How long transient S3 errors are retried before failing.")

    @model_validator(mode="after")
    def _check(self) -> StoreConfig:
        if self.uri is not None and self.uri.startswith("s3://"):
            bucket = self.uri[5:].split("/", 1)[0]
            if not bucket:
                raise ValueError(f"store.uri={self.uri!r} names no bucket (expected s3://bucket/prefix)")
        if self.sse_kms_key_id is not None and self.sse != "aws:kms":
            raise ValueError("store.sse_kms_key_id needs store.sse=aws:kms")
        return self


class KubeflowConfig(_Section):
    """How the Kubeflow pipeline runs each bank's training."""

    mode: Literal["inline", "namespaced", "pull"] = Field(
        "inline",
        description="inline = train inside the pipeline task; pull = wait for the bank's own agent (fedlora "
        "bank-agent, the bank chart's agent) to train in the bank's cluster and publish its outcome; namespaced = "
        "the same as pull (its older name: the consortium creates no Job in a bank's namespace).",
    )
    job_timeout_seconds: int = Field(
        6 * 3600,
        ge=60,
        description="How long the coordinator waits for a bank's outcome (pull) before counting the bank as "
        "failed for the round; the bank's agent also ends its inline rounds' leases after it.",
    )
    poll_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="pull mode: longest pause between two looks for a bank's outcome in the store "
        "(the pauses start at 1 s and double up to this).",
    )
    control_image: str = Field(
        CONTROL_IMAGE,
        description="Image of the pipeline's own tasks (images/control.Dockerfile; inline mode trains in it).",
    )
    graph: Literal["auto", "rounds", "coordinator"] = Field(
        "auto",
        description="Pipeline graph: rounds (or auto) = a chain of round tasks (the banks train, then the "
        "aggregation), one round per task, or equal chunks of rounds above max_graph_tasks - 2 rounds; "
        "coordinator = one federate-rounds task loops every round.",
    )
    max_graph_tasks: int = Field(
        64, ge=4, description="Most tasks of the rounds graph (rounds are chunked to fit); about 6.5 KB YAML a task."
    )
    task_cpu: str = Field("1", pattern=r"^[0-9]+(\.[0-9]+)?m?$", description="CPU request of every pipeline task.")
    task_memory: str = Field(
        "4Gi", pattern=r"^[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$", description="Memory request of every pipeline task."
    )
    task_memory_limit: str | None = Field(
        "16Gi",
        pattern=r"^[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$",
        description="Memory limit of every pipeline task (None = none; a profile quota may require one).",
    )
    task_cpu_limit: str | None = Field(
        "4",
        pattern=r"^[0-9]+(\.[0-9]+)?m?$",
        description="CPU limit of every pipeline task (None = none; a quota on limits.cpu refuses pods without one).",
    )
    retries: int = Field(
        2, ge=0, le=10, description="Retries of a failed pipeline task (every step is idempotent: it resumes)."
    )
    accelerator_type: str | None = Field(
        None,
        description="inline mode: accelerator of the tasks that train (e.g. nvidia.com/gpu); None = CPU only.",
    )
    accelerator_count: int = Field(1, ge=1, description="inline mode: accelerators per training task.")


class OutputConfig(_Section):
    """Where runs are written."""

    dir: str = Field("runs", description="Parent folder of run directories.")
    run_name: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        description="Run name (a DNS label: lowercase letters, digits, '-'; it names keys in the exchange and in "
        "every bank's ledger, never a path); None = the UTC time, YYYYMMDD-HHMMSS.",
    )
