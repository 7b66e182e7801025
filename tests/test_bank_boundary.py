"""The consortium cannot reach around the bank (issue 27): each finding reproduced, and refused now.

2. a run name that is a path skips the ledger     -> names are DNS labels at every entry; keys cannot climb
3. exact n leaks through free refusals            -> every size check uses the declared count (adaptive prober)
5. the coordinator chooses δ                       -> δ ≤ 1/(10·n_declared) without maxDelta; lifetime at the bank's δ
6. a data refresh opens a new lifetime budget     -> the ledger is keyed by the dataset identity the bank declares
7. raw text in messages; claims crash on a race   -> YAML and store errors quote nothing; a vanished charge is skipped
(1 and 8, the pods: tests/test_helm_chart.py and tests/test_launcher.py; 4, the split: tests/test_row_split.py.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from fedlora.bank_round import run_bank_round
from fedlora.cli import main
from fedlora.config import Config, load_config
from fedlora.privacy.accounting import (
    MechanismRun,
    compute_epsilon,
    count_upper_bound,
    declared_count,
    declared_training_count,
)
from fedlora.privacy.bank_ledger import BankLedger, BudgetSpent
from fedlora.privacy.bank_side import BankSide, public_message
from fedlora.privacy.policy import BankPolicy
from fedlora.runtime import Runtime
from fedlora.store.base import StoreError
from fedlora.store.local import LocalStore
from helpers import bank_consortium, bank_job, german_rows

# --- 2. names are identifiers, never paths ------------------------------------------------------


@pytest.mark.parametrize("run", ["../x", "a/b", "../charges/x", "R1", "x/.."])
def test_a_run_name_that_is_a_path_is_refused_before_anything_is_read_or_charged(
    tiny_overrides: list[str], tmp_path: Path, run: str
) -> None:
    config = bank_consortium(tmp_path, tiny_overrides)
    outcome = bank_job(config, tmp_path, run=run)
    assert outcome["exit_code"] == 2 and "is not an identifier" in outcome["output"]
    assert not list((tmp_path / "bank-a-ledger").rglob("*.json"))  # no charge, no report, anywhere
    assert not list((tmp_path / "exchange").rglob("updates/bank-a/*"))


@pytest.mark.parametrize("bank", ["../bank-a", "bank-a/../x"])
def test_a_bank_name_that_is_a_path_is_refused(tiny_overrides: list[str], tmp_path: Path, bank: str) -> None:
    config = bank_consortium(tmp_path, tiny_overrides)
    from fedlora.config import config_to_yaml

    result = CliRunner().invoke(
        main,
        ["train-bank", "--run", "r1", "--bank", bank, "--round", "1"],
        env={"FEDLORA_REQUEST_CONFIG": config_to_yaml(config), "FEDLORA_BANK_LEDGER": str(tmp_path / "l")},
    )
    assert result.exit_code == 2 and "bank name" in result.output


def test_a_config_run_name_must_be_an_identifier() -> None:
    from fedlora.config import ConfigError

    with pytest.raises(ConfigError, match=r"output\.run_name"):
        load_config(None, ["output.run_name=../elsewhere"])


# --- 3. refusals reveal nothing finer than the declared bucket -----------------------------------


@given(st.integers(min_value=1, max_value=10**7))
def test_the_public_upper_bound_covers_every_count_of_its_bucket(n: int) -> None:
    assert n <= count_upper_bound(declared_count(n))


def _probe(request: Config, data: Path, tmp_path: Path) -> tuple[str, str]:
    """One probe of an adaptive attacker: what the bank answers (status, message) to ``request``.

    Accepted requests stop at the bank's claim (a lifetime cap nobody can meet), so nothing trains;
    the published outcome is removed afterwards, as a coordinator retrying the round would.
    """
    runtime = Runtime(request, bank_files={"bank-a": str(data)})
    side = BankSide(
        policy=BankPolicy.model_validate({"minNoiseMultiplier": 0, "lifetimeEpsilon": 1e-9}),
        ledger_store=LocalStore(tmp_path / f"ledger-{data.stem}"),
        job=True,
    )
    outcome = run_bank_round(request, run="r1", bank="bank-a", round_index=1, runtime=runtime, side=side)
    (tmp_path / "exchange/r1/rounds/0001/updates/bank-a/outcome.json").unlink(missing_ok=True)
    return outcome.status, outcome.message


def _transcript(base: Config, overrides: list[str], data: Path, tmp_path: Path) -> list[tuple[str, tuple[str, str]]]:
    """An adaptive prober: bisects on batch size, δ and data.test_fraction for the edge of refusal."""

    def ask(**fields: Any) -> tuple[str, str]:
        request = load_config(None, [*overrides, *(f"{k}={v}" for k, v in fields.items())])
        return _probe(request.model_copy(update={"federation": base.federation}), data, tmp_path)

    transcript: list[tuple[str, tuple[str, str]]] = []
    for field, lo, hi, fmt in [
        ("training.batch_size", 100, 200, int),
        ("privacy.delta", 1e-4, 1e-2, float),
        ("data.test_fraction", 0.15, 0.35, float),
    ]:
        fixed = {"training.batch_size": 185} if field == "data.test_fraction" else {}
        for _ in range(8):  # bisection: each answer chooses the next question
            mid = fmt((lo + hi) / 2)
            answer = ask(**{field: mid}, **fixed)
            transcript.append((f"{field}={mid}", answer))
            if answer[0] == "refused":
                hi = mid
            else:
                lo = mid
    return transcript


def test_an_adaptive_prober_learns_nothing_finer_than_the_declared_bucket(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    overrides = [*tiny_overrides, "privacy.noise_multiplier=3.0"]  # no calibration search: each probe is quick
    config = bank_consortium(tmp_path, overrides)
    overrides.append(f"store.uri={tmp_path / 'exchange'}")
    # 258 and 263 rows: the same declared total (260), so they must look the same; 290 must not.
    same_a = _transcript(config, overrides, german_rows(tmp_path / "n258.csv", rows=258), tmp_path)
    same_b = _transcript(config, overrides, german_rows(tmp_path / "n263.csv", rows=263), tmp_path)
    other = _transcript(config, overrides, german_rows(tmp_path / "n290.csv", rows=290), tmp_path)
    assert {answer[0] for _, answer in same_a} == {"refused", "budget_exhausted"}  # the prober met both sides
    assert same_a == same_b
    assert same_a != other  # the prober does see the declared bucket


def test_the_training_count_depends_on_the_exact_total_only_through_its_declared_value() -> None:
    for fraction in (0.7, 0.7 - 1e-6, 0.65, 0.55):
        counts = {declared_training_count(n, train_fraction=fraction) for n in range(255, 265)}
        assert len(counts) == 1


# --- 5. δ is the bank's ---------------------------------------------------------------------------


def test_without_max_delta_the_bank_refuses_a_delta_above_one_over_ten_n(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    config = bank_consortium(tmp_path, tiny_overrides)
    # 200 rows: 140 declared training rows; 0.99/n was accepted (and charged at that δ) on 29b860a
    request = load_config(None, [*tiny_overrides, "privacy.delta=0.0069", f"store.uri={tmp_path / 'exchange'}"])
    outcome = bank_job(request.model_copy(update={"federation": config.federation}), tmp_path)
    assert outcome["status"] == "refused" and "at most 1/(10·n)" in outcome["message"]
    assert not list((tmp_path / "bank-a-ledger").rglob("charges/**/*.json"))


def test_the_lifetime_budget_is_composed_at_the_banks_delta_not_the_requests(tmp_path: Path) -> None:
    step = [MechanismRun(1.0, 0.1, 50)]
    bank_delta, request_delta = 1e-3, 1e-9
    ledger = BankLedger(LocalStore(tmp_path), "loans", delta=request_delta, lifetime_delta=bank_delta, accountant="prv")
    at_bank = compute_epsilon(step, delta=bank_delta)
    at_request = compute_epsilon(step, delta=request_delta)
    assert at_bank < at_request
    # a cap between the two: the request's tiny δ would inflate ε and refuse; the bank's δ decides
    ledger.claim(run="r1", round_index=1, mechanisms=step, run_cap=100, lifetime_cap=(at_bank + at_request) / 2)
    assert ledger.lifetime_epsilon() == pytest.approx(at_bank)
    assert ledger.epsilon(ledger.charges("r1")) == pytest.approx(at_request)


# --- 6. a refresh of the same customers is the same budget ----------------------------------------


def test_one_added_row_is_charged_to_the_same_lifetime_budget_until_the_bank_resets_it(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    from fedlora.federation import initialize

    config = bank_consortium(tmp_path, tiny_overrides)
    policy = json.dumps({"minNoiseMultiplier": 0, "lifetimeEpsilon": 8})
    first = bank_job(config, tmp_path, FEDLORA_BANK_POLICY=policy, FEDLORA_BANK_DATASET_ID="loans")
    assert first["status"] == "ok"
    tight = json.dumps({"minNoiseMultiplier": 0, "lifetimeEpsilon": first["epsilon"] * 1.2})
    initialize(config, run="r2", runtime=Runtime(config))
    refreshed = str(german_rows(tmp_path / "refreshed.csv", rows=201))  # one customer added: a new fingerprint
    env = {"FEDLORA_BANK_DATA": refreshed, "FEDLORA_BANK_DATASET_ID": "loans"}
    second = bank_job(config, tmp_path, run="r2", FEDLORA_BANK_POLICY=tight, **env)
    assert second["status"] == "budget_exhausted" and "lifetimeEpsilon" in second["message"]  # ok on 29b860a
    ledger_dir = tmp_path / "bank-a-ledger/datasets/loans"
    # an explicit, recorded reset by the bank is the only way to a fresh lifetime budget
    reset = CliRunner().invoke(
        main,
        ["bank-ledger", "reset", "--reason", "new portfolio, ticket RISK-1", "--yes"],
        env={"FEDLORA_BANK_LEDGER": str(tmp_path / "bank-a-ledger"), "FEDLORA_BANK_DATASET_ID": "loans"},
    )
    assert reset.exit_code == 0, reset.output
    assert json.loads(reset.output)["reason"] == "new portfolio, ticket RISK-1"
    initialize(config, run="r3", runtime=Runtime(config))
    third = bank_job(config, tmp_path, run="r3", FEDLORA_BANK_POLICY=tight, **env)
    assert third["status"] == "ok", third["output"]
    assert len(list((ledger_dir / "fingerprints").glob("*.json"))) == 2  # both versions recorded
    assert len(list((ledger_dir / "charges").rglob("*.json"))) == 2  # nothing deleted
    shown = CliRunner().invoke(
        main,
        ["bank-ledger", "show", "--delta", "1e-4"],
        env={"FEDLORA_BANK_LEDGER": str(tmp_path / "bank-a-ledger"), "FEDLORA_BANK_DATASET_ID": "loans"},
    )
    assert shown.exit_code == 0, shown.output
    summary = json.loads(shown.output)
    assert set(summary["runs"]) == {"r1", "r3"} and summary["last_reset"] is not None


def test_a_dataset_identity_that_is_a_path_is_refused(tiny_overrides: list[str], tmp_path: Path) -> None:
    config = bank_consortium(tmp_path, tiny_overrides)
    outcome = bank_job(config, tmp_path, FEDLORA_BANK_DATASET_ID="../other")
    assert outcome["exit_code"] == 2 and "dataset name" in outcome["output"]


# --- 7. nothing raw in messages; a vanished charge is skipped -------------------------------------


def test_a_data_file_given_as_the_request_is_not_quoted(tiny_overrides: list[str], tmp_path: Path) -> None:
    bad = tmp_path / "credit.csv"
    frame = pd.read_csv(german_rows(tmp_path / "src.csv"), dtype=object)
    frame.loc[0, "purpose"] = "secret-customer-value: x"  # a ': ' makes YAML fail on this data row
    frame.to_csv(bad, index=False)
    result = CliRunner().invoke(
        main,
        ["train-bank", "--run", "r1", "--bank", "bank-a", "--round", "1", "--config", str(bad)],
        env={"FEDLORA_BANK_LEDGER": str(tmp_path / "l")},
    )
    assert result.exit_code == 2
    assert "secret-customer-value" not in result.output and "A11" not in result.output, result.output


def test_a_store_error_leaves_the_bank_as_its_kind_only() -> None:
    exc = StoreError("get s3://bank-private/datasets/loans/charges/r1/0001/ab.json failed: not found", kind="not found")
    message = public_message(exc)
    assert message.startswith("store error: not found") and "bank-private" not in message and "loans" not in message


class _VanishingStore(LocalStore):
    """A ledger store where every other Job's charge is deleted between the listing and the read (it backed off)."""

    def get(self, key: str) -> bytes:
        if "/charges/" in key and "/r-other/" in key:
            self.delete(key)
        return super().get(key)


def test_a_charge_that_vanishes_between_list_and_read_does_not_crash_the_claim(tmp_path: Path) -> None:
    store = _VanishingStore(tmp_path)
    ledger = BankLedger(store, "loans", delta=1e-4, accountant="prv")
    LocalStore(tmp_path).put("datasets/loans/charges/r-other/0001/aa.json", b'{"run": "r-other"}')
    charge = ledger.claim(run="r1", round_index=1, mechanisms=[MechanismRun(1.0, 0.1, 5)], run_cap=8, lifetime_cap=8)
    assert charge.run == "r1"
    with pytest.raises(BudgetSpent):
        ledger.claim(run="r1", round_index=2, mechanisms=[MechanismRun(0.3, 1.0, 50)], run_cap=8, lifetime_cap=8)


def test_the_jobs_split_uses_the_banks_own_key_from_its_environment(tiny_overrides: list[str], tmp_path: Path) -> None:
    config = bank_consortium(tmp_path, tiny_overrides)
    short = bank_job(config, tmp_path, FEDLORA_BANK_SPLIT_KEY="k3y-too-short")  # read, checked, never printed
    assert short["exit_code"] == 1 and "FEDLORA_BANK_SPLIT_KEY" in short["output"]
    assert "k3y-too-short" not in short["output"]
    ok = bank_job(config, tmp_path, FEDLORA_BANK_SPLIT_KEY="a-32-byte-secret-of-bank-a-000001")
    assert ok["status"] == "ok", ok["output"]


def test_a_bank_job_never_opens_a_path_the_request_names(tiny_overrides: list[str], tmp_path: Path) -> None:
    from fedlora.bank_request import without_request_paths

    lure = tmp_path / "not-the-banks-data.csv"
    lure.write_text("this file exists in the bank's pod and is not its data\n")
    bank_consortium(tmp_path, tiny_overrides)
    banks = f"federation.banks=[{{name: bank-a, data: {lure}}}, {{name: bank-b, data: {lure}}}]"
    request = load_config(None, [*tiny_overrides, banks, f"store.uri={tmp_path / 'exchange'}"])
    assert all(b.data is None for b in without_request_paths(request).federation.banks)
    outcome = bank_job(request, tmp_path)  # the bank's own file (FEDLORA_BANK_DATA), whatever the request names
    assert outcome["status"] == "ok", outcome["output"]
