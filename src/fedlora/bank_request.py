"""One training request on the bank's side: the code path of ``fedlora train-bank`` and ``fedlora bank-agent``.

Both commands call :func:`train_request`: it builds the bank's side (:class:`~fedlora.privacy.bank_side.BankSide`:
its policy from ``FEDLORA_BANK_POLICY``, its own ledger from ``FEDLORA_BANK_LEDGER``, redacted
messages, CSPRNG noise) and a :class:`~fedlora.runtime.Runtime` on the bank's data
(``FEDLORA_BANK_DATA``) from the environment the bank's Helm release sets (:mod:`fedlora.bank_env`),
and calls :func:`fedlora.bank_round.run_bank_round` with the consortium's request. Whatever leaves
through an exception's message is public (settings, keys, rules; never a data value); the full
error text is kept in the bank's ledger store under ``errors/<run>/<round>.txt``.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping

from fedlora.bank_env import bank_data_path, bank_dataset_id, bank_ledger_store, bank_policy, request_config
from fedlora.bank_round import run_bank_round
from fedlora.config import Config, ConfigError
from fedlora.data.row_split import row_key_column_from_env, split_key_from_env
from fedlora.names import InvalidName, check_name
from fedlora.privacy.bank_side import BankSide, public_message
from fedlora.privacy.policy import PolicyError
from fedlora.records import BankOutcome
from fedlora.runtime import Runtime

__all__ = [
    "BankRequestError",
    "BankTrainingError",
    "bank_side",
    "keep_private_error",
    "train_request",
    "without_request_paths",
]

log = logging.getLogger(__name__)


class BankRequestError(ValueError):
    """The request or the bank's deployment is unusable (no request, bad config, policy or ledger): exit 2."""


class BankTrainingError(RuntimeError):
    """The round failed; the message is public (its full text stayed in the bank's ledger store): exit 1."""


def bank_side(env: Mapping[str, str]) -> BankSide:
    """The bank's own policy and ledger from its environment, with a bank Job's redaction (``job=True``).

    Raises:
        BankRequestError: no ledger, or a policy that does not validate.
    """
    try:
        return BankSide(
            ledger_store=bank_ledger_store(env), policy=bank_policy(env), job=True, dataset_id=bank_dataset_id(env)
        )
    except (ConfigError, PolicyError, InvalidName, OSError) as exc:
        raise BankRequestError(str(exc)) from exc


def without_request_paths(config: Config) -> Config:
    """The request with every ``federation.banks[].data`` removed: a bank's Job never opens a path the consortium named.

    The bank's own rows come from ``FEDLORA_BANK_DATA`` (its chart); without it, from the bundled
    dataset's partition (package data). A path in the request could otherwise make the Job open,
    and fail on, any file in the bank's pod.
    """
    banks = [b.model_copy(update={"data": None}) for b in config.federation.banks]
    return config.model_copy(update={"federation": config.federation.model_copy(update={"banks": banks})})


def keep_private_error(side: BankSide, run: str, round_index: int, exc: BaseException) -> None:
    """Keep the full error (it may quote data values) in the bank's own ledger store, never in the log."""
    try:
        text = "".join(traceback.format_exception(exc))
        assert side.ledger_store is not None
        side.ledger_store.put(f"errors/{run}/{round_index:04d}.txt", text.encode("utf-8"))
    except Exception as store_exc:  # the bank's storage is down too: say so, without the details
        log.warning("could not keep the error in the bank's ledger store: %s", type(store_exc).__name__)


def train_request(
    env: Mapping[str, str], *, run: str, bank: str, round_index: int, config_text: str | None = None
) -> BankOutcome:
    """Train ``bank``'s round ``round_index`` of ``run`` as the consortium requests, as the bank's policy allows.

    Args:
        env: The bank's environment (``FEDLORA_STORE_*``, ``FEDLORA_BANK_*``, ``FEDLORA_REQUEST_CONFIG``).
        run: The run name.
        bank: This bank's name in the request.
        round_index: The round (1-based).
        config_text: The request (the run's config YAML); default ``FEDLORA_REQUEST_CONFIG``.

    Returns:
        What :func:`~fedlora.bank_round.run_bank_round` returns: ``ok``, ``not_selected``, ``refused``,
        ``budget_exhausted``, or the outcome already published for the round.

    Raises:
        BankRequestError: a bad request or deployment (nothing was tried).
        BankTrainingError: the round failed (public message; full text in the ledger store).
    """
    try:
        check_name(run, kind="run")  # a key prefix of the exchange and of the bank's ledger: never a path
        check_name(bank, kind="bank")
        config = request_config(env, config_text=config_text)
    except (ConfigError, InvalidName) as exc:
        raise BankRequestError(str(exc)) from exc
    side = bank_side(env)
    config = without_request_paths(config)
    try:
        data = bank_data_path(env)
        runtime = Runtime(
            config,
            bank_files={bank: data} if data else None,
            split_key=split_key_from_env(env),  # the bank's secret key for the per-customer split
            row_key_column=row_key_column_from_env(env),
        )
        return run_bank_round(config, run=run, bank=bank, round_index=round_index, runtime=runtime, side=side)
    except Exception as exc:  # everything said here may reach the consortium: no data values
        keep_private_error(side, run, round_index, exc)
        raise BankTrainingError(f"bank {bank} round {round_index}: {public_message(exc)}") from exc
