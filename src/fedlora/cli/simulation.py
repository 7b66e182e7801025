"""``fedlora simulate``: the whole federation on this machine, with a progress bar and a summary table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedlora.cli.common import console, fail
from fedlora.config import ConfigError, describe_fields, load_config
from fedlora.configs import builtin_config_names
from fedlora.errors import FedLoRAError
from fedlora.records import format_epsilon

if TYPE_CHECKING:
    from fedlora.records import BankOutcome, RoundRecord, RunSummary

__all__ = ["simulate_command"]


def _config_help() -> str:
    lines = ["\b", "Config fields (YAML keys and --set names):"]
    for name, default, description in describe_fields():
        lines.append(f"  {name} = {default}  {description}")
    return "\n".join(lines)


class RichProgress:
    """Progress bar per round and bank, plus a line per finished bank."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task: Any = None

    def start(self, *, rounds: int, banks: list[str]) -> None:
        self.bar.start()
        self.task = self.bar.add_task("federation", total=rounds)

    def bank_started(self, *, round_index: int, bank: str) -> None:
        self.bar.update(self.task, description=f"round {round_index}: {bank} training")

    def bank_finished(self, result: BankOutcome | None, *, round_index: int, bank: str, error: str | None) -> None:
        if error is not None:
            self.console.print(f"[red]round {round_index} {bank}: FAILED[/] {error}")
        elif result is not None and result.status != "ok":
            self.console.print(f"[yellow]round {round_index} {bank}: {result.message}[/]")
        elif result is not None:
            eps = format_epsilon(result.epsilon)
            released = ", DP evaluation histograms released" if result.evaluation else ""
            self.console.print(f"round {round_index} {bank}: ε {eps}, {result.steps} steps{released}")

    def round_finished(self, record: RoundRecord) -> None:
        auc = record.auc if record.auc is not None else (record.dp_evaluation or {}).get("auc")
        self.bar.update(self.task, advance=1, description=f"round {record.round} done: AUC {_num(auc)}")

    def stop(self) -> None:
        self.bar.stop()


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _text_baselines_table(baselines: dict[str, Any]) -> Table:
    """Pooled test accuracy / weighted F1 of the consortium and of each baseline, then each bank alone."""
    table = Table(title="Baselines on the same splits (pooled test rows; a bank alone: its own test rows)")
    for column in ("model", "accuracy", "weighted F1"):
        table.add_column(column)
    for name, metrics in baselines["pooled"].items():
        table.add_row(name, _num(metrics.get("accuracy")), _num(metrics.get("weighted_f1")))
    for bank, alone in baselines["per_bank"].items():
        for name, metrics in alone.items():
            if isinstance(metrics, dict):
                table.add_row(f"{bank}: {name}", _num(metrics.get("accuracy")), _num(metrics.get("weighted_f1")))
    return table


def _summary_table(summary: RunSummary) -> Table:
    """Per round: test AUC and KS (credit), or label-scoring accuracy and weighted F1 (a text task); ε per bank."""
    from fedlora.data.text_tasks import is_text_task

    text = is_text_task(summary.dataset)
    banks = list(summary.rounds[0].epsilon) if summary.rounds else []
    table = Table(title=f"FedLoRA — {summary.aggregation}, privacy: {summary.privacy_mode}")
    scores = ["test accuracy", "weighted F1"] if text else ["test AUC", "KS"]
    for col in ["round", *scores, *[f"ε {b}" for b in banks], "banks"]:
        table.add_column(col, justify="right", no_wrap=True)
    for r in summary.rounds:
        eps = [format_epsilon(r.epsilon[b]) for b in banks]
        metrics = r.metrics or {}
        shown = (metrics.get("accuracy"), metrics.get("f1")) if text else (r.auc, r.ks)
        table.add_row(str(r.round), *map(_num, shown), *eps, str(len(r.banks)))
    if text:
        table.caption = "label scoring on every bank's test rows (fedlora evaluate adds FinLoRA's generation metrics)"
    return table


@click.command("simulate", epilog=_config_help())
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="YAML config file (see fields below), or a built-in config by name: "
    f"{', '.join(builtin_config_names())} (src/fedlora/configs/).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override one config field, e.g. --set privacy.target_epsilon=3 (repeatable).",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the summary JSON to this path.")
@click.option(
    "--store",
    "store_uri",
    metavar="URI",
    help="Adapter exchange: s3://bucket/prefix or a directory (same as --set store.uri=URI). "
    "S3 credentials come from the standard AWS chain (environment, profile, web identity).",
)
@click.option("--tracking-uri", metavar="URI", help="MLflow tracking URI, e.g. http://mlflow:5000 (tracking.uri).")
@click.option(
    "--resume",
    metavar="RUN",
    help="Continue the interrupted run RUN from its last committed round, with its own stored config "
    "(only store/tracking/output settings may be given). Each bank's ε continues from its ledger.",
)
@click.option(
    "--baselines",
    is_flag=True,
    help="Also report baselines on the same splits beside the consortium's model. Credit: each bank alone "
    "(logistic regression, non-private and DP at the bank's ε). Text tasks: the base model zero-shot, a "
    "linear head on its frozen features (non-private, and DP at each bank's ε), TF-IDF + logistic "
    "regression, pooled and each bank alone.",
)
def simulate_command(
    config_path: str | None,
    overrides: tuple[str, ...],
    json_path: str | None,
    store_uri: str | None,
    tracking_uri: str | None,
    resume: str | None,
    baselines: bool,
) -> None:
    """Run the whole federation on this machine (no services needed).

    With no options: 3 banks, 5 rounds, DP-SGD at ε=8 per bank, the bundled MiniLM model reading a
    4,000-row sample of the bundled Taiwan credit-card data as text, with each row's columns beside it
    (about 3½ minutes on 2 CPU cores). German Credit with the schedule chosen for its ~230 rows per
    bank: --config german_credit; all 30,000 Taiwan rows: --config taiwan_full. Writes a run directory
    (global adapter of every round, final adapter, summary.json, report/index.html) under output.dir
    and logs to MLflow.
    """
    if resume is not None:
        from fedlora.store.run import LOCATION_SECTIONS

        fixed = [o for o in overrides if o.split(".", 1)[0].strip() not in LOCATION_SECTIONS]
        if fixed:
            fail(
                f"--resume continues a run with its own stored config; {', '.join(fixed)} cannot "
                f"change (only {', '.join(LOCATION_SECTIONS)} settings may be given)",
                2,
            )
    extra = [f"store.uri={store_uri}"] if store_uri else []
    extra += [f"tracking.uri={tracking_uri}"] if tracking_uri else []
    try:
        config = load_config(config_path, [*overrides, *extra])
    except ConfigError as exc:
        fail(exc, 2)
    from fedlora.simulate import simulate as run_simulation

    progress = RichProgress(console)
    try:
        summary = run_simulation(config, progress=progress, resume=resume, baselines=baselines)
    except (FedLoRAError, OSError) as exc:
        progress.stop()
        fail(exc, 1)
    progress.stop()
    out = Console()
    out.print(_summary_table(summary))
    final = summary.final
    from fedlora.data.text_tasks import is_text_task

    if is_text_task(summary.dataset):
        accuracy, f1 = final.metrics.get("accuracy", float("nan")), final.metrics.get("f1", float("nan"))
        out.print(f"final pooled test accuracy {accuracy:.4f}, weighted F1 {f1:.4f}; adapter {final.peft_adapter}")
        if summary.baselines:
            out.print(_text_baselines_table(summary.baselines))
    else:
        out.print(f"final pooled test AUC {final.auc:.4f}; adapter {final.adapter}")
    out.print(f"report: {summary.report or '-'}   wall time {summary.wall_seconds:.1f}s")
    if summary.stopped_early:
        out.print(f"[yellow]{summary.stopped_early}[/]")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(summary.to_json(), indent=2, default=float) + "\n", encoding="utf-8")
