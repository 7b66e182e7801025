from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.aggregation import AggregationError, Update, aggregate, fedavg, sample_banks, validate_update


def _adapter(seed: int, *, a: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "layer.lora_A": a if a is not None else torch.randn(4, 16, generator=gen),
        "layer.lora_B": torch.randn(16, 4, generator=gen),
        "head.weight": torch.randn(2, 16, generator=gen),
    }


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 1000), counts=st.lists(st.integers(1, 10_000), min_size=1, max_size=6))
def test_fedavg_of_equal_updates_is_that_update(seed: int, counts: list[int]) -> None:
    adapter = _adapter(seed)
    result = fedavg([Update(f"b{i}", adapter, n) for i, n in enumerate(counts)])
    for name, value in adapter.items():
        torch.testing.assert_close(result[name], value)


def test_fedavg_respects_example_weights() -> None:
    a, b = _adapter(1), _adapter(2)
    result = fedavg([Update("a", a, 300), Update("b", b, 100)])
    for name in a:
        torch.testing.assert_close(result[name], 0.75 * a[name] + 0.25 * b[name])


def test_ffa_lora_average_is_the_average_of_products() -> None:
    shared_a = torch.randn(4, 16, generator=torch.Generator().manual_seed(9))
    updates = [Update(f"b{i}", _adapter(i, a=shared_a), n) for i, n in enumerate([50, 120, 30])]
    result = fedavg(updates)
    total = sum(u.num_examples for u in updates)
    product_average = sum(
        u.adapter["layer.lora_B"] @ u.adapter["layer.lora_A"] * (u.num_examples / total) for u in updates
    )
    torch.testing.assert_close(result["layer.lora_B"] @ result["layer.lora_A"], product_average)


def test_plain_lora_average_is_not_the_average_of_products() -> None:
    updates = [Update(f"b{i}", _adapter(i), 1) for i in range(3)]
    result = fedavg(updates)
    product_average = sum(u.adapter["layer.lora_B"] @ u.adapter["layer.lora_A"] for u in updates) / 3
    assert not torch.allclose(result["layer.lora_B"] @ result["layer.lora_A"], product_average, atol=1e-3)


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda a: a | {"layer.lora_B": torch.zeros(8, 4)}, "shape"),
        (lambda a: a | {"head.weight": a["head.weight"].double()}, "dtype"),
        (lambda a: a | {"head.weight": a["head.weight"].clone().fill_(float("nan"))}, "NaN or Inf"),
        (lambda a: a | {"head.weight": a["head.weight"].clone().fill_(float("inf"))}, "NaN or Inf"),
        (lambda a: {k: v for k, v in a.items() if k != "head.weight"}, "missing"),
        (lambda a: a | {"extra": torch.zeros(1)}, "unexpected"),
    ],
)
def test_malformed_updates_are_rejected(mutate, fragment: str) -> None:  # type: ignore[no-untyped-def]
    reference = _adapter(0)
    bad = Update("evil", mutate(_adapter(1)), 10)
    assert fragment in (validate_update(bad, reference) or "")
    good = [Update("a", _adapter(2), 10), Update("b", _adapter(3), 10)]
    result = aggregate([*good, bad], reference, min_banks=2)
    assert result.accepted == ["a", "b"]
    assert fragment in result.rejected["evil"]
    with pytest.raises(AggregationError, match="min_banks=3"):
        aggregate([*good, bad], reference, min_banks=3)


def test_client_sampling_is_seeded_and_respects_minimum() -> None:
    banks = [f"b{i}" for i in range(10)]
    first = sample_banks(banks, fraction_fit=0.3, min_banks=2, round_index=1, seed=0)
    assert first == sample_banks(banks, fraction_fit=0.3, min_banks=2, round_index=1, seed=0)
    assert len(first) == 3
    assert len(sample_banks(banks, fraction_fit=0.1, min_banks=4, round_index=1, seed=0)) == 4
    rounds = {tuple(sample_banks(banks, fraction_fit=0.3, min_banks=2, round_index=r, seed=0)) for r in range(1, 8)}
    assert len(rounds) > 1
    assert sample_banks(banks, fraction_fit=1.0, min_banks=1, round_index=5, seed=0) == banks


@pytest.mark.parametrize(("count", "total"), [(1, 4), (2, 4), (3, 7), (4, 10)])
def test_cyclic_selection_trains_every_bank_equally_often(count: int, total: int) -> None:
    banks = [f"b{i}" for i in range(total)]
    rounds = [
        sample_banks(banks, fraction_fit=count / total, min_banks=1, round_index=r, seed=s, selection="cyclic")
        for r, s in zip(range(1, 2 * total + 1), range(100, 100 + 2 * total), strict=True)  # the seed plays no part
    ]
    assert all(len(chosen) == count and chosen == sorted(chosen, key=banks.index) for chosen in rounds)
    for start in range(total + 1):  # over any `total` consecutive rounds, every bank trains `count` times
        window = [b for chosen in rounds[start : start + total] for b in chosen]
        assert {window.count(b) for b in banks} == {count}
    assert rounds[0] == banks[:count]  # round 1 starts with the first banks of the config


def _from_start(start: dict[str, torch.Tensor], seed: int, step: float) -> dict[str, torch.Tensor]:
    """An honest update: ``start`` moved by a random direction of norm ``step`` in B and the head (A kept)."""
    gen = torch.Generator().manual_seed(seed)
    moved = {k: v.clone() for k, v in start.items()}
    for name in ("layer.lora_B", "head.weight"):
        direction = torch.randn(moved[name].shape, generator=gen)
        moved[name] += direction / direction.norm() * step / 2**0.5
    return moved


def test_without_the_start_updates_are_checked_against_the_one_most_others_agree_with() -> None:
    """Round 1 at a coordinator that never builds the seeded start (issue 28): a tampered first update,
    another with a changed FFA A and one moved too far are rejected; the honest majority is averaged."""
    start = _adapter(0)
    frozen = frozenset({"layer.lora_A"})
    honest = [Update(f"h{i}", _from_start(start, i, 0.5), 100, max_change_norm=1.0, frozen=frozen) for i in range(3)]
    far = Update("far", _from_start(start, 7, 5.0), 100, max_change_norm=1.0, frozen=frozen)
    moved_a = Update("moved-a", start | {"layer.lora_A": start["layer.lora_A"] + 1e-3}, 100, 1.0, frozen)
    tampered = Update("first", _adapter(5), 100, max_change_norm=1.0, frozen=frozen)
    result = aggregate([tampered, *honest, far, moved_a], None, min_banks=3)
    assert result.accepted == ["h0", "h1", "h2"]
    assert set(result.rejected) == {"first", "far", "moved-a"}
    assert "frozen" in result.rejected["moved-a"] and "change norm" in result.rejected["far"]
    expected = fedavg(honest)
    assert result.adapter is not None
    for name, value in expected.items():
        torch.testing.assert_close(result.adapter[name], value)


def test_without_the_start_honest_updates_of_their_bounds_are_never_rejected() -> None:
    """Two honest updates differ by at most the sum of their bounds: each at its bound, in opposite directions."""
    start = _adapter(0)
    up = _from_start(start, 1, 1.0)
    down = {k: 2 * start[k] - up[k] for k in start}  # the mirror image: ‖up − down‖ = 2
    result = aggregate([Update("a", up, 10, 1.0), Update("b", down, 10, 1.0)], None, min_banks=2)
    assert result.accepted == ["a", "b"]
