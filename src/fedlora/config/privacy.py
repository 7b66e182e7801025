"""The ``privacy`` section: each bank's DP-SGD budget, clipping, noise and accountant."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedlora.config.base import _Section


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
        None, gt=0, description="σ; None = calibrated from target_epsilon, δ and the rounds the bank trains."
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
