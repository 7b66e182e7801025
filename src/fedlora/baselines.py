"""Baselines on the same splits as the federation: logistic regression, non-private and DP.

Features are built from the schema alone (public): one-hot categories, and numeric values
mapped to ``[0, 1]`` by a signed log transform scaled by the schema's plausible bounds, so no
statistic of any bank's rows is used (a non-private standardisation would leak).

DP logistic regression (per bank, then averaged once, like a one-round federation): Poisson-
sampled DP-SGD with per-example clipping and Gaussian noise from :mod:`fedlora.privacy`, σ
calibrated by the same Opacus accountant for the bank's (ε, δ) over all its steps (Abadi et al.,
2016; Chaudhuri, Monteleoni & Sarwate, 2011 for private ERM).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from fedlora.data.banks import BankData
from fedlora.data.features import schema_features
from fedlora.data.schema import DatasetSchema
from fedlora.evaluation import compute_metrics
from fedlora.privacy.accounting import calibrate_noise_multiplier, default_delta
from fedlora.privacy.randomness import Randomness, SeededRandomness


def logistic_regression_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    """P(default) of a non-private L2-regularised logistic regression (scikit-learn, C=1)."""
    model = LogisticRegression(max_iter=5000)
    model.fit(train_x, train_y)
    return np.asarray(model.predict_proba(test_x)[:, 1])


@dataclass(frozen=True)
class DPLogisticSettings:
    """DP-SGD settings of the DP logistic-regression baseline."""

    target_epsilon: float
    delta: float | None = None
    steps: int = 200
    sample_rate: float = 0.5
    max_grad_norm: float = 1.0
    learning_rate: float = 2.0
    accountant: str = "prv"


PerExampleGradients = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(w, x_b, t_b) -> (b, *w.shape)``: each sampled row's gradient of its loss at ``w`` (rows carry a bias 1)."""


def dp_sgd_linear(
    x: np.ndarray,
    targets: torch.Tensor,
    *,
    shape: tuple[int, ...],
    gradients: PerExampleGradients,
    settings: DPLogisticSettings,
    randomness: Randomness,
) -> np.ndarray:
    """Weights of shape ``shape`` (the last axis: features, then the bias) trained by DP-SGD, (ε, δ)-DP per row.

    Each step: Poisson sample (rate q); each sampled row's gradient (``gradients``) clipped to
    Frobenius norm ``C``; summed; ``N(0, σ²C²)`` added to each entry; divided by the expected batch
    ``q·n``; SGD with momentum 0.9. σ is calibrated for ``settings.target_epsilon`` over all steps by
    the maintained accountant (:func:`fedlora.privacy.accounting.calibrate_noise_multiplier`).
    """
    n = len(targets)
    delta = settings.delta if settings.delta is not None else default_delta(n)
    sigma = calibrate_noise_multiplier(
        target_epsilon=settings.target_epsilon,
        delta=delta,
        sample_rate=settings.sample_rate,
        steps=settings.steps,
        accountant=settings.accountant,
    )
    features = torch.from_numpy(np.hstack([x, np.ones((n, 1))])).double()
    w = torch.zeros(shape, dtype=torch.float64)
    velocity = torch.zeros_like(w)
    for _ in range(settings.steps):
        rows = torch.nonzero(randomness.poisson_mask(n, settings.sample_rate)).flatten()
        grads = gradients(w, features[rows], targets[rows])
        norms = grads.flatten(1).norm(dim=1)
        factor = (settings.max_grad_norm / (norms + 1e-12)).clamp(max=1.0)
        clipped = grads * factor.view(-1, *([1] * len(shape)))
        noise = randomness.normal(w.shape, sigma * settings.max_grad_norm, device=w.device, dtype=torch.float64)
        gradient = (clipped.sum(dim=0) + noise) / (settings.sample_rate * n)
        velocity = 0.9 * velocity + gradient
        w = w - settings.learning_rate * velocity
    return w.numpy()


def dp_logistic_regression(
    x: np.ndarray, y: np.ndarray, *, settings: DPLogisticSettings, randomness: Randomness
) -> np.ndarray:
    """Weights (last entry = bias) of logistic regression trained with DP-SGD (:func:`dp_sgd_linear`), (ε, δ)-DP.

    The gradient of row ``i``'s log loss is ``(σ(w·[x_i, 1]) − y_i)·[x_i, 1]``.
    """
    return dp_sgd_linear(
        x,
        torch.from_numpy(y.astype(np.float64)),
        shape=(x.shape[1] + 1,),
        gradients=lambda w, xb, yb: (torch.sigmoid(xb @ w) - yb)[:, None] * xb,
        settings=settings,
        randomness=randomness,
    )


def logistic_scores(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``σ(x·w + b)`` for weights from :func:`dp_logistic_regression` (or their average)."""
    z = x @ weights[:-1] + weights[-1]
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -50, 50))), dtype=np.float64)


def mean_interval(values: list[float], *, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t interval of the mean (half-width NaN for one value)."""
    from scipy import stats

    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if len(arr) < 2:
        return (float(arr.mean()) if len(arr) else math.nan), math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr)))
    return float(arr.mean()), half


@dataclass(frozen=True)
class BankBaselines:
    """What one bank gets alone, on its own test rows: non-private and DP logistic regression."""

    bank: str
    alone_lr_auc: float
    alone_dp_lr_auc: float | None
    epsilon: float | None


def bank_alone_baselines(
    banks: dict[str, BankData],
    schema: DatasetSchema,
    *,
    epsilon: dict[str, float] | None,
    seed: int,
) -> tuple[list[BankBaselines], dict[str, float]]:
    """Each bank alone (LR, and DP-LR at the bank's own ε) and the pooled baselines, on the same splits.

    Returns ``(per bank, pooled)`` where pooled holds the AUC on every bank's test rows of LR
    trained on all training rows (non-private) and of the example-weighted average of the banks'
    DP-LR weights (one-shot federated DP-LR).
    """
    feats = {n: {k: schema_features(f, schema) for k, f in b.frames.items()} for n, b in banks.items()}
    labels = {n: {k: f["label"].to_numpy() for k, f in b.frames.items()} for n, b in banks.items()}

    def auc(y: np.ndarray, p: np.ndarray) -> float:
        return compute_metrics(y, p).auc

    per_bank: list[BankBaselines] = []
    weights: list[np.ndarray] = []
    sizes: list[int] = []
    for i, name in enumerate(banks):
        x, y = feats[name], labels[name]
        alone = auc(y["test"], logistic_regression_scores(x["train"], y["train"], x["test"]))
        dp_auc: float | None = None
        eps = epsilon.get(name) if epsilon else None
        if eps is not None:
            w = dp_logistic_regression(
                x["train"],
                y["train"],
                settings=DPLogisticSettings(target_epsilon=eps),
                randomness=SeededRandomness(seed + i),
            )
            weights.append(w)
            sizes.append(len(y["train"]))
            dp_auc = auc(y["test"], logistic_scores(w, x["test"]))
        per_bank.append(BankBaselines(name, alone, dp_auc, eps))
    test_x = np.vstack([feats[n]["test"] for n in banks])
    test_y = np.concatenate([labels[n]["test"] for n in banks])
    train_x = np.vstack([feats[n]["train"] for n in banks])
    train_y = np.concatenate([labels[n]["train"] for n in banks])
    pooled = {"lr_pooled_nonprivate": auc(test_y, logistic_regression_scores(train_x, train_y, test_x))}
    if weights:
        avg = np.average(np.stack(weights), axis=0, weights=sizes)
        pooled["dp_lr_averaged"] = auc(test_y, logistic_scores(avg, test_x))
    return per_bank, pooled
