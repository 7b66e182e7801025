from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedlora.config import LoraConfig
from fedlora.data.datasets import get_schema
from fedlora.model.centring import centre_head_on_public_rows
from fedlora.model.loading import load_base_model
from fedlora.model.lora import attach_lora
from fedlora.privacy.accounting import (
    MechanismRun,
    PrivacyConfigError,
    PrivacyLedger,
    calibrate_noise_multiplier,
    compute_epsilon,
    plan_privacy,
)
from fedlora.privacy.clipping import clip_and_sum
from fedlora.privacy.per_sample import PerExampleGradients
from fedlora.privacy.randomness import SecureRandomness, SeededRandomness

# Golden values: Opacus 1.6 PRV accountant (upper bound, eps_error=0.01) and RDP accountant.
GOLDEN = [
    (MechanismRun(1.0, 0.01, 1000), 1e-5, "prv", 1.8383716376346455),
    (MechanismRun(0.8, 0.1, 40), 1e-4, "prv", 6.0846911260115055),
    (MechanismRun(1.0, 0.01, 1000), 1e-5, "rdp", 2.1013652716430564),
]


@pytest.mark.parametrize(("run", "delta", "accountant", "expected"), GOLDEN)
def test_golden_epsilon(run: MechanismRun, delta: float, accountant: str, expected: float) -> None:
    assert compute_epsilon([run], delta=delta, accountant=accountant) == pytest.approx(expected, rel=1e-9)


def test_prv_upper_bound_is_tighter_than_rdp_but_above_the_estimate() -> None:
    run = MechanismRun(1.0, 0.01, 1000)
    prv = compute_epsilon([run], delta=1e-5, accountant="prv")
    rdp = compute_epsilon([run], delta=1e-5, accountant="rdp")
    assert prv < rdp
    from opacus.accountants import PRVAccountant

    acct = PRVAccountant()
    acct.history = [(1.0, 0.01, 1000)]
    dprv = acct._get_dprv(eps_error=0.01, delta_error=1e-8)
    _, estimate, _ = dprv.compute_epsilon(1e-5, 1e-8, 0.01)
    assert prv >= estimate


def test_composition_across_rounds_equals_one_long_run() -> None:
    split = [MechanismRun(0.8, 0.1, 20), MechanismRun(0.8, 0.1, 20)]
    assert compute_epsilon(split, delta=1e-4) == compute_epsilon([MechanismRun(0.8, 0.1, 40)], delta=1e-4)
    more = compute_epsilon([*split, MechanismRun(0.8, 0.1, 10)], delta=1e-4)
    assert more > compute_epsilon(split, delta=1e-4)


def test_remembered_answers_equal_opacus_and_are_keyed_on_every_argument() -> None:
    from opacus.accountants import PRVAccountant

    run = MechanismRun(0.8, 0.1, 40)
    first = compute_epsilon([run], delta=1e-4)
    fresh = PRVAccountant()
    fresh.history = [(0.8, 0.1, 40)]
    assert first == float(fresh.get_epsilon(delta=1e-4))
    assert compute_epsilon([run], delta=1e-5) > first
    assert compute_epsilon([run], delta=1e-4, accountant="rdp") != first
    assert compute_epsilon([MechanismRun(0.8, 0.1, 41)], delta=1e-4) > first
    assert compute_epsilon([run], delta=1e-4) == first


def test_calibration_meets_the_target_tightly() -> None:
    sigma = calibrate_noise_multiplier(target_epsilon=3.0, delta=1e-4, sample_rate=0.1, steps=40)
    assert sigma == pytest.approx(1.14501953125)
    eps = compute_epsilon([MechanismRun(sigma, 0.1, 40)], delta=1e-4)
    assert 2.99 - 0.011 <= eps <= 3.0


def test_ledger_persists_and_checks_budget() -> None:
    ledger = PrivacyLedger(delta=1e-4, accountant="prv")
    run = MechanismRun(0.8, 0.1, 20)
    ledger.record(run)
    again = PrivacyLedger.from_json(ledger.to_json())
    assert again.steps == 20
    assert again.epsilon() == ledger.epsilon()
    assert ledger.epsilon_after(run) == pytest.approx(6.0846911260115055)


def _plan(**overrides: object) -> object:
    args: dict[str, object] = dict(
        bank="b",
        num_examples=1000,
        target_epsilon=3.0,
        delta=None,
        batch_size=50,
        steps_per_round=10,
        rounds=4,
        max_grad_norm=1.0,
        noise_multiplier=None,
        accountant="prv",
    )
    args.update(overrides)
    return plan_privacy(**args)  # type: ignore[arg-type]


def test_plan_calibrates_for_the_whole_schedule() -> None:
    plan = _plan()
    assert plan.delta == pytest.approx(1e-4)  # 0.1/n
    assert plan.sample_rate == pytest.approx(0.05)
    assert plan.planned_steps == 40
    eps = compute_epsilon([MechanismRun(plan.noise_multiplier, plan.sample_rate, 40)], delta=plan.delta)
    assert eps <= 3.0


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"target_epsilon": 0.0}, "target_epsilon must be > 0"),
        ({"target_epsilon": -1.0}, "target_epsilon must be > 0"),
        ({"delta": 1e-3}, "not below 1/n"),
        ({"delta": 0.5}, "not below 1/n"),
        ({"batch_size": 5000}, "exceeds"),
        ({"noise_multiplier": 0.3}, "gives ε="),
    ],
)
def test_impossible_privacy_settings(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(PrivacyConfigError) as info:
        _plan(**overrides)
    assert fragment in str(info.value)


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 8),
    clip=st.floats(0.01, 10.0),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 10_000),
)
def test_every_clipped_gradient_has_norm_at_most_c(batch: int, clip: float, scale: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5))
    per_example = {a: torch.randn(batch, 3, 4, generator=gen) * scale, b: torch.randn(batch, 5, generator=gen) * scale}
    result = clip_and_sum(per_example, max_grad_norm=clip)
    for i in range(batch):
        factor = min(1.0, clip / (float(result.norms[i]) + 1e-6))
        one = {p: g[i : i + 1] * factor for p, g in per_example.items()}
        norm = math.sqrt(sum(float((g**2).sum()) for g in one.values()))
        assert norm <= clip * (1 + 1e-5)
        assert float(result.norms[i]) == pytest.approx(
            math.sqrt(sum(float((g[i] ** 2).sum()) for g in per_example.values())), rel=1e-5
        )


def _loop_reference(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    params: list[torch.nn.Parameter],
    clip: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One backward per example: per-example gradients and their clipped sum."""
    grads = []
    for i in range(len(labels)):
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1]).logits.float()
        F.cross_entropy(logits, labels[i : i + 1], reduction="sum").backward()
        grads.append([p.grad.detach().clone() for p in params])  # type: ignore[union-attr]
    summed = [torch.zeros_like(p) for p in params]
    for g in grads:
        norm = math.sqrt(sum(float((x**2).sum()) for x in g))
        factor = min(1.0, clip / (norm + 1e-6))
        for s, x in zip(summed, g, strict=True):
            s += x * factor
    return [torch.stack([g[j] for g in grads]) for j in range(len(params))], summed


@pytest.mark.parametrize(("preset", "centred"), [("tiny-bert", False), ("tiny-bert", True), ("tiny-llama", False)])
@pytest.mark.parametrize("ffa", [False, True])
def test_per_example_gradients_match_a_per_example_loop(preset: str, centred: bool, ffa: bool) -> None:
    loaded = load_base_model(preset, seed=0, device=torch.device("cpu"))
    if centred:  # the head multiplies x − μ, not its input x: the gradient must follow
        assert centre_head_on_public_rows(loaded, get_schema("german_credit"), max_length=32)
    model = attach_lora(loaded, LoraConfig(rank=4, ffa=ffa), seed=0)
    with torch.no_grad():  # make B non-zero so A gets a gradient too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.eval()  # no dropout: the loop and the batch must see the same function
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (6, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    mask[3, 5:] = 0
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    collector = PerExampleGradients(model)
    params = collector.parameters()
    assert any("lora_B" in n for n, p in model.named_parameters() if p.requires_grad)
    assert ffa == (not any("lora_A" in n for n, p in model.named_parameters() if p.requires_grad))
    with collector:
        losses = F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits.float(), labels, reduction="none")
    per_example = collector.compute(losses.sum())
    clipped = clip_and_sum(per_example, max_grad_norm=0.05)
    reference, reference_sum = _loop_reference(model, ids, mask, labels, params, 0.05)
    for p, ref in zip(params, reference, strict=True):
        torch.testing.assert_close(per_example[p], ref, atol=1e-6, rtol=1e-4)
    for p, ref in zip(params, reference_sum, strict=True):
        torch.testing.assert_close(clipped.summed[p], ref, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("source", [SeededRandomness(0), SecureRandomness()])
def test_noise_has_the_calibrated_scale(source: SeededRandomness | SecureRandomness) -> None:
    std = 2.5
    noise = source.normal(torch.Size([200_000]), std, device=torch.device("cpu"), dtype=torch.float32).double().numpy()
    # Kolmogorov–Smirnov test against N(0, std²) and a chi-square interval on the variance.
    assert stats.kstest(noise / std, "norm").pvalue > 1e-3
    n = len(noise)
    lo, hi = stats.chi2.ppf([1e-4, 1 - 1e-4], n - 1)
    assert lo / (n - 1) < noise.var(ddof=1) / std**2 < hi / (n - 1)


@pytest.mark.parametrize("source", [SeededRandomness(0), SecureRandomness()])
def test_poisson_sampling_rate(source: SeededRandomness | SecureRandomness) -> None:
    masks = torch.stack([source.poisson_mask(1000, 0.05) for _ in range(200)]).double().numpy()
    rate = masks.mean()
    assert abs(rate - 0.05) < 4 * math.sqrt(0.05 * 0.95 / masks.size)
    sizes = masks.sum(axis=1)
    assert sizes.std() > 1  # batch sizes vary: Poisson, not fixed-size sampling
    assert np.unique(sizes).size > 5


def test_seeded_randomness_is_reproducible() -> None:
    a, b = SeededRandomness(3), SeededRandomness(3)
    assert torch.equal(a.poisson_mask(100, 0.3), b.poisson_mask(100, 0.3))
    shape = torch.Size([4])
    assert torch.equal(
        a.normal(shape, 1.0, device=torch.device("cpu"), dtype=torch.float32),
        b.normal(shape, 1.0, device=torch.device("cpu"), dtype=torch.float32),
    )
