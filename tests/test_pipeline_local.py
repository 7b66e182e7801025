"""The compiled pipeline end to end with ``kfp.local`` (inline mode), and the component steps' reporting."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from kfp import local

from fedlora.aggregation import select_banks
from fedlora.config import Config, config_to_yaml, load_config
from fedlora.pipeline import bank_dispatch, cards, task_bodies
from fedlora.pipeline.parameters import resolve_config
from fedlora.pipeline.pipeline import build_pipeline
from fedlora.records import BankOutcome, RoundRecord
from helpers import FakeKfpOutput, tiny_pipeline_config

FakeMetrics = FakeKfpOutput


def _tiny(tmp_path: Path, *extra: str) -> Config:
    return tiny_pipeline_config(tmp_path, ["bank-a", "bank-b"], "kubeflow.mode=inline", *extra)


def _task_outputs(root: Path, task: str) -> dict[str, Any]:
    (path,) = root.glob(f"*/{task}/executor_output.json")
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return result


@pytest.mark.slow
def test_kfp_local_run_two_banks_two_rounds_and_a_failing_bank(tmp_path: Path) -> None:
    """bank-c's data is not there: it fails every round, the rounds go on with bank-a and bank-b (min_banks 2)."""
    banks = "federation.banks=[{name: bank-a}, {name: bank-b}, {name: bank-c, data: /nonexistent/bank-c.csv}]"
    config = _tiny(tmp_path, banks, "federation.min_banks=2")
    pipeline = build_pipeline(config)
    root = tmp_path / "pipeline_root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    started = time.perf_counter()
    pipeline(output_run_name="local-run", privacy_target_epsilon=6.0)
    seconds = time.perf_counter() - started

    run = tmp_path / "store" / "local-run"
    assert '"initial": "seeded"' in (run / "rounds/0000/global/meta.json").read_text()  # round 0 is a spec
    for r in (1, 2):
        assert (run / f"rounds/{r:04d}/global/adapter.safetensors").is_file()
    for r in (1, 2):
        assert (run / f"rounds/{r:04d}/MANIFEST.json").is_file()
        for bank in ("bank-a", "bank-b"):
            assert (run / f"rounds/{r:04d}/updates/{bank}/adapter.safetensors").is_file()
    assert (run / "final/adapter.safetensors").is_file()
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    stored = load_config(run / "config.yaml")
    assert stored.privacy.target_epsilon == 6.0  # the run parameter reached the core

    # KFP outputs: the initialize plan, each bank's metrics, each round's metrics, ROC and summary
    assert not (run / "rounds/0001/updates/bank-c").exists()
    init = _task_outputs(root, "initialize")
    assert init["parameterValues"]["run"] == "local-run"
    for task, r in (("round", 1), ("round-2", 2)):  # each round's own task, with the round's outputs
        outputs = _task_outputs(root, task)
        assert json.loads(outputs["parameterValues"]["Output"])["round"] == r
        metrics = outputs["artifacts"]["metrics"]["artifacts"][0]["metadata"]
        assert 0.0 < metrics["epsilon_bank-a"] <= 6.0 + 1e-6 and 0.0 < metrics["epsilon_bank-b"] <= 6.0 + 1e-6
        assert metrics["banks_accepted"] == 2.0 and metrics["banks_failed"] == 1.0
        # bank-c's test rows cannot be read here, so no central evaluation (no test_auc, no ROC points)
        assert "test_auc" not in metrics and "none at the coordinator" in outputs["parameterValues"]["Output"]
        markdown = Path(outputs["artifacts"]["summary"]["artifacts"][0]["uri"]).read_text(encoding="utf-8")
        assert f"## Round {r}" in markdown and "bank-a | ✅ averaged" in markdown
        assert "| bank-c | ❌ failed: " in markdown
    final = _task_outputs(root, "finalize")
    assert final["parameterValues"]["Output"].endswith("final/adapter.safetensors")
    print(f"kfp.local: 3 banks (one failing) x 2 rounds in {seconds:.0f} s")


def test_failed_bank_is_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(config: Config, *, run: str, bank: str, round_index: int, runtime: Any = None) -> BankOutcome:
        raise OSError("bank data volume is not mounted")

    monkeypatch.setattr(bank_dispatch, "run_bank_round", broken)
    metrics, summary = FakeMetrics(tmp_path / "m"), FakeMetrics(tmp_path / "summary.md")
    out = task_bodies.train_bank_step(
        config_yaml=config_to_yaml(_tiny(tmp_path)),
        run="r",
        bank="bank-b",
        round_index=1,
        metrics=metrics,
        summary=summary,
    )
    outcome = BankOutcome.from_json(json.loads(out))
    assert outcome.status == "failed" and "not mounted" in outcome.message
    assert metrics.metadata["failed"] == 1.0 and metrics.metadata["ok"] == 0.0
    text = Path(summary.path).read_text(encoding="utf-8")
    assert text.startswith("### ❌ bank-b, round 1: failed") and "OSError: bank data volume is not mounted" in text


@pytest.mark.parametrize("mode", ["pull", "namespaced"])
def test_pull_and_namespaced_modes_wait_for_the_banks_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """The consortium creates nothing in a bank's namespace: namespaced (the older spelling) waits as pull does."""
    calls: list[tuple[str, int, str]] = []

    def agent(config: Config, *, run: str, bank: str, round_index: int) -> BankOutcome:
        calls.append((bank, round_index, config.kubeflow.mode))
        return BankOutcome.failed(bank, round_index, "pull mode: bank bank-a published no outcome within 60s")

    monkeypatch.setattr(bank_dispatch, "await_bank_outcome", agent)
    metrics = FakeMetrics(tmp_path / "m")
    config = _tiny(tmp_path, f"kubeflow.mode={mode}")
    task_bodies.train_bank_step(
        config_yaml=config_to_yaml(config),
        run="r",
        bank="bank-a",
        round_index=2,
        metrics=metrics,
        summary=FakeMetrics(tmp_path / "s.md"),
    )
    assert calls == [("bank-a", 2, mode)]
    assert metrics.metadata["failed"] == 1.0


def test_bank_left_out_of_the_run_is_not_selected(tmp_path: Path) -> None:
    config = resolve_config(
        config_to_yaml(_tiny(tmp_path)), {"federation.banks": ["bank-a"], "federation.min_banks": 1}
    )
    metrics = FakeMetrics(tmp_path / "m")
    out = task_bodies.train_bank_step(
        config_yaml=config_to_yaml(config),
        run="r",
        bank="bank-b",
        round_index=1,
        metrics=metrics,
        summary=FakeMetrics(tmp_path / "s.md"),
    )
    assert json.loads(out)["status"] == "not_selected"
    assert metrics.metadata["ok"] == 0.0 and metrics.metadata["failed"] == 0.0


def test_bank_without_outcome_counts_as_failed_in_the_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def read(config: Config, *, run: str, bank: str, round_index: int) -> BankOutcome:
        if bank == "bank-b":
            raise FileNotFoundError("rounds/0001/updates/bank-b/outcome.json")
        return BankOutcome(bank=bank, round=round_index, status="ok", num_examples=100)

    monkeypatch.setattr(task_bodies, "read_bank_outcome", read)
    outcomes = task_bodies._round_outcomes(_tiny(tmp_path), run="r", round_index=1)
    assert [(o.bank, o.status) for o in outcomes] == [("bank-a", "ok"), ("bank-b", "failed")]


def test_round_summary_shows_failed_banks() -> None:
    record = {
        "round": 3,
        "auc": 0.71,
        "ks": 0.3,
        "loss": 0.6,
        "banks": ["bank-a", "bank-c"],
        "failed": {"bank-b": "job fedlora-bank-b/x: timed out after 7200 s"},
        "rejected": {},
        "budget_exhausted": [],
        "epsilon": {"bank-a": 1.2, "bank-b": 0.8, "bank-c": 1.1},
        "dp_evaluation": {"of_global_round": 2, "banks": ["bank-a"], "auc": 0.7, "ks": 0.3, "brier": 0.2, "n": 99.5},
    }
    text = cards.round_card(RoundRecord.from_json(record))
    assert "| bank-b | ❌ failed: job fedlora-bank-b/x: timed out after 7200 s | 0.8 |" in text
    assert "| bank-a | ✅ averaged | 1.2 | yes |" in text  # released DP evaluation histograms
    assert "DP evaluation of the global adapter of round 2" in text and "AUC **0.7**" in text


def test_bank_not_sampled_this_round_starts_no_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_wait = lambda *a, **k: pytest.fail("no wait (and no Job) for a bank that sits out")  # noqa: E731
    monkeypatch.setattr(bank_dispatch, "await_bank_outcome", no_wait)
    config = _tiny(tmp_path, "kubeflow.mode=pull", "federation.fraction_fit=0.5", "federation.min_banks=1")
    selected = set(select_banks(config, 1))
    (sitting_out,) = {"bank-a", "bank-b"} - selected
    out = task_bodies.train_bank_step(
        config_yaml=config_to_yaml(config),
        run="r",
        bank=sitting_out,
        round_index=1,
        metrics=FakeMetrics(tmp_path / "m"),
        summary=FakeMetrics(tmp_path / "s.md"),
    )
    assert json.loads(out)["status"] == "not_selected"


def test_plan_warns_about_local_only_locations(tmp_path: Path) -> None:
    warnings = cards.location_warnings(_tiny(tmp_path, "tracking.enabled=true"))
    assert len(warnings) == 2 and "s3://" in warnings[0] and "tracking_uri" in warnings[1]
    cluster = _tiny(tmp_path, "store.uri=s3://exchange/c", "tracking.enabled=true", "tracking.uri=http://mlflow:5000")
    assert cards.location_warnings(cluster) == []


def test_settings_that_cannot_work_on_a_cluster_fail_in_initialize(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pod (KUBERNETES_SERVICE_HOST) with a local store or no MLflow server: a clear error, nothing written."""
    from fedlora.config import ConfigError

    config = _tiny(tmp_path, "tracking.enabled=true")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    plan = FakeMetrics(tmp_path / "plan.md")
    with pytest.raises(ConfigError) as info:
        task_bodies.initialize_step(base_config=config_to_yaml(config), parameters={}, kfp_run_name="r", plan=plan)
    assert "store_uri" in str(info.value) and "s3://bucket/prefix" in str(info.value)
    assert "tracking_uri" in str(info.value)
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    ("job_name", "run_name"),
    [
        ("fedlora 2026-12-07 06:15:00", "fedlora-2026-12-07-06-15-00"),  # what KFP >= 2.5 passes: the display name
        ("Credit_Risk.Nightly", "credit-risk-nightly"),
        ("--Bank  A--", "bank-a"),
        ("x" * 70 + "-y", "x" * 63),
    ],
)
def test_kfp_job_names_become_valid_run_names(job_name: str, run_name: str) -> None:
    from fedlora.names import check_name
    from fedlora.pipeline.run_names import run_name_from_job

    assert run_name_from_job(job_name) == run_name
    assert check_name(run_name, kind="run") == run_name


def test_generated_run_names_are_dns_labels_from_the_time() -> None:
    from datetime import UTC, datetime

    from fedlora.names import is_name
    from fedlora.pipeline.run_names import generated_run_name

    moment = datetime(2026, 12, 7, 6, 15, 0, tzinfo=UTC)
    assert generated_run_name(moment, suffix="ab12") == "fedlora-20261207-061500-ab12"
    names = {generated_run_name(moment) for _ in range(20)}
    assert len(names) > 1 and all(is_name(n) for n in names)  # the random suffix differs


def test_an_unresolved_job_name_placeholder_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """KFP before 2.5 passes {{$.pipeline_job_name}} as is: every such run would share one folder."""
    from kfp import dsl

    from fedlora.config import ConfigError

    config = _tiny(tmp_path)
    plan = FakeMetrics(tmp_path / "plan.md")
    with pytest.raises(ConfigError, match="output_run_name") as info:
        task_bodies.initialize_step(
            base_config=config_to_yaml(config), parameters={}, kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, plan=plan
        )
    assert "KFP before 2.5" in str(info.value)
    assert not (tmp_path / "store").exists()
    named = task_bodies.initialize_step(
        base_config=config_to_yaml(config),
        parameters={"output_run_name": "nightly-1"},
        kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        plan=plan,
    )
    assert named[1] == "nightly-1" and (tmp_path / "store" / "nightly-1" / "config.yaml").is_file()
