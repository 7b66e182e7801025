"""Assemble each bank's train/validation/test text data from the configuration."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from fedlora.config import Config
from fedlora.data.datasets import get_schema, load_dataset
from fedlora.data.features import head_feature_width, head_features
from fedlora.data.files import read_bank_file
from fedlora.data.partition import partition, stratified_split
from fedlora.data.schema import DatasetSchema
from fedlora.data.serialize import serialize_frame


@dataclass(frozen=True)
class TextSet:
    """Serialized rows and their 0/1 labels (1 = default)."""

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


def _to_textset(frame: pd.DataFrame, schema: DatasetSchema, *, feature_scale: float | None) -> TextSet:
    return TextSet(
        texts=serialize_frame(frame, schema),
        labels=frame["label"].to_numpy(dtype=np.int64),
        features=None if feature_scale is None else head_features(frame, schema, scale=feature_scale),
    )


def _sample_rows(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """A seeded sample of ``max_rows`` rows, stratified by label (unstratified when a class is too rare).

    The same draw as the "rest" part of :func:`stratified_split` with ``test_fraction = 1 − max_rows/n``,
    so samples drawn before this function stopped going through ``stratified_split`` are unchanged.
    """
    if len(frame) <= max_rows:
        return frame
    labels = frame["label"].to_numpy()
    stratify = labels if np.bincount(labels, minlength=2).min() >= 3 else None
    keep, _ = train_test_split(
        np.arange(len(frame)), test_size=1 - max_rows / len(frame), random_state=seed, stratify=stratify
    )
    return frame.iloc[np.sort(keep)].reset_index(drop=True)


def build_bank_data(config: Config, *, only: list[str] | None = None) -> dict[str, BankData]:
    """Load, validate, partition and split the data of every bank (or of the banks in ``only``).

    Banks with ``data`` set read their own file (validated against the dataset's schema);
    the others share a partition of ``data.dataset``. All files are validated before
    anything else happens, so a bad file stops the run before training. With ``only``, the
    files of other banks are not read (a bank's Job sees only its own data).
    """
    schema = get_schema(config.data.dataset)
    feature_scale = config.model.schema_feature_scale if config.model.schema_features else None
    if feature_scale is not None:
        head_feature_width(schema)  # a schema the head cannot read stops the run before any file is read
    wanted = {b.name for b in config.federation.banks} if only is None else set(only)
    own = {
        b.name: read_bank_file(b.data, schema)
        for b in config.federation.banks
        if b.data is not None and b.name in wanted
    }
    shared_banks = [b.name for b in config.federation.banks if b.data is None]
    frames: dict[str, pd.DataFrame] = dict(own)
    if shared_banks:
        frame, _ = load_dataset(config.data.dataset)
        if config.data.max_rows is not None:
            frame = _sample_rows(frame, config.data.max_rows, config.seed)
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
    for offset, b in enumerate(config.federation.banks):
        if b.name not in wanted:
            continue
        frame = frames[b.name]
        split = stratified_split(
            frame["label"].to_numpy(),
            val_fraction=config.data.val_fraction,
            test_fraction=config.data.test_fraction,
            seed=config.seed + offset,
        )
        pieces = {"train": frame.iloc[split.train], "val": frame.iloc[split.val], "test": frame.iloc[split.test]}
        banks[b.name] = BankData(
            name=b.name,
            train=_to_textset(pieces["train"], schema, feature_scale=feature_scale),
            val=_to_textset(pieces["val"], schema, feature_scale=feature_scale),
            test=_to_textset(pieces["test"], schema, feature_scale=feature_scale),
            frames={k: v.reset_index(drop=True) for k, v in pieces.items()},
        )
    return banks
