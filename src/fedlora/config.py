"""One configuration for every shell: YAML file, ``--set`` overrides and defaults.

The same dotted names (``privacy.target_epsilon``, ``federation.rounds``, ...) are used in
the YAML config, on the command line (``--set section.key=value``), and later in pipeline
parameters and Helm values. Unknown keys and wrong types are errors that name the key.

(Over 400 lines on purpose: every section's fields carry their descriptions, which are the
``fedlora simulate --help`` field list; the loading and ``--set`` functions below are the only
other code, and they exist for these models.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedlora.configs import builtin_config_names, builtin_config_text
from fedlora.errors import FedLoRAError
from fedlora.images import CONTROL_IMAGE


class ConfigError(FedLoRAError, ValueError):
    """A configuration file or override is invalid; the message names the key and value."""


COLUMN_READING_PRESETS = ("minilm", "tiny-bert")
"""Model presets whose head can read the row's columns beside the text (``model.schema_features``): the
encoders with a mean-pooled head (:class:`fedlora.model.heads.MeanPooledBertForSequenceClassification`)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the credit data comes from and how it is split across banks."""

    dataset: str = Field(
        "taiwan_credit",
        description="Built-in dataset: taiwan_credit or german_credit (bundled), credit_data or lending_club "
        "(need the 'datasets' extra), or the text task tfns (bundled finance tweets, FinLoRA's instruction format; "
        "needs a decoder model). Ignored for a bank with its own file (federation.banks[].data), except "
        "for its schema.",
    )
    partition: Literal["iid", "dirichlet", "quantity"] = Field(
        "iid", description="How rows are split across banks: iid, dirichlet (label skew), quantity."
    )
    dirichlet_alpha: float = Field(
        1.0, gt=0, description="Concentration of the Dirichlet label skew (smaller = more skew)."
    )
    quantity_alpha: float = Field(
        1.0, gt=0, description="Concentration of the Dirichlet over bank sizes (quantity skew)."
    )
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of each bank's rows for validation.")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="Share of each bank's rows for testing.")
    max_rows: int | None = Field(
        4000,
        gt=0,
        description="Use only this many rows of the built-in dataset (the rows with the smallest keyed hash, so "
        "adding a row swaps at most one other; a bank's own file is never sampled). 4000 keeps the embedded "
        "default within 5 minutes on 2 CPU cores; null = every row (30,000 for taiwan_credit).",
    )
    row_key_column: str | None = Field(
        None,
        min_length=1,
        description="Customer-id column of the banks' own files: its value, not the row's content, keys the "
        "row's train/validation/test split, so all of a customer's rows land in one split; never a model "
        "feature. A bank's FEDLORA_BANK_ROW_KEY_COLUMN wins. None = each row is keyed by its content.",
    )

    labels: list[str] | None = Field(
        None,
        min_length=2,
        description="Text tasks (data.dataset=tfns): the label words, in class-id order, that the prompt offers and "
        "the model answers; None = the task's own (tfns: negative, neutral, positive). Ignored for credit data.",
    )
    text_column: str = Field(
        "text", min_length=1, description="Text tasks: the text column of a bank's CSV/Parquet file (JSONL: context)."
    )
    label_column: str = Field(
        "label",
        min_length=1,
        description="Text tasks: the label column of a bank's CSV/Parquet file, a label word or its index (JSONL: "
        "target).",
    )

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        from fedlora.data.datasets import get_schema  # the data layer does not import config
        from fedlora.data.text_tasks import is_text_task

        if not is_text_task(value):
            get_schema(value)  # raises naming the built-in datasets
        return value

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len({v.strip().lower() for v in value}) != len(value):
            raise ValueError("data.labels must be distinct words")
        return value


class BankConfig(_Section):
    """One bank of the consortium."""

    name: str = Field(..., pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description="DNS-style bank name.")
    data: str | None = Field(
        None, description="The bank's own CSV/Parquet file or directory; None = its partition of data.dataset."
    )
    target_epsilon: float | None = Field(None, gt=0, description="Overrides privacy.target_epsilon for this bank.")
    batch_size: int | None = Field(
        None,
        ge=1,
        description="This bank's own expected batch, instead of min(training.batch_size, "
        "training.max_sample_rate × n); q = batch/n follows.",
    )
    namespace: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        description="Ignored (kept so configs written before 2026-12-07 load): the consortium creates nothing in a "
        "bank's namespace; the bank's agent runs its Jobs there.",
    )
    job_template: str = Field(
        "fedlora-bank-job-template",
        description="Ignored (kept so configs written before 2026-12-07 load): the bank's agent reads its own "
        "template (the bank chart's jobTemplate.name).",
    )


class ModelConfig(_Section):
    """Base model and quantization."""

    name: str = Field(
        "minilm",
        description="Preset (minilm, smollm2, tiny-bert, tiny-llama), a transformers model id or a local path.",
    )
    quantization: Literal["none", "8", "4"] = Field("none", description="bitsandbytes quantization of the base model.")
    max_length: int = Field(64, ge=8, le=4096, description="Tokens per serialized row (truncated/padded).")
    centre_features: bool = Field(
        True,
        description="Subtract the mean pooled representation of public rows (drawn from the dataset's schema, "
        "no bank data, no privacy cost) before the head; encoder presets only (fedlora.model.centring).",
    )
    schema_features: bool = Field(
        True,
        description="Also feed the row's columns to the head beside the pooled text: one-hot categories and "
        "numbers scaled by the schema's public bounds (fedlora.data.features), logits = W·[h̄ − μ, f − μ_f] + b. "
        "Needs an encoder preset (minilm, tiny-bert) and a schema whose categorical columns list their "
        "categories; left at its default it turns itself off where either is missing, set to true it is refused "
        "there.",
    )
    schema_feature_scale: float = Field(
        4.0,
        gt=0,
        description="Length bound of the head's column vector f (‖f‖ ≤ this; the pooled, centred text is about 1). "
        "4 was chosen on validation AUC (Taiwan, benchmarks/README.md).",
    )
    cache_frozen_layers: bool = Field(
        True,
        description="Compute the frozen layers below the lowest adapter once per bank and train on the cached "
        "activations (exact; encoder presets minilm/tiny-bert).",
    )

    @field_validator("quantization", mode="before")
    @classmethod
    def _quantization_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value


class LoraConfig(_Section):
    """LoRA adapter shape (Hu et al., 2021) and the FFA-LoRA variant (Sun et al., 2024)."""

    rank: int = Field(4, ge=1, le=512, description="LoRA rank r.")
    alpha: float = Field(8.0, gt=0, description="LoRA scaling numerator: the update is (alpha/r)·B·A.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt; None = the preset's default (attention q and v)."
    )
    ffa: bool = Field(
        True, description="FFA-LoRA: A frozen at a shared seed, only B and the head trained (exact average)."
    )
    enabled: bool = Field(
        True, description="false = train the head only (a linear probe on the frozen model; for ablations)."
    )
    top_layers: int | None = Field(
        1,
        ge=1,
        description="Adapt only the top N transformer layers (None = all). The frozen layers below are "
        "computed once per bank and cached (model.cache_frozen_layers).",
    )


class PrivacyConfig(_Section):
    """Per-example DP-SGD (Abadi et al., 2016) on the trainable parameters."""

    enabled: bool = Field(
        True, description="false = non-private baseline (no noise; no clipping unless privacy.clip_when_disabled)."
    )
    clip_when_disabled: bool = Field(
        False,
        description="Non-private baseline only (privacy.enabled=false): still clip each example's gradient to "
        "max_grad_norm and divide by the expected batch, adding no noise: DP-SGD with sigma=0. It keeps the step size "
        "the DP recipe's learning rate was tuned for, so the gap to the DP run is the cost of the noise alone.",
    )
    target_epsilon: float = Field(8.0, gt=0, description="Each bank's ε budget for the whole run.")
    delta: float | None = Field(
        None, gt=0, lt=1, description="δ of every bank; None = 0.1/n for a bank with n training rows."
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Per-example clipping bound C (L2).")
    noise_multiplier: float | None = Field(
        None, gt=0, description="σ; None = calibrated from target_epsilon, δ and the whole schedule."
    )
    accountant: Literal["prv", "rdp"] = Field(
        "prv", description="Opacus accountant: prv (Gopi et al., 2021; default) or rdp (looser)."
    )
    insecure_seeded_noise: bool = Field(
        False,
        description="RESEARCH ONLY: draw sampling and noise from a generator seeded by `seed` (replayable by anyone "
        "who knows the config, which voids the ε claim). Default: the OS CSPRNG. A bank's Job refuses it.",
    )
    release_metrics: bool = Field(
        False,
        description="Each bank releases DP-noised score histograms of its test rows every round (charged to its "
        "ledger); the coordinator computes pooled AUC/KS/Brier from them. Off = no metric leaves a bank.",
    )
    evaluation_epsilon: float = Field(
        0.5,
        gt=0,
        description="With release_metrics: the share of each bank's ε reserved for the evaluation releases "
        "(σ of the histograms is calibrated so that they alone cost this over the run).",
    )


class TrainingConfig(_Section):
    """Local training of one bank in one round."""

    local_epochs: float = Field(1.0, gt=0, description="Expected passes over the bank's data per round.")
    local_steps: int | None = Field(6, gt=0, description="Steps per round; overrides local_epochs (None = use it).")
    batch_size: int = Field(
        256,
        ge=1,
        description="Expected (Poisson) batch size of a bank large enough for it; sample rate q = batch/n. A "
        "smaller bank's batch follows its size: min(batch_size, max_sample_rate × n), n its declared training "
        "count (256 was chosen on validation AUC for the default's ~930 training rows per bank, docs/recipe.md).",
    )
    max_sample_rate: float = Field(
        0.6,
        gt=0,
        le=1,
        description="Largest sample rate q a bank's batch may reach: a bank with fewer than batch_size/"
        "max_sample_rate declared training rows trains at q = max_sample_rate (German Credit's ~230 rows per bank: "
        "batch 138). federation.banks[].batch_size overrides both for one bank.",
    )
    physical_batch_size: int = Field(
        256,
        ge=1,
        description="Largest micro-batch held in memory at once (the sum of clipped per-example gradients does not "
        "depend on it; 256 is one chunk for the default's batch, faster than 64 on 2 CPU cores).",
    )
    learning_rate: float = Field(
        3.0, gt=0, description="Learning rate of the local optimizer (3 suits DP-SGD with momentum on the recipe)."
    )
    lora_learning_rate: float | None = Field(
        None,
        gt=0,
        description="Learning rate of the LoRA parameters (None = training.learning_rate; the head keeps "
        "learning_rate). The noised gradient is the same; only its use differs (post-processing, free in privacy).",
    )
    min_learning_rate: float | None = Field(
        None,
        gt=0,
        description="Cosine learning rate over the rounds (as FinLoRA's FedLoRA): round t of T trains at "
        "min + (lr − min)·(1 + cos(π·(t−1)/(T−1)))/2, from training.learning_rate (and lora_learning_rate) in "
        "round 1 down to this in the last; None = a constant rate. Post-processing, free in privacy.",
    )
    optimizer: Literal["adam", "sgd"] = Field(
        "sgd",
        description="Local optimizer (re-created every round): sgd (momentum 0.9) or adam (non-private runs only; "
        "refused with DP, see Config._dp_optimizer).",
    )
    eval_batch_size: int = Field(
        128,
        ge=1,
        description="Rows per forward pass for evaluation and the frozen-layer pass (results do not depend on it).",
    )

    def batch_for(self, declared_examples: int) -> int:
        """The expected batch of a bank with ``declared_examples`` training rows (its declared count).

        ``B = min(batch_size, max(1, ⌊max_sample_rate · n_declared⌋))``: the batch follows the bank's size, and
        only the declared count (two significant figures) enters it, as every other planned value.
        """
        return max(1, min(self.batch_size, int(self.max_sample_rate * declared_examples)))


class FederationConfig(_Section):
    """Rounds, client sampling and the aggregation rule."""

    rounds: int = Field(5, ge=1, description="Number of federated rounds.")
    fraction_fit: float = Field(1.0, gt=0, le=1, description="Share of banks sampled each round (seeded).")
    min_banks: int = Field(2, ge=1, description="A round needs at least this many valid updates.")
    server_optimizer: Literal["fedavg", "fedavgm", "fedadam"] = Field(
        "fedavg",
        description="Coordinator's optimizer on the averaged update (Reddi et al., 2021; post-processing, free in "
        "privacy): fedavg, fedavgm (server momentum) or fedadam.",
    )
    server_learning_rate: float = Field(
        1.0, gt=0, description="Server step size η (fedavg with η=1 is plain FedAvg; FedAdam wants ~0.01-0.1)."
    )
    server_momentum: float = Field(
        0.9, ge=0, lt=1, description="Server momentum β (fedavgm) or first-moment decay β₁ (fedadam)."
    )
    banks: list[BankConfig] = Field(
        default_factory=lambda: [BankConfig.model_validate({"name": n}) for n in ("bank-a", "bank-b", "bank-c")],
        description="The consortium's banks.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> FederationConfig:
        names = [b.name for b in self.banks]
        if len(set(names)) != len(names):
            raise ValueError(f"bank names must be unique, got {names}")
        if self.min_banks > len(self.banks):
            raise ValueError(f"min_banks={self.min_banks} exceeds the number of banks ({len(self.banks)})")
        return self


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


class Config(_Section):
    """The whole configuration of a FedLoRA run."""

    seed: int = Field(0, description="Seed of splits, partitions, client sampling, LoRA init and DP noise.")
    data: DataConfig = Field(default_factory=DataConfig)  # type: ignore[arg-type]
    model: ModelConfig = Field(default_factory=ModelConfig)  # type: ignore[arg-type]
    lora: LoraConfig = Field(default_factory=LoraConfig)  # type: ignore[arg-type]
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)  # type: ignore[arg-type]
    training: TrainingConfig = Field(default_factory=TrainingConfig)  # type: ignore[arg-type]
    federation: FederationConfig = Field(default_factory=FederationConfig)  # type: ignore[arg-type]
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)  # type: ignore[arg-type]
    store: StoreConfig = Field(default_factory=StoreConfig)  # type: ignore[arg-type]
    kubeflow: KubeflowConfig = Field(default_factory=KubeflowConfig)  # type: ignore[arg-type]
    output: OutputConfig = Field(default_factory=OutputConfig)  # type: ignore[arg-type]

    def target_epsilon_for(self, bank: str) -> float:
        """The ε the consortium asks of ``bank``: its own ``target_epsilon``, else ``privacy.target_epsilon``."""
        spec = next((b for b in self.federation.banks if b.name == bank), None)
        return (spec.target_epsilon if spec is not None else None) or self.privacy.target_epsilon

    def training_for(self, bank: str, declared_examples: int | None = None) -> TrainingConfig:
        """The training section as ``bank`` runs it.

        Its own ``federation.banks[].batch_size`` if it has one; else, given its declared training count, the
        batch :meth:`TrainingConfig.batch_for` that count allows; else ``training`` as configured.
        """
        spec = next((b for b in self.federation.banks if b.name == bank), None)
        if spec is not None and spec.batch_size is not None:
            return self.training.model_copy(update={"batch_size": spec.batch_size})
        if declared_examples is None:
            return self.training
        return self.training.model_copy(update={"batch_size": self.training.batch_for(declared_examples)})

    @model_validator(mode="after")
    def _clipping_switch(self) -> Config:
        """Refuse ``privacy.clip_when_disabled`` on a DP run, where it would silently do nothing."""
        if self.privacy.enabled and self.privacy.clip_when_disabled:
            raise ValueError(
                "privacy.clip_when_disabled=true applies only to a non-private run (privacy.enabled=false); "
                "a DP run always clips at privacy.max_grad_norm"
            )
        return self

    @model_validator(mode="after")
    def _columns_only_where_the_head_reads_them(self) -> Config:
        """Turn ``model.schema_features`` off where it was left at its default and cannot work.

        The head reads the columns only on an encoder preset's mean-pooled head, and only when every
        categorical column of the schema lists its categories (so all banks agree on the layout). A
        default should not stop a run on a decoder model or on such a schema; an explicit
        ``model.schema_features=true`` there is still refused with the reason, when the model loads.
        """
        if not self.model.schema_features or "schema_features" in self.model.model_fields_set:
            return self
        if self.model.name not in COLUMN_READING_PRESETS:
            self.model.schema_features = False
            return self
        try:  # the data layer needs pandas, which a client-only install (compile, submit) lacks
            from fedlora.data.datasets import get_schema  # the data layer does not import config
            from fedlora.data.features import lists_every_category
            from fedlora.data.text_tasks import is_text_task
        except ImportError:
            return self  # stays on; a schema without categories then stops the run, naming this flag
        if is_text_task(self.data.dataset) or not lists_every_category(get_schema(self.data.dataset)):
            self.model.schema_features = False
        return self

    @model_validator(mode="after")
    def _dp_optimizer(self) -> Config:
        """Refuse plain Adam under DP-SGD.

        Adam divides each coordinate by ``√v̂``; under DP the second moment is dominated by the
        noise variance ``(σC/B)²``, so every coordinate moves by about the learning rate in the
        direction of the noise's sign, whatever the signal (Tang et al., 2024, "DP-AdamBC").
        SGD with momentum follows the noisy mean, whose noise averages out over steps.
        """
        if self.privacy.enabled and self.training.optimizer == "adam":
            raise ValueError(
                "training.optimizer=adam cannot work with DP (privacy.enabled=true): its second moment is the "
                "DP noise variance, so every step is ~learning_rate in a random direction; use training.optimizer=sgd "
                "(momentum 0.9), or privacy.enabled=false for a non-private run"
            )
        return self


def _parse_value(text: str) -> Any:
    """Parse an override value with YAML rules (``3`` -> int, ``true`` -> bool, ``[a, b]`` -> list)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one ``section.key=value`` override to a raw config tree, in place.

    Raises:
        ConfigError: if the assignment has no ``=`` or an empty key.

    """
    if "=" not in assignment:
        raise ConfigError(f"--set expects section.key=value, got {assignment!r}")
    key, _, raw = assignment.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set has an empty key in {assignment!r}")
    set_dotted(tree, parts, _parse_value(raw), name=f"--set {key}")


def set_dotted(tree: dict[str, Any], path: str | list[str], value: Any, *, name: str | None = None) -> None:
    """Set ``tree[a][b][c] = value`` for the dotted ``path`` ``a.b.c``, creating missing sections, in place.

    Args:
        tree: A raw config tree (parsed YAML).
        path: The dotted name, or its parts.
        value: The new value.
        name: How errors name the setting (default: the dotted path).

    Raises:
        ConfigError: a part of the path names a value, not a section.

    """
    parts = path.split(".") if isinstance(path, str) else path
    name = name if name is not None else ".".join(parts)
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{name}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {loc or '<root>'}: {e['msg']}{shown}")
    return "\n".join(lines)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where (line, column), without quoting the text around it."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def _parse_tree(text: str, source: str) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # the position and the problem only: the text may be a data file given by mistake
        raise ConfigError(f"config {source} is not valid YAML: {_yaml_problem(exc)}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {source} must hold a mapping at the top level (got a {type(loaded).__name__})")
    return loaded


def _validate(tree: dict[str, Any], source: str, overrides: list[str] | tuple[str, ...]) -> Config:
    """Apply ``--set`` overrides to ``tree`` and validate it; errors name ``source`` and each bad key."""
    for assignment in overrides:
        apply_override(tree, assignment)
    if overrides:
        source += " + --set"
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from exc


def load_config_text(text: str, *, source: str = "<text>", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Validate a config given as YAML text (a stored run config, a pipeline parameter)."""
    return _validate(_parse_tree(text, source), source, overrides)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a config from YAML (optional), apply ``--set`` overrides, validate.

    ``path`` is a YAML file or, when no file of that name exists, the name of a built-in config
    (:mod:`fedlora.configs`: ``german_credit``, ``taiwan_full``).

    Raises:
        ConfigError: on unreadable YAML, unknown keys or wrong types; the message names them.

    """
    if path is None:
        return _validate({}, "defaults", overrides)
    p = Path(path)
    builtin = None if p.is_file() else builtin_config_text(str(path))
    if builtin is not None:
        return load_config_text(builtin, source=f"built-in config {path}", overrides=overrides)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        names = ", ".join(builtin_config_names())
        raise ConfigError(f"config file not found: {p} (built-in configs: {names})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid UTF-8 text: {exc}") from exc
    return _validate(_parse_tree(text, f"file {p}"), str(p), overrides)


def config_to_yaml(config: Config) -> str:
    """Serialize a resolved config back to YAML (round-trips through :func:`load_config`)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def describe_fields(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """List ``(dotted name, default, description)`` of every config field, for ``--help``."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, _Section):
            rows.extend(describe_fields(annotation, prefix=f"{dotted}."))
            continue
        default = ("3 banks" if name == "banks" else "…") if field.default_factory is not None else repr(field.default)
        rows.append((dotted, default, field.description or ""))
    return rows
