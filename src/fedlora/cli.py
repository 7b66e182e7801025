"""The ``fedlora`` command line."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedlora.config import ConfigError, describe_fields, load_config
from fedlora.errors import FedLoRAError
from fedlora.records import format_epsilon

if TYPE_CHECKING:
    from fedlora.records import BankOutcome, RoundRecord

console = Console(stderr=True)


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


def _summary_table(summary: dict[str, Any]) -> Table:
    banks = list(summary["rounds"][0]["epsilon"]) if summary["rounds"] else []
    table = Table(title=f"FedLoRA — {summary['aggregation']}, privacy: {summary['privacy_mode']}")
    for col in ["round", "test AUC", "KS", *[f"ε {b}" for b in banks], "banks"]:
        table.add_column(col, justify="right", no_wrap=True)
    for r in summary["rounds"]:
        eps = [format_epsilon(r["epsilon"][b]) for b in banks]
        table.add_row(str(r["round"]), _num(r["auc"]), _num(r["ks"]), *eps, str(len(r["banks"])))
    return table


@click.group(help="FedLoRA: federated, differentially private LoRA fine-tuning for credit risk.")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs.")
def main(verbose: bool) -> None:
    """Entry point of the ``fedlora`` command (sets up logging)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    logging.getLogger("fedlora").setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:  # third-party chatter (load reports, DB migrations) hides our progress
        for name in ("mlflow", "alembic", "transformers", "httpx", "urllib3"):
            logging.getLogger(name).setLevel(logging.ERROR)
        import os

        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is first imported
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # mlflow configures its own logger on import


@main.command(epilog=_config_help())
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file (see fields below).")
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
    help="Also report each bank alone on its own test rows (logistic regression, non-private and DP at the "
    "bank's ε, same splits) beside the consortium's model.",
)
def simulate(
    config_path: str | None,
    overrides: tuple[str, ...],
    json_path: str | None,
    store_uri: str | None,
    tracking_uri: str | None,
    resume: str | None,
    baselines: bool,
) -> None:
    """Run the whole federation on this machine (no services needed).

    With no options: 3 banks, 5 rounds, DP-SGD at ε=8 per bank, the bundled MiniLM model and
    the bundled German Credit data. Writes a run directory (global adapter of every round,
    final adapter, summary.json, report/index.html) under output.dir and logs to MLflow.
    """
    if resume is not None:
        from fedlora.store.run import LOCATION_SECTIONS

        fixed = [o for o in overrides if o.split(".", 1)[0].strip() not in LOCATION_SECTIONS]
        if fixed:
            console.print(
                f"[red]error:[/] --resume continues a run with its own stored config; {', '.join(fixed)} cannot "
                f"change (only {', '.join(LOCATION_SECTIONS)} settings may be given)"
            )
            sys.exit(2)
    extra = [f"store.uri={store_uri}"] if store_uri else []
    extra += [f"tracking.uri={tracking_uri}"] if tracking_uri else []
    try:
        config = load_config(config_path, [*overrides, *extra])
    except ConfigError as exc:
        console.print(f"[red]error:[/] {exc}")
        sys.exit(2)
    from fedlora.simulate import simulate as run_simulation

    progress = RichProgress(console)
    try:
        summary = run_simulation(config, progress=progress, resume=resume, baselines=baselines)
    except (FedLoRAError, OSError) as exc:
        progress.stop()
        console.print(f"[red]error:[/] {exc}")
        sys.exit(1)
    progress.stop()
    out = Console()
    out.print(_summary_table(summary))
    final = summary["final"]
    out.print(f"final pooled test AUC {final['auc']:.4f}; adapter {final['adapter']}")
    out.print(f"report: {summary.get('report', '-')}   wall time {summary['wall_seconds']:.1f}s")
    if summary.get("stopped_early"):
        out.print(f"[yellow]{summary['stopped_early']}[/]")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(summary, indent=2, default=float) + "\n", encoding="utf-8")


@main.command("train-bank")
@click.option("--run", required=True, help="The run name (as the coordinator named it).")
@click.option("--bank", required=True, help="This bank's name in the consortium config.")
@click.option("--round", "round_index", required=True, type=click.IntRange(min=1), help="The round to train.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True),
    help="The run's config (default: the request in FEDLORA_REQUEST_CONFIG).",
)
def train_bank_command(run: str, bank: str, round_index: int, config_path: str | None) -> None:
    """Train one bank's round and publish its noised adapter (what a bank's Job runs).

    Reads the consortium's request from FEDLORA_REQUEST_CONFIG and this bank's own settings
    from FEDLORA_BANK_DATA (a path, or s3:// in the bank's private bucket), FEDLORA_STORE_*
    (how this bank reaches the exchange bucket), FEDLORA_BANK_POLICY (its privacy policy) and
    FEDLORA_BANK_LEDGER (its own ledger: a directory or s3:// in its private bucket). A request
    outside the policy is refused (status "refused"). Prints the outcome as JSON; error
    messages name file, column, row and rule, never a value (the full text is kept in the
    ledger store under errors/). Exit 0 when the bank trained, was not sampled, refused or
    has spent its budget; 1 on failure; 2 on a bad request or deployment.
    """
    from fedlora.bank_job import environment
    from fedlora.bank_request import BankRequestError, BankTrainingError, train_request

    try:
        text = Path(config_path).read_text(encoding="utf-8") if config_path else None
        outcome = train_request(environment(), run=run, bank=bank, round_index=round_index, config_text=text)
    except (BankRequestError, OSError, UnicodeDecodeError) as exc:
        console.print(f"[red]error:[/] {exc}")
        sys.exit(2)
    except BankTrainingError as exc:  # everything printed here may be streamed to the consortium: no data values
        console.print(f"[red]error:[/] {exc}")
        sys.exit(1)
    click.echo(json.dumps(outcome.to_json(), sort_keys=True))


@main.command("bank-agent")
@click.option("--bank", required=True, help="This bank's name in the consortium's configs.")
@click.option("--run", "runs", multiple=True, help="Serve only this run (repeatable; default: every run).")
@click.option("--once", is_flag=True, help="Process what is pending, then exit (CronJob, tests).")
@click.option(
    "--poll-seconds",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Pause between two passes over the exchange (backs off up to 10x while the exchange is unreachable).",
)
def bank_agent_command(bank: str, runs: tuple[str, ...], once: bool, poll_seconds: float) -> None:
    """Pull mode: take this bank's rounds from the exchange and train them here (the bank's own cluster).

    Settings from the same environment as train-bank: FEDLORA_STORE_* (the exchange root),
    FEDLORA_BANK_DATA, FEDLORA_BANK_POLICY, FEDLORA_BANK_LEDGER. For every kubeflow.mode=pull run
    in the exchange that names this bank and whose next round needs it (previous round committed,
    bank sampled, no outcome yet), runs exactly what train-bank runs with the run's stored
    config.yaml as the request; the bank's policy decides. Prints one line per round (status, ε,
    steps; never a data value). Exit (with --once) 0, 1 when a round failed or the exchange was
    unreachable, 2 on a bad deployment.
    """
    from fedlora.bank_agent import run_agent
    from fedlora.bank_job import environment
    from fedlora.bank_request import BankRequestError

    try:
        code = run_agent(environment(), bank=bank, runs=runs, once=once, poll_seconds=poll_seconds, echo=click.echo)
    except BankRequestError as exc:
        console.print(f"[red]error:[/] {exc}")
        sys.exit(2)
    sys.exit(code)


from fedlora.cli_consortium import consortium_group  # noqa: E402 (the consortium operator's setup)
from fedlora.cli_kfp import compile_command, submit_command  # noqa: E402 (Kubeflow commands)

main.add_command(compile_command)
main.add_command(submit_command)
main.add_command(consortium_group)


if __name__ == "__main__":
    main()
