"""Column schemas of the credit datasets and validation of a bank's own data against them.

A bad file is refused before anything is trained or written; the error names the file, the
column, the row and the offending value. Every error also carries a ``public_message`` that
names the file, column, row and rule but never a value: that is the only text a bank's Job
lets out of the bank (outcome, task log, Markdown card).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from fedlora.errors import FedLoRAError

ROW_KEY = "_row_key"
"""Column of a validated frame holding the bank's customer id (as text), when it names one; never a feature."""


class DataValidationError(FedLoRAError, ValueError):
    """A data file does not match the expected schema; the message names file, column and value.

    Attributes:
        public_message: the same problems without any data value (safe to leave the bank).

    """

    def __init__(self, message: str, public_message: str | None = None) -> None:
        super().__init__(message)
        self.public_message = message if public_message is None else public_message


def _raise(problems: list[tuple[str, str]]) -> None:
    """Raise one error listing every ``(detailed, public)`` problem."""
    raise DataValidationError("\n".join(d for d, _ in problems), "\n".join(p for _, p in problems))


@dataclass(frozen=True)
class Column:
    """One feature column.

    Attributes:
        name: Column name in files and data frames.
        kind: ``numeric`` or ``categorical``.
        minimum: Smallest plausible value of a numeric column (inclusive).
        maximum: Largest plausible value of a numeric column (inclusive).
        categories: Allowed values of a categorical column; None = any text.
        nullable: Whether a missing value is allowed (serialized as ``unknown``).
        alias: Short name used in the text serialization (default: the name, spaced).
        short: Pairs ``(value, short text)`` used in the text serialization.

    """

    name: str
    kind: Literal["numeric", "categorical"]
    minimum: float | None = None
    maximum: float | None = None
    categories: tuple[str, ...] | None = None
    nullable: bool = False
    alias: str | None = None
    short: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        """Name used in the text serialization."""
        return self.alias or self.name.replace("_", " ").lower()

    def text_of(self, value: str) -> str:
        """Short text of a categorical value (the value itself when it has no short form)."""
        return dict(self.short).get(value, value)


@dataclass(frozen=True)
class DatasetSchema:
    """Columns of one dataset plus its label.

    Attributes:
        name: Dataset name.
        columns: Feature columns, in serialization order.
        label_column: Name of the target column in raw files.
        positive: Raw label value of a default (bad credit), mapped to 1.
        negative: Raw label value of a good credit, mapped to 0.

    """

    name: str
    columns: tuple[Column, ...]
    label_column: str
    positive: str
    negative: str

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def encode_labels(self, raw: pd.Series) -> pd.Series:
        """Map raw label values (``positive``/``negative`` or 1/0) to ints 1/0."""
        mapping: dict[object, int] = {self.positive: 1, self.negative: 0, 1: 1, 0: 0, "1": 1, "0": 0}
        return raw.map(lambda v: mapping[v.strip() if isinstance(v, str) else v]).astype("int64")


_MAX_ERRORS_SHOWN = 5


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def _column_errors(column: Column, values: pd.Series, source: str) -> list[tuple[str, str]]:
    """``(with the value, without it)`` for each problem of one column (a few at most)."""
    errors: list[tuple[str, str]] = []

    def add(where: str, shown: str, rule: str) -> None:
        errors.append((f"{where}: {shown} {rule}", f"{where}: value {rule}"))

    for row, value in enumerate(values.tolist()):
        where = f"{source}: column {column.name!r}, row {row + 1}"
        if _is_missing(value):
            if not column.nullable:
                errors.append((f"{where}: missing value", f"{where}: missing value"))
        elif column.kind == "numeric":
            try:
                number = float(value)
            except (TypeError, ValueError):
                add(where, repr(value), "is not a number")
                continue
            if not math.isfinite(number):
                add(where, repr(value), "is not finite")
            elif column.minimum is not None and number < column.minimum:
                add(where, repr(value), f"is below the plausible minimum {column.minimum:g}")
            elif column.maximum is not None and number > column.maximum:
                add(where, repr(value), f"is above the plausible maximum {column.maximum:g}")
        elif column.categories is not None and str(value).strip() not in column.categories:
            allowed = ", ".join(repr(c) for c in column.categories)
            add(where, repr(value), f"is not one of {allowed}")
        if len(errors) >= _MAX_ERRORS_SHOWN:
            break
    return errors


def _row_key_problems(frame: pd.DataFrame, schema: DatasetSchema, row_key_column: str, source: str) -> list[str]:
    """What is wrong with the customer-id column (never a value): absent, a schema column, or a missing id."""
    if row_key_column in (*schema.feature_names, schema.label_column):
        return [
            f"{source}: the customer-id column {row_key_column!r} (data.row_key_column) is a column of the "
            f"{schema.name} schema; name a column outside the model's features"
        ]
    if row_key_column not in [str(c) for c in frame.columns]:
        return [f"{source}: the customer-id column {row_key_column!r} (data.row_key_column) is missing"]
    rows = [i + 1 for i, v in enumerate(frame[row_key_column].tolist()) if _is_missing(v)]
    return [f"{source}: column {row_key_column!r}, row {r}: missing customer id" for r in rows[:_MAX_ERRORS_SHOWN]]


def validate_frame(
    frame: pd.DataFrame, schema: DatasetSchema, *, source: str, row_key_column: str | None = None
) -> pd.DataFrame:
    """Check a raw frame against ``schema`` and return features plus an int ``label`` column.

    Rows are numbered from 1 (the first data row after the header). With ``row_key_column`` the
    file must also hold that customer-id column (outside the schema, no id missing); its values,
    as stripped text, come back in column :data:`ROW_KEY`, which no feature or text ever reads.

    Raises:
        DataValidationError: listing every problem found (up to a few per column).

    """
    if frame.empty:
        raise DataValidationError(f"{source}: the file has no data rows")
    expected = [*schema.feature_names, schema.label_column]
    present = [str(c) for c in frame.columns]
    missing = [c for c in expected if c not in present]
    extra = [c for c in present if c not in expected and c != row_key_column]
    problems: list[tuple[str, str]] = []
    if row_key_column is not None:
        problems.extend((p, p) for p in _row_key_problems(frame, schema, row_key_column, source))
    if missing:
        text = f"{source}: missing column(s) {missing}"
        problems.append((text, text))
    if extra:
        text = f"{source}: unexpected column(s) {extra} (expected exactly {expected})"
        problems.append((text, text))
    if problems:
        _raise(problems)
    for column in schema.columns:
        problems.extend(_column_errors(column, frame[column.name], source))
    allowed_labels = {schema.positive, schema.negative, "0", "1"}
    for row, value in enumerate(frame[schema.label_column].tolist()):
        text = (
            str(int(value))
            if isinstance(value, (int, float)) and not _is_missing(value) and float(value).is_integer()
            else str(value).strip()
        )
        if _is_missing(value) or text not in allowed_labels:
            where = f"{source}: column {schema.label_column!r}, row {row + 1}: label"
            rule = f"is not one of {sorted(allowed_labels)}"
            problems.append((f"{where} {value!r} {rule}", f"{where} {rule}"))
            if sum("label" in p for p, _ in problems) >= _MAX_ERRORS_SHOWN:
                break
    if problems:
        _raise(problems)
    features = frame[schema.feature_names].copy()
    for column in schema.columns:
        if column.kind == "numeric":
            features[column.name] = pd.to_numeric(features[column.name], errors="coerce")
        else:
            features[column.name] = features[column.name].map(lambda v: None if _is_missing(v) else str(v).strip())
    labels = frame[schema.label_column].map(
        lambda v: str(int(v)) if isinstance(v, (int, float)) and float(v).is_integer() else str(v).strip()
    )
    features["label"] = schema.encode_labels(labels).to_numpy()
    if row_key_column is not None:
        features[ROW_KEY] = frame[row_key_column].map(_id_text).to_numpy()
    return features.reset_index(drop=True)


def _id_text(value: object) -> str:
    """A customer id as text: integral numbers without ``.0`` (``7``, ``7.0`` and ``"7"`` are one id)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def categorical(
    name: str,
    categories: Sequence[str] | Mapping[str, str] | None = None,
    *,
    nullable: bool = False,
    alias: str | None = None,
) -> Column:
    """Shorthand for a categorical :class:`Column`; a mapping gives each value its short text."""
    short = tuple(categories.items()) if isinstance(categories, Mapping) else ()
    allowed = tuple(categories) if categories else None
    return Column(name, "categorical", categories=allowed, nullable=nullable, alias=alias, short=short)


def numeric(name: str, minimum: float, maximum: float, *, nullable: bool = False, alias: str | None = None) -> Column:
    """Shorthand for a numeric :class:`Column` with plausible bounds."""
    return Column(name, "numeric", minimum=minimum, maximum=maximum, nullable=nullable, alias=alias)
