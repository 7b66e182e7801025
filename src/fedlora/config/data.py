"""The ``data`` section: the dataset, how its rows are split across banks, and a text task's columns."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from fedlora.config.base import _Section


class DataConfig(_Section):
    """Where the credit data comes from and how it is split across banks."""

    dataset: str = Field(
        "taiwan_credit",
        description="Built-in dataset: taiwan_credit or german_credit (bundled), credit_data or lending_club "
        "(need the 'datasets' extra), or the text task tfns (bundled finance tweets, FinLoRA's instruction format; "
        "needs a decoder model). Ignored for a bank with its own file (federation.banks[].data), except "
        "for its schema.",
    )
    partition: Literal["iid", "dirichlet", "quantity"] = Field(
        "iid", description="How rows are split across banks: iid, dirichlet (label skew), quantity."
    )
    dirichlet_alpha: float = Field(
        1.0, gt=0, description="Concentration of the Dirichlet label skew (smaller = more skew)."
    )
    quantity_alpha: float = Field(
        1.0, gt=0, description="Concentration of the Dirichlet over bank sizes (quantity skew)."
    )
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of each bank's rows for validation.")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="Share of each bank's rows for testing.")
    max_rows: int | None = Field(
        4000,
        gt=0,
        description="Use only this many rows of the built-in dataset (the rows with the smallest keyed hash, so "
        "adding a row swaps at most one other; a bank's own file is never sampled). 4000 keeps the embedded "
        "default within 5 minutes on 2 CPU cores; null = every row (30,000 for taiwan_credit).",
    )
    row_key_column: str | None = Field(
        None,
        min_length=1,
        description="Customer-id column of the banks' own files: its value, not the row's content, keys the "
        "row's train/validation/test split, so all of a customer's rows land in one split; never a model "
        "feature. A bank's FEDLORA_BANK_ROW_KEY_COLUMN wins. None = each row is keyed by its content.",
    )

    labels: list[str] | None = Field(
        None,
        min_length=2,
        description="Text tasks (data.dataset=tfns): the label words, in class-id order, that the prompt offers and "
        "the model answers; None = the task's own (tfns: negative, neutral, positive). Ignored for credit data.",
    )
    text_column: str = Field(
        "text", min_length=1, description="Text tasks: the text column of a bank's CSV/Parquet file (JSONL: context)."
    )
    label_column: str = Field(
        "label",
        min_length=1,
        description="Text tasks: the label column of a bank's CSV/Parquet file, a label word or its index (JSONL: "
        "target).",
    )

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        from fedlora.data.datasets import get_schema  # the data layer does not import config
        from fedlora.data.text_tasks import is_text_task

        if not is_text_task(value):
            get_schema(value)  # raises naming the built-in datasets
        return value

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len({v.strip().lower() for v in value}) != len(value):
            raise ValueError("data.labels must be distinct words")
        return value
