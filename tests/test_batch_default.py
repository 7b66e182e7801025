"""The batch follows each bank's declared size (issue 29): small and large banks run with the defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedlora.config import TrainingConfig, load_config
from fedlora.privacy.accounting import PrivacyConfigError, declared_count
from fedlora.privacy.bank_side import plan_bank, training_count
from fedlora.privacy.policy import BankPolicy
from fedlora.runtime import Runtime
from fedlora.simulate import simulate


@pytest.mark.parametrize(
    ("declared", "batch"),
    [
        (910, 256),  # the embedded default's banks (~930 training rows, 910 declared): the batch it was tuned with
        (100_000, 256),  # a large bank: the configured batch
        (230, 138),  # a German Credit bank: 0.6 × 230
        (10, 6),
        (1, 1),
    ],
)
def test_the_default_batch_is_the_configured_one_capped_at_the_largest_sample_rate(declared: int, batch: int) -> None:
    assert TrainingConfig().batch_for(declared) == batch


def test_a_banks_own_batch_wins_and_no_count_keeps_the_configured_batch() -> None:
    config = load_config(None, ["federation.banks=[{name: bank-a, batch_size: 500}, {name: bank-b}]"])
    assert config.training_for("bank-a", 230).batch_size == 500  # explicit: refused later if it exceeds n
    assert config.training_for("bank-b", 230).batch_size == 138
    assert config.training_for("bank-b").batch_size == 256


@pytest.mark.parametrize(("rows", "rate"), [(330, 138 / 230), (1_330, 256 / 910), (143_000, 256 / 98_000)])
def test_plans_of_small_default_and_large_banks_use_only_the_declared_count(
    rows: int, rate: float, tmp_path: Path
) -> None:
    # a fixed σ: the plan's sample rate without a calibration search
    config = load_config(None, ["privacy.noise_multiplier=3.0", "tracking.enabled=false", f"output.dir={tmp_path}"])
    runtime = Runtime(config)
    policy = BankPolicy.model_validate({})
    for exact in (rows - 2, rows, rows + 2):  # the same declared total: the same plan
        train = training_count(config, exact)
        plan = plan_bank(config, "bank-a", train, policy=policy, runtime=runtime)
        assert plan.declared_examples == declared_count(train)
        assert plan.sample_rate == pytest.approx(rate)


def test_a_banks_own_batch_above_its_rows_is_still_refused(tmp_path: Path) -> None:
    config = load_config(
        None, ["federation.banks=[{name: bank-a, batch_size: 500}, {name: bank-b}]", f"output.dir={tmp_path}"]
    )
    with pytest.raises(PrivacyConfigError, match="batch_size=500 exceeds this bank's training rows"):
        plan_bank(config, "bank-a", 230, policy=BankPolicy.model_validate({}), runtime=Runtime(config))


def test_german_credit_runs_with_the_default_batch(tmp_path: Path) -> None:
    config = load_config(
        None,
        [
            "data.dataset=german_credit",
            "model.name=tiny-bert",
            "federation.rounds=1",
            "training.local_steps=1",
            "tracking.enabled=false",
            f"output.dir={tmp_path}",
            "output.run_name=german",
        ],
    )
    summary = simulate(config, runtime=Runtime(config))
    assert summary.rounds and summary.rounds[-1].auc is not None
    for bank in ("bank-a", "bank-b", "bank-c"):
        plan = json.loads((tmp_path / "german" / "privacy" / f"{bank}.json").read_text())["plan"]
        assert plan["sample_rate"] == pytest.approx(0.6, abs=0.01)  # batch ⌊0.6·n_declared⌋, not 256
