"""Deterministic serialization of a credit row to text for a language model.

``"checking <0 DM, months 6, history critical, ..."`` -- columns in schema order, each
``alias value`` (the schema's short names and short category texts keep a row within ~64
tokens), joined by ``", "``; numbers printed without trailing zeros, missing values as
``unknown``. The same row always gives the same bytes (no dict or locale order).
"""

from __future__ import annotations

import math

import pandas as pd

from fedlora.data.schema import DatasetSchema


def format_value(value: object) -> str:
    """Format one cell: ``unknown`` for missing, ``%g``-style numbers, stripped text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unknown"
    if isinstance(value, (int, float)):
        number = float(value)
        return str(int(number)) if number.is_integer() else f"{number:.6g}"
    return str(value).strip()


def serialize_row(row: pd.Series, schema: DatasetSchema) -> str:
    """Serialize one row (features only; the label never enters the text)."""
    parts = []
    for column in schema.columns:
        text = format_value(row[column.name])
        if column.kind == "categorical":
            text = column.text_of(text)
        parts.append(f"{column.label} {text}")
    return ", ".join(parts)


def serialize_frame(frame: pd.DataFrame, schema: DatasetSchema) -> list[str]:
    """Serialize every row of ``frame`` in order."""
    return [serialize_row(row, schema) for _, row in frame.iterrows()]
