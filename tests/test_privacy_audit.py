"""The one-run privacy audit (Steinke, Nasr & Jagielski, 2023) of the DP-SGD step and of a bank round."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fedlora.bank_round import run_bank_round
from fedlora.config import Config, load_config
from fedlora.federation import initialize
from fedlora.privacy.audit import audit_p_value, epsilon_lower_bound, run_audit
from fedlora.privacy.clipping import clip_and_sum
from fedlora.privacy.round_audit import Canary, DiracCanaries, RoundAuditResult, audit_bank_round
from fedlora.runtime import Runtime
from fedlora.store.adapters import load_adapter
from fedlora.store.base import update_prefix
from fedlora.store.run import open_run_store
from helpers import tiny_overrides_for


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


# --- the audit of a whole bank round on the real path (fedlora.privacy.round_audit) ---


def _round_config(out_dir: Path, *extra: str) -> Config:
    """Full German Credit over two banks (≈350 training rows each, δ = 0.1/n ≈ 3·10⁻⁴), one round of 8 steps.

    Small banks give the canaries power: a sampled canary moves its coordinate by C/(q·n) against
    the rows' mean gradient there, so the audit separates better the fewer rows a bank has.
    """
    return load_config(
        None,
        [
            *tiny_overrides_for(out_dir),
            "data.max_rows=1000",
            "federation.banks=[{name: bank-a}, {name: bank-b}]",
            "federation.rounds=1",
            "training.local_steps=8",
            "training.batch_size=64",
            *extra,
        ],
    )


def test_a_sampled_dirac_canary_is_clipped_to_c_at_its_own_coordinate() -> None:
    model = torch.nn.Linear(3, 2)
    canaries = DiracCanaries(model, [Canary("weight", 4, -1.0), Canary("bias", 1, 1.0)], spike=1000.0)
    per_example = canaries.gradients(torch.tensor([1, 0]))
    summed = clip_and_sum(per_example, max_grad_norm=0.5).summed
    assert torch.allclose(summed[model.weight], torch.tensor([[0.0, 0.0, 0.0], [0.0, -0.5, 0.0]]))
    assert torch.allclose(summed[model.bias], torch.tensor([0.0, 0.5]))
    assert len(canaries) == 2


def test_a_bank_round_without_canaries_trains_bit_identically(tmp_path: Path) -> None:
    config = _round_config(tmp_path, "privacy.insecure_seeded_noise=true")
    runtime = Runtime(config)
    adapters = []
    for run, canaries in [("plain", None), ("no-canary", DiracCanaries(runtime.model, [], spike=1000.0))]:
        initialize(config, run=run, runtime=runtime)
        outcome = run_bank_round(config, run=run, bank="bank-a", round_index=1, runtime=runtime, canaries=canaries)
        assert outcome.status == "ok"
        adapters.append(load_adapter(open_run_store(config, run), update_prefix(1, "bank-a")).tensors)
    plain, empty = adapters
    assert plain.keys() == empty.keys()
    assert all(torch.equal(plain[k], empty[k]) for k in plain)
    start = runtime.initial_adapter  # round 0's global adapter is the seeded initial one
    assert any(not torch.equal(plain[k], start[k]) for k in plain)  # it trained


@pytest.fixture(scope="module")
def round_audits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RoundAuditResult]:
    """A secure audit at ε = 1 and a noiseless one of bank-a's round: 256 canaries on the LoRA B matrices, 60 guesses.

    The audit's ceiling here (every guess right) is ε 2.76: at the default ε = 8 a secure run would pass
    whatever its noise, so the secure run targets ε = 1, where a missing or mis-scaled noise would show.
    """
    return {
        mode: audit_bank_round(
            _round_config(tmp_path_factory.mktemp(mode), *target), mode=mode, canaries=256, guesses_in=60, seed=3
        )
        for mode, target in (("secure", ["privacy.target_epsilon=1"]), ("off", []))
    }


def test_the_audit_of_a_secure_bank_round_stays_below_the_ledgers_epsilon(
    round_audits: dict[str, RoundAuditResult],
) -> None:
    secure = round_audits["secure"]
    assert secure.noise_multiplier > 0 and secure.steps == 8 and secure.guesses == 60
    assert 0.9 < secure.reported_epsilon <= 1.0  # the whole target, spent in the run's one round
    assert 0.0 <= secure.epsilon_lower_bound <= secure.reported_epsilon


def test_without_noise_the_audit_of_a_bank_round_finds_a_large_epsilon(
    round_audits: dict[str, RoundAuditResult],
) -> None:
    off, secure = round_audits["off"], round_audits["secure"]
    assert off.noise_multiplier == 0.0 and off.reported_epsilon == math.inf
    # 60 of 60 right gives 2.76 at this δ, 2 wrong still 2.08 (seeds 0-4: 60 of 60 every time); secure ε=1: 0.00
    assert off.epsilon_lower_bound > 2.0
    assert off.epsilon_lower_bound > secure.epsilon_lower_bound + 1.0
