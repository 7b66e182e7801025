"""Privacy accounting and noise calibration with a maintained accountant (Opacus).

Each bank runs the Poisson-subsampled Gaussian mechanism once per DP-SGD step with noise
multiplier ``σ`` and sample rate ``q``. The bank's ledger keeps every ``(σ, q, steps)`` it
ever ran, across all rounds, and ε is always recomputed from the whole ledger:

* ``prv`` (default): the privacy random variable accountant of Gopi, Lee & Wutschitz (2021,
  "Numerical Composition of Differential Privacy"), as implemented in Opacus. We report its
  *upper* bound on ε (Opacus' ``PRVAccountant.get_epsilon``), never the point estimate, so the
  ε shown is guaranteed, not estimated.
* ``rdp``: Rényi DP (Mironov, 2017; Mironov, Talwar & Zhang, 2019), looser but classic.

The noise multiplier is calibrated up front (Opacus ``get_noise_multiplier``, a bisection
that returns the smallest σ found with ε(σ) ≤ target) for the whole schedule: all rounds
times the local steps per round.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from fedlora.errors import FedLoRAError


class PrivacyConfigError(FedLoRAError, ValueError):
    """A privacy setting cannot be honoured (ε ≤ 0, δ ≥ 1/n, budget too small, ...).

    Attributes:
        public_message: the reason without the bank's exact row count (safe to leave the bank).

    """

    def __init__(self, message: str, public_message: str | None = None) -> None:
        super().__init__(message)
        self.public_message = message if public_message is None else public_message


@dataclass(frozen=True)
class MechanismRun:
    """``steps`` compositions of the Poisson-subsampled Gaussian mechanism."""

    noise_multiplier: float
    sample_rate: float
    steps: int


def _merged(history: list[MechanismRun]) -> list[tuple[float, float, int]]:
    """Merge runs with equal (σ, q): k·a + k·b compositions are (a+b) compositions, exactly."""
    merged: dict[tuple[float, float], int] = {}
    for run in history:
        if run.steps > 0:
            key = (run.noise_multiplier, run.sample_rate)
            merged[key] = merged.get(key, 0) + run.steps
    return [(sigma, q, steps) for (sigma, q), steps in merged.items()]


def compute_epsilon(history: list[MechanismRun], *, delta: float, accountant: str = "prv") -> float:
    """ε at ``delta`` after every run in ``history`` (0 when nothing ran)."""
    merged = _merged(history)
    if not merged:
        return 0.0
    return _epsilon_of(tuple(merged), delta, accountant)


# The accountant is a pure function of its arguments, and one PRV evaluation costs ~0.5 s on a CPU core
# (Opacus bounds the PRV domain with an RDP pass over ~150 orders). A process asks the same question
# many times: the ledger's check before a claim and its report after it, every bank of a simulation
# with the same (σ, q), every row of a benchmark. Remembering answers changes no value.
_MEMO_SIZE = 4096


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _epsilon_of(merged: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    acct = create_accountant(mechanism=accountant)
    acct.history = list(merged)
    return float(acct.get_epsilon(delta=delta))


def calibrate_noise_multiplier(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "prv"
) -> float:
    """Smallest σ (to 0.01 in ε) such that ``steps`` steps at ``sample_rate`` stay within ``target_epsilon``.

    Raises:
        PrivacyConfigError: when no σ up to Opacus' maximum reaches the target.

    """
    try:
        return _noise_multiplier_for(target_epsilon, delta, sample_rate, steps, accountant)
    except ValueError as exc:
        raise PrivacyConfigError(
            f"cannot reach ε={target_epsilon} at δ={delta:g} with {steps} steps at sample rate {sample_rate:.4g}: {exc}"
        ) from exc


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _noise_multiplier_for(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """Opacus' bisection (a pure function, remembered like :func:`_epsilon_of`; failures are not cached)."""
    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=0.01,
        )
    )


def declared_count(num_examples: int) -> int:
    """The example count a bank publishes: ``n`` rounded to two significant figures (at least 10).

    The exact ``n`` never leaves the bank. The sample rate ``q = B/n_declared`` and the FedAvg
    weight are computed from this declared value, so neither reveals ``n`` beyond its first two
    digits (a rounded count, as issue 10 allows; it is not itself a DP release).
    """
    if num_examples < 1:
        return 0
    digits = len(str(int(num_examples)))
    step: int = 10 ** max(1, digits - 2)
    return max(10, round(num_examples / step) * step)


def count_upper_bound(declared: int) -> int:
    """The largest exact ``n`` whose :func:`declared_count` can be ``declared``: a public bound on the bank's n.

    With ``s = 10^max(1, digits(declared) − 2)`` every ``n`` that rounds to ``declared`` satisfies
    ``n ≤ declared + s/2`` (a count that rounded up to a new digit, 995 → 1000, is within the
    coarser step of 1000 too). Checks that must hold for the exact ``n`` (``δ < 1/n``) use this
    bound, so that passing or failing them reveals nothing finer than the declared bucket.
    """
    step: int = 10 ** max(1, len(str(int(declared))) - 2)
    return int(declared) + step // 2


def declared_training_count(total_rows: int, *, train_fraction: float) -> int:
    """The training count a bank declares: ``declared_count(round(declared_count(N) · f_train))``.

    It depends on the bank's exact row count ``N`` only through ``declared_count(N)``: the split
    fractions are the request's, and a training count taken from the exact split would let a
    request that moves ``data.test_fraction`` by 1e-6 find where the rounded count flips, and so
    the exact ``N`` (issue 27, finding 3). The DP guarantee does not depend on it: the sample rate
    ``q`` is what Poisson sampling uses and what is accounted.
    """
    return declared_count(max(1, round(declared_count(total_rows) * train_fraction)))


def default_delta(num_examples: int) -> float:
    """δ = 1/(10·n): below 1/n, the largest δ that is still meaningful for n records."""
    return 0.1 / num_examples


@dataclass(frozen=True)
class PrivacyPlan:
    """One bank's privacy parameters for the whole run, computed by the bank from its own rows.

    Attributes:
        declared_examples: the rounded ``n`` the bank publishes (weights, ``q``); see :func:`declared_count`.
        evaluation_noise_multiplier: σ of the DP evaluation histograms (sensitivity 1), or None when
            the bank releases no metrics.

    """

    bank: str
    target_epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float
    steps_per_round: int
    planned_steps: int
    accountant: str
    declared_examples: int = 0
    evaluation_noise_multiplier: float | None = None

    def round_mechanisms(self, *, steps: int | None = None, evaluate: bool = True) -> list[MechanismRun]:
        """What one round charges: the DP-SGD steps, plus one evaluation release when metrics are released."""
        runs = [MechanismRun(self.noise_multiplier, self.sample_rate, self.steps_per_round if steps is None else steps)]
        if evaluate and self.evaluation_noise_multiplier is not None:
            runs.append(MechanismRun(self.evaluation_noise_multiplier, 1.0, 1))
        return runs


def calibrate_with_fixed(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    fixed: list[MechanismRun],
    accountant: str = "prv",
    epsilon_tolerance: float = 0.01,
) -> float:
    """Smallest σ (to ``epsilon_tolerance`` in ε) with ``steps`` DP-SGD steps and ``fixed`` within the target.

    A bisection on σ, like Opacus' ``get_noise_multiplier``, but ε is that of the whole
    composition ``[(σ, q, steps), *fixed]`` computed by the same maintained accountant.

    Raises:
        PrivacyConfigError: when the fixed mechanisms alone exceed the target or no σ ≤ 10⁴ reaches it.

    """

    def eps(sigma: float) -> float:
        return compute_epsilon([MechanismRun(sigma, sample_rate, steps), *fixed], delta=delta, accountant=accountant)

    hi = 1.0
    while eps(hi) > target_epsilon:
        hi *= 2
        if hi > 1e4:
            raise PrivacyConfigError(
                f"cannot reach ε={target_epsilon} at δ={delta:g}: the evaluation releases and {steps} steps at "
                f"sample rate {sample_rate:.4g} exceed it for every σ"
            )
    lo = 0.0
    while True:
        mid = (lo + hi) / 2
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
        if target_epsilon - eps(hi) < epsilon_tolerance or hi - lo < 1e-4:
            return hi


def plan_privacy(
    *,
    bank: str,
    num_examples: int,
    target_epsilon: float,
    delta: float | None,
    batch_size: int,
    steps_per_round: int,
    rounds: int,
    max_grad_norm: float,
    noise_multiplier: float | None,
    accountant: str,
    evaluation_epsilon: float | None = None,
) -> PrivacyPlan:
    """Validate a bank's privacy settings and calibrate σ for ``rounds × steps_per_round`` steps.

    With ``evaluation_epsilon`` the plan reserves ``rounds`` evaluation releases up front:
    their σ is calibrated so that they alone cost ``evaluation_epsilon``, and the DP-SGD σ so
    that training *and* evaluation together stay within ``target_epsilon``.

    ``num_examples`` is the bank's training count; every check and every planned value uses only
    its :func:`declared_count` (and that bucket's :func:`count_upper_bound` for ``δ < 1/n``), so a
    refused schedule reveals nothing finer than the count the bank publishes anyway.

    Raises:
        PrivacyConfigError: ε ≤ 0, δ ≥ 1/n, batch larger than the data, or an unreachable target.

    """
    if not target_epsilon > 0 or not math.isfinite(target_epsilon):
        raise PrivacyConfigError(f"bank {bank}: privacy.target_epsilon must be > 0, got {target_epsilon}")
    if num_examples < 1:
        raise PrivacyConfigError(f"bank {bank}: no training examples")
    declared = declared_count(num_examples)
    delta = default_delta(declared) if delta is None else delta  # 0.1/n_declared < 1/n: n < 10·n_declared
    bound = count_upper_bound(declared)
    if not 0 < delta < 1 / bound:
        raise PrivacyConfigError(
            f"bank {bank}: privacy.delta={delta:g} is not below 1/n for this bank's training rows (n ≈ {declared}, "
            f"so δ < {1 / bound:.3g}); a δ ≥ 1/n allows releasing a whole record"
        )
    if batch_size > declared:
        fix = (
            f"lower its own batch (federation.banks[name={bank}].batch_size), or leave it unset: the batch then "
            "follows the bank's size (training.max_sample_rate)"
        )
        raise PrivacyConfigError(
            f"bank {bank}: batch_size={batch_size} exceeds this bank's training rows (n ≈ {declared}); {fix}"
        )
    sample_rate = min(1.0, batch_size / declared)
    planned = rounds * steps_per_round
    evaluation_sigma: float | None = None
    fixed: list[MechanismRun] = []
    if evaluation_epsilon is not None:
        if evaluation_epsilon >= target_epsilon:
            raise PrivacyConfigError(
                f"bank {bank}: evaluation_epsilon={evaluation_epsilon} leaves nothing of ε={target_epsilon} "
                "for training"
            )
        evaluation_sigma = calibrate_noise_multiplier(
            target_epsilon=evaluation_epsilon, delta=delta, sample_rate=1.0, steps=rounds, accountant=accountant
        )
        fixed = [MechanismRun(evaluation_sigma, 1.0, rounds)]
    if noise_multiplier is None:
        noise_multiplier = (
            calibrate_with_fixed(
                target_epsilon=target_epsilon,
                delta=delta,
                sample_rate=sample_rate,
                steps=planned,
                fixed=fixed,
                accountant=accountant,
            )
            if fixed
            else calibrate_noise_multiplier(
                target_epsilon=target_epsilon,
                delta=delta,
                sample_rate=sample_rate,
                steps=planned,
                accountant=accountant,
            )
        )
    else:
        spent = compute_epsilon(
            [MechanismRun(noise_multiplier, sample_rate, planned), *fixed], delta=delta, accountant=accountant
        )
        if spent > target_epsilon:
            raise PrivacyConfigError(
                f"bank {bank}: privacy.noise_multiplier={noise_multiplier} gives ε={spent:.3f} > target "
                f"{target_epsilon} over {planned} steps; raise it or leave it unset to calibrate"
            )
    return PrivacyPlan(
        bank=bank,
        target_epsilon=target_epsilon,
        delta=delta,
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        max_grad_norm=max_grad_norm,
        steps_per_round=steps_per_round,
        planned_steps=planned,
        accountant=accountant,
        declared_examples=declared,
        evaluation_noise_multiplier=evaluation_sigma,
    )


@dataclass
class PrivacyLedger:
    """Every mechanism run a bank ever took; ε is recomputed from all of it."""

    delta: float
    accountant: str
    history: list[MechanismRun] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return sum(r.steps for r in self.history)

    def epsilon(self) -> float:
        """ε spent so far (upper bound)."""
        return compute_epsilon(self.history, delta=self.delta, accountant=self.accountant)

    def epsilon_after(self, run: MechanismRun) -> float:
        """ε if ``run`` were added now (the budget check before a round)."""
        return compute_epsilon([*self.history, run], delta=self.delta, accountant=self.accountant)

    def record(self, run: MechanismRun) -> None:
        if run.steps > 0:
            self.history.append(run)

    def to_json(self) -> dict[str, object]:
        return {
            "delta": self.delta,
            "accountant": self.accountant,
            "history": [[r.noise_multiplier, r.sample_rate, r.steps] for r in self.history],
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> PrivacyLedger:
        history = data.get("history", [])
        assert isinstance(history, list)
        return cls(
            delta=float(data["delta"]),  # type: ignore[arg-type]
            accountant=str(data["accountant"]),
            history=[MechanismRun(float(s), float(q), int(n)) for s, q, n in history],
        )
