"""The coordinator graph's loop (``federate-rounds``): the same steps as the unrolled graph, resumable, concurrent."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from fedlora.bank_round import run_bank_round
from fedlora.config import Config, config_to_yaml
from fedlora.federation import initialize
from fedlora.pipeline import bank_dispatch, coordinator, task_bodies
from fedlora.records import BankOutcome
from helpers import FakeKfpOutput, tiny_pipeline_config

FakeOutput = FakeKfpOutput


def _tiny(tmp_path: Path, *extra: str) -> Config:
    return tiny_pipeline_config(tmp_path, ["bank-a", "bank-b", "bank-c"], "kubeflow.graph=coordinator", *extra)


def _federate(config: Config, tmp_path: Path, name: str = "a") -> tuple[str, FakeOutput, FakeOutput, FakeOutput]:
    outs = [FakeOutput(tmp_path / f"{name}-{kind}.md") for kind in ("metrics", "roc", "summary")]
    result = task_bodies.federate_step(
        config_yaml=config_to_yaml(config), run="r", metrics=outs[0], roc=outs[1], summary=outs[2]
    )
    return result, outs[0], outs[1], outs[2]


def test_rounds_loop_in_one_task_with_per_round_metrics_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _tiny(tmp_path)
    initialize(config, run="r")
    calls: list[tuple[str, int]] = []
    real = bank_dispatch.dispatch_bank_round

    def counted(config: Config, *, run: str, bank: str, round_index: int, runtime: Any = None) -> BankOutcome:
        calls.append((bank, round_index))
        if round_index == 2:
            raise KeyboardInterrupt("the coordinator pod is evicted in round 2")
        return real(config, run=run, bank=bank, round_index=round_index, runtime=runtime)

    monkeypatch.setattr(bank_dispatch, "dispatch_bank_round", counted)
    with pytest.raises(KeyboardInterrupt):
        _federate(config, tmp_path)
    assert calls == [("bank-a", 1), ("bank-b", 1), ("bank-c", 1), ("bank-a", 2)]
    assert [r.round for r in coordinator.committed_records(config, run="r")] == [1]

    calls.clear()

    def recorded(*a: Any, **k: Any) -> BankOutcome:
        calls.append((k["bank"], k["round_index"]))
        return real(*a, **k)

    monkeypatch.setattr(bank_dispatch, "dispatch_bank_round", recorded)
    result, metrics, roc, summary = _federate(config, tmp_path, "b")  # the retried task
    assert calls == [("bank-a", 2), ("bank-b", 2), ("bank-c", 2)]  # round 1 is not trained again
    run = tmp_path / "store" / "r"
    for r in (1, 2):
        assert (run / f"rounds/{r:04d}/MANIFEST.json").is_file()
    assert '"round": 2' in result
    for r in (1, 2):  # per-round metrics in the task's metrics
        assert 0.0 <= metrics.metadata[f"r{r:03d}_test_auc"] <= 1.0
        assert metrics.metadata[f"r{r:03d}_banks_accepted"] == 3.0
    assert metrics.metadata["test_auc"] == metrics.metadata["r002_test_auc"]
    assert roc.roc is not None and len(roc.roc[0]) > 1
    text = Path(summary.path).read_text(encoding="utf-8")
    assert "## FedLoRA: 2 rounds committed" in text and "| 1 |" in text and "| 2 |" in text

    calls.clear()
    _federate(config, tmp_path, "c")  # everything is committed: nothing runs
    assert calls == []


def test_pull_banks_of_a_round_are_awaited_concurrently_and_published_ones_are_not_awaited_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each bank's wait is a thread of the coordinator: both must be in flight at once (a barrier)."""
    config = _tiny(tmp_path, "federation.rounds=1", "kubeflow.mode=pull")
    inline = config.model_copy(update={"kubeflow": config.kubeflow.model_copy(update={"mode": "inline"})})
    initialize(inline, run="r")
    barrier = threading.Barrier(2, timeout=30)
    lock = threading.Lock()
    launched: list[str] = []

    def agent(config: Config, *, run: str, bank: str, round_index: int) -> BankOutcome:
        launched.append(bank)
        barrier.wait()  # times out (BrokenBarrierError) if the waits were sequential
        with lock:  # the "bank's agent": the same training, in its own runtime
            return run_bank_round(inline, run=run, bank=bank, round_index=round_index)

    run_bank_round(inline, run="r", bank="bank-b", round_index=1)  # bank-b published before a coordinator restart
    monkeypatch.setattr(bank_dispatch, "await_bank_outcome", agent)
    records = coordinator.run_rounds(config, run="r")
    assert sorted(launched) == ["bank-a", "bank-c"]
    assert records[-1].banks == ["bank-a", "bank-b", "bank-c"]


def test_a_pull_round_at_the_coordinator_loads_no_model_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 28, item 5: in pull mode a round task trains nothing and evaluates nothing centrally, so aggregating
    a round never loads the base model (``initialize`` neither: tests/test_coordinator_without_model.py)."""
    from fedlora import runtime as runtime_module
    from fedlora.pipeline.task_bodies import round_step
    from fedlora.runtime import Runtime

    config = _tiny(tmp_path, "federation.rounds=1", "kubeflow.mode=pull")
    inline = config.model_copy(update={"kubeflow": config.kubeflow.model_copy(update={"mode": "inline"})})
    initialize(inline, run="r")
    agent_runtime = Runtime(inline)  # the banks' side, loaded before the coordinator's loader is cut off
    _ = agent_runtime.model

    lock = threading.Lock()  # the banks share one model here: one trains at a time (the coordinator waits in threads)

    def agent(config: Config, *, run: str, bank: str, round_index: int) -> BankOutcome:
        with lock:
            return run_bank_round(inline, run=run, bank=bank, round_index=round_index, runtime=agent_runtime)

    def no_weights(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the coordinator loaded the base model")

    monkeypatch.setattr(bank_dispatch, "await_bank_outcome", agent)
    monkeypatch.setattr(runtime_module, "load_base_model", no_weights)
    monkeypatch.setattr(runtime_module, "load_causal_lm", no_weights)
    outs = [FakeOutput(tmp_path / f"{kind}.md") for kind in ("metrics", "roc", "summary")]
    result = round_step(
        config_yaml=config_to_yaml(config), run="r", round_index=1, metrics=outs[0], roc=outs[1], summary=outs[2]
    )
    assert '"banks": ["bank-a", "bank-b", "bank-c"]' in result
    assert (tmp_path / "store" / "r" / "rounds/0001/MANIFEST.json").is_file()
    assert outs[0].metadata["banks_accepted"] == 3.0


def test_a_chunk_task_runs_its_rounds_and_a_retry_redoes_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task of the chunked rounds graph (rounds 1-2) and a retried round-2 task: the same step, resumable."""
    from fedlora.pipeline.task_bodies import round_step

    config = _tiny(tmp_path, "kubeflow.graph=rounds")
    initialize(config, run="r")
    calls: list[tuple[str, int]] = []
    real = bank_dispatch.dispatch_bank_round

    def recorded(*a: Any, **k: Any) -> BankOutcome:
        calls.append((k["bank"], k["round_index"]))
        return real(*a, **k)

    monkeypatch.setattr(bank_dispatch, "dispatch_bank_round", recorded)
    outs = [FakeOutput(tmp_path / f"{kind}.md") for kind in ("metrics", "roc", "summary")]
    yaml_text = config_to_yaml(config)
    result = round_step(
        config_yaml=yaml_text, run="r", round_index=1, last_round=2, metrics=outs[0], roc=outs[1], summary=outs[2]
    )
    assert calls == [(b, r) for r in (1, 2) for b in ("bank-a", "bank-b", "bank-c")]
    assert '"round": 2' in result
    assert {"r001_test_auc", "r002_test_auc", "test_auc"} <= set(outs[0].metadata)
    assert "## FedLoRA: 2 rounds committed" in Path(outs[2].path).read_text(encoding="utf-8")

    calls.clear()
    again = [FakeOutput(tmp_path / f"again-{kind}.md") for kind in ("metrics", "roc", "summary")]
    retried = round_step(
        config_yaml=yaml_text, run="r", round_index=2, metrics=again[0], roc=again[1], summary=again[2]
    )
    assert calls == [] and retried == result  # the committed round, as committed
    assert "r002_test_auc" not in again[0].metadata and again[0].metadata["test_auc"] == outs[0].metadata["test_auc"]
    assert Path(again[2].path).read_text(encoding="utf-8").startswith("## Round 2")
