"""Reading a bank's own data from CSV or Parquet files (or a directory of them)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedlora.data.schema import DatasetSchema, DataValidationError, validate_frame

_SUFFIXES = {".csv", ".parquet", ".pq"}


def _read_one(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path, encoding="utf-8", dtype=object, keep_default_na=True)
        return pd.read_parquet(path)
    except UnicodeDecodeError as exc:
        raise DataValidationError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); save the file as UTF-8",
            f"{path}: not UTF-8 text (at offset {exc.start}); save the file as UTF-8",
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise DataValidationError(f"{path}: the file is empty") from exc
    except (pd.errors.ParserError, OSError, ValueError) as exc:
        raise DataValidationError(
            f"{path}: cannot be read as {path.suffix[1:]}: {exc}",
            f"{path}: cannot be read as {path.suffix[1:]} ({type(exc).__name__}; the parser's text stays in the bank)",
        ) from exc


def read_bank_file(path: str | Path, schema: DatasetSchema, *, row_key_column: str | None = None) -> pd.DataFrame:
    """Read and validate a bank's data: one CSV/Parquet file or a directory of them.

    Args:
        path: The file or directory.
        schema: The dataset's schema.
        row_key_column: The bank's customer-id column, which every file must hold (not a feature).

    Returns:
        The validated features plus an int ``label`` column (and the customer ids in
        :data:`~fedlora.data.schema.ROW_KEY` with ``row_key_column``).

    Raises:
        DataValidationError: naming the file, column, row and value of every problem found.

    """
    p = Path(path)
    if not p.exists():
        raise DataValidationError(f"{p}: no such file or directory")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in _SUFFIXES)
        if not files:
            raise DataValidationError(f"{p}: directory holds no .csv or .parquet file")
    elif p.suffix.lower() in _SUFFIXES:
        files = [p]
    else:
        raise DataValidationError(f"{p}: unsupported file type {p.suffix!r} (use .csv or .parquet)")
    frames = [validate_frame(_read_one(f), schema, source=str(f), row_key_column=row_key_column) for f in files]
    return pd.concat(frames, ignore_index=True)
