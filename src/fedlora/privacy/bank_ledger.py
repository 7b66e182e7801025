"""The bank's own privacy ledger: every charge ever made on one dataset, in storage only the bank controls.

Layout, under the bank's ledger store (its PVC or its private bucket, ``FEDLORA_BANK_LEDGER``)::

    datasets/<dataset>/charges/<run>/<round:04d>/<token>.json   one charge = one claim
    datasets/<dataset>/reports/<run>/<round:04d>.json           what stayed in the bank (metrics, errors)
    datasets/<dataset>/fingerprints/<fingerprint>.json          each version of the rows seen, when first seen
    datasets/<dataset>/resets/<token>.json                      an explicit reset of the lifetime budget

``<dataset>`` is the identity the bank declares (``FEDLORA_BANK_DATASET_ID``, the chart's
``ledger.datasetId``), not a hash of the rows: a data refresh (one customer added) is the same
customers, so it is charged to the same lifetime budget. The rows' fingerprint
(:func:`dataset_fingerprint`) is recorded, and a new one is logged in the bank as a changed
dataset; it never opens a fresh budget. Only an explicit, recorded act of the bank
(:func:`reset_lifetime`, ``fedlora bank-ledger reset``) does, for the lifetime cap; a run's own
cap always counts all of that run's charges.

The ledger is append-only: a charge is one object, written *before* anything is trained or
released (a crash afterwards over-counts, never under-counts). ε is always recomputed by the
accountant from the charges: of one run at the run's δ (the per-run target) and of every charge
since the last reset at the *bank's* δ (the lifetime cap: ``maxDelta``, else ``1/(10·n)``),
whatever δ a request asked for.

Claims are concurrency-safe without a lock service: a Job checks the ledger, writes its charge
under a random token, then lists the dataset's charges again. If nothing else appeared, the
first check stands; otherwise it checks again, and if another charge for the same run and round
is visible, or a cap is now exceeded (a concurrent run), it deletes its own charge and trains
nothing. A charge listed but deleted before it is read (a concurrent Job backing off) is simply
gone. With read-after-write consistent listing (POSIX directories, S3, Ceph) two Jobs can both
back off, but they can never both train.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from fedlora.errors import FedLoRAError
from fedlora.names import check_name
from fedlora.privacy.accounting import MechanismRun, compute_epsilon
from fedlora.store.base import Store, StoreError

log = logging.getLogger(__name__)


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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp) if stamp else datetime.min.replace(tzinfo=UTC)


def _read_json(store: Store, key: str) -> dict[str, Any] | None:
    """The JSON object under ``key``, or None when it was deleted after it was listed (a Job backing off)."""
    try:
        return dict(json.loads(store.get(key)))
    except StoreError as exc:
        if exc.kind == "not found":
            return None
        raise


def reset_lifetime(store: Store, dataset: str, *, reason: str, by: str) -> dict[str, Any]:
    """Record an explicit reset of ``dataset``'s lifetime budget in the bank's ledger (an act of the bank).

    Charges made before the reset no longer count towards ``lifetimeEpsilon``; they stay in the
    ledger (nothing is deleted), and every run's own cap still counts all of its charges.

    Args:
        store: The bank's ledger store.
        dataset: The dataset identity (``FEDLORA_BANK_DATASET_ID``).
        reason: Why (kept with the record, e.g. a ticket number).
        by: Who (kept with the record).

    Returns:
        The record written.

    Raises:
        InvalidName: ``dataset`` is not an identifier.
        ValueError: no reason was given.
    """
    check_name(dataset, kind="dataset")
    if not reason.strip():
        raise ValueError("a lifetime reset needs a reason (it is kept in the bank's ledger)")
    record = {"created": _now(), "reason": reason.strip(), "by": by.strip() or "unknown", "token": secrets.token_hex(8)}
    store.put(f"datasets/{dataset}/resets/{record['token']}.json", json.dumps(record, sort_keys=True).encode("utf-8"))
    return record


class BankLedger:
    """The charges on one dataset (the identity the bank declares) in the bank's own store."""

    def __init__(
        self, store: Store, dataset: str, *, delta: float, accountant: str, lifetime_delta: float | None = None
    ) -> None:
        """Open the ledger of ``dataset`` in ``store``.

        Args:
            store: The bank's own ledger store.
            dataset: The dataset identity the bank declares (an identifier, never a path).
            delta: δ of the run's ε (the run's plan).
            accountant: The accountant that composes the charges.
            lifetime_delta: δ of the lifetime ε, the bank's own (default ``delta``).

        Raises:
            InvalidName: ``dataset`` is not an identifier.
        """
        self.store = store
        self.dataset = check_name(dataset, kind="dataset")
        self.delta = delta
        self.lifetime_delta = delta if lifetime_delta is None else lifetime_delta
        self.accountant = accountant
        self._root = f"datasets/{dataset}"

    def _charge_prefix(self, run: str, round_index: int | None = None) -> str:
        base = f"{self._root}/charges/{check_name(run, kind='run')}/"
        return base if round_index is None else f"{base}{round_index:04d}/"

    def _charge_keys(self, run: str | None = None) -> list[str]:
        prefix = self._charge_prefix(run) if run is not None else f"{self._root}/charges/"
        return [k for k in self.store.list(prefix) if k.endswith(".json")]

    def _read_charges(self, keys: Iterable[str]) -> list[Charge]:
        return [Charge.from_json(data) for k in keys if (data := _read_json(self.store, k)) is not None]

    def charges(self, run: str | None = None) -> list[Charge]:
        """Every charge on this dataset (of one run when ``run`` is given), oldest key first."""
        return self._read_charges(self._charge_keys(run))

    def last_reset(self) -> datetime | None:
        """When the bank last reset this dataset's lifetime budget (None: never)."""
        records = [_read_json(self.store, k) for k in self.store.list(f"{self._root}/resets/")]
        stamps = [_time(str(r["created"])) for r in records if r is not None]
        return max(stamps) if stamps else None

    def lifetime(self, charges: list[Charge]) -> list[Charge]:
        """The charges that count towards the lifetime cap: those made after the last reset."""
        reset = self.last_reset()
        return charges if reset is None else [c for c in charges if _time(c.created) > reset]

    def epsilon(
        self, charges: list[Charge], extra: Iterable[MechanismRun] = (), *, delta: float | None = None
    ) -> float:
        """ε of ``charges`` plus ``extra`` at ``delta`` (default: the run's δ), the accountant's upper bound."""
        return compute_epsilon(
            [*_history(charges), *extra], delta=self.delta if delta is None else delta, accountant=self.accountant
        )

    def lifetime_epsilon(self) -> float:
        """ε of every charge since the last reset, at the bank's δ."""
        return self.epsilon(self.lifetime(self.charges()), delta=self.lifetime_delta)

    def charged_rounds(self, run: str) -> list[int]:
        return sorted({c.round for c in self.charges(run)})

    def record_fingerprint(self, fingerprint: str, *, run: str, round_index: int) -> bool:
        """Record that these rows (``fingerprint``) were used; True when they differ from every earlier version.

        A changed dataset is the same customers under the same identity: it is logged and recorded
        here, and charged to the same budget (never a fresh one).
        """
        key = f"{self._root}/fingerprints/{fingerprint}.json"
        if self.store.exists(key):
            return False
        earlier = [k for k in self.store.list(f"{self._root}/fingerprints/") if k.endswith(".json")]
        record = {"first_seen": _now(), "run": run, "round": round_index}
        self.store.put(key, json.dumps(record, sort_keys=True).encode("utf-8"))
        if earlier:
            log.warning(
                "dataset %s: the rows changed since the last run (%d earlier version(s)); they are charged to the "
                "same lifetime budget (a reset is an explicit act: fedlora bank-ledger reset)",
                self.dataset,
                len(earlier),
            )
        return bool(earlier)

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
            InvalidName: ``run`` is not an identifier.

        """
        seen = self._check(run, round_index, mechanisms, run_cap=run_cap, lifetime_cap=lifetime_cap)
        charge = Charge(
            run=run, round=round_index, token=secrets.token_hex(8), mechanisms=tuple(mechanisms), created=_now()
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
        check_name(run, kind="run")
        keys = self._charge_keys()
        everything = self._read_charges(keys)
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
            life_eps = self.epsilon(self.lifetime(everything), mechanisms, delta=self.lifetime_delta)
            if life_eps > lifetime_cap:
                raise BudgetSpent(
                    f"this round would bring the dataset's lifetime ledger to ε={life_eps:.3f} (at the bank's "
                    f"δ={self.lifetime_delta:.3g}) > the bank's lifetimeEpsilon {lifetime_cap:g} (every run on "
                    "this dataset counts)"
                )
        return set(keys)

    def keep_report(self, run: str, round_index: int, report: dict[str, Any]) -> None:
        """Keep what must not leave the bank (exact metrics, losses, full error text) in the bank's own store."""
        key = f"{self._root}/reports/{check_name(run, kind='run')}/{round_index:04d}.json"
        self.store.put(key, json.dumps(report, sort_keys=True, default=float, indent=2).encode("utf-8"))
