"""Partitioners that split one dataset across banks (``fedlora simulate``).

* IID: a seeded shuffle cut into equal parts.
* Dirichlet label skew (Hsu et al., 2019, "Measuring the Effects of Non-Identical Data
  Distribution for Federated Visual Classification"): for each class ``c`` draw
  ``p_c ~ Dir(alpha · 1_K)`` and give bank ``k`` a share ``p_{c,k}`` of class ``c``'s rows.
* Quantity skew: bank sizes ``p ~ Dir(alpha · 1_K)``, rows assigned IID.

Every partitioner returns, per bank, sorted row indices; every row goes to exactly one bank.
A bank's own train/validation/test split is :mod:`fedlora.data.row_split`'s keyed hash, not a shuffle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedlora.errors import FedLoRAError

MIN_ROWS_PER_BANK = 20
_MAX_TRIES = 100


class PartitionError(FedLoRAError, ValueError):
    """The data cannot be partitioned as asked (too few rows for the banks)."""


def _cut(indices: np.ndarray, shares: np.ndarray) -> list[np.ndarray]:
    bounds = (np.cumsum(shares)[:-1] * len(indices)).astype(int)
    return list(np.split(indices, bounds))


def partition_iid(labels: np.ndarray, n_banks: int, *, seed: int) -> list[np.ndarray]:
    """Equal-sized random parts."""
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(p) for p in np.array_split(order, n_banks)]


def partition_dirichlet(labels: np.ndarray, n_banks: int, *, alpha: float, seed: int) -> list[np.ndarray]:
    """Label skew: per class, bank shares drawn from ``Dir(alpha)``; retried until every bank has rows."""
    rng = np.random.default_rng(seed)
    for _ in range(_MAX_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_banks)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            for k, piece in enumerate(_cut(idx, rng.dirichlet(np.full(n_banks, alpha)))):
                parts[k].append(piece)
        result = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in result) >= MIN_ROWS_PER_BANK and all(len(np.unique(labels[p])) == 2 for p in result):
            return result
    raise PartitionError(
        f"dirichlet partition with alpha={alpha} left a bank with fewer than {MIN_ROWS_PER_BANK} rows or one class "
        f"after {_MAX_TRIES} tries; raise data.dirichlet_alpha or use fewer banks"
    )


def partition_quantity(labels: np.ndarray, n_banks: int, *, alpha: float, seed: int) -> list[np.ndarray]:
    """Quantity skew: bank sizes from ``Dir(alpha)``, rows assigned at random."""
    rng = np.random.default_rng(seed)
    for _ in range(_MAX_TRIES):
        order = rng.permutation(len(labels))
        result = [np.sort(p) for p in _cut(order, rng.dirichlet(np.full(n_banks, alpha)))]
        if min(len(p) for p in result) >= MIN_ROWS_PER_BANK:
            return result
    raise PartitionError(
        f"quantity partition with alpha={alpha} left a bank with fewer than {MIN_ROWS_PER_BANK} rows; "
        "raise data.quantity_alpha or use fewer banks"
    )


def partition(
    labels: np.ndarray,
    n_banks: int,
    *,
    method: str,
    seed: int,
    dirichlet_alpha: float = 1.0,
    quantity_alpha: float = 1.0,
) -> list[np.ndarray]:
    """Dispatch to a partitioner by name (``iid``, ``dirichlet``, ``quantity``)."""
    if len(labels) < n_banks * MIN_ROWS_PER_BANK:
        raise PartitionError(f"{len(labels)} rows are too few for {n_banks} banks (need {MIN_ROWS_PER_BANK} each)")
    if method == "iid":
        return partition_iid(labels, n_banks, seed=seed)
    if method == "dirichlet":
        return partition_dirichlet(labels, n_banks, alpha=dirichlet_alpha, seed=seed)
    if method == "quantity":
        return partition_quantity(labels, n_banks, alpha=quantity_alpha, seed=seed)
    raise PartitionError(f"unknown partition method {method!r}; choose iid, dirichlet or quantity")


@dataclass(frozen=True)
class SplitIndices:
    """Sorted row indices of a train/validation/test split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
