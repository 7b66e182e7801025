"""The bank owns its guarantee (issue 10): each finding of the privacy review, reproduced and refused.

1. default noise replayable by the coordinator      -> OS CSPRNG by default; a Job refuses seeded noise
2. the coordinator controls the budget               -> the bank's policy decides; its own ledger composes
3. plan calibrated on the coordinator's data         -> the bank plans from its own rows
4. private metrics released without noise            -> only declared counts and DP histograms leave
5. concurrent Jobs double-spend                      -> claims: at most one Job trains a round
6. error messages quote private values               -> public messages name the rule, never the value
8. namespaced "test AUC" on the coordinator's data   -> no central evaluation in namespaced mode
(7, who builds the pods, is tested with the chart in tests/test_helm_chart.py and the agent in tests/test_launcher.py.)
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from fedlora.bank_round import run_bank_round
from fedlora.config import Config, config_to_yaml, load_config
from fedlora.federation import aggregate_round, initialize
from fedlora.privacy.accounting import MechanismRun, compute_epsilon
from fedlora.privacy.bank_ledger import AlreadyCharged, BankLedger, BudgetSpent
from fedlora.privacy.bank_side import BankSide, bank_randomness
from fedlora.privacy.dp_evaluation import noised, pooled_metrics, score_histograms
from fedlora.privacy.policy import BankPolicy
from fedlora.privacy.randomness import SecureRandomness, SeededRandomness
from fedlora.runtime import Runtime
from fedlora.store.local import LocalStore
from fedlora.store.run import open_run_store
from helpers import BANK_TEST_POLICY, bank_consortium, bank_job, german_rows

TINY_POLICY = BANK_TEST_POLICY
_rows = german_rows
_consortium = bank_consortium
_job = bank_job


# --- 1. noise nobody can replay -------------------------------------------------------------


def test_noise_comes_from_the_os_csprng_unless_a_research_run_asks(tiny_config: Config) -> None:
    assert isinstance(bank_randomness(tiny_config, "bank-a", 1), SecureRandomness)
    research = load_config(None, ["privacy.insecure_seeded_noise=true"])
    assert isinstance(bank_randomness(research, "bank-a", 1), SeededRandomness)


def test_two_default_runs_with_the_same_seed_release_different_adapters(tiny_overrides: list[str]) -> None:
    from fedlora.simulate import simulate

    one = [*[o for o in tiny_overrides if not o.startswith("federation.rounds")], "federation.rounds=1"]
    a = simulate(load_config(None, one)).to_json()
    b = simulate(load_config(None, [*one, "output.run_name=again"])).to_json()
    assert a["final"]["sha256"] != b["final"]["sha256"]  # same config, same seed: noise not replayable


# --- 2. the bank's policy decides --------------------------------------------------------


@pytest.mark.parametrize(
    ("request_override", "rule"),
    [
        ("privacy.enabled=false", "turns privacy off"),
        ("privacy.target_epsilon=50", "maxEpsilonPerRun"),
        ("privacy.delta=0.001", "maxDelta"),
        ("privacy.noise_multiplier=0.2", "minNoiseMultiplier"),
        ("privacy.insecure_seeded_noise=true", "OS CSPRNG"),
        ("privacy.accountant=rdp", "accounts with prv"),
    ],
)
def test_a_request_outside_the_banks_policy_is_refused_and_trains_nothing(
    tiny_overrides: list[str], tmp_path: Path, request_override: str, rule: str
) -> None:
    config = _consortium(tmp_path, tiny_overrides)
    request = load_config(None, [*tiny_overrides, request_override, f"store.uri={tmp_path / 'exchange'}"])
    request = request.model_copy(update={"federation": config.federation})
    policy = json.dumps({"maxEpsilonPerRun": 8, "maxDelta": 1e-4, "minNoiseMultiplier": 0.5})
    outcome = _job(request, tmp_path, FEDLORA_BANK_POLICY=policy)
    assert outcome["exit_code"] == 0, outcome["output"]
    assert outcome["status"] == "refused" and rule in outcome["message"]
    assert not (tmp_path / "exchange/r1/rounds/0001/updates/bank-a/adapter.safetensors").exists()
    assert not list((tmp_path / "bank-a-ledger").rglob("charges/**/*.json"))  # nothing charged


def test_a_ledger_deleted_in_the_exchange_does_not_reset_the_banks_budget(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    config = _consortium(tmp_path, tiny_overrides)
    first = _job(config, tmp_path)
    assert first["status"] == "ok"
    # The coordinator deletes the bank's report and outcome to make it train round 1 again.
    (tmp_path / "exchange/r1/privacy/bank-a.json").unlink()
    (tmp_path / "exchange/r1/rounds/0001/updates/bank-a/outcome.json").unlink()
    again = _job(config, tmp_path)
    assert again["status"] == "refused" and "already charged" in again["message"]
    # The refusal is printed to the bank's log but not published: the round's holder publishes its outcome.
    assert not (tmp_path / "exchange/r1/rounds/0001/updates/bank-a/outcome.json").exists()
    charges = list((tmp_path / "bank-a-ledger").rglob("charges/r1/0001/*.json"))
    assert len(charges) == 1


def test_every_run_on_the_same_rows_composes_into_one_lifetime_budget(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    config = _consortium(tmp_path, tiny_overrides)
    policy = json.dumps({"maxEpsilonPerRun": 8, "lifetimeEpsilon": 10, "minNoiseMultiplier": 0})
    assert _job(config, tmp_path, FEDLORA_BANK_POLICY=policy)["status"] == "ok"
    initialize(config, run="r2", runtime=Runtime(config))
    # A second run (new name, same rows) is charged to the same ledger: its first round fits...
    second = _job(config, tmp_path, run="r2", FEDLORA_BANK_POLICY=policy)
    assert second["status"] == "ok"
    ledger_dir = tmp_path / "bank-a-ledger"
    fingerprints = {p.parts[p.parts.index("datasets") + 1] for p in ledger_dir.rglob("charges/*/*/*.json")}
    assert len(fingerprints) == 1  # one dataset, one ledger, whatever the run
    # ...and once the lifetime cap is reached, a third run is stopped before it trains.
    initialize(config, run="r3", runtime=Runtime(config))
    tight = json.dumps({"lifetimeEpsilon": second["epsilon"] * 1.2, "minNoiseMultiplier": 0})  # < ε of 2 rounds
    third = _job(config, tmp_path, run="r3", FEDLORA_BANK_POLICY=tight)
    assert third["status"] == "budget_exhausted" and "lifetimeEpsilon" in third["message"]


# --- 3. the bank plans from its own rows ---------------------------------------------------


def test_the_bank_plans_from_its_own_rows_not_the_coordinators(tiny_overrides: list[str], tmp_path: Path) -> None:
    config = _consortium(tmp_path, tiny_overrides, "kubeflow.mode=namespaced")
    assert not (tmp_path / "exchange/r1/privacy").exists()  # the coordinator planned nothing
    outcome = _job(config, tmp_path, FEDLORA_BANK_DATA=str(_rows(tmp_path / "big.csv", rows=900)))
    assert outcome["status"] == "ok"
    report = json.loads((tmp_path / "exchange/r1/privacy/bank-a.json").read_text())
    n_declared = report["plan"]["declared_examples"]
    assert 600 <= n_declared <= 650  # 70% of its 900 rows, rounded: its own n, not the coordinator's partition
    assert report["plan"]["sample_rate"] == pytest.approx(config.training.batch_size / n_declared)
    assert report["plan"]["delta"] < 1 / 650
    history = [MechanismRun(*h) for h in report["ledger"]["history"]]
    assert outcome["epsilon"] == pytest.approx(compute_epsilon(history, delta=report["plan"]["delta"]))


# --- 4. only DP releases leave ----------------------------------------------------------------


def test_a_crafted_global_adapter_reads_back_only_noised_charged_histograms(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    config = _consortium(tmp_path, tiny_overrides)
    policy = json.dumps({"releaseMetrics": True, "evaluationEpsilon": 0.5, "minNoiseMultiplier": 0})
    outcome = _job(config, tmp_path, FEDLORA_BANK_POLICY=policy)
    assert outcome["status"] == "ok"
    assert set(outcome) >= {"evaluation"} and not {"loss", "incoming_val", "examples_seen"} & set(outcome)
    release = np.asarray(outcome["evaluation"]["counts"])
    assert not np.allclose(release, np.round(release))  # Gaussian-noised, not exact counts
    report = json.loads((tmp_path / "exchange/r1/privacy/bank-a.json").read_text())
    sigma_e = report["plan"]["evaluation_noise_multiplier"]
    assert [sigma_e, 1.0, 1] in report["ledger"]["history"]  # the release is charged like a DP-SGD step
    # Exact metrics stayed in the bank's own ledger store.
    kept = next((tmp_path / "bank-a-ledger").rglob("reports/r1/0001.json"))
    assert "auc" in json.loads(kept.read_text())["incoming_val"]


def test_pooled_metrics_from_exact_histograms_match_sklearn_within_bin_resolution() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    scores = 1 / (1 + np.exp(-(rng.normal(0, 1.5, 4000) + 1.2 * y)))
    half = len(y) // 2
    pooled = pooled_metrics([score_histograms(y[:half], scores[:half]), score_histograms(y[half:], scores[half:])])
    assert pooled.auc == pytest.approx(roc_auc_score(y, scores), abs=0.01)
    assert pooled.n == len(y)
    assert pooled.brier == pytest.approx(np.mean((scores - y) ** 2), abs=0.01)


def test_histogram_noise_has_the_planned_scale() -> None:
    exact = score_histograms(np.array([0, 1, 1]), np.array([0.2, 0.7, 0.9]))
    draws = np.stack([noised(exact, noise_multiplier=3.0, randomness=SecureRandomness()).counts for _ in range(300)])
    assert (draws - exact.counts).std() == pytest.approx(3.0, rel=0.05)


# --- 5. concurrent Jobs ------------------------------------------------------------------------


class _InterleavingStore(LocalStore):
    """A store whose writers all wait for each other after writing: the worst interleaving of two claims."""

    def __init__(self, root: Path, parties: int) -> None:
        super().__init__(root)
        self.barrier = threading.Barrier(parties)

    def put(self, key: str, data: bytes) -> None:
        super().put(key, data)
        if "/charges/" in key:
            with contextlib.suppress(threading.BrokenBarrierError):  # the other claim saw this one and wrote nothing
                self.barrier.wait(timeout=30)


def test_two_claims_for_one_round_never_both_train(tmp_path: Path) -> None:
    store = _InterleavingStore(tmp_path, parties=2)
    results: list[str] = []
    start = threading.Barrier(2)

    def claim() -> None:
        ledger = BankLedger(store, "fp", delta=1e-4, accountant="prv")
        start.wait(timeout=30)  # both check the empty ledger at once, then both write: the worst case
        try:
            ledger.claim(
                run="r1", round_index=1, mechanisms=[MechanismRun(1.0, 0.1, 5)], run_cap=8.0, lifetime_cap=16.0
            )
            results.append("trained")
        except AlreadyCharged:
            results.append("refused")

    threads = [threading.Thread(target=claim) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("trained") <= 1 and len(results) == 2  # never two trained releases
    assert len(store.list("datasets/fp/charges/")) == results.count("trained")  # a refusal leaves no charge


def test_a_claim_over_the_run_cap_is_budget_spent(tmp_path: Path) -> None:
    ledger = BankLedger(LocalStore(tmp_path), "fp", delta=1e-4, accountant="prv")
    big = [MechanismRun(0.6, 0.5, 50)]
    with pytest.raises(BudgetSpent):
        ledger.claim(run="r1", round_index=1, mechanisms=big, run_cap=1.0, lifetime_cap=16.0)
    assert ledger.charges() == []


def test_two_concurrent_job_processes_for_one_round_train_at_most_once(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    config = _consortium(tmp_path, tiny_overrides)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "FEDLORA_REQUEST_CONFIG": config_to_yaml(config),
        "FEDLORA_BANK_DATA": str(_rows(tmp_path / "credit.csv")),
        "FEDLORA_BANK_LEDGER": str(tmp_path / "bank-a-ledger"),
    }
    args = [sys.executable, "-m", "fedlora.cli", "train-bank", "--run", "r1", "--bank", "bank-a", "--round", "1"]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0].decode() for p in procs]
    statuses = []
    for out in outputs:
        lines = [line for line in out.strip().splitlines() if line.startswith("{")]
        statuses.append(json.loads(lines[-1])["status"] if lines else "no outcome")
    assert statuses.count("ok") <= 1, outputs
    charges = list((tmp_path / "bank-a-ledger").rglob("charges/r1/0001/*.json"))
    assert len(charges) == statuses.count("ok")  # one charge per trained release, none for a refusal


# --- 6. messages that leave the bank hold no value -------------------------------------------


def test_a_bad_value_is_named_by_column_and_row_but_its_value_stays_in_the_bank(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    config = _consortium(tmp_path, tiny_overrides)
    bad = _rows(tmp_path / "bad.csv")
    frame = pd.read_csv(bad, dtype=object)
    frame.loc[17, "credit_amount"] = "12345678"
    frame.to_csv(bad, index=False)
    outcome = _job(config, tmp_path, FEDLORA_BANK_DATA=str(bad))
    assert outcome["exit_code"] == 1
    assert "credit_amount" in outcome["output"] and "row 18" in outcome["output"]
    assert "12345678" not in outcome["output"]
    kept = next((tmp_path / "bank-a-ledger").rglob("errors/r1/0001.txt")).read_text()
    assert "12345678" in kept  # the bank's own copy has the detail


def test_local_simulate_on_the_users_own_file_still_shows_the_value(tiny_overrides: list[str], tmp_path: Path) -> None:
    from fedlora.data.datasets import load_dataset
    from fedlora.data.files import read_bank_file
    from fedlora.data.schema import DataValidationError

    bad = _rows(tmp_path / "bad.csv")
    frame = pd.read_csv(bad, dtype=object)
    frame.loc[17, "credit_amount"] = "12345678"
    frame.to_csv(bad, index=False)
    with pytest.raises(DataValidationError) as info:
        read_bank_file(bad, load_dataset("german_credit")[1])
    assert "12345678" in str(info.value) and "12345678" not in info.value.public_message


# --- 8. no central evaluation of the coordinator's own data in namespaced mode ----------------


def test_namespaced_aggregation_reports_no_test_auc_on_the_coordinators_copy(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    config = load_config(
        None,
        [
            *tiny_overrides,
            "kubeflow.mode=namespaced",
            f"store.uri={tmp_path / 'exchange'}",
            "privacy.release_metrics=true",
        ],
    )
    runtime = Runtime(config)
    initialize(config, run="r1", runtime=runtime)
    policy = BankPolicy.model_validate({"releaseMetrics": True, "minNoiseMultiplier": 0})
    outcomes = [  # each bank has its own ledger store
        run_bank_round(
            config,
            run="r1",
            bank=b.name,
            round_index=1,
            runtime=runtime,
            side=BankSide(policy=policy, ledger_store=LocalStore(tmp_path / f"ledger-{b.name}")),
        )
        for b in config.federation.banks
    ]
    record = aggregate_round(config, run="r1", round_index=1, outcomes=outcomes, runtime=runtime)
    assert record.auc is None and record.per_bank_test == {}
    assert record.dp_evaluation["banks"] == sorted(b.name for b in config.federation.banks)
    assert 0.0 <= record.dp_evaluation["auc"] <= 1.0
    assert open_run_store(config, "r1").exists("rounds/0001/MANIFEST.json")


def _with_own_batch(config: Config, bank: str, batch: int | None) -> Config:
    """``config`` with ``bank``'s own ``federation.banks[].batch_size`` (the consortium's batch follows n)."""
    if batch is None:
        return config
    banks = [b.model_copy(update={"batch_size": batch}) if b.name == bank else b for b in config.federation.banks]
    return config.model_copy(update={"federation": config.federation.model_copy(update={"banks": banks})})


@pytest.mark.parametrize(
    ("request_override", "own_batch", "rule"),
    [
        ("seed=0", 1000, "exceeds this bank's training rows (n ≈ 140)"),
        ("privacy.delta=0.009", None, "the bank allows at most 1/(10·n) = 0.000714"),
    ],
)
def test_a_schedule_that_breaks_on_the_banks_own_rows_is_refused_naming_only_the_declared_n(
    tiny_overrides: list[str], tmp_path: Path, request_override: str, own_batch: int | None, rule: str
) -> None:
    config = _consortium(tmp_path, tiny_overrides)
    request = load_config(None, [*tiny_overrides, request_override, f"store.uri={tmp_path / 'exchange'}"])
    request = _with_own_batch(request.model_copy(update={"federation": config.federation}), "bank-a", own_batch)
    outcome = _job(request, tmp_path)  # a 200-row file: 140 declared training rows (70 % of 200)
    assert outcome["status"] == "refused" and rule in outcome["message"], outcome["message"]


def test_a_refused_schedule_never_runs_the_banks_rows_through_the_model(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    config = _consortium(tmp_path, tiny_overrides)
    request = load_config(None, [*tiny_overrides, f"store.uri={tmp_path / 'exchange'}"])
    request = _with_own_batch(request.model_copy(update={"federation": config.federation}), "bank-a", 1000)
    runtime = Runtime(request, bank_files={"bank-a": str(_rows(tmp_path / "credit.csv"))})
    side = BankSide(
        policy=BankPolicy.model_validate({"minNoiseMultiplier": 0}), ledger_store=LocalStore(tmp_path / "l"), job=True
    )
    outcome = run_bank_round(request, run="r1", bank="bank-a", round_index=1, runtime=runtime, side=side)
    assert outcome.status == "refused" and "exceeds this bank's training rows" in outcome.message
    assert "cache" not in runtime.timer.seconds  # refused from the validated rows, before the frozen-layer pass


def test_a_small_bank_runs_with_its_own_batch(tiny_overrides: list[str], tmp_path: Path) -> None:
    _consortium(tmp_path, tiny_overrides)  # the run exists
    banks = "federation.banks=[{name: bank-a, data: /data/only-bank-a-sees-this.csv, batch_size: 32}, {name: bank-b}]"
    request = load_config(
        None, [*tiny_overrides, "training.batch_size=1000", banks, f"store.uri={tmp_path / 'exchange'}"]
    )
    assert request.training_for("bank-a").batch_size == 32
    assert request.training_for("bank-b").batch_size == 1000
    outcome = _job(request, tmp_path)  # ~140 training rows: bank-a trains at its own batch, 32
    assert outcome["status"] == "ok", outcome["output"]
    plan = json.loads((tmp_path / "exchange/r1/privacy/bank-a.json").read_text())["plan"]
    assert plan["sample_rate"] == pytest.approx(32 / plan["declared_examples"])
