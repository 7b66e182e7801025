"""A text task's baselines and its DP metric release: what LoRA is compared with, and what a bank may publish."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from fedlora.bank_round import run_bank_round
from fedlora.baselines import DPLogisticSettings
from fedlora.config import load_config
from fedlora.federation import initialize
from fedlora.privacy.dp_evaluation import ScoreHistograms, confusion_counts, pooled_class_metrics
from fedlora.privacy.randomness import SeededRandomness
from fedlora.runtime import Runtime
from fedlora.simulate import simulate
from fedlora.text_baselines import dp_softmax_regression, softmax_scores, unit_rows
from helpers import text_task_overrides


def _clusters(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 8) * 4.0
    y = rng.integers(0, 3, size=n)
    return centres[y] + rng.normal(size=(n, 8)), y


def test_dp_softmax_regression_learns_separable_classes_at_epsilon_8() -> None:
    x, y = _clusters(900, seed=1)
    test_x, test_y = _clusters(300, seed=2)
    w = dp_softmax_regression(
        unit_rows(x), y, classes=3, settings=DPLogisticSettings(target_epsilon=8.0), randomness=SeededRandomness(0)
    )
    assert w.shape == (3, 9)
    predicted = softmax_scores(w, unit_rows(test_x)).argmax(axis=1)
    assert accuracy_score(test_y, predicted) > 0.9


def test_the_same_seed_gives_the_same_dp_head_and_another_seed_another() -> None:
    x, y = _clusters(300, seed=3)
    settings = DPLogisticSettings(target_epsilon=1.0, steps=20)
    a, b, c = (
        dp_softmax_regression(x, y, classes=3, settings=settings, randomness=SeededRandomness(s)) for s in (5, 5, 6)
    )
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_one_row_changes_one_confusion_count_by_one() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=50)
    probabilities = rng.dirichlet(np.ones(3), size=50)
    full = confusion_counts(labels, probabilities)
    fewer = confusion_counts(labels[1:], probabilities[1:])
    difference = full.counts - fewer.counts
    assert full.kind == "confusion" and difference.sum() == 1.0 and np.linalg.norm(difference) == 1.0
    assert difference[labels[0], probabilities[0].argmax()] == 1.0


def test_pooled_confusion_counts_give_sklearns_accuracy_and_weighted_f1() -> None:
    rng = np.random.default_rng(1)
    parts = []
    all_y, all_p = [], []
    for _ in range(3):  # three banks' releases, without noise
        y = rng.integers(0, 3, size=40)
        p = rng.dirichlet(np.ones(3), size=40)
        parts.append(confusion_counts(y, p))
        all_y.append(y)
        all_p.append(p.argmax(axis=1))
    pooled = pooled_class_metrics(parts)
    y_all, p_all = np.concatenate(all_y), np.concatenate(all_p)
    assert pooled.accuracy == pytest.approx(accuracy_score(y_all, p_all))
    assert pooled.weighted_f1 == pytest.approx(f1_score(y_all, p_all, average="weighted"))
    assert pooled.n == 120.0
    again = ScoreHistograms.from_json(parts[0].to_json())
    assert again.kind == "confusion" and np.array_equal(again.counts, parts[0].counts)


def test_a_text_bank_releases_noised_confusion_counts_and_the_round_pools_them(tmp_path: Path) -> None:
    config = load_config(None, [*text_task_overrides(tmp_path), "privacy.release_metrics=true"])
    runtime = Runtime(config)
    initialize(config, run="text", runtime=runtime)
    outcome = run_bank_round(config, run="text", bank="bank-a", round_index=1, runtime=runtime)
    assert outcome.status == "ok", outcome.message
    assert outcome.evaluation is not None
    release = ScoreHistograms.from_json(outcome.evaluation)
    assert release.kind == "confusion" and release.counts.shape == (3, 3)
    assert release.noise_multiplier is not None and release.noise_multiplier > 0
    exact = runtime.bank("bank-a").test
    assert not np.allclose(release.counts.sum(), len(exact))  # noised: the exact count is not published


def test_simulate_with_baselines_reports_zero_shot_head_only_tfidf_and_each_bank_alone(tmp_path: Path) -> None:
    config = load_config(None, [*text_task_overrides(tmp_path), "output.run_name=base"])
    runtime = Runtime(config)
    summary = simulate(config, runtime=runtime, baselines=True)
    assert summary.baselines is not None
    pooled, per_bank = summary.baselines["pooled"], summary.baselines["per_bank"]
    assert {"zero_shot", "head_only", "tfidf_lr", "dp_head_only_averaged", "consortium"} <= set(pooled)
    for metrics in pooled.values():
        assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["weighted_f1"] <= 1.0
    assert pooled["consortium"]["accuracy"] == summary.final.metrics["accuracy"]
    # zero-shot is the base model's label scoring: the round-0 adapter evaluated on the same test rows
    assert pooled["zero_shot"]["accuracy"] == pytest.approx(runtime.evaluate(runtime.initial_adapter).pooled.accuracy)
    banks = [b.name for b in config.federation.banks]
    assert set(per_bank) == set(banks)
    for alone in per_bank.values():
        assert {"head_only", "tfidf_lr", "dp_head_only", "consortium"} <= set(alone)
        assert alone["epsilon"] == config.privacy.target_epsilon
