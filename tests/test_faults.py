"""Faults the federation survives: a killed coordinator (resume), tampered or corrupted updates."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fedlora.bank_round import run_bank_round
from fedlora.cli import main
from fedlora.config import Config, load_config
from fedlora.federation import aggregate_round, initialize
from fedlora.privacy.accounting import MechanismRun, compute_epsilon
from fedlora.records import BankOutcome
from fedlora.runtime import Runtime
from fedlora.store.adapters import ADAPTER_FILE, load_adapter, save_adapter
from fedlora.store.base import update_prefix
from fedlora.store.local import LocalStore

BANKS = ["bank-a", "bank-b", "bank-c"]


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"simulate exited ({proc.returncode}) before {path} appeared")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout}s")
        time.sleep(0.2)


# Runs the real CLI, but holds the coordinator once bank-b starts round 2 (bank-a has published by then), so
# the kill below lands mid-round every time instead of racing the tiny model's sub-second rounds.
_HOLD_IN_ROUND_2 = """
import sys, time
from pathlib import Path
import fedlora.simulate as simulate
from fedlora.cli import main

held, real = Path(sys.argv[1]), simulate.run_bank_round

def hold_in_round_2(config, *, run, bank, round_index, runtime):
    if (round_index, bank) == (2, "bank-b"):
        held.touch()
        time.sleep(3600)
    return real(config, run=run, bank=bank, round_index=round_index, runtime=runtime)

simulate.run_bank_round = hold_in_round_2
main(sys.argv[2:])
"""


def test_killed_coordinator_resumes_without_resetting_or_double_counting_epsilon(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    overrides = [o for o in tiny_overrides if not o.startswith("federation.rounds")] + ["federation.rounds=3"]
    args = ["simulate", *[a for o in overrides for a in ("--set", o)]]
    run_dir = Path(load_config(None, overrides).output.dir) / "test"
    held = tmp_path / "held"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_IN_ROUND_2, str(held), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(held, proc)
    finally:  # kill the coordinator mid-round without any chance to clean up
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (run_dir / "rounds/0001/MANIFEST.json").exists()
    assert (run_dir / "rounds/0002/updates/bank-a/outcome.json").exists()
    assert not (run_dir / "rounds/0002/MANIFEST.json").exists()
    assert not (run_dir / "summary.json").exists()
    before = json.loads((run_dir / "privacy/bank-a.json").read_text())
    assert before["charged_rounds"][:2] == [1, 2]

    output_dir = next(o for o in overrides if o.startswith("output.dir="))
    result = CliRunner().invoke(main, ["simulate", "--resume", "test", "--set", output_dir])
    assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    assert summary["resumed_after_round"] == 1
    for bank in BANKS:
        ledger = json.loads((run_dir / f"privacy/{bank}.json").read_text())
        assert ledger["charged_rounds"] == [1, 2, 3]  # round 2 of bank-a was published once, charged once
        history = ledger["ledger"]["history"]
        assert sum(h[2] for h in history) == 6 == summary["privacy"][bank]["steps"]
        plan = ledger["plan"]
        expected = compute_epsilon(
            [MechanismRun(plan["noise_multiplier"], plan["sample_rate"], 6)], delta=plan["delta"], accountant="prv"
        )
        assert summary["final"]["epsilon"][bank] == pytest.approx(expected, rel=1e-9)
        assert expected <= plan["target_epsilon"]


def test_resume_refuses_changes_to_what_is_computed(tiny_overrides: list[str]) -> None:
    result = CliRunner().invoke(main, ["simulate", "--resume", "test", "--set", "privacy.target_epsilon=100"])
    assert result.exit_code == 2
    assert "privacy.target_epsilon" in result.output and "--resume" in result.output


def test_resume_of_unknown_run_is_a_clear_error(tiny_overrides: list[str]) -> None:
    output_dir = next(o for o in tiny_overrides if o.startswith("output.dir="))
    args = ["simulate", "--resume", "no-such-run", "--set", output_dir]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "no run 'no-such-run' to resume" in result.output


@pytest.fixture(scope="module")
def trained_round(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Path, list[BankOutcome]]:
    """Round 1 trained by every bank (FFA-LoRA, tiny model), not yet aggregated; copied per test."""
    root = tmp_path_factory.mktemp("round")
    config = load_config(
        None,
        [
            "model.name=tiny-bert",
            "data.max_rows=300",
            "training.local_steps=2",
            "training.batch_size=16",
            "tracking.enabled=false",
            "lora.ffa=true",
            f"output.dir={root}",
        ],
    )
    runtime = Runtime(config)
    initialize(config, run="base", runtime=runtime)
    outcomes = [run_bank_round(config, run="base", bank=b, round_index=1, runtime=runtime) for b in BANKS]
    return config, root / "base", outcomes


def _tamper_bytes(store: LocalStore) -> None:
    path = store.root / update_prefix(1, "bank-b") / ADAPTER_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _resave(store: LocalStore, change: str) -> None:
    """Re-publish bank-b's update with consistent sha256 but malicious content."""
    prefix = update_prefix(1, "bank-b")
    stored = load_adapter(store, prefix)
    tensors = dict(stored.tensors)
    name_b = next(n for n in tensors if "lora_B" in n)
    name_a = next(n for n in tensors if "lora_A" in n)
    if change == "shape":
        tensors[name_b] = torch.zeros(tensors[name_b].shape[0] + 1, tensors[name_b].shape[1])
    elif change == "nan":
        tensors[name_b] = tensors[name_b].clone()
        tensors[name_b][0, 0] = float("nan")
    elif change == "inf":
        tensors[name_b] = tensors[name_b].clone()
        tensors[name_b][0, 0] = float("inf")
    elif change == "norm":
        tensors = {n: t * 1e4 if n == name_b else t for n, t in tensors.items()}
        tensors[name_b] = tensors[name_b] + 1e3
    elif change == "frozen":
        tensors[name_a] = tensors[name_a] + 0.01
    elif change == "missing":
        del tensors[name_b]
    save_adapter(store, prefix, tensors, {k: v for k, v in stored.meta.items() if k not in ("sha256", "bytes", "file")})


TAMPERING = {
    "sha256": (lambda s: _tamper_bytes(s), "sha256"),
    "shape": (lambda s: _resave(s, "shape"), "shape"),
    "nan": (lambda s: _resave(s, "nan"), "NaN or Inf"),
    "inf": (lambda s: _resave(s, "inf"), "NaN or Inf"),
    "norm": (lambda s: _resave(s, "norm"), "change norm"),
    "frozen": (lambda s: _resave(s, "frozen"), "frozen (FFA-LoRA) tensor"),
    "missing": (lambda s: _resave(s, "missing"), "tensor names differ"),
}


@pytest.mark.parametrize("kind", sorted(TAMPERING))
def test_tampered_update_is_rejected_logged_and_excluded(
    kind: str,
    trained_round: tuple[Config, Path, list[BankOutcome]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config, base, outcomes = trained_round
    config = config.model_copy(update={"output": config.output.model_copy(update={"dir": str(tmp_path)})})
    shutil.copytree(base, tmp_path / "run")
    store = LocalStore(tmp_path / "run")
    tamper, reason = TAMPERING[kind]
    tamper(store)
    record = aggregate_round(config, run="run", round_index=1, outcomes=outcomes, runtime=Runtime(config))
    assert record.banks == ["bank-a", "bank-c"]
    assert reason in record.rejected["bank-b"]
    assert any("bank-b" in r.message for r in caplog.records if r.levelname == "WARNING")
    # The committed global adapter is the average of the two honest updates only.
    a = load_adapter(store, update_prefix(1, "bank-a"))
    c = load_adapter(store, update_prefix(1, "bank-c"))
    glob = load_adapter(store, "rounds/0001/global").tensors
    na, nc = a.meta["num_examples"], c.meta["num_examples"]
    for name, value in glob.items():
        expected = (a.tensors[name].double() * na + c.tensors[name].double() * nc) / (na + nc)
        torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-7)


def test_honest_updates_pass_the_norm_and_frozen_checks(
    trained_round: tuple[Config, Path, list[BankOutcome]], tmp_path: Path
) -> None:
    config, base, outcomes = trained_round
    config = config.model_copy(update={"output": config.output.model_copy(update={"dir": str(tmp_path)})})
    shutil.copytree(base, tmp_path / "run")
    record = aggregate_round(config, run="run", round_index=1, outcomes=outcomes, runtime=Runtime(config))
    assert record.banks == BANKS and record.rejected == {}
