"""The ``training`` section: one bank's local training in one round, and the batch a bank's size allows."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedlora.config.base import _Section


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
