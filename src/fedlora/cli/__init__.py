"""The ``fedlora`` command line: one click group, its commands in this package's modules.

``simulate`` (:mod:`.simulation`), ``evaluate`` (:mod:`.evaluate`, a text task's final adapter),
the bank's side ``train-bank`` and ``bank-agent`` (:mod:`.bank`) and
``bank-ledger`` (:mod:`.ledger`),
the Kubeflow commands ``compile`` and ``submit`` (:mod:`.kfp`) and the consortium operator's
``consortium`` group (:mod:`.consortium`). Heavy dependencies (torch, kfp) are imported inside
the commands, so ``fedlora compile`` runs with the ``client`` extra only.
"""

from __future__ import annotations

import logging

import click
from rich.logging import RichHandler

from fedlora.cli.bank import bank_agent_command, train_bank_command
from fedlora.cli.common import console
from fedlora.cli.consortium import consortium_group
from fedlora.cli.evaluate import evaluate_command
from fedlora.cli.kfp import compile_command, submit_command
from fedlora.cli.ledger import bank_ledger_group
from fedlora.cli.simulation import simulate_command

__all__ = ["main"]


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


for _command in (
    simulate_command,
    evaluate_command,
    train_bank_command,
    bank_agent_command,
    bank_ledger_group,
    compile_command,
    submit_command,
    consortium_group,
):
    main.add_command(_command)
