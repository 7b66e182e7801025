"""The one-run privacy audit (Steinke, Nasr & Jagielski, 2023) of our DP-SGD step: sound, and with power."""

from __future__ import annotations

import pytest

from fedlora.privacy.audit import audit_p_value, epsilon_lower_bound, run_audit


def test_the_lower_bound_is_the_epsilon_where_the_p_value_crosses_the_level() -> None:
    eps = epsilon_lower_bound(canaries=2000, guesses=1000, correct=1000, delta=1e-5)
    assert 5.0 < eps < 6.5  # all 1000 guesses right: about log(q/(1-q)) with q^1000 = 0.05
    assert audit_p_value(canaries=2000, guesses=1000, correct=1000, epsilon=eps - 0.01, delta=1e-5) < 0.05
    assert audit_p_value(canaries=2000, guesses=1000, correct=1000, epsilon=eps + 0.01, delta=1e-5) >= 0.05
    assert epsilon_lower_bound(canaries=2000, guesses=1000, correct=500, delta=1e-5) == 0.0  # chance level


def test_with_os_noise_the_empirical_bound_stays_below_the_reported_epsilon() -> None:
    result = run_audit(mode="secure")
    assert 0 <= result.epsilon_lower_bound < result.reported_epsilon


@pytest.mark.parametrize("mode", ["off", "known-seed"])
def test_without_noise_or_with_a_known_seed_the_audit_finds_a_large_epsilon(mode: str) -> None:
    result = run_audit(mode=mode)  # type: ignore[arg-type]
    assert result.epsilon_lower_bound > 2 * result.reported_epsilon  # the audit has power
