"""The whole configuration (:class:`Config`): every section, and the checks that span sections."""

from __future__ import annotations

from pydantic import Field, model_validator

from fedlora.config.base import COLUMN_READING_PRESETS, _Section
from fedlora.config.data import DataConfig
from fedlora.config.federation import FederationConfig
from fedlora.config.model import LoraConfig, ModelConfig
from fedlora.config.privacy import PrivacyConfig
from fedlora.config.services import KubeflowConfig, OutputConfig, StoreConfig, TrackingConfig
from fedlora.config.training import TrainingConfig


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
