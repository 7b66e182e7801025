from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedlora.config import load_config
from fedlora.data.banks import build_bank_data
from fedlora.data.datasets import GERMAN_CREDIT, UnknownDatasetError, get_schema, load_dataset
from fedlora.data.files import read_bank_file
from fedlora.data.partition import PartitionError, partition
from fedlora.data.schema import DataValidationError
from fedlora.data.serialize import serialize_frame, serialize_row


@pytest.fixture(scope="module")
def german() -> pd.DataFrame:
    frame, _ = load_dataset("german_credit")
    return frame


@pytest.fixture
def raw_csv(tmp_path: Path) -> Path:
    """The first 50 German Credit rows in the raw file format a bank would hand over."""
    from importlib import resources

    with resources.files("fedlora.data").joinpath("german_credit.csv").open("r", encoding="utf-8") as f:
        raw = pd.read_csv(f).head(50)
    path = tmp_path / "bank.csv"
    raw.to_csv(path, index=False)
    return path


def test_bundled_dataset_is_the_full_statlog_set(german: pd.DataFrame) -> None:
    assert german.shape == (1000, 21)
    assert int(german["label"].sum()) == 300


def test_serialization_is_deterministic_and_label_free(german: pd.DataFrame) -> None:
    first = serialize_frame(german.head(20), GERMAN_CREDIT)
    again = serialize_frame(german.head(20).copy(), GERMAN_CREDIT)
    assert first == again
    assert first[0].startswith("checking <0 DM, months 6, history critical, purpose radio/tv, amount 1169")
    assert "good" not in first[0] and "bad" not in first[0]


def test_missing_values_serialize_as_unknown() -> None:
    schema = get_schema("credit_data")
    row = pd.Series({c.name: None for c in schema.columns})
    assert "income unknown" in serialize_row(row, schema)


@pytest.mark.parametrize("method", ["iid", "dirichlet", "quantity"])
def test_partitions_cover_every_row_once(german: pd.DataFrame, method: str) -> None:
    labels = german["label"].to_numpy()
    parts = partition(labels, 3, method=method, seed=1, dirichlet_alpha=0.5, quantity_alpha=1.0)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(labels)))
    again = partition(labels, 3, method=method, seed=1, dirichlet_alpha=0.5, quantity_alpha=1.0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_dirichlet_skews_labels_more_than_iid(german: pd.DataFrame) -> None:
    labels = german["label"].to_numpy()
    iid = partition(labels, 3, method="iid", seed=0)
    skew = partition(labels, 3, method="dirichlet", seed=0, dirichlet_alpha=0.1)
    spread = lambda parts: np.ptp([labels[p].mean() for p in parts])  # noqa: E731
    assert spread(skew) > spread(iid)


def test_too_many_banks_is_a_clear_error() -> None:
    with pytest.raises(PartitionError, match="too few"):
        partition(np.zeros(30, dtype=np.int64), 3, method="iid", seed=0)


def test_build_bank_data_splits_every_bank() -> None:
    config = load_config(None, ["data.max_rows=300"])
    banks = build_bank_data(config)
    assert list(banks) == ["bank-a", "bank-b", "bank-c"]
    assert sum(len(b.train) + len(b.val) + len(b.test) for b in banks.values()) == 300
    assert all(set(np.unique(b.train.labels)) == {0, 1} for b in banks.values())


def test_a_sample_below_one_percent_of_the_data_keeps_the_default_rate() -> None:
    # 200 of Taiwan's 30,000 rows once crashed in the split (validation share above 1)
    banks = build_bank_data(load_config(None, ["data.dataset=taiwan_credit", "data.max_rows=200"]))
    labels = np.concatenate([np.concatenate([b.train.labels, b.val.labels, b.test.labels]) for b in banks.values()])
    assert len(labels) == 200
    # a hash sample is a simple random sample, not a stratified one: the data set's rate within 4 standard errors
    assert abs(labels.mean() - 0.2212) < 4 * (0.2212 * 0.7788 / 200) ** 0.5


def test_unknown_dataset() -> None:
    with pytest.raises(UnknownDatasetError, match="unknown dataset 'nope'"):
        get_schema("nope")


def test_a_good_bank_file_is_read(raw_csv: Path, tmp_path: Path) -> None:
    frame = read_bank_file(raw_csv, GERMAN_CREDIT)
    assert len(frame) == 50 and set(frame["label"]) <= {0, 1}
    parquet = tmp_path / "dir" / "part.parquet"
    parquet.parent.mkdir()
    pd.read_csv(raw_csv).to_parquet(parquet)
    (tmp_path / "dir" / "more.csv").write_bytes(raw_csv.read_bytes())
    assert len(read_bank_file(parquet.parent, GERMAN_CREDIT)) == 100


def _broken(raw_csv: Path, mutate) -> Path:  # type: ignore[no-untyped-def]
    frame = pd.read_csv(raw_csv, dtype=object)
    frame = mutate(frame)
    frame.to_csv(raw_csv, index=False)
    return raw_csv


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda f: f.drop(columns=["age_in_years"]), "missing column(s) ['age_in_years']"),
        (lambda f: f.assign(ssn="123"), "unexpected column(s) ['ssn']"),
        (lambda f: f.assign(creditability=f["creditability"].replace("bad", "maybe")), "label 'maybe'"),
        (lambda f: f.assign(age_in_years=f["age_in_years"].mask(f.index == 3, "old")), "row 4: 'old' is not a number"),
        (lambda f: f.assign(age_in_years=f["age_in_years"].mask(f.index == 0, "250")), "above the plausible maximum"),
        (lambda f: f.assign(credit_amount=f["credit_amount"].mask(f.index == 1, None)), "row 2: missing value"),
        (lambda f: f.assign(housing=f["housing"].mask(f.index == 2, "castle")), "'castle' is not one of"),
        (lambda f: f.assign(duration_in_month=f["duration_in_month"].mask(f.index == 5, "inf")), "not finite"),
    ],
)
def test_bad_bank_files_name_file_column_and_value(raw_csv: Path, mutate, expected: str) -> None:  # type: ignore[no-untyped-def]
    path = _broken(raw_csv, mutate)
    with pytest.raises(DataValidationError) as info:
        read_bank_file(path, GERMAN_CREDIT)
    message = str(info.value)
    assert expected in message
    assert str(path) in message


def test_empty_and_non_utf8_and_wrong_type_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataValidationError, match="empty"):
        read_bank_file(empty, GERMAN_CREDIT)
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join([*GERMAN_CREDIT.feature_names, "creditability"]) + "\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match="no data rows"):
        read_bank_file(header_only, GERMAN_CREDIT)
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("purpose\nm\xf6bel\n".encode("latin-1"))
    with pytest.raises(DataValidationError, match="not UTF-8"):
        read_bank_file(latin, GERMAN_CREDIT)
    with pytest.raises(DataValidationError, match="unsupported file type"):
        read_bank_file(tmp_path / "x.xlsx", GERMAN_CREDIT) if (tmp_path / "x.xlsx").touch() is None else None
    with pytest.raises(DataValidationError, match="no such file"):
        read_bank_file(tmp_path / "missing.csv", GERMAN_CREDIT)
