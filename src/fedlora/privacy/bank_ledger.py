"""The bank's own privacy ledger: every charge ever made on one dataset, in storage only the bank controls.

Layout, under the bank's ledger store (its PVC or its private bucket, ``FEDLORA_BANK_LEDGER``)::

    datasets/<fingerprint>/charges/<run>/<round:04d>/<token>.json   one charge = one claim
    datasets/<fingerprint>/reports/<run>/<round:04d>.json            what stayed in the bank (metrics, errors)

The ledger is append-only: a charge is one object, written *before* anything is trained or
released (a crash afterwards over-counts, never under-counts). ε is always recomputed by the
accountant from the charges: of one run (the per-run target) and of every run on the same
rows (the lifetime cap). Rows are identified by :func:`dataset_fingerprint`, so a new run
name, a new seed or a re-split does not start a new ledger.

Claims are concurrency-safe without a lock service: a Job checks the ledger, writes its charge
under a random token, then lists the dataset's charges again. If nothing else appeared, the
first check stands; otherwise it checks again, and if another charge for the same run and round
is visible, or a cap is now exceeded (a concurrent run), it deletes its own charge and trains
nothing. With read-after-write consistent listing (POSIX directories, S3, Ceph) two Jobs can
both back off, but they can never both train.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from fedlora.errors import FedLoRAError
from fedlora.privacy.accounting import MechanismRun, compute_epsilon
from fedlora.store.base import Store


class ClaimRefused(FedLoRAError, RuntimeError):  # noqa: N818 (a refusal, not a bug)
    """The round cannot be charged: another Job holds it, or a cap would be exceeded."""


class AlreadyCharged(ClaimRefused):
    """Another claim for the same run and round exists (a concurrent or an earlier Job)."""


class BudgetSpent(ClaimRefused):
    """The run's ε target or the dataset's lifetime cap would be exceeded."""


def dataset_fingerprint(frames: Iterable[pd.DataFrame]) -> str:
    """sha256 of the bank's rows, independent of their order and of how they were split.

    Every row is hashed (``pandas.util.hash_pandas_object``, values only), the row hashes
    are sorted and hashed again: the same rows give the same ledger whatever the run, seed
    or split.
    """
    hashes = [pd.util.hash_pandas_object(f.reset_index(drop=True), index=False).to_numpy() for f in frames]
    rows = np.sort(np.concatenate(hashes)) if hashes else np.zeros(0, dtype=np.uint64)
    return hashlib.sha256(rows.astype("<u8").tobytes()).hexdigest()[:32]


@dataclass(frozen=True)
class Charge:
    """One charge of the ledger: the mechanisms one round ran (or is about to run)."""

    run: str
    round: int
    token: str
    mechanisms: tuple[MechanismRun, ...]
    created: str

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "round": self.round,
            "token": self.token,
            "created": self.created,
            "mechanisms": [[m.noise_multiplier, m.sample_rate, m.steps] for m in self.mechanisms],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Charge:
        return cls(
            run=str(data["run"]),
            round=int(data["round"]),
            token=str(data["token"]),
            created=str(data.get("created", "")),
            mechanisms=tuple(MechanismRun(float(s), float(q), int(n)) for s, q, n in data["mechanisms"]),
        )


def _history(charges: Iterable[Charge]) -> list[MechanismRun]:
    return [m for c in charges for m in c.mechanisms]


class BankLedger:
    """The charges on one dataset (fingerprint) in the bank's own store."""

    def __init__(self, store: Store, fingerprint: str, *, delta: float, accountant: str) -> None:
        """Open the ledger of dataset ``fingerprint`` in ``store`` (ε is reported at ``delta``)."""
        self.store = store
        self.fingerprint = fingerprint
        self.delta = delta
        self.accountant = accountant
        self._root = f"datasets/{fingerprint}"

    def _charge_prefix(self, run: str, round_index: int | None = None) -> str:
        base = f"{self._root}/charges/{run}/"
        return base if round_index is None else f"{base}{round_index:04d}/"

    def _charge_keys(self, run: str | None = None) -> list[str]:
        prefix = self._charge_prefix(run) if run is not None else f"{self._root}/charges/"
        return [k for k in self.store.list(prefix) if k.endswith(".json")]

    def charges(self, run: str | None = None) -> list[Charge]:
        """Every charge on this dataset (of one run when ``run`` is given), oldest key first."""
        return [Charge.from_json(json.loads(self.store.get(k))) for k in self._charge_keys(run)]

    def epsilon(self, charges: list[Charge], extra: Iterable[MechanismRun] = ()) -> float:
        """ε of ``charges`` plus ``extra`` (the accountant's upper bound)."""
        return compute_epsilon([*_history(charges), *extra], delta=self.delta, accountant=self.accountant)

    def charged_rounds(self, run: str) -> list[int]:
        return sorted({c.round for c in self.charges(run)})

    def claim(
        self,
        *,
        run: str,
        round_index: int,
        mechanisms: list[MechanismRun],
        run_cap: float,
        lifetime_cap: float,
    ) -> Charge:
        """Charge ``mechanisms`` for ``(run, round_index)`` before anything runs; refuse when that is not allowed.

        Raises:
            ClaimRefused: the round is already charged (a concurrent or earlier Job), or the run's or
                the dataset's ε would exceed its cap. Nothing stays charged in that case.

        """
        seen = self._check(run, round_index, mechanisms, run_cap=run_cap, lifetime_cap=lifetime_cap)
        charge = Charge(
            run=run,
            round=round_index,
            token=secrets.token_hex(8),
            mechanisms=tuple(mechanisms),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        key = f"{self._charge_prefix(run, round_index)}{charge.token}.json"
        self.store.put(key, json.dumps(charge.to_json(), sort_keys=True).encode("utf-8"))
        if set(self._charge_keys()) == seen | {key}:
            return charge  # nothing appeared meanwhile: the check above already covered this charge
        try:
            self._check(run, round_index, [], run_cap=run_cap, lifetime_cap=lifetime_cap, own=charge.token)
        except ClaimRefused:
            self.store.delete(key)
            raise
        return charge

    def _check(
        self,
        run: str,
        round_index: int,
        mechanisms: list[MechanismRun],
        *,
        run_cap: float,
        lifetime_cap: float,
        own: str | None = None,
    ) -> set[str]:
        """Refuse when the round is held by another claim or a cap would be passed; return the keys checked."""
        keys = self._charge_keys()
        everything = [Charge.from_json(json.loads(self.store.get(k))) for k in keys]
        others = [c for c in everything if c.run == run and c.round == round_index and c.token != own]
        if others:
            raise AlreadyCharged(
                f"round {round_index} of run {run} is already charged on this bank's ledger "
                f"({len(others)} other claim(s), e.g. a concurrent or an earlier crashed Job); "
                "it is trained at most once"
            )
        run_eps = self.epsilon([c for c in everything if c.run == run], mechanisms)
        if run_eps > run_cap:
            raise BudgetSpent(f"this round would bring the run to ε={run_eps:.3f} > its cap {run_cap:g}")
        if math.isfinite(lifetime_cap):
            life_eps = self.epsilon(everything, mechanisms)
            if life_eps > lifetime_cap:
                raise BudgetSpent(
                    f"this round would bring the dataset's lifetime ledger to ε={life_eps:.3f} > the bank's "
                    f"lifetimeEpsilon {lifetime_cap:g} (every run on these rows counts)"
                )
        return set(keys)

    def keep_report(self, run: str, round_index: int, report: dict[str, Any]) -> None:
        """Keep what must not leave the bank (exact metrics, losses, full error text) in the bank's own store."""
        key = f"{self._root}/reports/{run}/{round_index:04d}.json"
        self.store.put(key, json.dumps(report, sort_keys=True, default=float, indent=2).encode("utf-8"))
