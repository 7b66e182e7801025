"""The Markdown cards the pipeline's tasks show in the Kubeflow UI (one per task), and their number format.

Pure functions of the steps' results (no KFP, no store): :mod:`fedlora.pipeline.task_bodies`
writes them to the tasks' ``Output[Markdown]`` artifacts.
"""

from __future__ import annotations

import math
from typing import Any

from fedlora.config import Config
from fedlora.records import BankOutcome, RoundRecord, RunSummary, format_epsilon

__all__ = [
    "bank_card",
    "final_card",
    "finite",
    "fmt",
    "location_warnings",
    "plan_card",
    "round_card",
    "rounds_card",
]


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def fmt(value: Any, digits: int = 4) -> str:
    """A number to ``digits`` significant digits; ``–`` for ``None``; anything else as text."""
    number = finite(value)
    if number is None:
        return "–" if value is None else str(value)
    return f"{number:.{digits}g}"


def location_warnings(config: Config) -> list[str]:
    """Settings that work in a local run but not on a cluster, where each task is its own pod."""
    warnings = []
    if config.store.uri is None or not config.store.uri.startswith("s3://"):
        warnings.append(
            f"store.uri is {config.store.uri or 'not set'}: a local path works for kfp.local, but on a cluster "
            "every task (and every bank's Job) must reach the store: set the run parameter store_uri (or "
            "store.uri in the config) to s3://bucket/prefix."
        )
    if config.tracking.enabled and not config.tracking.uri:
        warnings.append(
            "tracking.uri is not set: MLflow logs would go to a sqlite file in this task's own filesystem; "
            "on a cluster set the run parameter tracking_uri to your MLflow server (or tracking_enabled=false)."
        )
    return warnings


def plan_card(config: Config, info: dict[str, Any]) -> str:
    """The initialize task's card: the run, its store and banks, each bank's privacy plan, location warnings."""
    lines = [
        f"## FedLoRA run `{info['run']}`",
        "",
        f"Store: `{info['store_uri']}` · model `{config.model.name}` · {config.federation.rounds} rounds · "
        f"banks: {', '.join(info['banks'])} · mode `{config.kubeflow.mode}`",
        "",
    ]
    if info["privacy"]:
        lines += ["| bank | target ε | δ | σ (noise multiplier) | sample rate | steps |", "|---|---|---|---|---|---|"]
        for bank, p in info["privacy"].items():
            lines.append(
                f"| {bank} | {fmt(p.get('target_epsilon'))} | {fmt(p.get('delta'), 3)} | "
                f"{fmt(p.get('noise_multiplier'))} | {fmt(p.get('sample_rate'), 3)} | {p.get('planned_steps', '–')} |"
            )
    elif config.privacy.enabled:
        lines.append("Each bank calibrates its noise in its own namespace in its first round.")
    else:
        lines.append("**Privacy disabled** (non-private baseline).")
    for warning in location_warnings(config):
        lines += ["", f"⚠️ {warning}"]
    return "\n".join(lines) + "\n"


def bank_card(outcome: BankOutcome) -> str:
    """A train task's card: what the bank released for its round (status, ε, δ, steps, the update)."""
    icon = {"ok": "✅", "failed": "❌", "budget_exhausted": "⏹️", "not_selected": "⏸️", "refused": "🛑"}.get(
        outcome.status, ""
    )
    rows = [
        ("status", f"**{outcome.status}**"),
        ("message", outcome.message or "–"),
        ("training examples (declared, rounded)", str(outcome.num_examples)),
        ("ε spent so far", format_epsilon(outcome.epsilon, 4)),
        ("δ", fmt(outcome.delta, 3)),
        ("DP evaluation histograms released", "yes (charged)" if outcome.evaluation else "no"),
        ("DP-SGD steps", str(outcome.steps)),
        ("update", f"`{outcome.update_uri}`" if outcome.update_uri else "–"),
    ]
    table = "\n".join(f"| {k} | {v.replace('|', '/')} |" for k, v in rows)
    return f"### {icon} {outcome.bank}, round {outcome.round}: {outcome.status}\n\n| | |\n|---|---|\n{table}\n"


def _dp_evaluation_lines(dp_eval: dict[str, Any] | None) -> list[str]:
    if not dp_eval:
        return []
    if "accuracy" in dp_eval:  # a text task: the banks' noised confusion counts
        return [
            f"DP evaluation of the global adapter of round {dp_eval['of_global_round']} on the banks' own test rows "
            f"({', '.join(dp_eval['banks'])}): accuracy **{fmt(dp_eval['accuracy'])}**, weighted F1 "
            f"{fmt(dp_eval['f1'])}, noisy n {fmt(dp_eval['n'], 0)}",
            "",
        ]
    return [
        f"DP evaluation of the global adapter of round {dp_eval['of_global_round']} on the banks' own test rows "
        f"({', '.join(dp_eval['banks'])}): AUC **{fmt(dp_eval['auc'])}**, KS {fmt(dp_eval['ks'])}, "
        f"Brier {fmt(dp_eval['brier'])}, noisy n {fmt(dp_eval['n'], 0)}",
        "",
    ]


def round_card(record: RoundRecord) -> str:
    """An aggregate task's card: the round's test AUC, its DP evaluation and each bank's status and ε."""
    lines = [
        f"## Round {record.round}",
        "",
        f"Test AUC **{fmt(record.auc)}** · KS {fmt(record.ks)} "
        f"({record.evaluation}) · averaged banks: {', '.join(record.banks) or 'none'}",
        "",
        *_dp_evaluation_lines(record.dp_evaluation),
        "| bank | status | ε | released DP histograms |",
        "|---|---|---|---|",
    ]
    failed, rejected = record.failed, record.rejected
    exhausted = set(record.budget_exhausted)
    for bank, eps in record.epsilon.items():
        if bank in failed:
            status = f"❌ failed: {failed[bank]}"
        elif bank in rejected:
            status = f"⚠️ rejected: {rejected[bank]}"
        elif bank in exhausted:
            status = "⏹️ budget spent"
        elif bank in record.banks:
            status = "✅ averaged"
        else:
            status = "⏸️ not selected"
        if bank in record.refused:
            status = f"🛑 refused: {record.refused[bank]}"
        released = bank in (record.dp_evaluation or {}).get("banks", [])
        lines.append(f"| {bank} | {status.replace('|', '/')} | {fmt(eps)} | {'yes' if released else 'no'} |")
    if record.stopped_early:
        lines += ["", f"**{record.stopped_early}**"]
    return "\n".join(lines) + "\n"


def rounds_card(records: list[RoundRecord]) -> str:
    """One line per committed round, then the last round's full card."""
    lines = [
        f"## FedLoRA: {len(records)} rounds committed",
        "",
        "| round | test AUC | KS | training loss | averaged | failed | rejected | max ε |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for record in records:
        eps = [e for e in record.epsilon.values() if e is not None]
        failed = ", ".join(sorted(record.failed)) or "–"
        rejected = ", ".join(sorted(record.rejected)) or "–"
        lines.append(
            f"| {record.round} | {fmt(record.auc)} | {fmt(record.ks)} | {fmt(record.loss)} "
            f"| {len(record.banks)} | {failed} | {rejected} | {fmt(max(eps)) if eps else '–'} |"
        )
    if records:
        lines += ["", round_card(records[-1])]
    return "\n".join(lines) + "\n"


def final_card(run: str, result: RunSummary) -> str:
    """The finalize task's card: the final adapter, its test AUC, the MLflow model and each bank's ε."""
    final = result.final
    registered = result.registered_model
    lines = [
        f"## FedLoRA run `{run}`: final adapter",
        "",
        f"- adapter: `{final.adapter}` (sha256 `{final.sha256[:16]}…`)",
        f"- aggregation: {result.aggregation}; privacy: {result.privacy_mode}",
        f"- final pooled test AUC: **{fmt(final.auc)}** after {len(result.rounds)} rounds",
        f"- MLflow model: {registered['name']} v{registered['version']}" if registered else "- MLflow: not registered",
        "",
        "| bank | ε | δ | σ | steps |",
        "|---|---|---|---|---|",
    ]
    for bank, info in result.privacy.items():
        lines.append(
            f"| {bank} | {fmt(info['epsilon'])} | {fmt(info['delta'], 3)} | "
            f"{fmt(info['noise_multiplier'])} | {info['steps']} |"
        )
    if result.stopped_early:
        lines += ["", f"**{result.stopped_early}**"]
    return "\n".join(lines) + "\n"
