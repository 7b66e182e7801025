r"""Text classification tasks in FinLoRA's instruction format, with any number of labels.

A text task asks one question about a text and names its answers (the label set, in order: the
label index is the class id). FinLoRA (Open-Finance-Lab/FinLoRA, ``lora/flowertune-llm``) writes
each example as a prompt and its answer::

    context = "Instruction: <question> Please choose an answer from {<l_0>/<l_1>/…}.\\nInput: <text>\\nAnswer: "
    target  = "<label>"

and a decoder is tuned on ``context + target`` with the loss on the answer tokens only
(:mod:`fedlora.model.completion`).

Bank files:

* **JSONL** (``.jsonl``), FinLoRA's own format: one JSON object a line with ``context`` (the whole
  prompt) and ``target`` (a label word of the task's label set).
* **CSV / Parquet**: a text column (``data.text_column``) and a label column (``data.label_column``)
  holding a label word or its index; the text is put into the task's prompt.

A validated text frame has a ``text`` column (the prompt the model reads), an int ``label``
column (the label's index) and, when the bank names its customer-id column, the ids in
:data:`~fedlora.data.schema.ROW_KEY`. Errors name the file, the line (JSONL) or row (CSV) and the
field, and never quote the text: the detailed message may show a label value, the public one
shows no value at all.

Built in: ``tfns`` (bundled, MIT, see ``ATTRIBUTION.md``), FinLoRA's TFNS test file, 2,388 finance
tweets, with its two swapped labels put back (:data:`TFNS_LABEL_FIX`).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import pandas as pd

from fedlora.data.schema import ROW_KEY, DataValidationError

_MAX_ERRORS_SHOWN = 5
TEXT_SUFFIXES = {".jsonl", ".csv", ".parquet", ".pq"}


@dataclass(frozen=True)
class TextTask:
    """A question about a text and its answers.

    Attributes:
        name: Task (and built-in dataset) name.
        question: The instruction's question, e.g. ``What is the sentiment of this tweet?``.
        labels: The answers, in class-id order.
        bundled: File of the bundled examples in ``fedlora.data`` (gzip JSONL), None = none.

    """

    name: str
    question: str
    labels: tuple[str, ...]
    bundled: str | None = None

    @property
    def feature_names(self) -> list[str]:
        """The one model input of a text row (what its content key hashes, :mod:`fedlora.data.row_split`)."""
        return ["text"]

    def with_labels(self, labels: Sequence[str] | None) -> TextTask:
        """This task with the label set declared in the config (``data.labels``; None = the task's own)."""
        return self if labels is None else replace(self, labels=tuple(labels))

    def prompt(self, text: str) -> str:
        """FinLoRA's instruction prompt around ``text`` (the answer follows it)."""
        choices = "/".join(self.labels)
        return f"Instruction: {self.question} Please choose an answer from {{{choices}}}.\nInput: {text}\nAnswer: "


TFNS = TextTask(
    name="tfns",
    question="What is the sentiment of this tweet?",
    labels=("negative", "neutral", "positive"),
    bundled="tfns_test.jsonl.gz",
)
TEXT_TASKS: dict[str, TextTask] = {t.name: t for t in (TFNS,)}

TFNS_LABEL_FIX = {"neutral": "positive", "positive": "neutral"}
"""FinLoRA's TFNS file maps the upstream ids {0, 1, 2} to {negative, neutral, positive}, but upstream they mean
{bearish, bullish, neutral}: its ``neutral`` is bullish (positive) and its ``positive`` is neutral. Swapped back."""


def is_text_task(name: str) -> bool:
    """Whether ``name`` is a built-in text task (else a credit dataset)."""
    return name in TEXT_TASKS


def get_text_task(name: str, labels: Sequence[str] | None = None) -> TextTask:
    """The built-in text task ``name`` with the config's label set (``data.labels``; None = its own).

    Raises:
        KeyError: ``name`` is not a text task.

    """
    return TEXT_TASKS[name].with_labels(labels)


def _label_index(value: object, labels: tuple[str, ...]) -> int | None:
    """The class id of a label word (stripped, case-insensitive) or of an index ``0 … K−1``; None when neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and float(value).is_integer() and 0 <= int(value) < len(labels):
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower()
        words = [label.lower() for label in labels]
        if text in words:
            return words.index(text)
        if text.isdigit() and int(text) < len(labels):
            return int(text)
    return None


class _Problems:
    """Collects ``(detailed, public)`` problems and raises them together."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, detailed: str, public: str | None = None) -> None:
        self.items.append((detailed, detailed if public is None else public))

    @property
    def full(self) -> bool:
        return len(self.items) >= _MAX_ERRORS_SHOWN

    def raise_any(self) -> None:
        if self.items:
            raise DataValidationError("\n".join(d for d, _ in self.items), "\n".join(p for _, p in self.items))


def _label_problem(problems: _Problems, where: str, value: object, labels: tuple[str, ...]) -> None:
    rule = f"is not one of the labels {list(labels)} (data.labels) nor an index 0-{len(labels) - 1}"
    shown = repr(value) if isinstance(value, (int, float)) or (isinstance(value, str) and len(value) <= 40) else "…"
    problems.add(f"{where}: label {shown} {rule}", f"{where}: label {rule}")


def _is_blank(value: object) -> bool:
    return (
        value is None or (isinstance(value, float) and pd.isna(value)) or (isinstance(value, str) and not value.strip())
    )


def read_jsonl_rows(path: Path, task: TextTask, *, row_key_column: str | None = None) -> pd.DataFrame:
    """Read a FinLoRA JSONL file (``context``, ``target``) as a validated text frame.

    Lines are numbered from 1; blank lines are skipped.

    Raises:
        DataValidationError: naming the file, line and field of every problem (a few at most), never the text.

    """
    problems = _Problems()
    texts: list[str] = []
    labels: list[int] = []
    keys: list[str] = []
    try:
        raw = path.read_bytes()
        lines = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataValidationError(f"{path}: not UTF-8 text (at offset {exc.start}); save the file as UTF-8") from exc
    except OSError as exc:
        raise DataValidationError(f"{path}: cannot be read ({type(exc).__name__})") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.add(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")
            row = None
        if row is not None and not isinstance(row, dict):
            problems.add(f"{where}: not a JSON object")
            row = None
        if row is not None:
            fields = ["context", "target", *([row_key_column] if row_key_column else [])]
            missing = [f for f in fields if f not in row]
            if missing:
                problems.add(f"{where}: missing field(s) {missing}")
            elif not isinstance(row["context"], str) or _is_blank(row["context"]):
                problems.add(f"{where}: field 'context' is not a non-empty string")
            elif row_key_column and _is_blank(row[row_key_column]):
                problems.add(f"{where}: field {row_key_column!r}: missing customer id")
            else:
                label = _label_index(row["target"], task.labels)
                if label is None:
                    _label_problem(problems, f"{where}: field 'target'", row["target"], task.labels)
                else:
                    texts.append(row["context"])
                    labels.append(label)
                    if row_key_column:
                        keys.append(_id_text(row[row_key_column]))
        if problems.full:
            break
    problems.raise_any()
    if not texts:
        raise DataValidationError(f"{path}: the file has no data rows")
    return _frame(texts, labels, keys if row_key_column else None)


def validate_text_frame(
    frame: pd.DataFrame,
    task: TextTask,
    *,
    source: str,
    text_column: str,
    label_column: str,
    row_key_column: str | None = None,
) -> pd.DataFrame:
    """Check a CSV/Parquet frame (a text column, a label column) and return a validated text frame.

    Rows are numbered from 1 (the first data row after the header); each text is put into the
    task's prompt (:meth:`TextTask.prompt`).

    Raises:
        DataValidationError: naming the file, row and column of every problem (a few at most), never the text.

    """
    if frame.empty:
        raise DataValidationError(f"{source}: the file has no data rows")
    expected = [text_column, label_column, *([row_key_column] if row_key_column else [])]
    present = [str(c) for c in frame.columns]
    problems = _Problems()
    missing = [c for c in expected if c not in present]
    extra = [c for c in present if c not in expected]
    if missing:
        problems.add(
            f"{source}: missing column(s) {missing} (data.text_column, data.label_column, data.row_key_column)"
        )
    if extra:
        problems.add(f"{source}: unexpected column(s) {extra} (expected exactly {expected})")
    problems.raise_any()
    labels: list[int] = []
    for row, (text, value) in enumerate(zip(frame[text_column].tolist(), frame[label_column].tolist(), strict=True)):
        where = f"{source}: row {row + 1}"
        if not isinstance(text, str) or _is_blank(text):
            problems.add(f"{where}: column {text_column!r} is not a non-empty text")
        label = _label_index(value, task.labels)
        if label is None:
            _label_problem(problems, f"{where}: column {label_column!r}", value, task.labels)
        if row_key_column and _is_blank(frame[row_key_column].iloc[row]):
            problems.add(f"{where}: column {row_key_column!r}: missing customer id")
        labels.append(-1 if label is None else label)
        if problems.full:
            break
    problems.raise_any()
    keys = frame[row_key_column].map(_id_text).tolist() if row_key_column else None
    return _frame([task.prompt(str(t).strip()) for t in frame[text_column].tolist()], labels, keys)


def _frame(texts: list[str], labels: list[int], keys: list[str] | None) -> pd.DataFrame:
    frame = pd.DataFrame({"text": texts, "label": pd.Series(labels, dtype="int64")})
    if keys is not None:
        frame[ROW_KEY] = keys
    return frame


def _id_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def fix_tfns_labels(frame: pd.DataFrame, task: TextTask) -> pd.DataFrame:
    """A text frame read from FinLoRA's TFNS file with its swapped labels put back (:data:`TFNS_LABEL_FIX`).

    ``task``'s labels must be TFNS's own three in their order (a renamed set is renamed after the fix).
    """
    own = TEXT_TASKS["tfns"].labels
    if len(task.labels) != len(own):
        raise DataValidationError(f"the TFNS label fix needs the 3 TFNS labels; data.labels names {len(task.labels)}")
    fixed = [own.index(TFNS_LABEL_FIX.get(own[i], own[i])) for i in frame["label"].tolist()]
    return frame.assign(label=pd.Series(fixed, dtype="int64", index=frame.index))


def load_text_task(task: TextTask) -> pd.DataFrame:
    """The bundled examples of ``task`` as a validated text frame (TFNS: its swapped labels put back).

    Raises:
        DataValidationError: the task has no bundled examples.

    """
    if task.bundled is None:
        raise DataValidationError(f"text task {task.name!r} bundles no examples; give every bank its own file")
    with resources.as_file(resources.files("fedlora.data").joinpath(task.bundled)) as path:
        frame = read_jsonl_rows(Path(path), TEXT_TASKS[task.name])
    if task.name == "tfns":
        frame = fix_tfns_labels(frame, TEXT_TASKS["tfns"])
    if task.labels != TEXT_TASKS[task.name].labels:
        if len(task.labels) != len(TEXT_TASKS[task.name].labels):
            raise DataValidationError(
                f"data.labels names {len(task.labels)} labels; the bundled {task.name} examples have "
                f"{len(TEXT_TASKS[task.name].labels)}"
            )
        frame["text"] = frame["text"].map(lambda p: _relabel_prompt(p, TEXT_TASKS[task.name], task))
    return frame


def _relabel_prompt(prompt: str, old: TextTask, new: TextTask) -> str:
    """The prompt with the old label list replaced by the new one (``data.labels`` renames the answers)."""
    return prompt.replace("{" + "/".join(old.labels) + "}", "{" + "/".join(new.labels) + "}", 1)


def read_text_file(
    path: str | Path,
    task: TextTask,
    *,
    text_column: str = "text",
    label_column: str = "label",
    row_key_column: str | None = None,
) -> pd.DataFrame:
    """Read and validate a bank's text data: a JSONL, CSV or Parquet file, or a directory of them.

    Raises:
        DataValidationError: naming the file, line or row and field of every problem found (never the text).

    """
    from fedlora.data.files import _read_one  # the credit reader's CSV/Parquet parsing and its errors

    p = Path(path)
    if not p.exists():
        raise DataValidationError(f"{p}: no such file or directory")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise DataValidationError(f"{p}: directory holds no .jsonl, .csv or .parquet file")
    elif p.suffix.lower() in TEXT_SUFFIXES:
        files = [p]
    else:
        raise DataValidationError(f"{p}: unsupported file type {p.suffix!r} (use .jsonl, .csv or .parquet)")
    frames = [
        read_jsonl_rows(f, task, row_key_column=row_key_column)
        if f.suffix.lower() == ".jsonl"
        else validate_text_frame(
            _read_one(f),
            task,
            source=str(f),
            text_column=text_column,
            label_column=label_column,
            row_key_column=row_key_column,
        )
        for f in files
    ]
    return pd.concat(frames, ignore_index=True)
