"""An empirical privacy audit of our DP-SGD step in one training run (Steinke, Nasr & Jagielski, 2023).

"Privacy Auditing with One (1) Training Run" (NeurIPS 2023): insert ``m`` canaries, each
included in the training set independently with probability ½ by a coin only the auditor
sees; train once; score every canary; guess "in" for the ``k₊`` highest scores and "out" for
the ``k₋`` lowest. If the mechanism is (ε, δ)-DP, the number of correct guesses ``v`` out of
``r = k₊ + k₋`` is stochastically dominated by ``Binomial(r, e^ε/(1+e^ε))`` up to a δ term
(their Theorem 5.2, with the p-value of their Appendix D):

    p(ε) = P[Binomial(r, q_ε) ≥ v] + 2·m·δ·max_{i ≥ 1} P[v > Binomial(r, q_ε) ≥ v − i] / i,   q_ε = 1/(1+e^{−ε})

and the largest ε with ``p(ε) < 1 − confidence`` is a lower bound on the true ε at that confidence.

What is audited is the bank's DP-SGD step as the product runs it: Poisson sampling and
Gaussian noise from :mod:`fedlora.privacy.randomness`, per-example clipping by
:func:`fedlora.privacy.clipping.clip_and_sum`, the noised sum divided by the expected batch,
and SGD on a parameter vector. The canaries are white-box "Dirac" gradient canaries (canary
``i``'s gradient is ``5C·e_i``, so it is clipped to ``C·e_i``), the strongest kind for a
one-run audit; the other examples have dense random gradients. A canary's score is how far
its coordinate moved. The audit has power: with σ = 0, or with a seeded noise source whose
seed the auditor knows (it replays the noise and subtracts it), it finds a large ε.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy import stats

from fedlora.privacy.accounting import MechanismRun, compute_epsilon
from fedlora.privacy.clipping import clip_and_sum
from fedlora.privacy.randomness import Randomness, SecureRandomness, SeededRandomness


def audit_p_value(*, canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """P-value of ``correct`` right guesses under the hypothesis that the mechanism is (ε, δ)-DP."""
    q = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(stats.binom.sf(correct - 1, guesses, q))
    alpha, tail = 0.0, 0.0
    if delta > 0:
        for i in range(1, correct + 1):
            tail += float(stats.binom.pmf(correct - i, guesses, q))
            alpha = max(alpha, tail / i)
    return min(1.0, beta + 2 * canaries * delta * alpha)


def epsilon_lower_bound(*, canaries: int, guesses: int, correct: int, delta: float, confidence: float = 0.95) -> float:
    """The largest ε that the audit rejects at ``confidence`` (0 when it rejects none)."""
    level = 1 - confidence
    if audit_p_value(canaries=canaries, guesses=guesses, correct=correct, epsilon=0.0, delta=delta) >= level:
        return 0.0
    lo, hi = 0.0, 1.0
    while audit_p_value(canaries=canaries, guesses=guesses, correct=correct, epsilon=hi, delta=delta) < level:
        lo, hi = hi, hi * 2
        if hi > 100:
            return lo
    for _ in range(40):
        mid = (lo + hi) / 2
        if audit_p_value(canaries=canaries, guesses=guesses, correct=correct, epsilon=mid, delta=delta) < level:
            lo = mid
        else:
            hi = mid
    return lo


def correct_guesses(scores: np.ndarray, included: np.ndarray, *, guesses_in: int, guesses_out: int) -> int:
    """Guess "in" for the ``guesses_in`` highest scores and "out" for the ``guesses_out`` lowest; count the right ones.

    The auditor abstains on the others (Steinke, Nasr & Jagielski, 2023, Alg. 1: ``k₊ + k₋ ≤ m``).

    Raises:
        ValueError: more guesses than canaries.

    """
    if guesses_in < 0 or guesses_out < 0 or guesses_in + guesses_out > len(scores):
        raise ValueError(f"need 0 ≤ k₊, k₋ and k₊ + k₋ ≤ m = {len(scores)}; got {guesses_in} and {guesses_out}")
    order = np.argsort(scores, kind="stable")
    top = order[len(order) - guesses_in :]
    return int(included[top].sum() + (~included[order[:guesses_out]]).sum())


NoiseMode = Literal["secure", "off", "known-seed"]


@dataclass(frozen=True)
class AuditResult:
    """One audit: the accountant's ε beside the empirical lower bound."""

    mode: NoiseMode
    reported_epsilon: float
    epsilon_lower_bound: float
    canaries: int
    guesses: int
    correct: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float


def run_audit(
    *,
    mode: NoiseMode,
    canaries: int = 2000,
    others: int = 1000,
    steps: int = 20,
    sample_rate: float = 0.5,
    noise_multiplier: float = 4.0,
    max_grad_norm: float = 1.0,
    delta: float = 1e-5,
    guesses: int = 1000,
    seed: int = 7,
) -> AuditResult:
    """Train once with canaries and audit it.

    Args:
        mode: ``secure`` (the production path: OS CSPRNG noise), ``off`` (σ = 0, no noise) or
            ``known-seed`` (seeded noise; the auditor knows the seed and subtracts the noise).
        canaries: ``m``, each included with probability ½.
        others: examples that are always in the data (dense random gradients of norm ``C`` in
            dimensions of their own: they do not drown the canaries, which makes the audit stronger).
        steps: DP-SGD steps ``T``.
        sample_rate: Poisson rate ``q``.
        noise_multiplier: σ of the run (the reported ε is the accountant's for (σ, q, T)).
        max_grad_norm: clipping bound ``C``.
        delta: δ of the reported ε and of the audit.
        guesses: ``r``: half guessed "in" (top scores), half "out" (bottom scores).
        seed: seed of the auditor's coins and of the data (and of the noise in ``known-seed``).

    """
    coins = np.random.default_rng(seed)
    included = coins.random(canaries) < 0.5
    extra = 64  # the other examples' gradients live in dimensions of their own
    dim = canaries + extra
    c = max_grad_norm
    canary_grads = torch.eye(dim, dtype=torch.float64)[:canaries][torch.from_numpy(included)] * (5 * c)
    dense = torch.zeros(others, dim, dtype=torch.float64)
    dense[:, canaries:] = torch.from_numpy(coins.normal(size=(others, extra)))
    dense = dense / dense.norm(dim=1, keepdim=True) * c
    data = torch.cat([canary_grads, dense])
    n = len(data)
    sigma = 0.0 if mode == "off" else noise_multiplier
    randomness: Randomness = SeededRandomness(seed) if mode == "known-seed" else SecureRandomness()
    replay = SeededRandomness(seed) if mode == "known-seed" else None
    param = torch.zeros(dim, dtype=torch.float64)
    expected_batch = sample_rate * n
    noise_total = torch.zeros(dim, dtype=torch.float64)
    for _ in range(steps):
        mask = randomness.poisson_mask(n, sample_rate)
        clipped = clip_and_sum({param: data[mask]}, max_grad_norm=c).summed[param]
        noise = randomness.normal(torch.Size([dim]), sigma * c, device=param.device, dtype=torch.float64)
        param -= (clipped + noise) / expected_batch  # SGD, learning rate 1
        if replay is not None:  # the auditor replays the generator call for call
            replay.poisson_mask(n, sample_rate)
            noise_total += replay.normal(torch.Size([dim]), sigma * c, device=param.device, dtype=torch.float64)
    released = param + noise_total / expected_batch  # the auditor's best view (noise removed if it can)
    scores = (-released[:canaries]).numpy()  # a canary that was in moved its coordinate by −C/B per sample
    half = guesses // 2
    correct = correct_guesses(scores, included, guesses_in=half, guesses_out=half)
    reported = compute_epsilon([MechanismRun(noise_multiplier, sample_rate, steps)], delta=delta)
    return AuditResult(
        mode=mode,
        reported_epsilon=reported,
        epsilon_lower_bound=epsilon_lower_bound(canaries=canaries, guesses=2 * half, correct=correct, delta=delta),
        canaries=canaries,
        guesses=2 * half,
        correct=correct,
        noise_multiplier=sigma,
        sample_rate=sample_rate,
        steps=steps,
        delta=delta,
    )
