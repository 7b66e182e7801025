"""The local training loop, written out: Poisson sampling, per-example clipping, noise, step.

One DP-SGD step (Abadi et al., 2016, Alg. 1, with Poisson sampling as analysed by the
accountant):

1. sample each of the bank's ``n`` examples independently with probability ``q``;
2. per-example gradients ``g_i`` of the trainable parameters (:mod:`fedlora.privacy.per_sample`);
3. clip: ``ḡ_i = g_i · min(1, C/‖g_i‖)``;
4. noise: ``g̃ = (Σ_i ḡ_i + N(0, σ²C²·I)) / (q·n)`` -- divided by the *expected* batch size,
   so the sensitivity does not depend on the sampled batch size;
5. optimizer step on ``g̃`` (Adam or SGD; post-processing of a DP quantity).

The non-private baseline takes the same batches and the plain mean gradient; with
``privacy.clip_when_disabled`` it runs steps 2-4 with σ = 0 (clipped, divided by ``q·n``, no noise).

An auditor may add :class:`GradientCanaries` (:mod:`fedlora.privacy.round_audit`): extra examples
of the training set, Poisson-sampled with the rows in step 1, whose per-example gradients are
given rather than computed in step 2, then clipped and noised like every row. Without them
(the default, and always in the product) nothing changes, down to the random draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from fedlora.config import TrainingConfig
from fedlora.model.encoding import RowSet, example_losses
from fedlora.privacy.clipping import clip_and_sum
from fedlora.privacy.per_sample import PerExampleGradients
from fedlora.privacy.randomness import Randomness


@dataclass(frozen=True)
class DPSettings:
    """The DP-SGD parameters of one bank (keyword-only units spelled out)."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    expected_batch_size: float | None = None
    """Divisor of the noised sum: ``q·n_declared`` (public); None = ``q·len(data)``."""


class GradientCanaries(Protocol):
    """Extra examples whose per-example gradients are given, not computed: an auditor's canaries.

    They join the training set as examples ``n, …, n + len(canaries) − 1`` (after the ``n`` rows):
    sampled at the same rate, clipped to ``C`` and summed with the rows, under the same noise.
    The divisor ``q·n`` is unchanged, as it is for any neighbouring data set.
    """

    def __len__(self) -> int:
        """How many canaries are in the training set."""
        ...

    def gradients(self, index: torch.Tensor) -> dict[torch.Tensor, torch.Tensor]:
        """Per-example gradients ``{param: (len(index), *param.shape)}`` of canaries ``index`` (0-based)."""
        ...


@dataclass(frozen=True)
class TrainStats:
    """What one local training run did."""

    steps: int
    examples_seen: int
    mean_loss: float
    mean_grad_norm: float
    clipped_fraction: float


def steps_per_round(*, num_examples: int, config: TrainingConfig) -> int:
    """``local_steps`` if set, else ``ceil(local_epochs · n / batch_size)`` (expected passes)."""
    if config.local_steps is not None:
        return config.local_steps
    return max(1, int(np.ceil(config.local_epochs * num_examples / config.batch_size)))


def round_training(config: TrainingConfig, *, round_index: int, rounds: int) -> TrainingConfig:
    """The training section of round ``t = round_index`` of ``T = rounds``: a cosine learning rate over the rounds.

    With ``min_learning_rate = m`` set, each rate ``η`` (``learning_rate``, ``lora_learning_rate``) becomes
    ``m + (η − m)·(1 + cos(π·(t − 1)/(T − 1)))/2``: ``η`` in round 1, ``m`` in round ``T`` (FinLoRA's FedLoRA
    anneals 1e-4 → 1e-5 over its rounds the same way). Unset: ``config`` unchanged. A learning rate is
    post-processing of the privatised gradient, so the schedule costs no privacy.
    """
    low = config.min_learning_rate
    if low is None:
        return config
    progress = (round_index - 1) / (rounds - 1) if rounds > 1 else 0.0
    factor = (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0))) / 2.0

    def at(rate: float) -> float:
        return low + (rate - low) * factor

    lora = config.lora_learning_rate
    return config.model_copy(
        update={"learning_rate": at(config.learning_rate), "lora_learning_rate": None if lora is None else at(lora)}
    )


def make_optimizer(
    params: list[nn.Parameter], config: TrainingConfig, *, lora: frozenset[nn.Parameter] = frozenset()
) -> torch.optim.Optimizer:
    """Adam or SGD over ``params``: those in ``lora`` at ``lora_learning_rate``, the rest at ``learning_rate``.

    Both groups step on the same privatised gradient, so the split is post-processing (free in privacy).
    """
    lora_rate = config.lora_learning_rate or config.learning_rate
    groups: list[dict[str, Any]] = [
        {"params": [p for p in params if p not in lora], "lr": config.learning_rate},
        {"params": [p for p in params if p in lora], "lr": lora_rate},
    ]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.learning_rate)
    return torch.optim.SGD(groups, lr=config.learning_rate, momentum=0.9)


def dp_gradient(
    model: nn.Module,
    collector: PerExampleGradients,
    data: RowSet,
    index: torch.Tensor,
    *,
    dp: DPSettings,
    physical_batch_size: int,
    randomness: Randomness,
    device: torch.device,
    canaries: GradientCanaries | None = None,
) -> tuple[dict[torch.Tensor, torch.Tensor], float, torch.Tensor]:
    """The noised DP-SGD gradient for the sampled examples ``index``.

    ``index`` holds rows of ``data`` (below ``len(data)``) and, from ``len(data)`` on, ``canaries``.

    Returns:
        ``({param: g̃}, summed loss, per-example norms)`` (loss and norms of the rows only).

    """
    params = collector.parameters()
    summed: dict[torch.Tensor, torch.Tensor] = {p: torch.zeros_like(p, dtype=torch.float32) for p in params}
    loss_total = 0.0
    norms: list[torch.Tensor] = []

    def add_clipped(per_example: dict[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        clipped = clip_and_sum(per_example, max_grad_norm=dp.max_grad_norm)
        for p, g in clipped.summed.items():
            summed[p] += g.float()
        return clipped.norms.detach()

    rows, canary_index = index[index < len(data)], index[index >= len(data)] - len(data)
    for chunk in torch.split(rows, physical_batch_size):
        if len(chunk) == 0:
            continue
        with collector:
            losses = example_losses(model, data, chunk, device)
        norms.append(add_clipped(collector.compute(losses.sum())))
        loss_total += float(losses.detach().sum())
    if canaries is not None:
        for chunk in torch.split(canary_index, physical_batch_size):
            if len(chunk) > 0:
                add_clipped(canaries.gradients(chunk))
    expected_batch = dp.expected_batch_size or dp.sample_rate * len(data)
    std = dp.noise_multiplier * dp.max_grad_norm

    def noise(s: torch.Tensor) -> torch.Tensor | float:  # σ = 0: the clipped non-private baseline draws nothing
        return randomness.normal(s.shape, std, device=s.device, dtype=torch.float32) if std > 0 else 0.0

    noised = {p: (s + noise(s)) / expected_batch for p, s in summed.items()}
    return noised, loss_total, torch.cat(norms) if norms else torch.zeros(0)


def plain_gradient(
    model: nn.Module, data: RowSet, index: torch.Tensor, *, physical_batch_size: int, device: torch.device
) -> float:
    """Accumulate the mean (non-private) gradient of rows ``index`` into ``.grad``; return the summed loss."""
    loss_total = 0.0
    for chunk in torch.split(index, physical_batch_size):
        losses = example_losses(model, data, chunk, device)
        (losses.sum() / len(index)).backward()
        loss_total += float(losses.detach().sum())
    return loss_total


def train_local(
    model: nn.Module,
    data: RowSet,
    *,
    config: TrainingConfig,
    steps: int,
    sample_rate: float,
    dp: DPSettings | None,
    randomness: Randomness,
    device: torch.device,
    canaries: GradientCanaries | None = None,
) -> TrainStats:
    """Run ``steps`` local steps with Poisson-sampled batches (DP-SGD when ``dp`` is given).

    An auditor's ``canaries`` (DP-SGD only) are sampled with the rows, in one Poisson draw over
    ``len(data) + len(canaries)`` examples; without them (the product) the draw is over the rows.

    Raises:
        ValueError: canaries without DP-SGD (they are examples only to the clipped path).

    """
    if canaries is not None and dp is None:
        raise ValueError("gradient canaries need DP-SGD (dp): the plain path has no per-example gradients")
    population = len(data) + (len(canaries) if canaries is not None else 0)
    model.train()
    collector = PerExampleGradients(model) if dp is not None else None
    params = collector.parameters() if collector is not None else [p for p in model.parameters() if p.requires_grad]
    lora = frozenset(p for n, p in model.named_parameters() if "lora_" in n and p.requires_grad)
    optimizer = make_optimizer(params, config, lora=lora)
    loss_sum, seen, norm_sum, clipped = 0.0, 0, 0.0, 0
    for _ in range(steps):
        index = torch.nonzero(randomness.poisson_mask(population, sample_rate)).flatten()
        optimizer.zero_grad(set_to_none=True)
        if dp is not None and collector is not None:
            grads, loss, norms = dp_gradient(
                model,
                collector,
                data,
                index,
                dp=dp,
                physical_batch_size=config.physical_batch_size,
                randomness=randomness,
                device=device,
                canaries=canaries,
            )
            for p, g in grads.items():
                p.grad = g.to(p.dtype)
            norm_sum += float(norms.sum())
            clipped += int((norms > dp.max_grad_norm).sum())
        elif len(index) > 0:
            loss = plain_gradient(model, data, index, physical_batch_size=config.physical_batch_size, device=device)
        else:
            continue
        optimizer.step()
        loss_sum += loss
        seen += int((index < len(data)).sum())
    return TrainStats(
        steps=steps,
        examples_seen=seen,
        mean_loss=loss_sum / seen if seen else float("nan"),
        mean_grad_norm=norm_sum / seen if seen and dp is not None else float("nan"),
        clipped_fraction=clipped / seen if seen and dp is not None else float("nan"),
    )


@torch.no_grad()
def predict_probabilities(model: nn.Module, data: RowSet, *, batch_size: int, device: torch.device) -> np.ndarray:
    """Class probabilities ``softmax(logits)`` of every row, in order, shape ``(n, K)`` (eval mode, no dropout)."""
    model.eval()
    scores: list[torch.Tensor] = []
    for chunk in torch.split(torch.arange(len(data)), batch_size):
        logits, _ = data.logits(model, chunk, device)
        scores.append(torch.softmax(logits, dim=-1).cpu())
    return torch.cat(scores).numpy() if scores else np.zeros((0, 2))


def predict_scores(model: nn.Module, data: RowSet, *, batch_size: int, device: torch.device) -> np.ndarray:
    """What :func:`fedlora.evaluation.compute_metrics` scores: P(class 1) ``(n,)`` for two classes, else ``(n, K)``."""
    probabilities = predict_probabilities(model, data, batch_size=batch_size, device=device)
    return probabilities[:, 1] if probabilities.shape[1] == 2 else probabilities


def predict_default_probability(model: nn.Module, data: RowSet, *, batch_size: int, device: torch.device) -> np.ndarray:
    """P(default) for every row, in order (eval mode, no dropout).

    Raises:
        ValueError: the rows have more than two classes (a text task; use :func:`predict_scores`).

    """
    probabilities = predict_probabilities(model, data, batch_size=batch_size, device=device)
    if probabilities.shape[1] != 2:
        raise ValueError(f"P(default) needs two classes; these rows have {probabilities.shape[1]}")
    return probabilities[:, 1]
