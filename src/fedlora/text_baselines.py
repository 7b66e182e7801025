"""Baselines of a text task on the federation's own splits: what LoRA has to beat.

On the same train/test rows as the consortium's run (``fedlora simulate --baselines`` with
``data.dataset=tfns`` or a bank's text file):

* **zero-shot**: the base decoder (the round-0 adapter: FFA-LoRA starts with ``B = 0``) scored
  by label scoring, ``argmax_k logit(first token of label k | prompt)``; no training;
* **head-only**: frozen features + a linear head. The feature of a row is the base decoder's
  output at its last prompt token, ``h = norm(decoder(prompt))[-1]``, the state that predicts
  the answer. Non-private: multinomial logistic regression (scikit-learn, standardised
  features, C = 1) on all banks' training rows pooled, and on each bank's own. DP: multinomial
  logistic regression by DP-SGD on ``h/‖h‖`` (no statistic of any bank's rows is used to scale
  it), per bank at the bank's own (ε, δ), and the example-weighted average of the banks' weights
  (a one-shot federation of the head, Chaudhuri, Monteleoni & Sarwate, 2011; Abadi et al., 2016);
* **TF-IDF + LR**: word uni- and bigrams, sublinear tf, multinomial LR (C = 10), pooled and
  per bank (non-private).

Every accuracy here is computed in the simulation, which holds every bank's rows; none is
released by a bank in a real consortium.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fedlora.baselines import DPLogisticSettings, dp_sgd_linear
from fedlora.evaluation import compute_class_metrics
from fedlora.model.completion import CompletionSet, decoder_parts
from fedlora.privacy.randomness import Randomness, SeededRandomness


@dataclass(frozen=True)
class PromptFeatures:
    """One split's frozen prompt features and the base model's zero-shot label probabilities."""

    features: np.ndarray
    """``(n, d)``: the decoder's output at the last prompt token."""
    zero_shot: np.ndarray
    """``(n, K)``: softmax over the label scores of the base model."""
    labels: np.ndarray


@torch.no_grad()
def prompt_features(
    model: torch.nn.Module, rows: CompletionSet, *, batch_size: int, device: torch.device
) -> PromptFeatures:
    """:class:`PromptFeatures` of ``rows`` under ``model`` as it is (load the initial adapter first)."""
    head = decoder_parts(model)[1]
    was_training = model.training
    model.eval()
    states, scores = [], []
    try:
        for chunk in torch.split(torch.arange(len(rows)), batch_size):
            h = rows.prompt_states(model, chunk, device)
            states.append(h.float().cpu())
            scores.append(head(h).float()[:, rows.label_tokens.to(device)].cpu())
    finally:
        model.train(was_training)
    width = int(rows.label_tokens.numel())
    logits = torch.cat(scores) if scores else torch.zeros(0, width)
    return PromptFeatures(
        features=(torch.cat(states) if states else torch.zeros(0, 1)).numpy().astype(np.float64),
        zero_shot=torch.softmax(logits, dim=1).numpy().astype(np.float64),
        labels=rows.labels.numpy(),
    )


def _probabilities(model: Any, x: Any, classes: int) -> np.ndarray:
    """``(n, K)`` class probabilities of a fitted scikit-learn classifier, columns for every class 0 … K−1."""
    out = np.zeros((len(x), classes))
    out[:, model.classes_] = model.predict_proba(x)
    return out


def head_only_probabilities(train: PromptFeatures, test: np.ndarray, classes: int) -> np.ndarray:
    """Non-private head-only: standardised features, multinomial logistic regression (C = 1)."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
    model.fit(train.features, train.labels)
    return _probabilities(model, test, classes)


def tfidf_probabilities(
    train_texts: list[str], train_labels: np.ndarray, test_texts: list[str], classes: int
) -> np.ndarray:
    """Non-private TF-IDF (word 1–2-grams, sublinear tf) + multinomial logistic regression (C = 10)."""
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(C=10.0, max_iter=3000)
    )
    model.fit(train_texts, train_labels)
    return _probabilities(model, test_texts, classes)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x_i/‖x_i‖``: a per-row scale that uses no statistic of other rows."""
    return np.asarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12), dtype=np.float64)


def dp_softmax_regression(
    x: np.ndarray, y: np.ndarray, *, classes: int, settings: DPLogisticSettings, randomness: Randomness
) -> np.ndarray:
    """Weights ``(K, d+1)`` (last column = bias) of multinomial LR trained by DP-SGD, (ε, δ)-DP per example.

    The same DP-SGD as the credit baseline (:func:`fedlora.baselines.dp_sgd_linear`); the gradient of
    row ``i``'s cross-entropy is ``(softmax(W·[x_i, 1]) − e_{y_i}) ⊗ [x_i, 1]``.
    """
    onehot = torch.nn.functional.one_hot(torch.from_numpy(y.astype(np.int64)), classes).double()
    return dp_sgd_linear(
        x,
        onehot,
        shape=(classes, x.shape[1] + 1),
        gradients=lambda w, xb, yb: (torch.softmax(xb @ w.T, dim=1) - yb)[:, :, None] * xb[:, None, :],
        settings=settings,
        randomness=randomness,
    )


def softmax_scores(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``softmax(W·[x, 1])`` for weights from :func:`dp_softmax_regression` (or their average)."""
    z = x @ weights[:, :-1].T + weights[:, -1]
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)


@dataclass(frozen=True)
class TextBankSplits:
    """What the baselines read of one bank: its prompts and labels, and its frozen prompt features."""

    train_texts: list[str]
    test_texts: list[str]
    train: PromptFeatures
    test: PromptFeatures


def _scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    metrics = compute_class_metrics(labels, probabilities)
    return {"accuracy": metrics.accuracy, "weighted_f1": metrics.f1}


def text_baselines(
    banks: dict[str, TextBankSplits], *, classes: int, epsilon: dict[str, float] | None, seed: int
) -> dict[str, Any]:
    """Every baseline of the module docstring; ``{"pooled": {name: metrics}, "per_bank": {bank: {name: metrics}}}``.

    Metrics are accuracy and weighted F1 on the test rows (pooled: every bank's; per bank: its own).
    The DP head is trained at each bank's own ε (``epsilon``; None = no DP baselines).
    """
    names = list(banks)
    test_y = np.concatenate([banks[b].test.labels for b in names])
    pooled_train = PromptFeatures(
        features=np.vstack([banks[b].train.features for b in names]),
        zero_shot=np.vstack([banks[b].train.zero_shot for b in names]),
        labels=np.concatenate([banks[b].train.labels for b in names]),
    )
    test_x = np.vstack([banks[b].test.features for b in names])
    pooled: dict[str, dict[str, float]] = {
        "zero_shot": _scores(test_y, np.vstack([banks[b].test.zero_shot for b in names])),
        "head_only": _scores(test_y, head_only_probabilities(pooled_train, test_x, classes)),
        "tfidf_lr": _scores(
            test_y,
            tfidf_probabilities(
                [t for b in names for t in banks[b].train_texts],
                pooled_train.labels,
                [t for b in names for t in banks[b].test_texts],
                classes,
            ),
        ),
    }
    per_bank: dict[str, dict[str, Any]] = {}
    weights: list[np.ndarray] = []
    sizes: list[int] = []
    for i, name in enumerate(names):
        bank = banks[name]
        y = bank.test.labels
        alone: dict[str, Any] = {
            "head_only": _scores(y, head_only_probabilities(bank.train, bank.test.features, classes)),
            "tfidf_lr": _scores(y, tfidf_probabilities(bank.train_texts, bank.train.labels, bank.test_texts, classes)),
        }
        eps = epsilon.get(name) if epsilon else None
        if eps is not None:
            w = dp_softmax_regression(
                unit_rows(bank.train.features),
                bank.train.labels,
                classes=classes,
                settings=DPLogisticSettings(target_epsilon=eps),
                randomness=SeededRandomness(seed + i),
            )
            weights.append(w)
            sizes.append(len(bank.train.labels))
            alone["dp_head_only"] = _scores(y, softmax_scores(w, unit_rows(bank.test.features)))
            alone["epsilon"] = eps
        per_bank[name] = alone
    if weights:
        average = np.average(np.stack(weights), axis=0, weights=sizes)
        pooled["dp_head_only_averaged"] = _scores(test_y, softmax_scores(average, unit_rows(test_x)))
    return {"pooled": pooled, "per_bank": per_bank}
