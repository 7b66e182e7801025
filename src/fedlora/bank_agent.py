"""Pull mode, the bank's side: ``fedlora bank-agent`` takes work from the exchange in the bank's own cluster.

The consortium sends requests (a run's ``config.yaml`` in the exchange); only a component of the bank's, this
agent, turns them into training. It needs outbound access to the exchange bucket (and, with the ``job``
executor, its own namespace's Kubernetes API). Each pass:

1. lists the runs under the exchange root (``FEDLORA_STORE_URI``: every ``<run>/config.yaml``), or looks only
   at the runs it was given; a run whose name is not an identifier (:func:`fedlora.names.check_name`, e.g.
   ``A_b``) is skipped: names are identifiers, never paths;
2. for each run whose stored config (the request) is a ``kubeflow.mode=pull`` run naming this bank
   (``namespaced``, its older spelling, counts as pull), finds the run's next round ``r`` = last committed
   round + 1 and keeps it when ``r`` is within ``federation.rounds``, the run did not stop early, the global
   adapter of round ``r-1`` exists, this bank has published no outcome for ``r`` yet, and the seeded sampling
   selects the bank for ``r`` (:func:`next_round`);
3. hands the round to its executor (:class:`RoundExecutor`):

   * ``job`` (:class:`fedlora.kube.agent_jobs.JobExecutor`, the Helm chart's choice): creates the trainer Job
     from the bank's own template, filling in only run, bank, round and the run's config, and does not wait
     for it; a later pass reads the Job and publishes a ``failed`` outcome for one that failed without
     publishing its own. The agent's pod stays small (no GPU, no data); the GPU Job exists only while a
     round trains.
   * ``inline`` (:class:`InlineExecutor`, a bank without Kubernetes): takes a lease on ``(run, r)`` in the
     bank's own ledger store (so two agents do not both start the round: the second would be refused by the
     ledger and publish ``refused``) and runs exactly what ``fedlora train-bank`` runs
     (:func:`fedlora.bank_request.train_request`) in this process. A failed round is published as a
     ``failed`` outcome with the public message; its full text stays in the bank's ledger store.

A round is never trained twice: :func:`~fedlora.bank_round.run_bank_round` returns a published outcome as is
and the ledger refuses a second claim of the same round; the Job name or the lease only keep concurrent agents
from turning that refusal into a published ``refused``. Store errors (an outage longer than
``store.retry_seconds``) end the pass for that run with a warning; the next pass retries.

The inline lease protocol (claim, then check), as the ledger's: write
``agent-leases/<run>/<r>/<token>.json``, list the round's leases, go on only if this lease is the only live
one, else delete it and back off (a random pause; a few attempts). With read-after-write consistent listing
(local filesystems, S3 since 2020) at most one agent goes on. A lease older than
``kubeflow.job_timeout_seconds`` (a killed agent) is stale and removed; a lease is deleted when its round ends.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fedlora.aggregation import select_banks
from fedlora.bank_env import request_config
from fedlora.bank_request import BankRequestError, BankTrainingError, bank_side, train_request
from fedlora.bank_round import OUTCOME_FILE
from fedlora.config import Config, ConfigError
from fedlora.names import InvalidName, check_name, is_name
from fedlora.privacy.bank_side import public_message
from fedlora.records import BankOutcome
from fedlora.store.adapters import get_json, put_json
from fedlora.store.base import Store, global_prefix, round_prefix, update_prefix
from fedlora.store.run import committed_rounds, open_run_store, open_store

__all__ = [
    "PULL_MODES",
    "AgentPass",
    "InlineExecutor",
    "RoundExecutor",
    "RoundRequest",
    "acquire_lease",
    "checked_names",
    "exchange_store",
    "list_runs",
    "next_round",
    "outcome_line",
    "process_pending",
    "publish_failure",
    "run_agent",
]

log = logging.getLogger(__name__)

LEASES = "agent-leases"
PULL_MODES = ("pull", "namespaced")
"""``kubeflow.mode`` values whose rounds the banks' agents train (``namespaced`` is pull's older spelling)."""
_RUN_CONFIG = re.compile(r"^([^/]+)/config\.yaml$")


@dataclass
class AgentPass:
    """What one pass did: the outcomes of the rounds it took up, and how many errors it met."""

    outcomes: list[tuple[str, BankOutcome]] = field(default_factory=list)
    errors: int = 0


@dataclass(frozen=True)
class RoundRequest:
    """One round that waits for this bank: checked names, and the run's stored config (the request).

    Attributes:
        run: The run (an identifier, :func:`fedlora.names.check_name`).
        bank: This bank (an identifier).
        round_index: The round (1-based).
        config_text: The run's ``config.yaml`` as stored in the exchange.
        config: That config, parsed, with the bank's store settings applied.
    """

    run: str
    bank: str
    round_index: int
    config_text: str
    config: Config


class RoundExecutor(Protocol):
    """Where a pending round is trained: in this process, or as a Job the agent creates in its namespace."""

    def take(self, request: RoundRequest) -> BankOutcome | None:
        """Train or start ``request``'s round; its outcome when one is known now, None when it is in progress.

        Raises:
            Exception: a store or API outage; the pass logs it and the next pass tries again.
        """
        ...


def exchange_store(config: Config) -> Store:
    """The exchange root (``store.uri``, the bank's ``FEDLORA_STORE_URI``): runs live under it.

    Raises:
        ConfigError: no exchange is configured.
    """
    uri = config.store.uri
    if not uri:
        raise ConfigError("FEDLORA_STORE_URI is not set: the agent finds its work in the exchange bucket")
    return open_store(config, uri)


def list_runs(root: Store) -> list[str]:
    """The runs under the exchange root: every ``<run>/config.yaml`` whose run is an identifier, sorted.

    A key whose run part is not an identifier (``A_b/config.yaml``) is skipped with a warning: it never
    becomes a Job, a store prefix or a ledger key.
    """
    runs = []
    for key in root.list(""):
        match = _RUN_CONFIG.match(key)
        if match is None:
            continue
        if is_name(match.group(1)):
            runs.append(match.group(1))
        else:
            log.warning("skipping a run in the exchange whose name is not an identifier (names are never paths)")
    return sorted(runs)


def next_round(store: Store, config: Config, bank: str) -> tuple[int | None, str]:
    """The round of this run that needs ``bank`` now, or ``(None, why not)``."""
    if config.kubeflow.mode not in PULL_MODES:
        return None, f"a kubeflow.mode={config.kubeflow.mode} run (the coordinator trains it)"
    if bank not in {b.name for b in config.federation.banks}:
        return None, "does not name this bank"
    committed = [r for r in committed_rounds(store) if r > 0]
    last = committed[-1] if committed else 0
    if last and get_json(store, f"{round_prefix(last)}/MANIFEST.json").get("stopped_early"):
        return None, f"stopped after round {last}"
    if last >= config.federation.rounds:
        return None, f"finished ({last} rounds)"
    if not store.exists(f"{global_prefix(last)}/meta.json"):
        return None, f"the global adapter of round {last} is not published yet"
    round_index = last + 1
    if store.exists(f"{update_prefix(round_index, bank)}/{OUTCOME_FILE}"):
        return None, f"round {round_index}: this bank's outcome is published"
    if bank not in select_banks(config, round_index):
        return None, f"round {round_index}: not sampled"
    return round_index, ""


def _live_leases(store: Store, prefix: str, ttl: float) -> list[str]:
    """The round's leases; stale ones (older than ``ttl`` seconds: a killed agent) are removed."""
    live = []
    for key in store.list(prefix):
        try:
            created = float(json.loads(store.get(key))["created"])
        except Exception:  # half-written or deleted meanwhile: count it as live (the safe side)
            created = time.time()
        if time.time() - created > ttl:
            log.warning("removing a stale agent lease %s (older than %.0fs)", key, ttl)
            store.delete(key)
        else:
            live.append(key)
    return live


def acquire_lease(store: Store, run: str, round_index: int, *, ttl: float, attempts: int = 6) -> str | None:
    """Take the lease on ``(run, round_index)`` in the bank's own store; its key, or None when another agent has it."""
    prefix = f"{LEASES}/{run}/{round_index:04d}/"
    for attempt in range(attempts):
        if _live_leases(store, prefix, ttl):
            return None
        key = f"{prefix}{secrets.token_hex(8)}.json"
        body = {"created": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
        store.put(key, json.dumps(body).encode("utf-8"))
        if [k for k in _live_leases(store, prefix, ttl) if k != key] == []:
            return key
        store.delete(key)  # two agents at once: both step back, then retry after a random pause
        time.sleep(random.uniform(0.05, 0.5) * (attempt + 1))
    return None


def outcome_line(run: str, outcome: BankOutcome) -> str:
    """One line per round, only public values (what the outcome already publishes)."""
    head = f"run {run} round {outcome.round} bank {outcome.bank}: {outcome.status}"
    if outcome.status == "ok":
        eps = "not private" if outcome.epsilon is None else f"epsilon {outcome.epsilon:.3f}"
        return f"{head} ({eps}, {outcome.steps} steps)"
    return f"{head} ({outcome.message})" if outcome.message else head


def publish_failure(config: Config, run: str, outcome: BankOutcome) -> None:
    """Publish a failed round's outcome (public message) so the coordinator stops waiting for it.

    An outcome already published for the round (e.g. by the bank's Job itself) is kept.
    """
    store = open_run_store(config, run)
    key = f"{update_prefix(outcome.round, outcome.bank)}/{OUTCOME_FILE}"
    if not store.exists(key):
        put_json(store, key, outcome.to_json())


class InlineExecutor:
    """Train the round in this process, under a lease in the bank's own ledger store (a bank without Kubernetes).

    Args:
        env: The bank's environment (``FEDLORA_STORE_*``, ``FEDLORA_BANK_*``).

    Raises:
        BankRequestError: the bank's deployment is unusable (no ledger or a bad policy).
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        side = bank_side(env)  # a missing ledger or a bad policy fails at start, not at the first round
        assert side.ledger_store is not None
        self.ledger: Store = side.ledger_store

    def take(self, request: RoundRequest) -> BankOutcome | None:
        """Train the round (see :func:`fedlora.bank_request.train_request`); None when another agent has it."""
        run, round_index = request.run, request.round_index
        lease = acquire_lease(self.ledger, run, round_index, ttl=request.config.kubeflow.job_timeout_seconds)
        if lease is None:
            log.info("run %s round %d: another agent of this bank has it", run, round_index)
            return None
        try:
            log.info("run %s round %d: training bank %s", run, round_index, request.bank)
            try:
                return train_request(
                    self.env, run=run, bank=request.bank, round_index=round_index, config_text=request.config_text
                )
            except BankTrainingError as exc:
                outcome = BankOutcome.failed(request.bank, round_index, str(exc))
                publish_failure(request.config, run, outcome)
                return outcome
        finally:
            self.ledger.delete(lease)


def _pending(env: Mapping[str, str], root: Store, *, run: str, bank: str) -> RoundRequest | None:
    """The round of ``run`` that waits for ``bank``, or None when there is nothing to do."""
    text = root.get(f"{run}/config.yaml").decode("utf-8")
    config = request_config(env, config_text=text)
    round_index, why = next_round(open_run_store(config, run), config, bank)
    if round_index is None:
        log.debug("run %s: nothing to do (%s)", run, why)
        return None
    return RoundRequest(run=run, bank=bank, round_index=round_index, config_text=text, config=config)


def checked_names(bank: str, runs: Sequence[str]) -> list[str]:
    """``runs`` after checking ``bank`` and each run are identifiers.

    Raises:
        BankRequestError: a name given to the agent is not an identifier.
    """
    try:
        check_name(bank, kind="bank")
        return [check_name(run, kind="run") for run in runs]
    except InvalidName as exc:
        raise BankRequestError(str(exc)) from exc


def process_pending(
    env: Mapping[str, str],
    *,
    bank: str,
    executor: RoundExecutor | None = None,
    runs: Sequence[str] = (),
    echo: Callable[[str], None] = print,
) -> AgentPass:
    """One pass over the exchange: hand every round that waits for ``bank`` to ``executor`` (module docstring).

    Args:
        env: The agent's environment (``FEDLORA_STORE_*``; for the inline executor also ``FEDLORA_BANK_*``).
        bank: This bank's name in the consortium's configs (an identifier).
        executor: Where rounds train; default :class:`InlineExecutor` on ``env``.
        runs: Only these runs (identifiers); empty = every run under the exchange root.
        echo: Gets one line per round whose outcome the pass knows (:func:`outcome_line`).

    Raises:
        BankRequestError: the deployment is unusable (no exchange, no ledger or a bad policy for the inline
            executor) or a name given to the agent is not an identifier.
    """
    wanted = checked_names(bank, runs)
    executor = executor if executor is not None else InlineExecutor(env)
    try:
        root = exchange_store(request_config(env, config_text="{}"))
    except ConfigError as exc:
        raise BankRequestError(str(exc)) from exc
    done = AgentPass()
    try:
        names = wanted or list_runs(root)
    except Exception as exc:  # the exchange is down: this pass ends, the next one retries
        log.warning("cannot list the runs in the exchange: %s", public_message(exc))
        done.errors += 1
        return done
    for run in names:  # at most one round per run and pass: the next needs the coordinator's aggregation first
        try:
            request = _pending(env, root, run=run, bank=bank)
            outcome = executor.take(request) if request is not None else None
        except Exception as exc:  # a store outage, an unreadable request: the next pass retries
            log.warning("run %s: %s", run, public_message(exc))
            done.errors += 1
            continue
        if outcome is not None:
            done.outcomes.append((run, outcome))
            done.errors += outcome.status == "failed"
            echo(outcome_line(run, outcome))
    return done


def run_agent(
    env: Mapping[str, str],
    *,
    bank: str,
    executor: RoundExecutor | None = None,
    runs: Sequence[str] = (),
    once: bool = False,
    poll_seconds: float = 30.0,
    echo: Callable[[str], None] = print,
    stop: threading.Event | None = None,
) -> int:
    """Pass after pass (every ``poll_seconds``, backing off up to 10× after errors) until ``stop`` is set.

    Args:
        env: The agent's environment (see :func:`process_pending`).
        bank: This bank's name.
        executor: Where rounds train; default :class:`InlineExecutor` on ``env`` (built before the first pass).
        runs: Only these runs; empty = every run under the exchange root.
        once: One pass, then return.
        poll_seconds: Pause between passes.
        echo: Gets one line per round whose outcome a pass knows.
        stop: Ends the loop when set.

    Returns:
        With ``once``: 0 when the pass met no error, 1 otherwise (a CronJob shows it). Else 0 when stopped.

    Raises:
        BankRequestError: the deployment is unusable or a name is not an identifier (checked before the first pass).
    """
    checked_names(bank, runs)
    executor = executor if executor is not None else InlineExecutor(env)
    stop = stop or threading.Event()
    pause = poll_seconds
    log.info("bank-agent for %s: watching %s", bank, ", ".join(runs) or "every run in the exchange")
    while True:
        result = process_pending(env, bank=bank, executor=executor, runs=runs, echo=echo)
        if once:
            return 1 if result.errors else 0
        pause = min(pause * 2, 10 * poll_seconds) if result.errors else poll_seconds
        if stop.wait(pause * random.uniform(0.9, 1.1)):
            return 0
