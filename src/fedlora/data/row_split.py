"""Which split a row goes to: a keyed hash of the row's own key, so one added customer moves no one else.

For a row with stable key ``r`` (the customer id when the bank names its customer-id column,
else a canonical serialization of the row's validated values) and a split key ``k``::

    k_p = HMAC-SHA256(k, "fedlora row split/" + p)          one sub-key per purpose p
    u   = ⌊HMAC-SHA256(k_p, r)[:8] / 2^11⌋ / 2^53 ∈ [0, 1)   (the first 8 bytes, big-endian, to 53 bits)
    split(u) = test        if u < test_fraction
               validation  if u < test_fraction + val_fraction
               train       otherwise

A row's split depends on its key and ``k`` only, never on the other rows or their order: adding
or removing one row changes no other row's assignment, so a neighbouring data set (one customer
more or less) has a neighbouring training set, which is what per-example DP-SGD protects.
The fractions hold in expectation (each row is an independent Bernoulli draw); stratification by
label is given up for that stability, so a small bank can get a validation or test split with one
class (AUC and KS are then undefined) and a tiny one an empty split (refused, :class:`RowSplitError`).

The key. In a bank's Job it is the bank's secret (``FEDLORA_BANK_SPLIT_KEY``, a Secret of its
Helm release): the consortium cannot tell which rows trained. Without one (``fedlora simulate``, or
a bank that set none) the key is derived from a public string, the config's seed
(:func:`public_split_key`): the split is then stable and reproducible for a seed, but not secret,
and a different seed gives a different split.

The unit of privacy is one row, taken to be one customer record. A bank whose customers have
several rows must name its customer-id column (``FEDLORA_BANK_ROW_KEY_COLUMN`` or
``data.row_key_column``) so that all of a customer's rows land in the same split. DP-SGD then
still protects one row, not one customer: a customer with m rows gets only group privacy,
(m·ε, m·e^((m−1)·ε)·δ), unless the bank aggregates each customer's rows into one row first.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import pandas as pd

from fedlora.data.partition import SplitIndices
from fedlora.data.schema import ROW_KEY
from fedlora.errors import FedLoRAError

SPLIT_KEY_ENV = "FEDLORA_BANK_SPLIT_KEY"
ROW_KEY_COLUMN_ENV = "FEDLORA_BANK_ROW_KEY_COLUMN"
MIN_SPLIT_KEY_BYTES = 16
"""A bank's key shorter than this is refused: the split would be guessable."""

_MISSING = "\x00"
_SEPARATOR = "\x1f"


class RowSchema(Protocol):
    """What the content key reads: the model's input columns (a credit schema's features, a text task's ``text``)."""

    @property
    def feature_names(self) -> list[str]: ...


class RowSplitError(FedLoRAError, ValueError):
    """A bank's split key is unusable, or its rows leave a split empty; the message names no data value.

    Attributes:
        public_message: the message itself (it names the bank, the split and the setting, no row or count).

    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.public_message = message


def split_key_from_env(env: Mapping[str, str]) -> bytes | None:
    """The bank's secret split key from ``FEDLORA_BANK_SPLIT_KEY`` (its UTF-8 bytes); None when unset or blank.

    Raises:
        RowSplitError: the key is shorter than :data:`MIN_SPLIT_KEY_BYTES` bytes (the key is never shown).

    """
    text = env.get(SPLIT_KEY_ENV, "").strip()
    if not text:
        return None
    key = text.encode("utf-8")
    if len(key) < MIN_SPLIT_KEY_BYTES:
        raise RowSplitError(
            f"{SPLIT_KEY_ENV} is shorter than {MIN_SPLIT_KEY_BYTES} bytes; use a random key "
            "(e.g. `openssl rand -hex 32`) kept in a Secret of the bank"
        )
    return key


def row_key_column_from_env(env: Mapping[str, str]) -> str | None:
    """The bank's customer-id column from ``FEDLORA_BANK_ROW_KEY_COLUMN``; None when unset or blank."""
    return env.get(ROW_KEY_COLUMN_ENV, "").strip() or None


def public_split_key(seed: int) -> bytes:
    """The key used without a bank's own: ``SHA-256("fedlora public row split key/" + seed)``. Public, not secret."""
    return hashlib.sha256(f"fedlora public row split key/{seed}".encode()).digest()


def _canonical_cells(name: str, values: pd.Series) -> list[str]:
    """``name=value`` per cell, the same whichever way the value was read: ``1``, ``1.0`` and ``"1"`` give ``1``.

    Numbers (the schema's parsing made them int or float) print as integers when integral, else
    as the shortest round-tripping float; text is JSON-quoted (so no value can forge a separator);
    a missing value is a NUL that no quoted text can equal.
    """
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        x = values.to_numpy(dtype=np.float64)
        missing = np.isnan(x)
        integral = ~missing & np.isfinite(x) & (np.floor(x) == x) & (np.abs(x) < 2**53)
        text = np.where(integral, np.where(integral, x, 0).astype(np.int64).astype(str), x.astype(str))
        return [f"{name}={t}" for t in np.where(missing, _MISSING, text).tolist()]
    cells = values.tolist()
    cell_text = {v: f"{name}={_MISSING if _is_missing(v) else json.dumps(str(v).strip())}" for v in set(cells)}
    return [cell_text[v] for v in cells]


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def row_keys(frame: pd.DataFrame, schema: RowSchema) -> list[bytes]:
    """The stable key of every row of a validated frame (from :func:`~fedlora.data.schema.validate_frame`).

    The customer id (column :data:`~fedlora.data.schema.ROW_KEY`) when the frame has one, else the
    row's content: ``name=value`` for every feature column and ``label``, sorted by column name and
    joined by a separator, values as :func:`_canonical_cells` writes them. The content key does not
    depend on the file's column order or row order, nor on whether a number was read as text.
    """
    if ROW_KEY in frame.columns:
        return [b"id\x00" + str(v).encode("utf-8") for v in frame[ROW_KEY].tolist()]
    columns = [_canonical_cells(name, frame[name]) for name in sorted([*schema.feature_names, "label"])]
    return [b"row\x00" + _SEPARATOR.join(parts).encode("utf-8") for parts in zip(*columns, strict=True)]


def uniform_hashes(keys: Sequence[bytes], split_key: bytes, *, purpose: str) -> np.ndarray:
    """``u ∈ [0, 1)`` per row key: the first 8 bytes of ``HMAC-SHA256(k_purpose, key)``, to 53 bits (see the module)."""
    sub_key = hmac.new(split_key, f"fedlora row split/{purpose}".encode(), hashlib.sha256).digest()
    base = hmac.new(sub_key, digestmod=hashlib.sha256)

    def first8(key: bytes) -> bytes:
        h = base.copy()
        h.update(key)
        return h.digest()[:8]

    words = np.frombuffer(b"".join(first8(k) for k in keys), dtype=">u8").astype(np.uint64)
    return (words >> np.uint64(11)).astype(np.float64) * 2.0**-53


def hash_split(u: np.ndarray, *, val_fraction: float, test_fraction: float) -> SplitIndices:
    """Test where ``u < test_fraction``, validation where ``u < test_fraction + val_fraction``, train otherwise."""
    test = u < test_fraction
    val = ~test & (u < test_fraction + val_fraction)
    return SplitIndices(train=np.flatnonzero(~test & ~val), val=np.flatnonzero(val), test=np.flatnonzero(test))


def split_rows(
    frame: pd.DataFrame, schema: RowSchema, *, split_key: bytes, val_fraction: float, test_fraction: float
) -> SplitIndices:
    """The train/validation/test rows of ``frame``, each row placed by its own keyed hash (module docstring)."""
    u = uniform_hashes(row_keys(frame, schema), split_key, purpose="split")
    return hash_split(u, val_fraction=val_fraction, test_fraction=test_fraction)


def sample_rows(frame: pd.DataFrame, schema: RowSchema, *, max_rows: int, split_key: bytes) -> np.ndarray:
    """Sorted indices of the ``max_rows`` rows with the smallest keyed hash (bottom-k sampling); all when fewer.

    A separate sub-key from the split's, so the sample is independent of the split. Adding a row
    to the data changes the sample by at most one swap (the new row in, the k-th smallest out).
    """
    if len(frame) <= max_rows:
        return np.arange(len(frame))
    u = uniform_hashes(row_keys(frame, schema), split_key, purpose="sample")
    return np.sort(np.argsort(u, kind="stable")[:max_rows])
