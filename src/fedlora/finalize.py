"""The run's last step: the final adapter (ours and PEFT's format), ``summary.json``, the report, MLflow registration.

Reads only the run's store (the committed rounds and the banks' published privacy reports), so
it runs in any process after the last round, like every other step.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fedlora.config import Config
from fedlora.errors import FederationError
from fedlora.initial import load_global
from fedlora.model import AdapterState
from fedlora.model.lora import load_adapter_state, trainable_names
from fedlora.privacy.bank_side import load_bank_privacy
from fedlora.records import FinalAdapter, RoundRecord, RunSummary
from fedlora.report import latest_released_histograms, write_report
from fedlora.runtime import Runtime
from fedlora.store.adapters import get_json, put_json, save_adapter
from fedlora.store.base import Store, round_prefix
from fedlora.store.local import LocalStore
from fedlora.store.run import committed_rounds, open_run_store
from fedlora.tracking import open_tracker, register_final

__all__ = ["finalize"]

log = logging.getLogger(__name__)


def _publish_dir(store: Store, local: Path, key_prefix: str) -> None:
    """Copy the files under ``local`` into the store (no-op when the store *is* that directory)."""
    if store.local_path(key_prefix) == local.resolve():
        return
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        store.put(f"{key_prefix}/{path.relative_to(local).as_posix()}", path.read_bytes())


def finalize(config: Config, *, run: str, runtime: Runtime | None = None, local_dir: Path | None = None) -> RunSummary:
    """Write the final adapter (ours and PEFT's format), the summary and the report; register in MLflow.

    PEFT's format needs the base model: a process without it (a control pod, ``model.name`` not on
    its machine) writes ours only, and ``peft_adapter`` is empty.

    Raises:
        FederationError: no round was committed (or none left the seeded start, without the model here).

    """
    runtime = runtime or Runtime(config)
    store = open_run_store(config, run)
    rounds = [
        RoundRecord.from_json(get_json(store, f"{round_prefix(r)}/MANIFEST.json"))
        for r in committed_rounds(store)
        if r > 0
    ]
    if not rounds:
        raise FederationError(f"run {store.uri('')} has no committed round")
    last = rounds[-1]
    work = Path(local_dir) if local_dir is not None else Path(tempfile.mkdtemp(prefix="fedlora-final-"))
    with_model = runtime.can_load_model()
    with runtime.timer.phase("store"):
        final = load_global(store, last.round, initial=(lambda: runtime.initial_adapter) if with_model else None)
        if final is None:  # every bank's budget was spent in round 1: the run never left the seeded start
            raise FederationError(
                f"run {store.uri('')}: the final adapter is the seeded initial one, and model "
                f"{config.model.name} is not on this machine to build it"
            )
        meta = save_adapter(store, "final", final, {"round": last.round, "kind": "final"})
        peft_dir = _export_peft(runtime, final, work) if with_model else None
        if peft_dir is not None:
            _publish_dir(store, peft_dir, "final/peft")
        else:  # a control pod without the model: our format only, also as the MLflow artifact
            save_adapter(LocalStore(work), "final", final, meta)
            log.warning("model %s is not on this machine: no PEFT export of the final adapter", config.model.name)
    kept = [r for r in rounds if not r.stopped_early] or rounds
    summary = RunSummary(
        run=run,
        run_dir=str(work),
        store_uri=store.uri(""),
        model=config.model.name,
        dataset=config.data.dataset,
        aggregation="fedavg-ffa-lora (exact)" if config.lora.ffa else "fedavg-lora (A and B averaged separately)",
        privacy_mode=f"dp-sgd per-example ({config.privacy.accountant})" if config.privacy.enabled else "none",
        trainable_parameters=_trainable_count(config, runtime, final, with_model=with_model),
        final=FinalAdapter(
            auc=last.auc,
            metrics=last.metrics,
            per_bank_test=last.per_bank_test,
            epsilon=last.epsilon,
            adapter=store.uri("final/adapter.safetensors"),
            peft_adapter=str(peft_dir) if peft_dir is not None else "",
            sha256=meta["sha256"],
        ),
        rounds=kept,
        privacy=_privacy_summary(config, store),
        stopped_early=next((r.stopped_early for r in rounds if r.stopped_early), None),
    )
    # The report shows only what this process may see: no bank's rows (a simulation adds its
    # pooled view to the local copy later), the central metrics where it holds every test row,
    # and the banks' DP releases.
    report = write_report(summary, work / "report", released=latest_released_histograms(store, kept))
    summary = dataclasses.replace(summary, report=str(report))
    _publish_dir(store, work / "report", "report")
    registered = register_final(config, open_tracker(config, store, run=run, runtime=runtime), run, summary, work)
    summary = dataclasses.replace(summary, registered_model=registered, timings=dict(runtime.timer.seconds))
    put_json(store, "summary.json", summary.to_json())
    return summary


def _export_peft(runtime: Runtime, final: AdapterState, work: Path) -> Path:
    """The final adapter in PEFT's format (``save_pretrained``) under ``work/final/peft``; needs the base model."""
    load_adapter_state(runtime.model, final)
    peft_dir = work / "final" / "peft"
    tmp = work / "final" / ".peft.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    runtime.model.save_pretrained(str(tmp))  # type: ignore[operator]
    shutil.rmtree(peft_dir, ignore_errors=True)
    tmp.replace(peft_dir)
    return peft_dir


def _trainable_count(config: Config, runtime: Runtime, final: AdapterState, *, with_model: bool) -> int:
    """How many parameters local training updates (the model's trainable ones).

    Without the model: the adapter's, less the frozen ones (FFA-LoRA's A; every LoRA matrix with
    ``lora.enabled=false``).
    """
    if with_model:
        return sum(runtime.model.get_parameter(n).numel() for n in trainable_names(runtime.model))
    frozen = "lora_" if not config.lora.enabled else ("lora_A" if config.lora.ffa else None)
    return sum(int(t.numel()) for n, t in final.items() if frozen is None or frozen not in n)


def _privacy_summary(config: Config, store: Store) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    if not config.privacy.enabled:
        return summary
    for spec in config.federation.banks:
        report = load_bank_privacy(store, spec.name)
        if report is None:
            continue
        plan = report["plan"]
        summary[spec.name] = {
            "noise_multiplier": plan["noise_multiplier"],
            "sample_rate": plan["sample_rate"],
            "steps": report.get("training_steps", 0),
            "delta": plan["delta"],
            "max_grad_norm": plan["max_grad_norm"],
            "accountant": plan["accountant"],
            "target_epsilon": plan["target_epsilon"],
            "planned_steps": plan["planned_steps"],
            "evaluation_noise_multiplier": plan.get("evaluation_noise_multiplier"),
            "epsilon": report["epsilon_spent"] if report["charged_rounds"] else 0.0,
            "charged_rounds": report["charged_rounds"],
            "source": "the bank's published report (its own ledger is authoritative)",
        }
    return summary
