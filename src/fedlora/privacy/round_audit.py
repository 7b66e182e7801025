"""A one-run privacy audit of a whole bank round on a real model (Steinke, Nasr & Jagielski, 2023).

:mod:`fedlora.privacy.audit` audits the DP-SGD step on a synthetic parameter vector; this module
audits the product's own path: :func:`fedlora.bank_round.run_bank_round` (the bank's plan, σ
calibrated from its target ε, the ledger charge, the published adapter) →
:func:`fedlora.local_round.run_local_round` → :func:`fedlora.training.train_local` with the
real model's LoRA B matrices and head, the real Poisson sampling, per-example clipping,
Gaussian noise and optimizer.

**Canaries.** ``m`` white-box Dirac gradient canaries, each given a trained coordinate
``c_i`` of its own (drawn without replacement among every trained coordinate) and a sign
``s_i ∈ {±1}``, and included in the bank's training set by the auditor's secret fair coin.
An included canary is one more example (:class:`fedlora.training.GradientCanaries`): it is
Poisson-sampled with the rows at rate ``q`` every step, and when sampled its per-example
gradient is ``S·s_i·e_{c_i}`` with ``S = 1000·C``, which the real
:func:`fedlora.privacy.clipping.clip_and_sum` clips to ``≈ C·s_i·e_{c_i}``.

**Score.** The optimizer is SGD with momentum μ (the only optimizer the product allows with
DP: ``Config._dp_optimizer`` refuses Adam). After ``T`` steps from the incoming adapter θ₀,

    θ_T − θ₀ = −η Σ_t w_t g̃_t,    w_t = Σ_{u=t}^{T−1} μ^{u−t} = (1 − μ^{T−t})/(1 − μ) > 0,

so every coordinate's movement is a positive combination of the noised gradient sums, and an
included canary pushes its coordinate by ``−η·s_i·C·w_t/(q·n)`` in each step it is sampled.
Its score is ``−s_i·(θ_published − θ_incoming)[c_i]``: high when it was in. The rows'
gradients on the same coordinates are the same whether a canary is in or not; they only blur
the ranking, which weakens the audit and keeps the bound valid. (With Adam the movement is
not a monotone function of the gradient sums, because each step is divided by the running
root-mean-square of the coordinate's gradients; the bound would stay valid, since any score
does, but lose power. The product refuses Adam under DP, so it is not audited here.) With
``training.lora_learning_rate`` ≠ ``learning_rate`` the LoRA and head coordinates move on
different scales; the scores are compared as they are, which again only costs power.

**Guesses and bound.** "In" for the ``k₊`` highest scores, "out" for the ``k₋`` lowest
(:func:`fedlora.privacy.audit.correct_guesses`), and the lower bound is
:func:`fedlora.privacy.audit.epsilon_lower_bound` (their Theorem 5.2 with the Appendix D
p-value) at the run's δ. It is set beside the ε the bank's ledger reports for the run.

**Modes.** ``secure``: the product's path, OS CSPRNG noise at the plan's σ; the bound must
stay below the reported ε. ``off``: the non-private baseline with clipping
(``privacy.enabled=false``, ``privacy.clip_when_disabled=true``: DP-SGD with σ = 0) through the
same :func:`run_bank_round`; the bound is large, which shows the audit has power on this path.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from fedlora.bank_round import run_bank_round
from fedlora.config import Config
from fedlora.federation import initialize
from fedlora.privacy.accounting import default_delta
from fedlora.privacy.audit import correct_guesses, epsilon_lower_bound
from fedlora.privacy.bank_side import load_bank_privacy
from fedlora.runtime import Runtime
from fedlora.store.adapters import load_adapter
from fedlora.store.base import update_prefix
from fedlora.store.run import open_run_store

__all__ = ["DiracCanaries", "RoundAuditMode", "RoundAuditResult", "audit_bank_round"]

RoundAuditMode = Literal["secure", "off"]

SPIKE = 1000.0
"""A canary's gradient norm, in units of ``C``: far above the bound, so clipping brings it to ``C``."""


@dataclass(frozen=True)
class Canary:
    """One trained coordinate, ``param.flatten()[flat]``, and the sign of the canary's spike there."""

    name: str
    flat: int
    sign: float


class DiracCanaries:
    """The included canaries as extra examples: canary ``i``'s gradient is ``spike·s_i·e_{c_i}``.

    Implements :class:`fedlora.training.GradientCanaries` for ``train_local``.
    """

    def __init__(self, model: torch.nn.Module, canaries: list[Canary], *, spike: float) -> None:
        params = dict(model.named_parameters())
        self._params = [params[c.name] for c in canaries]
        self._flat = [c.flat for c in canaries]
        self._values = [c.sign * spike for c in canaries]

    def __len__(self) -> int:
        return len(self._params)

    def gradients(self, index: torch.Tensor) -> dict[torch.Tensor, torch.Tensor]:
        """``{param: (len(index), *param.shape)}``: zero but for each sampled canary's spike at its coordinate."""
        rows = index.tolist()
        out: dict[torch.Tensor, torch.Tensor] = {}
        for row, i in enumerate(rows):
            param = self._params[i]
            if param not in out:
                out[param] = torch.zeros(len(rows), param.numel(), device=param.device, dtype=torch.float32)
            out[param][row, self._flat[i]] = self._values[i]
        return {p: g.reshape(len(rows), *p.shape) for p, g in out.items()}


@dataclass(frozen=True)
class RoundAuditResult:
    """One audited bank round: the ε the bank reports beside the empirical lower bound."""

    mode: RoundAuditMode
    bank: str
    reported_epsilon: float
    """The run's ε from the bank's ledger (``inf`` for the non-private ``off`` mode)."""
    epsilon_lower_bound: float
    confidence: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    canaries: int
    included: int
    guesses: int
    correct: int
    seconds: float
    """Wall time of the bank round (plan, charge, train, publish), without the model's first load."""


def _mode_config(config: Config, mode: RoundAuditMode) -> Config:
    """The config of the round: the product's privacy settings (secure) or DP-SGD with σ = 0 (off)."""
    if mode == "secure":
        privacy = config.privacy.model_copy(update={"enabled": True, "insecure_seeded_noise": False})
    else:
        privacy = config.privacy.model_copy(update={"enabled": False, "clip_when_disabled": True})
    return config.model_copy(update={"privacy": privacy})


def _draw_canaries(model: torch.nn.Module, count: int, rng: np.random.Generator, *, lora_only: bool) -> list[Canary]:
    """``count`` distinct trained coordinates (of the LoRA matrices only, or of every trained tensor), random signs."""
    trained = [
        (n, p.numel()) for n, p in model.named_parameters() if p.requires_grad and ("lora_" in n or not lora_only)
    ]
    total = sum(size for _, size in trained)
    if count > total:
        raise ValueError(f"{count} canaries need as many trained coordinates; the model trains {total}")
    starts = np.cumsum([0] + [size for _, size in trained])
    picks = rng.choice(total, size=count, replace=False)
    signs = rng.choice([-1.0, 1.0], size=count)
    where = np.searchsorted(starts, picks, side="right") - 1
    return [Canary(trained[w][0], int(x - starts[w]), float(s)) for w, x, s in zip(where, picks, signs, strict=True)]


def audit_bank_round(
    config: Config,
    *,
    mode: RoundAuditMode,
    canaries: int,
    guesses_in: int,
    guesses_out: int = 0,
    seed: int = 0,
    bank: str | None = None,
    run: str = "audit",
    confidence: float = 0.95,
    lora_only: bool = True,
) -> RoundAuditResult:
    """Audit round 1 of ``bank`` through :func:`fedlora.bank_round.run_bank_round` with ``canaries`` canaries.

    Starts run ``run`` under the config's store (it must not exist yet), trains the bank's
    round with the included canaries, reads the incoming and the published adapter back from
    the store and scores every canary by its coordinate's movement (see the module docstring).

    Args:
        config: the federation; its privacy section is the product's (``secure``) or replaced
            by DP-SGD with σ = 0 (``off``).
        mode: ``secure`` or ``off``.
        canaries: ``m``, at most the number of trained coordinates.
        guesses_in: ``k₊``, "in" guesses for the highest scores.
        guesses_out: ``k₋``, "out" guesses for the lowest scores.
        seed: seed of the auditor's coins, coordinates and signs (never of the bank's noise).
        bank: the audited bank (default: the first).
        run: the run's name.
        confidence: of the lower bound.
        lora_only: put the canaries on LoRA coordinates only (the default), not on the head,
            whose rows' gradients are the largest and would drown them.

    Raises:
        ValueError: more canaries than trained coordinates, or more guesses than canaries.
        RuntimeError: the bank did not train the round (its outcome is not ``ok``).

    """
    config = _mode_config(config, mode)
    bank = bank or config.federation.banks[0].name
    runtime = Runtime(config)
    initialize(config, run=run, runtime=runtime)
    rng = np.random.default_rng(seed)
    drawn = _draw_canaries(runtime.model, canaries, rng, lora_only=lora_only)
    included = rng.random(canaries) < 0.5
    inserted = DiracCanaries(
        runtime.model,
        [c for c, i in zip(drawn, included, strict=True) if i],
        spike=SPIKE * config.privacy.max_grad_norm,
    )
    started = time.perf_counter()
    outcome = run_bank_round(config, run=run, bank=bank, round_index=1, runtime=runtime, canaries=inserted)
    seconds = time.perf_counter() - started
    if outcome.status != "ok":
        raise RuntimeError(f"bank {bank} did not train round 1: {outcome.status} ({outcome.message})")
    store = open_run_store(config, run)
    before = runtime.initial_adapter  # round 0's global (a spec in the store, fedlora.initial)
    after = load_adapter(store, update_prefix(1, bank)).tensors
    scores = np.array(
        [-c.sign * float(after[c.name].flatten()[c.flat] - before[c.name].flatten()[c.flat]) for c in drawn]
    )
    correct = correct_guesses(scores, included, guesses_in=guesses_in, guesses_out=guesses_out)
    delta = outcome.delta if outcome.delta is not None else default_delta(outcome.num_examples)
    report = load_bank_privacy(store, bank)
    if report is not None:  # secure: the bank's published plan
        sigma, rate = float(report["plan"]["noise_multiplier"]), float(report["plan"]["sample_rate"])
    else:  # off: the non-private baseline's schedule (bank_round._Schedule.not_private), σ = 0
        sigma, rate = 0.0, min(1.0, config.training_for(bank).batch_size / len(runtime.bank_data(bank).train))
    guesses = guesses_in + guesses_out
    return RoundAuditResult(
        mode=mode,
        bank=bank,
        reported_epsilon=outcome.epsilon if outcome.epsilon is not None else math.inf,
        epsilon_lower_bound=epsilon_lower_bound(
            canaries=canaries, guesses=guesses, correct=correct, delta=delta, confidence=confidence
        ),
        confidence=confidence,
        delta=delta,
        noise_multiplier=sigma,
        sample_rate=rate,
        steps=outcome.steps,
        canaries=canaries,
        included=len(inserted),
        guesses=guesses,
        correct=correct,
        seconds=seconds,
    )
