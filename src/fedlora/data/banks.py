"""Assemble each bank's train/validation/test text data from the configuration.

Each row's split is decided by a keyed hash of its own key (:mod:`fedlora.data.row_split`), so
adding or removing one customer's row moves no other row. The unit of privacy is one row, taken to
be one customer record; a bank whose customers have several rows names its customer-id column and
then DP protects each row, not each customer (see :mod:`fedlora.data.row_split`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedlora.config import Config
from fedlora.data.datasets import get_schema, load_dataset
from fedlora.data.features import head_feature_width, head_features
from fedlora.data.files import read_bank_file
from fedlora.data.partition import SplitIndices, partition
from fedlora.data.row_split import RowSplitError, public_split_key, sample_rows, split_rows
from fedlora.data.schema import ROW_KEY, DatasetSchema
from fedlora.data.serialize import serialize_frame
from fedlora.data.text_tasks import TextTask, get_text_task, is_text_task, load_text_task, read_text_file


@dataclass(frozen=True)
class TextSet:
    """Serialized rows and their 0/1 labels (1 = default), or a text task's prompts and class ids 0 … K−1."""

    texts: list[str]
    labels: np.ndarray
    features: np.ndarray | None = None
    """The rows' columns for the head (``fedlora.data.features.head_features``), when the model reads them."""

    def __len__(self) -> int:
        return len(self.texts)

    @staticmethod
    def concat(parts: list[TextSet]) -> TextSet:
        with_features = [p.features for p in parts if p.features is not None]
        if with_features and len(with_features) != len(parts):
            raise ValueError("cannot concatenate text sets with and without head features")
        return TextSet(
            texts=[t for p in parts for t in p.texts],
            labels=np.concatenate([p.labels for p in parts]).astype(np.int64),
            features=np.concatenate(with_features) if with_features else None,
        )


@dataclass(frozen=True)
class BankData:
    """One bank's private data, already split (texts for the model, frames for baselines)."""

    name: str
    train: TextSet
    val: TextSet
    test: TextSet
    frames: dict[str, pd.DataFrame]


def _to_textset(frame: pd.DataFrame, schema: DatasetSchema | TextTask, *, feature_scale: float | None) -> TextSet:
    if isinstance(schema, TextTask):  # the prompts as they are, class ids 0 … K−1
        return TextSet(texts=frame["text"].tolist(), labels=frame["label"].to_numpy(dtype=np.int64))
    return TextSet(
        texts=serialize_frame(frame, schema),
        labels=frame["label"].to_numpy(dtype=np.int64),
        features=None if feature_scale is None else head_features(frame, schema, scale=feature_scale),
    )


def check_split(bank: str, labels: np.ndarray, split: SplitIndices) -> None:
    """Refuse a split that cannot be used: an empty train, validation or test split, or a train split of one class.

    A validation or test split of one class is allowed (AUC and KS are then NaN). The message
    names the bank, the split and the setting to change, never a count.

    Raises:
        RowSplitError: naming the bank and the split.

    """
    for name, rows, setting in (
        ("validation", split.val, "data.val_fraction"),
        ("test", split.test, "data.test_fraction"),
    ):
        if len(rows) == 0:
            raise RowSplitError(
                f"bank {bank}: its {name} split is empty (each row goes there with probability {setting}); "
                f"give the bank more rows or raise {setting}"
            )
    if len(np.unique(labels[split.train])) < 2:
        raise RowSplitError(f"bank {bank}: its train split holds one class only (or none); training needs both labels")


def build_bank_data(
    config: Config,
    *,
    only: list[str] | None = None,
    split_key: bytes | None = None,
    row_key_column: str | None = None,
) -> dict[str, BankData]:
    """Load, validate, partition and split the data of every bank (or of the banks in ``only``).

    Banks with ``data`` set read their own file (validated against the dataset's schema, or for a
    text task, :mod:`fedlora.data.text_tasks`, against its label set);
    the others share a partition of ``data.dataset`` (its ``data.max_rows`` sample keeps the rows
    with the smallest hash under the public key of ``config.seed``). All files are validated before
    anything else happens, so a bad file stops the run before training. With ``only``, the
    files of other banks are not read (a bank's Job sees only its own data). Each bank's rows are
    then split by :func:`~fedlora.data.row_split.split_rows`; the customer-id column never reaches
    the texts, the head's features or the frames.

    Args:
        config: The run's configuration.
        only: The banks to load (default: all).
        split_key: The bank's secret split key (``FEDLORA_BANK_SPLIT_KEY``); None = the public key of
            ``config.seed`` (:func:`~fedlora.data.row_split.public_split_key`): stable, not secret.
        row_key_column: The banks' customer-id column (``FEDLORA_BANK_ROW_KEY_COLUMN``); None =
            ``data.row_key_column``. Applies to the banks' own files only.

    Raises:
        DataValidationError: a bank file is bad (or lacks the customer-id column).
        RowSplitError: a bank's split is empty, or its train split holds one class.

    """
    text_task = get_text_task(config.data.dataset, config.data.labels) if is_text_task(config.data.dataset) else None
    schema: DatasetSchema | TextTask = text_task or get_schema(config.data.dataset)
    feature_scale = config.model.schema_feature_scale if config.model.schema_features else None
    if feature_scale is not None and isinstance(schema, DatasetSchema):
        head_feature_width(schema)  # a schema the head cannot read stops the run before any file is read
    public_key = public_split_key(config.seed)
    id_column = row_key_column or config.data.row_key_column

    def read(path: str) -> pd.DataFrame:
        if text_task is None:
            return read_bank_file(path, get_schema(config.data.dataset), row_key_column=id_column)
        return read_text_file(
            path,
            text_task,
            text_column=config.data.text_column,
            label_column=config.data.label_column,
            row_key_column=id_column,
        )

    wanted = {b.name for b in config.federation.banks} if only is None else set(only)
    own = {b.name: read(b.data) for b in config.federation.banks if b.data is not None and b.name in wanted}
    shared_banks = [b.name for b in config.federation.banks if b.data is None]
    frames: dict[str, pd.DataFrame] = dict(own)
    if shared_banks:
        frame = load_dataset(config.data.dataset)[0] if text_task is None else load_text_task(text_task)
        if config.data.max_rows is not None:
            keep = sample_rows(frame, schema, max_rows=config.data.max_rows, split_key=public_key)
            frame = frame.iloc[keep].reset_index(drop=True)
        parts = partition(
            frame["label"].to_numpy(),
            len(shared_banks),
            method=config.data.partition,
            seed=config.seed,
            dirichlet_alpha=config.data.dirichlet_alpha,
            quantity_alpha=config.data.quantity_alpha,
        )
        for name, idx in zip(shared_banks, parts, strict=True):
            frames[name] = frame.iloc[idx].reset_index(drop=True)
    banks: dict[str, BankData] = {}
    for b in config.federation.banks:
        if b.name not in wanted:
            continue
        frame = frames[b.name]
        split = split_rows(
            frame,
            schema,
            split_key=public_key if split_key is None else split_key,
            val_fraction=config.data.val_fraction,
            test_fraction=config.data.test_fraction,
        )
        check_split(b.name, frame["label"].to_numpy(), split)
        rows = frame.drop(columns=[ROW_KEY], errors="ignore")
        pieces = {"train": rows.iloc[split.train], "val": rows.iloc[split.val], "test": rows.iloc[split.test]}
        banks[b.name] = BankData(
            name=b.name,
            train=_to_textset(pieces["train"], schema, feature_scale=feature_scale),
            val=_to_textset(pieces["val"], schema, feature_scale=feature_scale),
            test=_to_textset(pieces["test"], schema, feature_scale=feature_scale),
            frames={k: v.reset_index(drop=True) for k, v in pieces.items()},
        )
    return banks
