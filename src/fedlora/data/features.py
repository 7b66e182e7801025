"""A row's columns as numbers, from the public schema alone (no statistic of any bank's rows).

Categorical columns become one-hot vectors over the schema's declared categories, plus one slot
for a value the schema does not list (and for a missing value). A numeric column ``x`` with
declared bounds ``[lo, hi]`` becomes ``(s(x) − s(lo)) / (s(hi) − s(lo))`` with the signed log
``s(x) = sign(x)·log(1 + |x|)``: amounts and balances spanning several orders of magnitude land
in ``[0, 1]`` without standardising by a bank's own mean and variance (which would be a statistic
of private rows, and would differ between banks).

Two users:

* the logistic-regression baselines (:mod:`fedlora.baselines`) fit on :func:`schema_features`;
* the model's head, when ``model.schema_features`` is on, reads :func:`head_features` beside the
  pooled text (:mod:`fedlora.model.heads`). Each column contributes at most 1 to the squared
  length (one one-hot entry, or one value in ``[0, 1]`` for a row inside the bounds), so
  ``f = s·x/√(number of columns)`` has ``‖f‖ ≤ s`` whatever the schema. The scale ``s``
  (``model.schema_feature_scale``) sets how fast the columns' weights move against the text's
  under the same clipping bound: the per-example gradient of the feature weights is
  ``(p − y)·(f − μ_f)``, and the pooled, centred text vector has length about 1 for MiniLM.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from fedlora.data.schema import DatasetSchema
from fedlora.errors import FedLoRAError


class SchemaFeaturesError(FedLoRAError, ValueError):
    """The schema cannot give every bank the same feature layout (a categorical column lists no categories)."""


def signed_log(x: np.ndarray) -> np.ndarray:
    """``sign(x)·log(1 + |x|)``, element-wise."""
    return np.asarray(np.sign(x) * np.log1p(np.abs(x)), dtype=np.float64)


def schema_features(frame: pd.DataFrame, schema: DatasetSchema) -> np.ndarray:
    """Public-only featurisation: one-hot categoricals (+ unknown), numerics scaled by the schema bounds.

    A categorical column without declared categories is one-hot over the values present in
    ``frame`` (sorted), so its width depends on the data; :func:`head_features` refuses it.
    """
    blocks: list[np.ndarray] = []
    for column in schema.columns:
        values = frame[column.name]
        if column.kind == "numeric":
            lo, hi = signed_log(np.array([column.minimum or 0.0, column.maximum or 1.0], dtype=np.float64))
            x = signed_log(pd.to_numeric(values, errors="coerce").fillna(0.0).to_numpy(dtype=np.float64))
            blocks.append(((x - lo) / max(hi - lo, 1e-12))[:, None])
        else:
            categories = list(column.categories or sorted({str(v) for v in values.dropna()}))
            index = {c: i for i, c in enumerate(categories)}
            onehot = np.zeros((len(values), len(categories) + 1))
            for row, value in enumerate(values.tolist()):
                onehot[row, index.get(str(value).strip(), len(categories)) if value is not None else -1] = 1.0
            blocks.append(onehot)
    return np.hstack(blocks)


def lists_every_category(schema: DatasetSchema) -> bool:
    """Whether every categorical column of ``schema`` lists its categories (the head's layout is fixed)."""
    return all(column.kind == "numeric" or column.categories is not None for column in schema.columns)


def head_feature_width(schema: DatasetSchema) -> int:
    """Length of :func:`head_features`'s vectors for ``schema`` (the same for every bank).

    Raises:
        SchemaFeaturesError: a categorical column declares no categories, so banks would disagree
            on the layout.

    """
    width = 0
    for column in schema.columns:
        if column.kind == "numeric":
            width += 1
        elif column.categories is None:
            raise SchemaFeaturesError(
                f"model.schema_features needs every categorical column of dataset {schema.name!r} to list its "
                f"categories; column {column.name!r} lists none. Turn model.schema_features off for this data set."
            )
        else:
            width += len(column.categories) + 1
    return width


def head_features(frame: pd.DataFrame, schema: DatasetSchema, *, scale: float = 1.0) -> np.ndarray:
    """``scale · schema_features(frame) / √(number of columns)`` as float32: ``‖f‖ ≤ scale`` inside the bounds."""
    head_feature_width(schema)  # refuses schemas whose layout would depend on the data
    features = scale * schema_features(frame, schema) / math.sqrt(max(len(schema.columns), 1))
    return np.asarray(features, dtype=np.float32)
