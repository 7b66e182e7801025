"""The ``federation`` section and its ``banks[]`` entries: rounds, client sampling, the server's optimizer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedlora.config.base import _Section


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


class FederationConfig(_Section):
    """Rounds, client sampling and the aggregation rule."""

    rounds: int = Field(5, ge=1, description="Number of federated rounds.")
    fraction_fit: float = Field(1.0, gt=0, le=1, description="Share of banks that train each round.")
    bank_selection: Literal["random", "cyclic"] = Field(
        "random",
        description="Which banks train a round when fraction_fit < 1: random (a seeded draw each round) or cyclic "
        "(in config order, in turn, so every bank trains as often as any other give or take one round; Cho et "
        "al., 2023).",
    )
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
