"""A coordinator that never loads the base model (issue 28, item 5).

``model.name=meta-llama/Llama-3.1-8B-Instruct`` with ``HF_HUB_OFFLINE=1`` and no Hugging Face cache: not
even its ``config.json`` is on the machine. The KFP task bodies of ``initialize``, ``aggregate`` (two rounds)
and ``finalize`` run against it, with the banks' updates written by the test in the store's adapter format,
and the model's loaders cut off: round 0 is a spec, round 1 is the average of the banks' updates checked
against each other, round 2 the average checked against round 1's global adapter. A fresh process runs the
same steps within the 2 Gi of a control pod.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch

from fedlora.aggregation import Update, fedavg
from fedlora.config import Config, config_to_yaml, load_config_text
from fedlora.initial import SEEDED
from fedlora.pipeline import task_bodies
from fedlora.records import BankOutcome
from fedlora.store.adapters import get_json, load_adapter, put_json, save_adapter
from fedlora.store.base import global_prefix, update_prefix
from fedlora.store.run import open_run_store
from helpers import FakeKfpOutput, tiny_pipeline_config

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
BANKS = {"bank-a": 300, "bank-b": 100, "bank-c": 200}
CONTROL_POD_BYTES = 2 * 1024**3


def _llama_config(tmp_path: Path, mode: str) -> Config:
    return tiny_pipeline_config(tmp_path, list(BANKS), f"model.name={LLAMA}", f"kubeflow.mode={mode}")


def _bank_adapter(bank: str, round_index: int) -> dict[str, torch.Tensor]:
    """A bank's update in Llama's adapter names (2 of its layers, rank 8, a narrow width: a test's size)."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{bank}/{round_index}".encode()))
    shared_a = torch.Generator().manual_seed(0)  # every bank's A from the shared seed
    tensors = {}
    for layer in (30, 31):
        for proj in ("q_proj", "v_proj"):
            name = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{name}.lora_A.default.weight"] = torch.randn(8, 64, generator=shared_a)
            tensors[f"{name}.lora_B.default.weight"] = torch.randn(64, 8, generator=gen) * 0.01
    return tensors


def _publish(config: Config, run: str, round_index: int) -> dict[str, Update]:
    """What each bank's Job publishes: its adapter (safetensors + meta.json), then ``outcome.json``."""
    store = open_run_store(config, run)
    updates = {}
    for bank, count in BANKS.items():
        tensors = _bank_adapter(bank, round_index)
        prefix = update_prefix(round_index, bank)
        meta = {"bank": bank, "round": round_index, "kind": "update", "num_examples": count, "steps": 2}
        save_adapter(store, prefix, tensors, meta)
        outcome = BankOutcome(
            bank=bank, round=round_index, status="ok", num_examples=count, epsilon=1.0, delta=1e-5, steps=2
        )
        put_json(store, f"{prefix}/outcome.json", outcome.to_json())
        updates[bank] = Update(bank, tensors, count)
    return updates


def _outputs(tmp_path: Path, step: str) -> list[FakeKfpOutput]:
    return [FakeKfpOutput(tmp_path / f"{step}-{kind}.md") for kind in ("metrics", "roc", "summary")]


def coordinator_steps(tmp_path: Path, mode: str) -> dict[str, Any]:
    """Initialize, aggregate rounds 1 and 2, finalize: the KFP task bodies, as a control pod runs them."""
    config = _llama_config(tmp_path, mode)
    plan = FakeKfpOutput(tmp_path / "plan.md")
    config_yaml, run = task_bodies.initialize_step(
        base_config=config_to_yaml(config), parameters={}, kfp_run_name="llama-run", plan=plan
    )
    store = open_run_store(load_config_text(config_yaml), run)
    spec = get_json(store, f"{global_prefix(0)}/meta.json")
    results: dict[str, Any] = {"spec": spec, "round0_tensors": store.exists(f"{global_prefix(0)}/adapter.safetensors")}
    for round_index in (1, 2):
        updates = _publish(config, run, round_index)
        metrics, roc, summary = _outputs(tmp_path, f"round{round_index}")
        record = json.loads(
            task_bodies.aggregate_step(
                config_yaml=config_yaml, run=run, round_index=round_index, metrics=metrics, roc=roc, summary=summary
            )
        )
        averaged = fedavg(list(updates.values()))
        stored = load_adapter(store, global_prefix(round_index)).tensors
        results[f"round{round_index}"] = {
            "banks": record["banks"],
            "evaluation": record["evaluation"],
            "is_average": stored.keys() == averaged.keys() and all(torch.equal(stored[k], averaged[k]) for k in stored),
        }
    metrics, _, summary = _outputs(tmp_path, "finalize")
    results["final"] = task_bodies.finalize_step(config_yaml=config_yaml, run=run, metrics=metrics, summary=summary)
    final, last = load_adapter(store, "final").tensors, load_adapter(store, global_prefix(2)).tensors
    results["final_is_round2"] = final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    return results


def _check(results: dict[str, Any]) -> None:
    assert results["spec"]["initial"] == SEEDED and results["spec"]["model"] == LLAMA
    assert not results["round0_tensors"]  # round 0 is a spec: the coordinator computed no adapter
    for round_index in (1, 2):
        done = results[f"round{round_index}"]
        assert done["banks"] == list(BANKS)
        assert done["is_average"]  # the example-weighted FedAvg of the banks' updates, bit for bit
    assert results["final"].endswith("final/adapter.safetensors") and results["final_is_round2"]


@pytest.fixture
def no_model_here(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """HF_HUB_OFFLINE with an empty cache, and every way to the model's weights cut off."""
    from huggingface_hub import constants

    from fedlora import runtime as runtime_module
    from fedlora.runtime import Runtime

    def no_weights(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the coordinator tried to load the base model")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setattr(runtime_module, "load_base_model", no_weights)
    monkeypatch.setattr(runtime_module, "load_causal_lm", no_weights)
    monkeypatch.setattr(Runtime, "model", property(no_weights))


@pytest.mark.usefixtures("no_model_here")
@pytest.mark.parametrize("mode", ["pull", "inline"])
def test_initialize_and_aggregate_never_load_the_model(tmp_path: Path, mode: str) -> None:
    """Pull: the coordinator's usual place. Inline: it would evaluate centrally, and skips that without the model."""
    results = coordinator_steps(tmp_path, mode)
    _check(results)
    if mode == "inline":
        assert all("not on this machine" in results[f"round{r}"]["evaluation"] for r in (1, 2))


def test_a_fresh_control_process_fits_two_gibibytes(tmp_path: Path) -> None:
    """The same steps in a new Python process (imports included), HF_HUB_OFFLINE and an empty cache: peak RSS < 2 Gi."""
    script = textwrap.dedent(
        f"""
        import json, resource, sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_coordinator_without_model import coordinator_steps
        results = coordinator_steps(Path({str(tmp_path)!r}), "pull")
        results["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps(results, default=str))
        """
    )
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf-home")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    _check(results)
    assert results["peak_rss_bytes"] < CONTROL_POD_BYTES, results["peak_rss_bytes"]
