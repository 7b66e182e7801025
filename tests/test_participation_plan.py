"""A bank plans σ for the rounds it trains, not every round of the run (fraction_fit < 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedlora.aggregation import participations, select_banks
from fedlora.config import load_config
from fedlora.privacy.accounting import calibrate_noise_multiplier, declared_count, default_delta
from fedlora.privacy.bank_side import plan_bank
from fedlora.privacy.policy import BankPolicy
from fedlora.runtime import Runtime
from fedlora.simulate import simulate

ONE_BANK_A_ROUND = ["federation.fraction_fit=0.25", "federation.min_banks=1", "federation.bank_selection=cyclic"]
FOUR_BANKS = "federation.banks=[{name: bank-a}, {name: bank-b}, {name: bank-c}, {name: bank-d}]"


def test_participations_count_the_rounds_that_select_the_bank() -> None:
    config = load_config(None, [FOUR_BANKS, "federation.rounds=6", *ONE_BANK_A_ROUND])
    counts = {b.name: participations(config, b.name) for b in config.federation.banks}
    assert counts == {"bank-a": 2, "bank-b": 2, "bank-c": 1, "bank-d": 1}
    assert sum(counts.values()) == sum(len(select_banks(config, r)) for r in range(1, 7))
    every_round = load_config(None, [FOUR_BANKS, "federation.rounds=6"])
    assert {participations(every_round, b.name) for b in every_round.federation.banks} == {6}


def test_the_plan_covers_the_banks_own_rounds_only(tmp_path: Path) -> None:
    overrides = [FOUR_BANKS, "federation.rounds=6", "tracking.enabled=false", f"output.dir={tmp_path}"]
    cyclic = load_config(None, [*overrides, *ONE_BANK_A_ROUND])
    every_round = load_config(None, overrides)
    policy = BankPolicy.model_validate({})
    train = 900
    plans = {
        name: plan_bank(config, "bank-a", train, policy=policy, runtime=Runtime(config))
        for name, config in (("cyclic", cyclic), ("every", every_round))
    }
    steps = plans["every"].steps_per_round
    assert (plans["cyclic"].planned_steps, plans["every"].planned_steps) == (2 * steps, 6 * steps)
    declared = declared_count(train)
    expected = calibrate_noise_multiplier(
        target_epsilon=8.0, delta=default_delta(declared), sample_rate=plans["cyclic"].sample_rate, steps=2 * steps
    )
    assert plans["cyclic"].noise_multiplier == pytest.approx(expected)
    assert plans["cyclic"].noise_multiplier < plans["every"].noise_multiplier  # less noise for the same ε


def test_a_bank_that_trains_some_rounds_spends_its_epsilon_on_them(tiny_overrides: list[str]) -> None:
    # 3 banks, 1 a round, 3 rounds: each bank trains once, with σ for one round; its whole ε goes there
    config = load_config(
        None,
        [
            *tiny_overrides,
            "federation.rounds=3",
            "federation.fraction_fit=0.34",
            "federation.min_banks=1",
            "federation.bank_selection=cyclic",
        ],
    )
    summary = simulate(config)
    assert [(r.round, r.banks) for r in summary.rounds] == [(1, ["bank-a"]), (2, ["bank-b"]), (3, ["bank-c"])]
    target = config.privacy.target_epsilon
    for bank, epsilon in summary.final.epsilon.items():
        assert epsilon is not None and 0.9 * target <= epsilon <= target, bank
