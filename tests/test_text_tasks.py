"""Text tasks (FinLoRA's instruction format): the bundled TFNS data, bank files, errors that never quote the text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedlora.config import ConfigError, load_config
from fedlora.data.banks import build_bank_data
from fedlora.data.row_split import public_split_key, split_rows
from fedlora.data.schema import DataValidationError
from fedlora.data.text_tasks import TFNS, get_text_task, load_text_task, read_text_file

SECRET = "Acme Bank quarterly loss widens, insiders sell"


def test_bundled_tfns_has_its_swapped_labels_put_back() -> None:
    frame = load_text_task(TFNS)
    counts = dict(zip(TFNS.labels, np.bincount(frame["label"], minlength=3).tolist(), strict=True))
    assert counts == {"negative": 347, "neutral": 1566, "positive": 475}  # the data's README, after the swap
    upgrade = frame[frame["text"].str.contains("CNH Industrial upped to Buy at Deutsche Bank", regex=False)]
    assert [TFNS.labels[i] for i in upgrade["label"]] == ["positive"]  # bullish
    assert all(t.endswith("\nAnswer: ") and "{negative/neutral/positive}" in t for t in frame["text"])


def test_declared_labels_rename_the_answers_and_the_prompt() -> None:
    task = get_text_task("tfns", ["bearish", "flat", "bullish"])
    frame = load_text_task(task)
    assert "{bearish/flat/bullish}" in frame["text"].iloc[0]
    assert np.bincount(frame["label"]).tolist() == [347, 1566, 475]


def test_a_jsonl_bank_file_reads_context_and_target(tmp_path: Path) -> None:
    path = tmp_path / "bank.jsonl"
    rows = [{"context": TFNS.prompt(f"tweet {i}"), "target": TFNS.labels[i % 3]} for i in range(6)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    frame = read_text_file(path, TFNS)
    assert frame["label"].tolist() == [0, 1, 2, 0, 1, 2]
    assert frame["text"].tolist() == [r["context"] for r in rows]


def test_jsonl_errors_name_file_line_and_field_never_the_text(tmp_path: Path) -> None:
    path = tmp_path / "bank.jsonl"
    lines = [
        json.dumps({"context": TFNS.prompt(SECRET), "target": "neutral"}),
        "{not json " + SECRET,
        json.dumps({"context": TFNS.prompt(SECRET)}),
        json.dumps({"context": TFNS.prompt(SECRET), "target": "sideways"}),
        json.dumps([SECRET]),
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataValidationError) as err:
        read_text_file(path, TFNS)
    message, public = str(err.value), err.value.public_message
    assert f"{path}: line 2: not valid JSON" in message
    assert f"{path}: line 3: missing field(s) ['target']" in message
    assert f"{path}: line 4: field 'target': label 'sideways' is not one of the labels" in message
    assert f"{path}: line 5: not a JSON object" in message
    assert "line 1" not in message
    for text in (message, public):
        assert "Acme" not in text
    assert "sideways" not in public and f"{path}: line 4: field 'target': label is not one of" in public


def test_csv_bank_file_with_text_and_label_columns(tmp_path: Path) -> None:
    path = tmp_path / "bank.csv"
    pd.DataFrame({"tweet": ["up big", "down big", "flat"], "sentiment": ["positive", 0, "1"]}).to_csv(path, index=False)
    frame = read_text_file(path, TFNS, text_column="tweet", label_column="sentiment")
    assert frame["label"].tolist() == [2, 0, 1]
    assert frame["text"].iloc[0] == TFNS.prompt("up big")


def test_csv_errors_name_row_and_column_never_the_text(tmp_path: Path) -> None:
    path = tmp_path / "bank.csv"
    pd.DataFrame({"text": [SECRET, "", SECRET], "label": ["neutral", "positive", "7"]}).to_csv(path, index=False)
    with pytest.raises(DataValidationError) as err:
        read_text_file(path, TFNS)
    message, public = str(err.value), err.value.public_message
    assert f"{path}: row 2: column 'text' is not a non-empty text" in message
    assert f"{path}: row 3: column 'label': label" in message
    assert "Acme" not in message and "Acme" not in public
    with pytest.raises(DataValidationError, match=r"missing column\(s\) \['id'\]"):
        read_text_file(path, TFNS, text_column="text", label_column="label", row_key_column="id")


def test_adding_one_text_row_moves_no_other_row() -> None:
    frame = load_text_task(TFNS).iloc[:400].reset_index(drop=True)
    key = public_split_key(0)
    before = split_rows(frame, TFNS, split_key=key, val_fraction=0.1, test_fraction=0.2)
    extra = pd.DataFrame({"text": [TFNS.prompt("one more customer")], "label": [1]})
    after = split_rows(
        pd.concat([frame, extra], ignore_index=True), TFNS, split_key=key, val_fraction=0.1, test_fraction=0.2
    )
    for name in ("train", "val", "test"):
        kept = getattr(after, name)
        assert getattr(before, name).tolist() == kept[kept < len(frame)].tolist()


def test_banks_of_a_text_task_get_prompts_and_class_ids(tmp_path: Path) -> None:
    own = tmp_path / "bank-c.jsonl"
    rows = [{"context": TFNS.prompt(f"tweet {i}"), "target": TFNS.labels[i % 3]} for i in range(60)]
    own.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    config = load_config(
        None,
        [
            "data.dataset=tfns",
            "model.name=tiny-llama",
            "data.max_rows=400",
            "federation.banks=[{name: bank-a}, {name: bank-b}, {name: bank-c, data: " + str(own) + "}]",
        ],
    )
    banks = build_bank_data(config)
    assert {b: len(d.train) + len(d.val) + len(d.test) for b, d in banks.items()} == {
        "bank-a": 200,
        "bank-b": 200,
        "bank-c": 60,
    }
    assert set(banks["bank-c"].train.texts) <= {r["context"] for r in rows}
    assert set(np.concatenate([d.train.labels for d in banks.values()]).tolist()) == {0, 1, 2}


def test_labels_must_be_distinct() -> None:
    with pytest.raises(ConfigError, match="distinct"):
        load_config(None, ["data.dataset=tfns", "model.name=tiny-llama", "data.labels=[up, Up]"])


def test_the_builtin_finance_sentiment_config_runs_the_seeds_workload_privately() -> None:
    config = load_config("finance_sentiment")
    assert (config.data.dataset, config.model.name, config.data.max_rows) == ("tfns", "smollm2", None)
    assert config.privacy.enabled and config.privacy.target_epsilon == 8
    lora = config.lora  # FinLoRA's LoRA: r 8, α 32, dropout 0.075 on q and v
    assert (lora.rank, lora.alpha, lora.dropout, lora.target_modules) == (8, 32, 0.075, ["q_proj", "v_proj"])
    assert config.training.local_steps == 20  # FinLoRA's steps a round
    federation = config.federation  # one bank a round, in turn: every step is sequential (docs/finance-sentiment.md)
    assert (federation.fraction_fit, federation.min_banks, federation.rounds) == (0.25, 1, 6)
    assert federation.bank_selection == "cyclic"
    assert config.training.min_learning_rate == pytest.approx(config.training.learning_rate / 10)  # 1e-4 -> 1e-5
    assert len(config.federation.banks) == 4  # FinLoRA's 4 clients
    assert not load_config("finance_sentiment", ["privacy.enabled=false"]).privacy.enabled
