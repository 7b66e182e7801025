"""Rows drawn from a dataset's *public* schema alone: no bank's data, no privacy cost.

Each column is drawn independently: a categorical column uniformly over its declared categories
(``unknown`` when it declares none); a numeric column uniformly over its declared bounds, or
with log-uniform magnitudes when they span more than two orders of magnitude (amounts,
balances; a random sign when the bounds straddle zero), rounded to an
integer when both bounds are integers. The rows are not realistic borrowers; they give the
language model text with the dataset's template, column names, vocabulary and number formats,
which is what :mod:`fedlora.model.centring` needs to estimate the template's share of the pooled
representation. Everything used (categories, bounds, the seed) is public configuration.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from fedlora.data.schema import Column, DatasetSchema

_LOG_SPAN = 100.0  # draw magnitudes log-uniformly when the bounds span more than this factor


def _numeric(column: Column, n: int, rng: np.random.Generator) -> np.ndarray:
    low = float(column.minimum if column.minimum is not None else 0.0)
    high = float(column.maximum if column.maximum is not None else low + 100.0)
    if low >= 0 and (high + 1.0) / (low + 1.0) > _LOG_SPAN:
        values = np.expm1(rng.uniform(math.log1p(low), math.log1p(high), n))
    elif low < 0 < high and max(-low, high) > _LOG_SPAN:
        magnitude = np.expm1(rng.uniform(0.0, math.log1p(max(-low, high)), n))
        values = np.where(rng.random(n) < high / (high - low), magnitude, -magnitude)
    else:
        values = rng.uniform(low, high, n)
    values = np.clip(values, low, high)
    return np.round(values) if low.is_integer() and high.is_integer() else values


def public_rows(schema: DatasetSchema, n: int, *, seed: int) -> pd.DataFrame:
    """``n`` rows drawn from ``schema``'s declared domain with a generator seeded by ``seed``."""
    rng = np.random.default_rng(seed)
    columns: dict[str, object] = {}
    for column in schema.columns:
        if column.kind == "categorical":
            choices = list(column.categories) if column.categories else ["unknown"]
            columns[column.name] = rng.choice(np.array(choices, dtype=object), n)
        else:
            columns[column.name] = _numeric(column, n, rng)
    return pd.DataFrame(columns)
