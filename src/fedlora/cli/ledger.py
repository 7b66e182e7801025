"""``fedlora bank-ledger``: the bank's own view of its privacy ledger, and the one explicit way to reset it.

Run by the bank's operators in the bank's namespace (e.g. ``kubectl exec`` into a debug pod with
the ledger volume, or from a workstation with the private bucket's credentials), never by the
consortium. Both commands read ``FEDLORA_BANK_LEDGER`` (and ``FEDLORA_BANK_DATA_*`` for an s3://
ledger) and ``FEDLORA_BANK_DATASET_ID`` like the bank's Job.
"""

from __future__ import annotations

import getpass
import json
from typing import TYPE_CHECKING

import click

from fedlora.cli.common import fail

if TYPE_CHECKING:
    from fedlora.privacy.bank_ledger import BankLedger

__all__ = ["bank_ledger_group"]


@click.group("bank-ledger")
def bank_ledger_group() -> None:
    """The bank's privacy ledger (bank operators only): show it, or reset a dataset's lifetime budget."""


def _ledger(dataset: str | None, delta: float, accountant: str) -> BankLedger:
    from fedlora.bank_env import bank_dataset_id, bank_ledger_store, environment
    from fedlora.names import check_name
    from fedlora.privacy.bank_ledger import BankLedger

    env = environment()
    name = check_name(dataset, kind="dataset") if dataset else bank_dataset_id(env)
    return BankLedger(bank_ledger_store(env), name, delta=delta, lifetime_delta=delta, accountant=accountant)


def _run_summary(ledger: BankLedger, run: str) -> dict[str, object]:
    return {"rounds": ledger.charged_rounds(run), "epsilon": ledger.epsilon(ledger.charges(run))}


@bank_ledger_group.command("show")
@click.option("--dataset", help="Dataset identity (default: FEDLORA_BANK_DATASET_ID, else 'default').")
@click.option(
    "--delta",
    type=click.FloatRange(min=0, min_open=True, max=1, max_open=True),
    required=True,
    help="δ of the ε shown.",
)
@click.option("--accountant", type=click.Choice(["prv", "rdp"]), default="prv", show_default=True)
def show_command(dataset: str | None, delta: float, accountant: str) -> None:
    """Print the dataset's runs, charged rounds, ε per run and lifetime ε since the last reset (JSON)."""
    from fedlora.config import ConfigError
    from fedlora.errors import FedLoRAError

    try:
        ledger = _ledger(dataset, delta, accountant)
        charges = ledger.charges()
        runs = sorted({c.run for c in charges})
        reset = ledger.last_reset()
        report = {
            "dataset": ledger.dataset,
            "delta": delta,
            "runs": {
                r: {"rounds": ledger.charged_rounds(r), "epsilon": ledger.epsilon(ledger.charges(r))} for r in runs
            },
            "lifetime_epsilon": ledger.lifetime_epsilon(),
            "last_reset": reset.isoformat() if reset else None,
            "fingerprints": len(ledger.store.list(f"datasets/{ledger.dataset}/fingerprints/")),
        }
    except (ConfigError, FedLoRAError, OSError) as exc:
        fail(exc, 2)
    click.echo(json.dumps(report, indent=2, sort_keys=True))


@bank_ledger_group.command("reset")
@click.option("--dataset", help="Dataset identity (default: FEDLORA_BANK_DATASET_ID, else 'default').")
@click.option("--reason", required=True, help="Why (kept in the ledger with the date and the user).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def reset_command(dataset: str | None, reason: str, yes: bool) -> None:
    """Reset the dataset's LIFETIME budget: earlier charges stop counting towards lifetimeEpsilon.

    Nothing is deleted: the reset is one more record in the ledger (date, user, reason). Per-run
    caps still count every charge of their run. Use it only when the customers behind the dataset
    have really changed (a new portfolio), not after a refresh of the same customers.
    """
    from fedlora.config import ConfigError
    from fedlora.errors import FedLoRAError
    from fedlora.privacy.bank_ledger import reset_lifetime

    if not yes:
        click.confirm("Reset the lifetime privacy budget of this dataset?", abort=True, err=True)
    try:
        ledger = _ledger(dataset, 1e-5, "prv")
        record = reset_lifetime(ledger.store, ledger.dataset, reason=reason, by=getpass.getuser())
    except (ConfigError, FedLoRAError, OSError, ValueError) as exc:
        fail(exc, 2)
    click.echo(json.dumps({"dataset": ledger.dataset, **record}, sort_keys=True))
