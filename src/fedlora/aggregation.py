"""Aggregation (run by whichever process commits a round): bank sampling, update validation, weighted FedAvg.

FedAvg (McMahan et al., 2017): the new global adapter is ``Σ_k n_k·θ_k / Σ_k n_k`` over the
valid updates ``θ_k`` of banks with ``n_k`` training examples. In FFA-LoRA mode the frozen A
matrices are identical across banks, so the average of the products ``B_k·A`` equals the
product of the averages and the aggregate is exact; in plain LoRA mode A and B are averaged
separately (the standard, approximate FedAvg of LoRA).

Every update is checked against a reference: the global adapter the round started from, or, in
round 1 at a coordinator that never holds the model (round 0 is a spec, :mod:`fedlora.initial`),
the update most others agree with (:func:`peer_reference`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from fedlora.config import Config
from fedlora.errors import FedLoRAError
from fedlora.model import AdapterState

log = logging.getLogger(__name__)


class AggregationError(FedLoRAError, RuntimeError):
    """Too few valid updates to form a round."""


@dataclass(frozen=True)
class Update:
    """A bank's adapter, the weight it carries, and what its training could possibly have changed.

    ``max_change_norm`` bounds ``‖θ_k − θ_global‖₂`` given the bank's optimizer, clipping and
    step count (see :func:`max_update_norm`); ``frozen`` names tensors that must come back
    unchanged (FFA-LoRA's shared A matrices).
    """

    bank: str
    adapter: AdapterState
    num_examples: int
    max_change_norm: float | None = None
    frozen: frozenset[str] = field(default_factory=frozenset)


ADAM_BETAS = (0.9, 0.999)
SGD_MOMENTUM = 0.9


def max_update_norm(
    *,
    optimizer: str,
    learning_rate: float,
    steps: int,
    num_params: int,
    max_grad_norm: float | None = None,
    noise_multiplier: float | None = None,
    sample_rate: float | None = None,
    num_examples: int | None = None,
) -> float | None:
    """An upper bound on ``‖θ_after − θ_before‖₂`` that honest local training cannot exceed.

    * Adam: each coordinate moves at most ``α·max(1, (1−β₁)/√(1−β₂))`` per step (Kingma & Ba,
      2015, §2.1), whatever the gradient, so ``‖Δ‖₂ ≤ √d · steps · α · max(1, (1−β₁)/√(1−β₂))``.
    * SGD with momentum μ under DP-SGD: the privatised gradient is ``(Σ clip(g_i) + N(0, σ²C²I))/(q·n)``;
      the clipped sum has norm ≤ n·C and the Gaussian's norm is ≤ σC(√d + 10) except with
      probability ≤ e⁻⁵⁰ (Laurent & Massart, 2000), and momentum scales a step by ≤ 1/(1−μ).
      Without clipping there is no bound (None).

    An update beyond the bound was not produced by the configured training: it is tampered
    with, or the bank ran something else.
    """
    if optimizer == "adam":
        beta1, beta2 = ADAM_BETAS
        per_step = learning_rate * max(1.0, (1 - beta1) / math.sqrt(1 - beta2))
        return math.sqrt(num_params) * steps * per_step * 1.001
    if max_grad_norm is None or noise_multiplier is None or not sample_rate or not num_examples:
        return None
    gradient = max_grad_norm * (num_examples + noise_multiplier * (math.sqrt(num_params) + 10))
    gradient /= sample_rate * num_examples
    return steps * learning_rate * gradient / (1 - SGD_MOMENTUM) * 1.001


def sample_banks(
    banks: list[str],
    *,
    fraction_fit: float,
    min_banks: int,
    round_index: int,
    seed: int,
    selection: Literal["random", "cyclic"] = "random",
) -> list[str]:
    """The ``m = max(min_banks, round(fraction_fit·K))`` banks (at most K) that train round ``round_index``.

    In config order. ``random``: a seeded draw of ``m`` of the K banks, independent each round. ``cyclic``: round
    ``r ≥ 1`` takes banks ``(r−1)·m … r·m − 1`` modulo K, so over any K consecutive rounds every bank
    trains ``m`` times (cyclic client participation, Cho et al., 2023, "On the Convergence of Federated
    Averaging with Cyclic Client Participation").
    """
    count = min(len(banks), max(min_banks, round(fraction_fit * len(banks))))
    if selection == "cyclic":
        start = (max(round_index, 1) - 1) * count
        chosen = {(start + i) % len(banks) for i in range(count)}
    else:
        rng = np.random.default_rng([seed, round_index])
        chosen = set(rng.choice(len(banks), size=count, replace=False).tolist())
    return [b for i, b in enumerate(banks) if i in chosen]


def select_banks(config: Config, round_index: int) -> list[str]:
    """The banks that train in ``round_index`` (seeded, identical in every process)."""
    return sample_banks(
        [b.name for b in config.federation.banks],
        fraction_fit=config.federation.fraction_fit,
        min_banks=config.federation.min_banks,
        round_index=round_index,
        seed=config.seed,
        selection=config.federation.bank_selection,
    )


def participations(config: Config, bank: str) -> int:
    """How many of the run's rounds ``bank`` trains: the rounds whose :func:`select_banks` names it.

    A function of the request only (its banks, ``fraction_fit``, ``min_banks``, ``bank_selection``,
    seed and rounds), so a bank computes it itself: it trains only in those rounds (a Job for any
    other round is answered ``not_selected``), and its ledger refuses any charge past its cap.
    """
    return sum(bank in select_banks(config, r) for r in range(1, config.federation.rounds + 1))


def validate_update(update: Update, reference: AdapterState, *, peer_bound: float | None = 0.0) -> str | None:
    """Why ``update`` is malformed compared to ``reference`` (keys, shapes, dtypes, finiteness), or None.

    ``reference`` is the adapter both started from, or (``peer_bound`` not 0) another bank's update
    from the same start: then two honest updates differ by at most the sum of their bounds
    (``‖θ_k − θ_j‖ ≤ ‖θ_k − θ₀‖ + ‖θ_j − θ₀‖``), and ``peer_bound`` is the other's bound (None: unbounded).
    """
    if update.num_examples < 1:
        return f"example count {update.num_examples} < 1"
    missing = sorted(set(reference) - set(update.adapter))
    extra = sorted(set(update.adapter) - set(reference))
    if missing or extra:
        return f"tensor names differ: missing {missing[:3]}, unexpected {extra[:3]}"
    for name, ref in reference.items():
        value = update.adapter[name]
        if value.shape != ref.shape:
            return f"{name}: shape {tuple(value.shape)} != expected {tuple(ref.shape)}"
        if value.dtype != ref.dtype:
            return f"{name}: dtype {value.dtype} != expected {ref.dtype}"
        if not torch.isfinite(value).all():
            return f"{name}: contains NaN or Inf"
        if name in update.frozen and not torch.equal(value, ref):
            return f"{name}: a frozen (FFA-LoRA) tensor was changed"
    allowed = None if update.max_change_norm is None or peer_bound is None else update.max_change_norm + peer_bound
    if allowed is not None:
        change = math.sqrt(
            sum(float((update.adapter[n].double() - ref.double()).pow(2).sum()) for n, ref in reference.items())
        )
        if change > allowed:
            return (
                f"change norm {change:.4g} exceeds the {allowed:.4g} that the configured "
                "training (optimizer, learning rate, steps, clipping) allows"
            )
    return None


def peer_reference(updates: list[Update]) -> Update | None:
    """The update the most others are consistent with (:func:`validate_update` against it as a peer), or None.

    Round 1 at a coordinator without the start (the seeded initial adapter every bank builds): honest
    banks start from the same tensors, so they agree on names, shapes and dtypes, on the frozen
    (FFA-LoRA) A matrices bit for bit, and pairwise within the sum of their change bounds. A minority of
    malformed or tampered updates cannot become the reference; a tie goes to the first in config order.
    """
    best: Update | None = None
    best_agreeing = -1
    for candidate in updates:
        if validate_update(dataclasses.replace(candidate, max_change_norm=None), candidate.adapter) is not None:
            continue  # not even well-formed on its own (non-finite values, no examples)
        agreeing = sum(
            validate_update(u, candidate.adapter, peer_bound=candidate.max_change_norm) is None
            for u in updates
            if u is not candidate
        )
        if agreeing > best_agreeing:
            best, best_agreeing = candidate, agreeing
    return best


def fedavg(updates: list[Update]) -> AdapterState:
    """Example-weighted average ``Σ n_k θ_k / Σ n_k`` of every tensor (computed in float64)."""
    if not updates:
        raise AggregationError("no updates to average")
    total = float(sum(u.num_examples for u in updates))
    first = updates[0].adapter
    result: AdapterState = {}
    for name, ref in first.items():
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for u in updates:
            acc += u.adapter[name].to(torch.float64) * (u.num_examples / total)
        result[name] = acc.to(ref.dtype)
    return result


@dataclass(frozen=True)
class AggregationResult:
    """The new global adapter, which updates were used or rejected (with reasons), and why a round stopped.

    ``adapter`` is None only for a round that stopped in round 1 where the start is the seeded initial
    adapter this process does not hold (:mod:`fedlora.initial`): the global adapter stays that spec.
    """

    adapter: AdapterState | None
    accepted: list[str]
    rejected: dict[str, str]
    stopped: str | None = None


def aggregate(updates: list[Update], reference: AdapterState | None, *, min_banks: int) -> AggregationResult:
    """Validate every update, drop malformed ones (logged), and FedAvg the rest.

    Args:
        updates: The round's updates.
        reference: The adapter the round started from; None: unknown here (round 1 at a coordinator
            that never loads the model), and the updates are checked against :func:`peer_reference`.
        min_banks: The fewest valid updates that form a round.

    Raises:
        AggregationError: fewer than ``min_banks`` valid updates.

    """
    accepted: list[Update] = []
    rejected: dict[str, str] = {}
    peer = peer_reference(updates) if reference is None else None
    for update in updates:
        if reference is not None:
            reason = validate_update(update, reference)
        elif peer is None:
            reason = "malformed (no update of this round is well-formed)"
        elif update is peer:
            reason = None
        else:
            reason = validate_update(update, peer.adapter, peer_bound=peer.max_change_norm)
        if reason is None:
            accepted.append(update)
        else:
            rejected[update.bank] = reason
            log.warning("rejected update of bank %s: %s", update.bank, reason)
    if len(accepted) < min_banks:
        raise AggregationError(
            f"only {len(accepted)} valid update(s) ({', '.join(u.bank for u in accepted) or 'none'}); "
            f"federation.min_banks={min_banks}"
        )
    return AggregationResult(adapter=fedavg(accepted), accepted=[u.bank for u in accepted], rejected=rejected)
