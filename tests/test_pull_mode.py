"""Pull mode (``kubeflow.mode=pull``): the banks' own agents take their rounds from the exchange.

Nothing is mocked: the coordinator is the coordinator task's loop (``run_rounds``: the per-bank
dispatch ``dispatch_bank_round`` of both graphs, which in pull mode waits for the bank's outcome in the
store), and the banks are ``fedlora bank-agent`` passes (in-process, as subprocesses, or a
looping agent in a thread) with their own data, policy and ledger, on a local-directory exchange
and on the real Ceph S3 gateway of tests/conftest.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from fedlora.bank_agent import acquire_lease, list_runs, process_pending, run_agent
from fedlora.bank_request import BankRequestError
from fedlora.bank_round import read_bank_outcome
from fedlora.cli import main
from fedlora.config import Config, load_config
from fedlora.federation import aggregate_round, initialize
from fedlora.kube.agent_jobs import JobExecutor
from fedlora.kube.launcher import BankJobLauncher, job_name
from fedlora.pipeline.bank_dispatch import dispatch_bank_round
from fedlora.pipeline.coordinator import run_rounds
from fedlora.pipeline.pull import await_bank_outcome
from fedlora.records import RoundRecord
from fedlora.store.local import LocalStore
from fedlora.store.run import open_run_store
from kube_fake import FakeCluster, bank_template, serve

TINY_POLICY = '{"minNoiseMultiplier": 0}'  # the tiny schedule calibrates to σ < 0.5
ROOT = Path(__file__).resolve().parents[1]


def _bank_csv(path: Path, start: int, rows: int = 200) -> Path:
    with resources.files("fedlora.data").joinpath("german_credit.csv").open("r", encoding="utf-8") as f:
        pd.read_csv(f, dtype=object).iloc[start : start + rows].to_csv(path, index=False)
    return path


def _pull_config(tiny_overrides: list[str], store_uri: str, banks: list[str], *extra: str) -> Config:
    """The consortium's config: the banks' data paths are in their own clusters, out of the coordinator's reach."""
    listed = ", ".join(f"{{name: {b}, data: /in-{b}-cluster/credit.csv}}" for b in banks)
    return load_config(
        None,
        [
            *tiny_overrides,
            f"federation.banks=[{listed}]",
            f"store.uri={store_uri}",
            "kubeflow.mode=pull",
            "kubeflow.poll_seconds=0.5",
            *extra,
        ],
    )


def _bank_env(tmp_path: Path, bank: str, exchange: str, index: int, policy: str = TINY_POLICY) -> dict[str, str]:
    """What the bank's Helm release gives its agent: its own data, ledger and policy, its way to the exchange."""
    return {
        "FEDLORA_STORE_URI": exchange,
        "FEDLORA_BANK_DATA": str(_bank_csv(tmp_path / f"{bank}.csv", start=200 * index)),
        "FEDLORA_BANK_LEDGER": str(tmp_path / f"{bank}-ledger"),
        "FEDLORA_BANK_POLICY": policy,
    }


def _charges(ledger: Path, run: str, round_index: int) -> list[Path]:
    return list(ledger.rglob(f"charges/{run}/{round_index:04d}/*.json"))


class _Coordinator(threading.Thread):
    """The coordinator task's loop in a thread (it waits for the banks' outcomes in pull mode)."""

    def __init__(self, config: Config, run: str) -> None:
        super().__init__(daemon=True)
        self.config, self.run_name = config, run
        self.records: list[RoundRecord] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.records = run_rounds(self.config, run=self.run_name)
        except BaseException as exc:
            self.error = exc


def test_pull_mode_federation_end_to_end(tiny_overrides: list[str], tmp_path: Path) -> None:
    exchange = tmp_path / "exchange"
    banks = ["bank-a", "bank-b"]
    config = _pull_config(tiny_overrides, str(exchange), banks)
    info = initialize(config, run="r1")
    assert info["privacy"] == {}  # in pull mode every bank plans its σ on its own rows, in its own cluster
    envs = {b: _bank_env(tmp_path, b, str(exchange), i) for i, b in enumerate(banks)}

    coordinator = _Coordinator(config, "r1")
    coordinator.start()
    lines: list[str] = []
    deadline = time.monotonic() + 600
    while coordinator.is_alive() and time.monotonic() < deadline:  # the banks' CronJobs: a pass each, again and again
        for bank in banks:
            assert run_agent(envs[bank], bank=bank, once=True, echo=lines.append) == 0
        time.sleep(0.3)
    coordinator.join(timeout=5)
    assert coordinator.error is None, coordinator.error
    records = coordinator.records
    assert [r.round for r in records] == [1, 2]
    for record in records:
        assert record.banks == banks and record.failed == {} and record.refused == {}
        assert all(0 < record.epsilon[b] <= config.privacy.target_epsilon for b in banks)
        assert record.auc is None  # the coordinator holds no bank's rows
    # each bank trained each round exactly once, said so in one line, and its ledger holds one charge per round
    for bank in banks:
        mine = [line for line in lines if f"bank {bank}:" in line]
        assert [line.split(" bank ")[0] for line in mine] == ["run r1 round 1", "run r1 round 2"]
        assert all(": ok (epsilon " in line for line in mine)
        for round_index in (1, 2):
            assert len(_charges(tmp_path / f"{bank}-ledger", "r1", round_index)) == 1
    assert not any(("age" in line or "credit_amount" in line) for line in lines)
    assert not list(exchange.rglob("*.csv"))  # rows never reach the exchange
    assert (exchange / "r1/rounds/0002/MANIFEST.json").exists()
    # a finished run needs nothing more: the next pass does nothing
    assert process_pending(envs["bank-a"], bank="bank-a").outcomes == []


def test_timeout_is_a_failed_bank_and_a_refusing_policy_a_refused_one(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    """bank-a trains, bank-b's policy refuses the request, bank-c runs no agent: the round still commits."""
    exchange = tmp_path / "exchange"
    banks = ["bank-a", "bank-b", "bank-c"]
    config = _pull_config(tiny_overrides, str(exchange), banks, "federation.rounds=1", "federation.min_banks=1")
    initialize(config, run="r1")
    # the coordinator waits 3 s (below the config's 60 s floor; kubeflow.* are location settings, not stored)
    config = config.model_copy(update={"kubeflow": config.kubeflow.model_copy(update={"job_timeout_seconds": 3})})
    refusing = '{"minNoiseMultiplier": 0, "maxEpsilonPerRun": 1}'  # the request asks for ε=8
    lines: list[str] = []
    for i, (bank, policy) in enumerate([("bank-a", TINY_POLICY), ("bank-b", refusing)]):
        env = _bank_env(tmp_path, bank, str(exchange), i, policy)
        assert run_agent(env, bank=bank, once=True, echo=lines.append) == 0
    assert any(line.startswith("run r1 round 1 bank bank-b: refused (") for line in lines)
    assert _charges(tmp_path / "bank-b-ledger", "r1", 1) == []  # refused before anything was charged

    started = time.monotonic()
    silent = dispatch_bank_round(config, run="r1", bank="bank-c", round_index=1)
    assert 3 <= time.monotonic() - started < 15
    assert silent.status == "failed" and "published no outcome for round 1 within 3s" in silent.message

    (record,) = run_rounds(config, run="r1")  # the same dispatch, inside the coordinator's loop: not a failed run
    assert record.banks == ["bank-a"]
    assert set(record.failed) == {"bank-c"} and "bank-agent" in record.failed["bank-c"]
    assert set(record.refused) == {"bank-b"} and "maxEpsilonPerRun" in record.refused["bank-b"]


def test_a_published_outcome_ends_the_wait(tiny_overrides: list[str], tmp_path: Path) -> None:
    """The wait sees an outcome that appears while it waits (written by the bank's agent, here a plain pass)."""
    exchange = tmp_path / "exchange"
    config = _pull_config(tiny_overrides, str(exchange), ["bank-a"], "federation.min_banks=1")
    initialize(config, run="r1")
    env = _bank_env(tmp_path, "bank-a", str(exchange), 0)
    timer = threading.Timer(1.0, lambda: process_pending(env, bank="bank-a"))
    timer.start()
    outcome = await_bank_outcome(config, run="r1", bank="bank-a", round_index=1, timeout_seconds=300)
    timer.join()
    assert outcome.status == "ok"
    assert outcome == read_bank_outcome(config, run="r1", bank="bank-a", round_index=1)


def test_two_agents_at_once_train_each_round_once(tiny_overrides: list[str], tmp_path: Path) -> None:
    """Two replicas of bank-a's agent (real `fedlora bank-agent --once` processes, one ledger) start together."""
    exchange = tmp_path / "exchange"
    config = _pull_config(tiny_overrides, str(exchange), ["bank-a"], "federation.min_banks=1")
    initialize(config, run="r1")
    env = {**os.environ, **_bank_env(tmp_path, "bank-a", str(exchange), 0), "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "fedlora.cli", "bank-agent", "--bank", "bank-a", "--once", "--executor", "inline"]
    stepped_back = 0
    for round_index in (1, 2):
        agents = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
        agents.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        results = [agent.communicate(timeout=600) for agent in agents]
        stepped_back += sum("another agent of this bank has it" in err for _, err in results)
        assert [agent.returncode for agent in agents] == [0, 0], [err[-2000:] for _, err in results]
        printed = [line for out, _ in results for line in out.splitlines()]
        assert len(printed) == 1 and printed[0].startswith(f"run r1 round {round_index} bank bank-a: ok ("), results
        assert len(_charges(tmp_path / "bank-a-ledger", "r1", round_index)) == 1
        assert not list((tmp_path / "bank-a-ledger").rglob("agent-leases/**/*.json"))  # leases are released
        outcome = read_bank_outcome(config, run="r1", bank="bank-a", round_index=round_index)
        assert outcome.status == "ok"
        aggregate_round(config, run="r1", round_index=round_index, outcomes=[outcome])
    assert stepped_back >= 1  # the replicas did meet: one found the other's lease and left the round to it


def test_the_lease_goes_to_one_of_many_agents_at_once(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "ledger")
    barrier = threading.Barrier(6)
    keys: list[str | None] = []

    def take() -> None:
        barrier.wait()
        keys.append(acquire_lease(store, "r1", 1, ttl=60))

    threads = [threading.Thread(target=take) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    held = [k for k in keys if k is not None]
    assert len(keys) == 6 and len(held) == 1
    assert store.list("agent-leases/") == held
    assert acquire_lease(store, "r1", 1, ttl=60) is None  # held: nobody else gets it
    assert acquire_lease(store, "r1", 1, ttl=0) is not None  # a lease older than the ttl is stale (a killed agent)


def test_bank_agent_cli_exit_codes(tiny_overrides: list[str], tmp_path: Path) -> None:
    agent = ["bank-agent", "--bank", "bank-a", "--once", "--executor", "inline"]
    result = CliRunner().invoke(main, agent, env={"FEDLORA_BANK_LEDGER": ""})
    assert result.exit_code == 2 and "FEDLORA_BANK_LEDGER" in result.output
    exchange = tmp_path / "exchange"
    config = _pull_config(tiny_overrides, str(exchange), ["bank-a"], "federation.min_banks=1")
    initialize(config, run="r1")
    inline = load_config(None, [*tiny_overrides, f"store.uri={exchange}", "output.run_name=r2"])
    initialize(inline, run="r2")  # an inline run in the same exchange: the coordinator trains it, not the agent
    env = _bank_env(tmp_path, "bank-a", str(exchange), 0)
    result = CliRunner().invoke(main, agent, env=env)
    assert result.exit_code == 0, result.output
    assert result.output.strip().startswith("run r1 round 1 bank bank-a: ok (epsilon ")
    assert "r2" not in result.output and not (exchange / "r2/rounds/0001").exists()
    r3 = _pull_config(tiny_overrides, str(exchange), ["bank-a"], "federation.min_banks=1", "output.run_name=r3")
    initialize(r3, run="r3")
    bad = {**env, "FEDLORA_BANK_DATA": str(tmp_path / "missing.csv")}  # the bank's data volume is broken
    result = CliRunner().invoke(main, [*agent, "--run", "r3"], env=bad)
    assert result.exit_code == 1
    published = json.loads((exchange / "r3/rounds/0001/updates/bank-a/outcome.json").read_text())
    assert published["status"] == "failed" and published["message"].startswith("bank bank-a round 1: ")
    assert result.output.strip() == f"run r3 round 1 bank bank-a: failed ({published['message']})"
    assert _charges(tmp_path / "bank-a-ledger", "r3", 1) == []
    assert (tmp_path / "bank-a-ledger/errors/r3/0001.txt").exists()  # the full text stays with the bank


def test_the_agent_creates_one_job_per_pending_round_and_publishes_a_silent_failure(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    """The chart's agent (--executor job): CPU-only, no bank data, no ledger; the bank's template makes the Jobs."""
    exchange = tmp_path / "exchange"
    config = _pull_config(tiny_overrides, str(exchange), ["bank-a", "bank-b"], "federation.min_banks=1")
    for run in ("r1", "r2"):
        initialize(config, run=run)
    inline = load_config(None, [*tiny_overrides, f"store.uri={exchange}", "output.run_name=r3"])
    initialize(inline, run="r3")  # an inline run: the coordinator trains it, never the agent
    (exchange / "A_b").mkdir()  # a run name that is not an identifier: never a Job
    (exchange / "A_b/config.yaml").write_bytes((exchange / "r1/config.yaml").read_bytes())
    env = {"FEDLORA_STORE_URI": str(exchange)}  # the exchange only: no FEDLORA_BANK_DATA, _LEDGER or _POLICY
    state = FakeCluster()
    state.add_template("bank-a", "fedlora-bank-job-template", bank_template())
    state.scenario = "hang"
    lines: list[str] = []
    with serve(state) as api:
        agent = JobExecutor(BankJobLauncher(api, namespace="bank-a", template_configmap="fedlora-bank-job-template"))

        def one_pass() -> list[tuple[str, Any]]:
            return process_pending(env, bank="bank-a", executor=agent, echo=lines.append).outcomes

        assert one_pass() == []  # the Jobs are created; the pass does not wait for them
        names = {job_name(run=run, bank="bank-a", round_index=1) for run in ("r1", "r2")}
        assert {name for _, name in state.jobs} == names
        for posted in state.posted:
            args = posted["spec"]["template"]["spec"]["containers"][0]["args"]
            run = args[2]
            assert args == ["train-bank", "--run", run, "--bank", "bank-a", "--round", "1"]
            env_of = {e["name"]: e.get("value") for e in posted["spec"]["template"]["spec"]["containers"][0]["env"]}
            assert env_of["FEDLORA_REQUEST_CONFIG"] == (exchange / run / "config.yaml").read_text()
        assert one_pass() == [] and len(state.posted) == 4 and len(state.jobs) == 2  # 409: nothing more
        for entry in state.jobs.values():  # both trainer pods die (e.g. OOM-killed) before publishing anything
            entry["scenario"] = "fail"
        state.run_seconds = 0.0
        failed = one_pass()
        assert sorted(run for run, _ in failed) == ["r1", "r2"]
        for run, outcome in failed:
            published = read_bank_outcome(config, run=run, bank="bank-a", round_index=1)
            assert published == outcome and outcome.status == "failed" and "BackoffLimitExceeded" in outcome.message
        assert sorted(lines) == [f"run {r} round 1 bank bank-a: failed ({o.message})" for r, o in sorted(failed)]
        posts = len(state.posted)
        assert one_pass() == [] and len(state.posted) == posts  # published: nothing more, not even a create
    assert not (exchange / "r3/rounds/0001").exists() and not (exchange / "A_b/rounds").exists()


def test_run_names_that_are_not_identifiers_are_skipped_or_refused(tmp_path: Path) -> None:
    class Listing:
        def list(self, prefix: str) -> list[str]:
            return ["../x/config.yaml", "A_b/config.yaml", "ok-1/config.yaml", "a/b/config.yaml", "ok-1/rounds/x"]

    assert list_runs(Listing()) == ["ok-1"]  # type: ignore[arg-type]
    env = {"FEDLORA_STORE_URI": str(tmp_path)}
    for runs, bank in ((["../x"], "bank-a"), (["A_b"], "bank-a"), ([], "../bank")):
        with pytest.raises(BankRequestError, match="not an identifier"):
            process_pending(env, bank=bank, executor=JobExecutor(None), runs=runs)  # type: ignore[arg-type]
    result = CliRunner().invoke(
        main, ["bank-agent", "--bank", "bank-a", "--run", "../x", "--once", "--executor", "inline"]
    )
    assert result.exit_code == 2 and "not an identifier" in result.output


class _Saw(logging.Handler):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.event = text, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


def test_pull_mode_on_ceph_survives_an_exchange_outage(
    ceph_s3: Any,
    tiny_overrides: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The exchange on the real Ceph gateway; the gateway goes down while the coordinator waits and the agent polls."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ceph_s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ceph_s3.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", ceph_s3.region)
    bucket = f"pull-{uuid.uuid4().hex[:8]}"
    ceph_s3.client().create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/consortium"
    s3 = [f"store.endpoint_url={ceph_s3.endpoint}", "store.path_style=true", "store.retry_seconds=1"]
    config = _pull_config(tiny_overrides, uri, ["bank-a"], "federation.rounds=1", "federation.min_banks=1", *s3)
    initialize(config, run="r1")
    env = {
        **_bank_env(tmp_path, "bank-a", uri, 0),
        "FEDLORA_STORE_ENDPOINT_URL": ceph_s3.endpoint,
        "FEDLORA_STORE_PATH_STYLE": "true",
    }
    caplog.set_level(logging.INFO, logger="fedlora")
    waiting = _Saw("waiting up to")
    logging.getLogger("fedlora").addHandler(waiting)
    lines: list[str] = []
    stop = threading.Event()
    agent = threading.Thread(
        target=run_agent, kwargs={"env": env, "bank": "bank-a", "poll_seconds": 0.5, "echo": lines.append, "stop": stop}
    )
    try:
        coordinator = _Coordinator(config, "r1")
        coordinator.start()
        assert waiting.event.wait(120)
        ceph_s3.stop_gateway()
        try:
            agent.start()  # its first passes meet the outage
            time.sleep(4)
            assert agent.is_alive() and coordinator.is_alive() and not lines
        finally:
            ceph_s3.start_gateway()
        coordinator.join(timeout=600)
        assert coordinator.error is None, coordinator.error
    finally:
        stop.set()
        if agent.ident is not None:
            agent.join(timeout=120)
        logging.getLogger("fedlora").removeHandler(waiting)
    (record,) = coordinator.records
    assert record.banks == ["bank-a"] and record.failed == {}
    assert lines == [lines[0]] and lines[0].startswith("run r1 round 1 bank bank-a: ok (")
    # the agent met the outage (its S3 client retries for store.retry_seconds, 60 s by default, then the pass ends
    # and the next one retries) and went on
    assert f"list s3://{bucket}/consortium: transient S3 error" in caplog.text
    assert "cannot read the store" in caplog.text  # so did the waiting coordinator
    assert len(_charges(tmp_path / "bank-a-ledger", "r1", 1)) == 1
    assert open_run_store(config, "r1").exists("rounds/0001/MANIFEST.json")
