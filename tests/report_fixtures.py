"""Synthetic run summaries for the report tests (not a test file): many banks, long names, every section."""

from __future__ import annotations

import numpy as np

from fedlora.privacy.dp_evaluation import noised, score_histograms
from fedlora.privacy.randomness import make_randomness
from fedlora.records import FinalAdapter, RoundRecord, RunSummary
from fedlora.report import PooledScores, ReleasedHistograms

LONG_NAMES = [
    f"{name}-{i}"
    for i, name in enumerate(
        [
            "first-national-savings-and-loan-association-of-greater-springfield",
            "cooperative-raiffeisen-landesbank-nordrhein-westfalen-privatkunden",
            "bank-b",
            "credit-union-of-the-pacific-northwest-employees",
            "société-générale-de-crédit-hypothécaire-et-foncier",
            "x",
            "a" * 70,
            "regional-mortgage-lender-with-a-very-long-name",
            "bank-of-the-eastern-seaboard",
            "the-tenth-bank",
        ]
    )
]


def scores_for(rows: int = 900, *, seed: int = 0) -> PooledScores:
    """Two-class scores that separate the classes like a decent credit model (AUC about 0.78)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(rows) < 0.22).astype(np.int64)
    p = 1.0 / (1.0 + np.exp(-(rng.normal(-1.4, 0.8, rows) + 1.1 * y)))
    return PooledScores(labels=y, scores=p, class_names=("no default", "default"), adapter_round=6)


def text_scores_for(rows: int = 600, *, seed: int = 0) -> PooledScores:
    """Three-class probabilities (a text task), right about 70 % of the time."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, rows)
    logits = rng.normal(0, 1, (rows, 3))
    logits[np.arange(rows), y] += 1.5
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return PooledScores(labels=y, scores=p, class_names=("negative", "neutral", "positive"), adapter_round=6)


def released_for(scores: PooledScores, banks: list[str]) -> ReleasedHistograms:
    """The banks' noised histograms of ``scores``, summed (σ 8 per bank and count)."""
    exact = score_histograms(scores.labels, scores.scores)
    one = noised(exact, noise_multiplier=8.0, randomness=make_randomness(insecure_seed=1))
    return ReleasedHistograms(
        counts=one.counts, kind="logit_bins", adapter_round=5, banks=banks, noise_std=8.0 * len(banks) ** 0.5
    )


def summary_for(
    banks: list[str], *, rounds: int = 6, central: bool = True, text: bool = False, baselines: bool = True
) -> RunSummary:
    """A summary of ``rounds`` rounds over ``banks``: central metrics (or only DP releases), privacy, baselines."""
    records = []
    for r in range(1, rounds + 1):
        auc = 0.70 + 0.012 * r if central else None
        metrics = {"auc": auc, "ks": 0.4, "accuracy": 0.6 + 0.02 * r, "f1": 0.55 + 0.02 * r, "brier": 0.15, "n": 900.0}
        dp = {"of_global_round": r - 1, "banks": banks, "auc": 0.69 + 0.012 * r, "ks": 0.38, "brier": 0.16, "n": 905.0}
        records.append(
            RoundRecord(
                round=r,
                epsilon={b: 8.0 * r / rounds for b in banks},
                banks=banks[:-1] if r == 3 else banks,
                failed={banks[-1]: "RuntimeError (details stay in the bank's own report)"} if r == 3 else {},
                steps={b: 12 for b in banks},
                dp_evaluation=None if text else dp,
                auc=auc,
                ks=0.4 if central else None,
                metrics=metrics if central else {},
            )
        )
    privacy = {
        b: {
            "noise_multiplier": 0.8408203125,
            "sample_rate": 0.2813186813186813,
            "steps": 72,
            "delta": 0.00010989010989010989,
            "max_grad_norm": 1.0,
            "accountant": "prv",
            "target_epsilon": 8.0,
            "planned_steps": 72,
            "evaluation_noise_multiplier": 8.4375,
            "epsilon": 7.99120741852583,
            "charged_rounds": list(range(1, rounds + 1)),
            "source": "the bank's published report (its own ledger is authoritative)",
        }
        for b in banks
    }
    last = records[-1]
    base = None
    if baselines and not text:
        base = {
            "per_bank": {
                b: {"alone_lr_auc": 0.77, "alone_dp_lr_auc": 0.73, "epsilon": 8.0, "consortium_auc": 0.78}
                for b in banks
            },
            "pooled": {"lr_pooled_nonprivate": 0.773, "dp_lr_averaged": 0.764},
        }
    elif baselines:
        base = {
            "per_bank": {
                b: {
                    "head_only": {"accuracy": 0.61, "weighted_f1": 0.6},
                    "tfidf_lr": {"accuracy": 0.58, "weighted_f1": 0.57},
                    "dp_head_only": {"accuracy": 0.5, "weighted_f1": 0.45},
                    "epsilon": 8.0,
                    "consortium": {"accuracy": 0.7, "weighted_f1": 0.69},
                }
                for b in banks
            },
            "pooled": {"zero_shot": {"accuracy": 0.4, "weighted_f1": 0.3}, "tfidf_lr": {"accuracy": 0.62}},
        }
    return RunSummary(
        run="report-test",
        run_dir="/tmp/runs/report-test",
        store_uri="/tmp/runs/report-test",
        model="minilm",
        dataset="tfns" if text else "taiwan_credit",
        aggregation="fedavg-ffa-lora (exact)",
        privacy_mode="dp-sgd per-example (prv)",
        trainable_parameters=1234,
        final=FinalAdapter(
            auc=last.auc,
            metrics=last.metrics,
            per_bank_test={},
            epsilon=dict(last.epsilon),
            adapter="final/adapter.safetensors",
            peft_adapter="final/peft",
            sha256="0" * 64,
        ),
        rounds=records,
        privacy=privacy,
        baselines=base,
    )
