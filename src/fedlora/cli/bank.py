"""``fedlora train-bank`` and ``fedlora bank-agent``: what runs on a bank's side (its Job, its agent)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fedlora.cli.common import fail

if TYPE_CHECKING:
    from fedlora.bank_agent import RoundExecutor

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
@click.option(
    "--executor",
    type=click.Choice(["job", "inline"]),
    default="job",
    show_default=True,
    help="job = create each round's trainer Job from the bank's template in this namespace (the Helm chart); "
    "inline = train in this process (a bank without Kubernetes).",
)
@click.option(
    "--job-template",
    default="fedlora-bank-job-template",
    show_default=True,
    envvar="FEDLORA_AGENT_JOB_TEMPLATE",
    help="job executor: the ConfigMap with the bank's trainer Job template, in the agent's namespace.",
)
@click.option(
    "--namespace",
    envvar="FEDLORA_AGENT_NAMESPACE",
    help="job executor: the bank's namespace (default: the agent pod's own).",
)
def bank_agent_command(
    bank: str,
    runs: tuple[str, ...],
    once: bool,
    poll_seconds: float,
    executor: str,
    job_template: str,
    namespace: str | None,
) -> None:
    """Pull mode: take this bank's rounds from the exchange and train them in the bank's own cluster.

    For every kubeflow.mode=pull run in the exchange (FEDLORA_STORE_*) that names this bank and whose
    next round needs it (previous round committed, bank sampled, no outcome yet), with the run's
    stored config.yaml as the request: --executor job creates the round's trainer Job from the bank's
    own template (only run, bank, round and that config filled in; the Job's train-bank applies the
    bank's policy) and does not wait for it; a later pass publishes a failed outcome for a Job that
    failed without one. --executor inline runs exactly what train-bank runs, here (it then also
    needs FEDLORA_BANK_DATA, FEDLORA_BANK_POLICY, FEDLORA_BANK_LEDGER). Run names in the exchange
    that are not identifiers are skipped. Prints one line per round outcome (status, ε, steps; never
    a data value). Exit (with --once) 0, 1 when a round failed or the exchange was unreachable, 2 on
    a bad deployment.
    """
    from fedlora.bank_agent import InlineExecutor, checked_names, run_agent
    from fedlora.bank_env import environment
    from fedlora.bank_request import BankRequestError

    env = environment()
    try:
        checked_names(bank, runs)  # before anything is built: names are identifiers, never paths
        chosen: RoundExecutor = InlineExecutor(env) if executor == "inline" else _job_executor(namespace, job_template)
        code = run_agent(
            env, bank=bank, executor=chosen, runs=runs, once=once, poll_seconds=poll_seconds, echo=click.echo
        )
    except BankRequestError as exc:
        fail(exc, 2)
    sys.exit(code)


def _job_executor(namespace: str | None, job_template: str) -> RoundExecutor:
    """The job executor for ``namespace`` (default: the pod's own) and the bank's template ConfigMap.

    Raises:
        BankRequestError: no namespace, or no access to the Kubernetes API.
    """
    from fedlora.bank_request import BankRequestError
    from fedlora.kube.agent_jobs import JobExecutor
    from fedlora.kube.launcher import BankJobLauncher, api_client, own_namespace

    namespace = namespace or own_namespace()
    if not namespace:
        raise BankRequestError("--executor job: no namespace (set FEDLORA_AGENT_NAMESPACE or --namespace)")
    try:
        api = api_client()
    except Exception as exc:  # not in a cluster, no kubeconfig
        raise BankRequestError(f"--executor job: no access to the Kubernetes API ({type(exc).__name__})") from exc
    return JobExecutor(BankJobLauncher(api, namespace=namespace, template_configmap=job_template))
