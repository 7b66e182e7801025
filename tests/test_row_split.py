"""A bank's train/validation/test split by a keyed hash of each row's own key (issue 27, finding 4)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.config import Config, load_config
from fedlora.data.banks import BankData, build_bank_data, check_split
from fedlora.data.datasets import GERMAN_CREDIT, load_dataset
from fedlora.data.files import read_bank_file
from fedlora.data.partition import SplitIndices
from fedlora.data.row_split import (
    RowSplitError,
    public_split_key,
    row_key_column_from_env,
    row_keys,
    sample_rows,
    split_key_from_env,
    split_rows,
)
from fedlora.data.schema import ROW_KEY, DataValidationError

KEY = b"a bank's secret split key, 32 b."
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def german() -> pd.DataFrame:
    frame, _ = load_dataset("german_credit")
    return frame


def _raw_german() -> pd.DataFrame:
    with resources.files("fedlora.data").joinpath("german_credit.csv").open("r", encoding="utf-8") as f:
        return pd.read_csv(f, dtype=object)


def _bank_config(path: Path, *extra: str) -> Config:
    return load_config(
        None,
        [
            "data.dataset=german_credit",
            f"federation.banks=[{{name: bank-a, data: {path}}}]",
            "federation.min_banks=1",
            *extra,
        ],
    )


def _where(bank: BankData) -> dict[tuple[object, ...], str]:
    """Each row (its values) -> the split it landed in."""
    return {
        tuple(row): name
        for name in SPLITS
        for row in bank.frames[name].itertuples(index=False)  # type: ignore[misc]
    }


def _labels(split: SplitIndices, n: int) -> np.ndarray:
    where = np.empty(n, dtype=object)
    for name in SPLITS:
        where[getattr(split, name)] = name
    return where


def test_one_appended_row_moves_no_other_row_of_a_bank_file(tmp_path: Path) -> None:
    # 29b860a: a seeded stratified shuffle moved 44-70 of 263 rows when one row was appended
    raw = _raw_german()
    before, after = tmp_path / "before.csv", tmp_path / "after.csv"
    raw.head(263).to_csv(before, index=False)
    raw.head(264).to_csv(after, index=False)
    old = _where(build_bank_data(_bank_config(before))["bank-a"])
    new = _where(build_bank_data(_bank_config(after))["bank-a"])
    assert len(old) == 263 and len(new) == 264
    moved = [row for row, name in old.items() if new[row] != name]
    assert moved == []


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.integers(0, 999), min_size=2, max_size=120, unique=True),
    seed=st.integers(0, 2**31),
)
def test_adding_or_removing_a_row_changes_no_other_rows_split(german: pd.DataFrame, rows: list[int], seed: int) -> None:
    key = public_split_key(seed)

    def split_of(indices: list[int]) -> dict[bytes, str]:
        frame = german.iloc[indices].reset_index(drop=True)
        where = _labels(
            split_rows(frame, GERMAN_CREDIT, split_key=key, val_fraction=0.1, test_fraction=0.2), len(frame)
        )
        return dict(zip(row_keys(frame, GERMAN_CREDIT), where.tolist(), strict=True))

    full = split_of(rows)
    without_last = split_of(rows[:-1])
    reordered = split_of(rows[::-1])
    assert all(full[k] == v for k, v in without_last.items())
    assert reordered == full  # row order does not matter either


def test_content_key_ignores_column_order_row_order_and_how_numbers_were_read(tmp_path: Path) -> None:
    raw = _raw_german().head(120)
    csv = tmp_path / "a.csv"
    raw.to_csv(csv, index=False)
    typed = pd.read_csv(csv)  # numbers as int64, not text
    parquet = tmp_path / "b.parquet"
    typed.sample(frac=1.0, random_state=1)[list(reversed(typed.columns))].to_parquet(parquet)
    from_csv = _where(build_bank_data(_bank_config(csv))["bank-a"])
    from_parquet = _where(build_bank_data(_bank_config(parquet))["bank-a"])
    assert from_csv == from_parquet


def _with_customers(tmp_path: Path, rows_per_customer: list[int]) -> Path:
    raw = _raw_german().head(sum(rows_per_customer))
    raw.insert(3, "customer_id", np.repeat([f"C{i:04d}" for i in range(len(rows_per_customer))], rows_per_customer))
    path = tmp_path / "customers.csv"
    raw.to_csv(path, index=False)
    return path


def test_all_of_a_customers_rows_land_in_one_split_and_the_id_is_no_feature(tmp_path: Path) -> None:
    path = _with_customers(tmp_path, [1 + i % 4 for i in range(150)])
    frame = read_bank_file(path, GERMAN_CREDIT, row_key_column="customer_id")
    where = _labels(split_rows(frame, GERMAN_CREDIT, split_key=KEY, val_fraction=0.1, test_fraction=0.2), len(frame))
    per_customer = pd.Series(where).groupby(frame[ROW_KEY].to_numpy()).nunique()
    assert (per_customer == 1).all()
    assert set(where) == set(SPLITS)
    bank = build_bank_data(_bank_config(path, "data.row_key_column=customer_id"), split_key=KEY)["bank-a"]
    for name in SPLITS:
        assert list(bank.frames[name].columns) == [*GERMAN_CREDIT.feature_names, "label"]
    assert not any("C0" in text for text in bank.train.texts)


def test_the_banks_env_names_the_key_column_and_the_key() -> None:
    env = {"FEDLORA_BANK_SPLIT_KEY": " " + KEY.decode() + "\n", "FEDLORA_BANK_ROW_KEY_COLUMN": "customer_id"}
    assert split_key_from_env(env) == KEY
    assert row_key_column_from_env(env) == "customer_id"
    assert split_key_from_env({}) is None and row_key_column_from_env({"FEDLORA_BANK_ROW_KEY_COLUMN": " "}) is None
    with pytest.raises(RowSplitError, match="FEDLORA_BANK_SPLIT_KEY is shorter than 16 bytes") as info:
        split_key_from_env({"FEDLORA_BANK_SPLIT_KEY": "hunter2"})
    assert "hunter2" not in str(info.value)


def test_the_banks_column_wins_over_the_config(tmp_path: Path) -> None:
    path = _with_customers(tmp_path, [2] * 60)
    config = _bank_config(path, "data.row_key_column=no_such_column")
    assert len(build_bank_data(config, row_key_column="customer_id")["bank-a"].train) > 0


def test_split_fractions_hold_within_binomial_tolerance_on_30000_rows() -> None:
    frame, schema = load_dataset("taiwan_credit")
    split = split_rows(frame, schema, split_key=KEY, val_fraction=0.1, test_fraction=0.2)
    n = len(frame)
    assert n == 30_000 and len(split.train) + len(split.val) + len(split.test) == n
    for part, p in ((split.test, 0.2), (split.val, 0.1), (split.train, 0.7)):
        assert abs(len(part) / n - p) < 4 * (p * (1 - p) / n) ** 0.5


def test_a_different_key_gives_a_different_split(german: pd.DataFrame) -> None:
    def where(key: bytes) -> np.ndarray:
        return _labels(split_rows(german, GERMAN_CREDIT, split_key=key, val_fraction=0.1, test_fraction=0.2), 1000)

    same = where(KEY) == where(KEY)
    other = where(KEY) == where(b"another bank's secret key, 32 b.")
    assert same.all()
    # independent placements agree with probability 0.7² + 0.1² + 0.2² = 0.54
    assert 0.45 < other.mean() < 0.63


@pytest.mark.parametrize(
    ("column", "rule"),
    [
        ("customer_id", "the customer-id column 'customer_id' (data.row_key_column) is missing"),
        ("age_in_years", "is a column of the german_credit schema"),
    ],
)
def test_a_bad_key_column_is_an_error_naming_file_and_column(tmp_path: Path, column: str, rule: str) -> None:
    path = tmp_path / "bank.csv"
    _raw_german().head(50).to_csv(path, index=False)
    with pytest.raises(DataValidationError) as info:
        build_bank_data(_bank_config(path, f"data.row_key_column={column}"))
    assert rule in str(info.value) and str(path) in str(info.value)
    assert info.value.public_message == str(info.value)


def test_a_missing_customer_id_names_the_row_not_a_value(tmp_path: Path) -> None:
    raw = _raw_german().head(20)
    raw["customer_id"] = [f"C{i}" for i in range(20)]
    raw.loc[4, "customer_id"] = None
    path = tmp_path / "bank.csv"
    raw.to_csv(path, index=False)
    with pytest.raises(DataValidationError, match="column 'customer_id', row 5: missing customer id"):
        read_bank_file(path, GERMAN_CREDIT, row_key_column="customer_id")


def test_an_empty_split_names_the_bank_and_the_split_but_no_count(tmp_path: Path) -> None:
    path = tmp_path / "tiny.csv"
    _raw_german().head(30).to_csv(path, index=False)
    with pytest.raises(RowSplitError) as info:
        build_bank_data(_bank_config(path, "data.val_fraction=0.001"))
    message = str(info.value)
    assert message.startswith("bank bank-a: its validation split is empty") and "data.val_fraction" in message
    assert "30" not in message and info.value.public_message == message
    labels = np.array([0, 0, 1, 1])
    with pytest.raises(RowSplitError, match="bank b: its test split is empty"):
        check_split("b", labels, SplitIndices(train=np.array([0, 2]), val=np.array([1]), test=np.array([], int)))
    with pytest.raises(RowSplitError, match="bank b: its train split holds one class only"):
        check_split("b", labels, SplitIndices(train=np.array([0, 1]), val=np.array([2]), test=np.array([3])))


def test_the_max_rows_sample_changes_by_at_most_one_swap_when_a_row_is_added(german: pd.DataFrame) -> None:
    key = public_split_key(0)
    keys = row_keys(german, GERMAN_CREDIT)
    for n in (400, 700, 999):
        kept = {keys[i] for i in sample_rows(german.head(n), GERMAN_CREDIT, max_rows=300, split_key=key)}
        more = {keys[i] for i in sample_rows(german.head(n + 1), GERMAN_CREDIT, max_rows=300, split_key=key)}
        assert len(kept) == len(more) == 300
        assert len(kept - more) <= 1 and len(more - kept) <= 1
        assert more - kept <= {keys[n]}  # only the new row can come in


def test_the_sample_is_not_the_split(german: pd.DataFrame) -> None:
    key = public_split_key(0)
    kept = sample_rows(german, GERMAN_CREDIT, max_rows=300, split_key=key)
    split = split_rows(german, GERMAN_CREDIT, split_key=key, val_fraction=0.1, test_fraction=0.2)
    share_in_test = np.isin(kept, split.test).mean()
    assert 0.1 < share_in_test < 0.3  # independent sub-keys: about test_fraction of the sample, not all of it


def test_a_runtime_splits_with_the_banks_key_and_column(tmp_path: Path) -> None:
    from fedlora.runtime import Runtime

    path = _with_customers(tmp_path, [2] * 60)
    config = _bank_config(path)
    runtime = Runtime(config, split_key=KEY, row_key_column="customer_id")
    direct = build_bank_data(config, split_key=KEY, row_key_column="customer_id")["bank-a"]
    assert _where(runtime.bank_data("bank-a")) == _where(direct)
    assert _where(direct) != _where(build_bank_data(config, row_key_column="customer_id")["bank-a"])  # the public key
