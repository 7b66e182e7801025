"""``fedlora evaluate``: score a run's final generative adapter on a text file the way FinLoRA does."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from fedlora.cli.common import console, fail
from fedlora.errors import FedLoRAError

__all__ = ["evaluate_command"]


def _peft_dir_and_config(adapter: Path) -> tuple[Path, Path]:
    """``<run>/final`` (or ``<run>/final/peft``) -> the PEFT adapter folder and the run's ``config.yaml``."""
    peft = adapter / "peft" if (adapter / "peft" / "adapter_config.json").exists() else adapter
    if not (peft / "adapter_config.json").exists():
        fail(f"{adapter}: no PEFT adapter (expected {adapter}/peft/adapter_config.json, written by a finished run)", 2)
    run_dir = peft.parent.parent if peft.name == "peft" else peft.parent
    config = run_dir / "config.yaml"
    if not config.exists():
        fail(f"{run_dir}: no config.yaml (the run's own config says which base model and labels the adapter has)", 2)
    return peft, config


@click.command("evaluate")
@click.option(
    "--adapter",
    "adapter_path",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A finished run's final adapter: <run>/final (its PEFT folder and the run's config.yaml are read).",
)
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Examples to score: FinLoRA JSONL (context, target), or CSV/Parquet with the run's data.text_column and "
    "data.label_column.",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the metrics here.")
@click.option("--max-new-tokens", default=10, show_default=True, help="Greedy tokens generated per example.")
@click.option("--batch-size", default=32, show_default=True, help="Examples per generation batch.")
@click.option(
    "--fix-tfns-labels",
    is_flag=True,
    help="FILE is FinLoRA's own TFNS file, whose 'neutral' and 'positive' are swapped: swap them back first.",
)
def evaluate_command(
    adapter_path: Path,
    data_path: Path,
    json_path: Path | None,
    max_new_tokens: int,
    batch_size: int,
    fix_tfns_labels: bool,
) -> None:
    """Score a text task's final adapter on FILE the way FinLoRA does, plus label scoring.

    Greedy generation (the first label word is the prediction) gives the accuracy and weighted F1
    FinLoRA reports; label scoring (no generation) takes the label whose first token is likeliest.

    The metrics describe the examples in FILE exactly: run it where FILE may be read (a bank's own
    file stays in the bank; these numbers are not DP).
    """
    from peft import PeftModel

    from fedlora.config import ConfigError, load_config
    from fedlora.data.banks import TextSet
    from fedlora.data.text_tasks import fix_tfns_labels as swap_back
    from fedlora.data.text_tasks import get_text_task, is_text_task, read_text_file
    from fedlora.model.completion import encode_completion
    from fedlora.model.generation import score_text_task
    from fedlora.model.loading import load_causal_lm

    peft_dir, config_path = _peft_dir_and_config(adapter_path)
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        fail(exc, 2)
    if not is_text_task(config.data.dataset):
        fail(
            f"the run's data.dataset={config.data.dataset!r} is not a text task; fedlora evaluate scores text tasks", 2
        )
    task = get_text_task(config.data.dataset, config.data.labels)
    try:
        frame = read_text_file(
            data_path, task, text_column=config.data.text_column, label_column=config.data.label_column
        )
        loaded = load_causal_lm(config.model.name, quantization=config.model.quantization, seed=config.seed)
    except FedLoRAError as exc:
        fail(exc, 2)
    if fix_tfns_labels:
        frame = swap_back(frame, task)
    model = PeftModel.from_pretrained(loaded.model, str(peft_dir))
    texts = TextSet(texts=frame["text"].tolist(), labels=frame["label"].to_numpy())
    rows = encode_completion(texts, loaded.tokenizer, labels=task.labels, max_length=config.model.max_length)
    scores = score_text_task(
        model,
        loaded.tokenizer,
        rows,
        labels=task.labels,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        device=loaded.device,
    )
    table = Table(title=f"{adapter_path} on {data_path} ({scores.n} examples, labels {'/'.join(task.labels)})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in (
        ("accuracy (generation, first label word)", scores.accuracy),
        ("weighted F1 (generation)", scores.weighted_f1),
        ("accuracy (label scoring)", scores.label_scoring_accuracy),
        ("weighted F1 (label scoring)", scores.label_scoring_weighted_f1),
        ("generations naming no label", scores.no_label_fraction),
    ):
        table.add_row(name, f"{value:.4f}")
    Console().print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(scores.as_dict(), indent=2) + "\n", encoding="utf-8")
        console.print(f"metrics written to {json_path}")
