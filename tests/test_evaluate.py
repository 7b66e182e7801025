"""``fedlora evaluate``: FinLoRA's generation metrics of a final adapter, and the pieces they are made of."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel

from fedlora.config import LoraConfig, load_config
from fedlora.data.banks import TextSet
from fedlora.data.text_tasks import TFNS, read_text_file
from fedlora.evaluation import compute_metrics
from fedlora.model.completion import encode_completion
from fedlora.model.generation import first_label, generate_answers
from fedlora.model.loading import load_causal_lm
from fedlora.model.lora import attach_lora
from fedlora.simulate import simulate
from fedlora.training import predict_scores
from helpers import randomize_trainable, run_cli

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" positive", 2),
        ("Negative.", 0),
        (" neutral, not positive", 1),  # the earliest label word wins
        (" bullish", -1),  # no label word: counted wrong
        ("", -1),
    ],
)
def test_the_first_label_word_is_the_prediction(text: str, expected: int) -> None:
    assert first_label(text, TFNS.labels) == expected


def test_batched_left_padded_generation_equals_a_greedy_loop_per_row() -> None:
    loaded = load_causal_lm("tiny-llama", seed=0, device=CPU)
    model = attach_lora(loaded, LoraConfig(rank=4, ffa=False, top_layers=None), seed=0)
    randomize_trainable(model)
    tweets = ["short", "a much longer tweet about quarterly earnings beating every estimate"]
    texts = TextSet(texts=[TFNS.prompt(t) for t in tweets], labels=np.array([0, 2]))
    rows = encode_completion(texts, loaded.tokenizer, labels=TFNS.labels, max_length=96)
    batched = generate_answers(model, loaded.tokenizer, rows, max_new_tokens=5, batch_size=2, device=CPU)
    model.eval()
    for i in range(len(tweets)):
        ids = torch.tensor([rows.prompt_ids(i)])
        for _ in range(5):  # greedy by hand, no padding
            with torch.no_grad():
                ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        own = loaded.tokenizer.decode(ids[0, len(rows.prompt_ids(i)) :], skip_special_tokens=True)
        assert batched[i] == own


def test_evaluate_scores_a_finished_runs_final_adapter(tmp_path: Path) -> None:
    config = load_config(
        None,
        [
            "data.dataset=tfns",
            "model.name=tiny-llama",
            "model.max_length=96",
            "data.max_rows=150",
            "training.batch_size=16",
            "training.local_steps=1",
            "federation.rounds=1",
            "tracking.enabled=false",
            f"output.dir={tmp_path}",
            "output.run_name=ev",
        ],
    )
    summary = simulate(config)
    data = tmp_path / "eval.jsonl"
    examples = [{"context": TFNS.prompt(f"tweet number {i}"), "target": TFNS.labels[i % 3]} for i in range(9)]
    data.write_text("\n".join(json.dumps(e) for e in examples), encoding="utf-8")
    out = tmp_path / "metrics.json"
    code, output = run_cli(
        ["evaluate", "--adapter", str(tmp_path / "ev" / "final"), "--data", str(data), "--json", str(out)]
    )
    assert code == 0, output
    assert "accuracy (label scoring)" in output
    metrics = json.loads(out.read_text(encoding="utf-8"))
    assert metrics["n"] == 9 and metrics["labels"] == list(TFNS.labels)
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["weighted_f1"] <= 1
    # label scoring by the CLI = argmax of the class probabilities of the same adapter through the training code
    base = load_causal_lm("tiny-llama", seed=config.seed, device=CPU)
    model = PeftModel.from_pretrained(base.model, summary.final.peft_adapter)
    frame = read_text_file(data, TFNS)
    rows = encode_completion(
        TextSet(texts=frame["text"].tolist(), labels=frame["label"].to_numpy()),
        base.tokenizer,
        labels=TFNS.labels,
        max_length=96,
    )
    probabilities = predict_scores(model, rows, batch_size=4, device=CPU)
    assert metrics["label_scoring_accuracy"] == pytest.approx(
        compute_metrics(frame["label"].to_numpy(), probabilities).accuracy
    )


def test_evaluate_refuses_a_folder_without_an_adapter(tmp_path: Path) -> None:
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"context": TFNS.prompt("x"), "target": "neutral"}), encoding="utf-8")
    code, output = run_cli(["evaluate", "--adapter", str(tmp_path), "--data", str(data)])
    assert code == 2 and "no PEFT adapter" in " ".join(output.split())
