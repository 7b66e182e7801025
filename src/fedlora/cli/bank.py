"""``fedlora train-bank`` and ``fedlora bank-agent``: what runs on a bank's side (its Job, its agent)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from fedlora.cli.common import fail

__all__ = ["bank_agent_command", "train_bank_command"]


@click.command("train-bank")
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
    from fedlora.bank_env import environment
    from fedlora.bank_request import BankRequestError, BankTrainingError, train_request

    try:
        text = Path(config_path).read_text(encoding="utf-8") if config_path else None
        outcome = train_request(environment(), run=run, bank=bank, round_index=round_index, config_text=text)
    except (BankRequestError, OSError, UnicodeDecodeError) as exc:
        fail(exc, 2)
    except BankTrainingError as exc:  # everything printed here may be streamed to the consortium: no data values
        fail(exc, 1)
    click.echo(json.dumps(outcome.to_json(), sort_keys=True))


@click.command("bank-agent")
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
    from fedlora.bank_env import environment
    from fedlora.bank_request import BankRequestError

    try:
        code = run_agent(environment(), bank=bank, runs=runs, once=once, poll_seconds=poll_seconds, echo=click.echo)
    except BankRequestError as exc:
        fail(exc, 2)
    sys.exit(code)
