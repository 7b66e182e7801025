"""What each Kubeflow component does: one call into :mod:`fedlora.federation`, plus the KFP outputs.

Every component body is a single call of one function here. The functions take the KFP
output artifacts as small protocols (``log_metric``, ``log_roc_curve``, a ``path`` to write
Markdown to), so they run and are tested without a KFP executor.

Data between tasks: the resolved config (YAML text) and the run name travel as string
parameters; the banks' outcomes travel through the run's store (a bank's Job in another
namespace writes ``outcome.json`` there). A bank whose task, Job or store write failed has
no outcome, and the aggregation counts it as a failed bank; the minimum-banks rule decides
whether the round goes on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import Any, Protocol

import yaml

from fedlora.config import Config, ConfigError, config_to_yaml, load_config_text
from fedlora.federation import aggregate_round, finalize, initialize, read_bank_outcome, select_banks, train_bank
from fedlora.records import BankOutcome, RoundRecord, format_epsilon, round_metrics
from fedlora.runtime import Runtime

__all__ = [
    "BANKS_PARAMETER",
    "aggregate_step",
    "bank_round",
    "federate_step",
    "finalize_step",
    "initialize_step",
    "resolve_config",
    "run_bank_job",
    "train_bank_step",
]

log = logging.getLogger(__name__)

BANKS_PARAMETER = "federation.banks"
"""The one list parameter: names of the compiled-in banks that take part (a subset of them)."""


class MetricsOutput(Protocol):
    """A KFP ``Output[Metrics]``."""

    def log_metric(self, metric: str, value: float) -> None: ...


class RocOutput(Protocol):
    """A KFP ``Output[ClassificationMetrics]``."""

    def log_roc_curve(self, fpr: list[float], tpr: list[float], threshold: list[float]) -> None: ...


class FileOutput(Protocol):
    """A KFP output artifact written as a file (``Output[Markdown]``)."""

    @property
    def path(self) -> str: ...


def _setup_logging() -> None:
    """Send fedlora's INFO logs to the task log (KFP shows the container's stdout/stderr)."""
    logger = logging.getLogger("fedlora")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *sections, key = dotted.split(".")
    for section in sections:
        child = node.setdefault(section, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {section!r} is not a section")
        node = child
    node[key] = value


def resolve_config(base_config: str, overrides: dict[str, Any]) -> Config:
    """The compiled-in config with the run's parameter values applied.

    Args:
        base_config: The config YAML compiled into the pipeline (``fedlora compile --config``).
        overrides: Dotted config names to values (see :func:`fedlora.pipeline.parameters.to_overrides`).
            ``federation.banks`` is a list of bank names: only those compiled-in banks take part
            (their namespaces and templates stay as compiled).

    Raises:
        ConfigError: an unknown bank, or a value the config refuses (the message names it).
    """
    tree = yaml.safe_load(base_config) or {}
    for dotted, value in overrides.items():
        if dotted == BANKS_PARAMETER:
            compiled = tree.get("federation", {}).get("banks", [])
            known = [b["name"] for b in compiled]
            unknown = [n for n in value if n not in known]
            if unknown:
                raise ConfigError(f"{BANKS_PARAMETER}: {unknown} are not compiled into this pipeline (it has {known})")
            value = [b for b in compiled if b["name"] in set(value)]
        _set(tree, dotted, value)
    return load_config_text(yaml.safe_dump(tree, sort_keys=False), source="pipeline parameters")


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _log_metrics(output: MetricsOutput, metrics: dict[str, Any]) -> None:
    """Log the finite numbers only (KFP stores metrics as JSON, which has no NaN/Infinity)."""
    for name, value in metrics.items():
        number = _finite(value)
        if number is not None:
            output.log_metric(name, number)


def _fmt(value: Any, digits: int = 4) -> str:
    number = _finite(value)
    if number is None:
        return "–" if value is None else str(value)
    return f"{number:.{digits}g}"


def _write(output: FileOutput, text: str) -> None:
    with open(output.path, "w", encoding="utf-8") as handle:
        handle.write(text)


# --- initialize ----------------------------------------------------------------------------


def _location_warnings(config: Config) -> list[str]:
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


def initialize_step(
    *, base_config: str, parameters: dict[str, Any], kfp_run_name: str, plan: FileOutput
) -> tuple[str, str]:
    """Resolve the config, write the run's config, round-0 adapter and privacy plans.

    The run is named ``output.run_name`` when given, else after the KFP run. Idempotent (a
    retried task resumes the same run; a different config for an existing run is refused).

    Args:
        base_config: The config YAML compiled into the pipeline.
        parameters: Pipeline parameter values by parameter name (``privacy_target_epsilon``);
            ``None`` keeps the compiled-in value.
        kfp_run_name: The KFP run's name, the run's name unless ``output.run_name`` is set.
        plan: Where the Markdown privacy plan goes.

    Returns:
        ``(config YAML, run name)`` for the downstream tasks.
    """
    from fedlora.pipeline.parameters import to_overrides

    _setup_logging()
    config = resolve_config(base_config, to_overrides(parameters))
    impossible = _location_warnings(config)
    if impossible and os.environ.get("KUBERNETES_SERVICE_HOST"):  # a pod: these settings cannot work here
        raise ConfigError("this run cannot work on a cluster (nothing was written):\n  - " + "\n  - ".join(impossible))
    run = config.output.run_name or kfp_run_name
    config = config.model_copy(update={"output": config.output.model_copy(update={"run_name": run})})
    info = initialize(config, run=run, resume=True)
    lines = [
        f"## FedLoRA run `{run}`",
        "",
        f"Store: `{info['store_uri']}` · model `{config.model.name}` · {config.federation.rounds} rounds · "
        f"banks: {', '.join(info['banks'])} · mode `{config.kubeflow.mode}`",
        "",
    ]
    if info["privacy"]:
        lines += ["| bank | target ε | δ | σ (noise multiplier) | sample rate | steps |", "|---|---|---|---|---|---|"]
        for bank, p in info["privacy"].items():
            lines.append(
                f"| {bank} | {_fmt(p.get('target_epsilon'))} | {_fmt(p.get('delta'), 3)} | "
                f"{_fmt(p.get('noise_multiplier'))} | {_fmt(p.get('sample_rate'), 3)} | {p.get('planned_steps', '–')} |"
            )
    elif config.privacy.enabled:
        lines.append("Each bank calibrates its noise in its own namespace in its first round.")
    else:
        lines.append("**Privacy disabled** (non-private baseline).")
    for warning in _location_warnings(config):
        log.warning("%s", warning)
        lines += ["", f"⚠️ {warning}"]
    _write(plan, "\n".join(lines) + "\n")
    return config_to_yaml(config), run


# --- train one bank ------------------------------------------------------------------------


def run_bank_job(config: Config, *, run: str, bank: str, round_index: int, api: Any = None) -> BankOutcome:
    """Train ``bank`` in its own namespace: a Job from its Helm release's template (see :mod:`fedlora.kube`).

    The Job runs ``fedlora train-bank --run RUN --bank BANK --round R`` with the config in
    ``FEDLORA_REQUEST_CONFIG``; it writes its outcome to the store, which is read back here.

    Args:
        config: The run's resolved config.
        run: The run name.
        bank: The bank.
        round_index: The round (1-based).
        api: A ``kubernetes.client.ApiClient``; default: the task's in-cluster service account.

    Returns:
        The outcome the bank's Job published, or a failed outcome naming why (Job failed,
        timed out, template missing or unsafe, outcome unreadable). An outcome the bank did
        publish is used even when its Job ended badly afterwards (e.g. removed by a TTL).
    """
    from fedlora.kube.launcher import BankJobLauncher, api_client, job_name, label_value

    spec = next(b for b in config.federation.banks if b.name == bank)
    namespace = spec.namespace or spec.name
    try:
        api = api if api is not None else api_client()
    except Exception as exc:  # not in a cluster, no kubeconfig
        return BankOutcome.failed(bank, round_index, f"no access to the Kubernetes API: {exc}")
    launcher = BankJobLauncher(api, log_sink=lambda line: print(line, flush=True))
    result = launcher.run(
        namespace=namespace,
        template_configmap=spec.job_template,
        name=job_name(run=run, bank=bank, round_index=round_index),
        args=["train-bank", "--run", run, "--bank", bank, "--round", str(round_index)],
        env={
            "FEDLORA_REQUEST_CONFIG": config_to_yaml(config),
            "FEDLORA_REQUEST_RUN": run,
            "FEDLORA_REQUEST_BANK": bank,
            "FEDLORA_REQUEST_ROUND": str(round_index),
        },
        labels={
            "fedlora.io/run": label_value(run),
            "fedlora.io/bank": label_value(bank),
            "fedlora.io/round": str(round_index),
        },
        timeout_seconds=config.kubeflow.job_timeout_seconds,
    )
    try:  # the store is the only way back from the bank's namespace
        outcome = read_bank_outcome(config, run=run, bank=bank, round_index=round_index)
    except Exception as exc:
        if result.succeeded:
            return BankOutcome.failed(bank, round_index, f"job {namespace}/{result.name} completed but: {exc}")
        tail = result.logs_tail.splitlines()[-5:]
        detail = ("; last log lines: " + " | ".join(tail)) if tail else ""
        return BankOutcome.failed(bank, round_index, f"job {namespace}/{result.name}: {result.reason}{detail}")
    if not result.succeeded:
        log.warning("job %s/%s: %s, but the bank had published its outcome: using it", namespace, bank, result.reason)
    return outcome


def _bank_markdown(outcome: BankOutcome) -> str:
    icon = {"ok": "✅", "failed": "❌", "budget_exhausted": "⏹️", "not_selected": "⏸️", "refused": "🛑"}.get(
        outcome.status, ""
    )
    rows = [
        ("status", f"**{outcome.status}**"),
        ("message", outcome.message or "–"),
        ("training examples (declared, rounded)", str(outcome.num_examples)),
        ("ε spent so far", format_epsilon(outcome.epsilon, 4)),
        ("δ", _fmt(outcome.delta, 3)),
        ("DP evaluation histograms released", "yes (charged)" if outcome.evaluation else "no"),
        ("DP-SGD steps", str(outcome.steps)),
        ("update", f"`{outcome.update_uri}`" if outcome.update_uri else "–"),
    ]
    table = "\n".join(f"| {k} | {v.replace('|', '/')} |" for k, v in rows)
    return f"### {icon} {outcome.bank}, round {outcome.round}: {outcome.status}\n\n| | |\n|---|---|\n{table}\n"


def bank_round(config: Config, *, run: str, bank: str, round_index: int, runtime: Runtime | None = None) -> BankOutcome:
    """One bank's round, never raising for the bank's own failure: the one dispatch both graphs use.

    A bank left out of the run or not sampled is ``not_selected`` (no Job, no GPU); in
    ``namespaced`` mode the bank trains as a Job in its namespace (:func:`run_bank_job`); in
    ``pull`` mode the bank's own agent trains in its cluster and this waits for its outcome
    (:func:`fedlora.pipeline.pull.await_bank_outcome`, a timeout is a failed outcome); in
    ``inline`` mode here, with ``runtime`` (the loaded model) when given.
    """
    if bank not in {b.name for b in config.federation.banks}:
        outcome = BankOutcome(bank=bank, round=round_index, status="not_selected", message="left out of this run")
    elif bank not in select_banks(config, round_index):  # no Job (and no GPU) for a bank that sits out
        outcome = BankOutcome(bank=bank, round=round_index, status="not_selected", message="not sampled this round")
    elif config.kubeflow.mode == "namespaced":
        outcome = run_bank_job(config, run=run, bank=bank, round_index=round_index)
    elif config.kubeflow.mode == "pull":  # the bank's own agent trains in its cluster; wait for its outcome
        from fedlora.pipeline.pull import await_bank_outcome

        outcome = await_bank_outcome(config, run=run, bank=bank, round_index=round_index)
    else:
        try:
            outcome = train_bank(config, run=run, bank=bank, round_index=round_index, runtime=runtime)
        except Exception as exc:  # a bank's outage is a failed bank, not a failed run
            log.exception("bank %s, round %d failed", bank, round_index)
            # inline: this task holds the data itself (no bank boundary), so the full message is kept
            outcome = BankOutcome.failed(bank, round_index, f"{type(exc).__name__}: {exc}")
    if outcome.status == "failed":
        log.error("bank %s, round %d: FAILED: %s", bank, round_index, outcome.message)
    return outcome


def train_bank_step(
    *,
    config_yaml: str,
    run: str,
    bank: str,
    round_index: int,
    metrics: MetricsOutput,
    summary: FileOutput,
) -> str:
    """Train one bank for one round, inline or as a Job in its namespace (``kubeflow.mode``).

    A bank's failure does not fail the task: it is reported (status ``failed`` in the
    Markdown summary and ``failed=1`` in the metrics) and the aggregation applies the
    minimum-banks rule.

    Returns:
        The bank's outcome as JSON.
    """
    _setup_logging()
    config = load_config_text(config_yaml, source="pipeline config")
    outcome = bank_round(config, run=run, bank=bank, round_index=round_index)
    _log_metrics(
        metrics,
        {
            "ok": float(outcome.status == "ok"),
            "failed": float(outcome.status == "failed"),
            "refused": float(outcome.status == "refused"),
            "epsilon": outcome.epsilon,
            "num_examples": outcome.num_examples,
            "steps": outcome.steps,
        },
    )
    _write(summary, _bank_markdown(outcome))
    return json.dumps(outcome.to_json(), sort_keys=True)


# --- aggregate ------------------------------------------------------------------------------


def _round_outcomes(config: Config, *, run: str, round_index: int) -> list[BankOutcome]:
    """Each bank's outcome from the store; a selected bank that published none counts as failed."""
    selected = set(select_banks(config, round_index))
    outcomes = []
    for spec in config.federation.banks:
        if spec.name not in selected:
            outcomes.append(BankOutcome(bank=spec.name, round=round_index, status="not_selected"))
            continue
        try:
            outcomes.append(read_bank_outcome(config, run=run, bank=spec.name, round_index=round_index))
        except Exception as exc:  # no outcome.json: the bank's task or Job failed (its summary says why)
            log.warning("bank %s published no outcome for round %d: %s", spec.name, round_index, exc)
            outcomes.append(
                BankOutcome.failed(spec.name, round_index, "published no update (its train task's summary says why)")
            )
    return outcomes


def _dp_evaluation_lines(dp_eval: dict[str, Any] | None) -> list[str]:
    if not dp_eval:
        return []
    return [
        f"DP evaluation of the global adapter of round {dp_eval['of_global_round']} on the banks' own test rows "
        f"({', '.join(dp_eval['banks'])}): AUC **{_fmt(dp_eval['auc'])}**, KS {_fmt(dp_eval['ks'])}, "
        f"Brier {_fmt(dp_eval['brier'])}, noisy n {_fmt(dp_eval['n'], 0)}",
        "",
    ]


def _round_markdown(record: RoundRecord) -> str:
    lines = [
        f"## Round {record.round}",
        "",
        f"Test AUC **{_fmt(record.auc)}** · KS {_fmt(record.ks)} "
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
        lines.append(f"| {bank} | {status.replace('|', '/')} | {_fmt(eps)} | {'yes' if released else 'no'} |")
    if record.stopped_early:
        lines += ["", f"**{record.stopped_early}**"]
    return "\n".join(lines) + "\n"


def aggregate_step(
    *,
    config_yaml: str,
    run: str,
    round_index: int,
    metrics: MetricsOutput,
    roc: RocOutput,
    summary: FileOutput,
) -> str:
    """Average the round's updates, evaluate, commit the round; log metrics, ROC and a summary.

    Raises:
        FederationError: fewer than ``federation.min_banks`` valid updates (the run stops).

    Returns:
        The round record as JSON (without the ROC points).
    """
    _setup_logging()
    config = load_config_text(config_yaml, source="pipeline config")
    outcomes = _round_outcomes(config, run=run, round_index=round_index)
    record = aggregate_round(config, run=run, round_index=round_index, outcomes=outcomes)
    _log_metrics(metrics, round_metrics(record))
    _log_roc(roc, record)
    _write(summary, _round_markdown(record))
    return _record_json(record)


# --- the coordinator graph: every round in one task ------------------------------------------


def _log_roc(roc: RocOutput, record: RoundRecord) -> None:
    curve = record.roc or {}
    if curve.get("fpr"):
        roc.log_roc_curve(list(curve["fpr"]), list(curve["tpr"]), list(curve["thresholds"]))


def _record_json(record: RoundRecord | None) -> str:
    """The round record as the step's JSON output, without the ROC points (``{}`` for no round)."""
    data = record.to_json() if record is not None else {}
    return json.dumps({k: v for k, v in data.items() if k != "roc"}, sort_keys=True, default=str)


def _rounds_markdown(records: list[RoundRecord]) -> str:
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
            f"| {record.round} | {_fmt(record.auc)} | {_fmt(record.ks)} | {_fmt(record.loss)} "
            f"| {len(record.banks)} | {failed} | {rejected} | {_fmt(max(eps)) if eps else '–'} |"
        )
    if records:
        lines += ["", _round_markdown(records[-1])]
    return "\n".join(lines) + "\n"


def federate_step(*, config_yaml: str, run: str, metrics: MetricsOutput, roc: RocOutput, summary: FileOutput) -> str:
    """Every remaining round in this one task (:func:`fedlora.pipeline.coordinator.run_rounds`).

    Per round: the round's MLflow metrics (step = round, as in the unrolled graph), a line of the
    Markdown table (rewritten after each round) and KFP metrics ``rNNN_test_auc``, ``rNNN_train_loss``,
    ``rNNN_banks_accepted``, ``rNNN_banks_failed``; the last round's full metrics and ROC curve.

    Raises:
        FederationError: a round had fewer than ``federation.min_banks`` valid updates (the run stops).

    Returns:
        The last round's record as JSON (without the ROC points).
    """
    from fedlora.pipeline.coordinator import run_rounds

    _setup_logging()
    config = load_config_text(config_yaml, source="pipeline config")
    seen: list[RoundRecord] = []

    def on_round(record: RoundRecord, outcomes: list[BankOutcome]) -> None:
        seen.append(record)
        _write(summary, _rounds_markdown(seen))

    records = run_rounds(config, run=run, on_round=on_round)
    for record in records:
        values = round_metrics(record)
        prefix = f"r{record.round:03d}_"
        keep = ("test_auc", "train_loss", "banks_accepted", "banks_failed")
        _log_metrics(metrics, {prefix + k: values[k] for k in keep if k in values})
    last = records[-1] if records else None
    if last is not None:
        _log_metrics(metrics, round_metrics(last))
        _log_roc(roc, last)
    _write(summary, _rounds_markdown(records))
    return _record_json(last)


# --- finalize --------------------------------------------------------------------------------


def finalize_step(*, config_yaml: str, run: str, metrics: MetricsOutput, summary: FileOutput) -> str:
    """Write the final adapter, the summary and the report; register the adapter in MLflow.

    Returns:
        The URI of the final adapter.
    """
    _setup_logging()
    config = load_config_text(config_yaml, source="pipeline config")
    result = finalize(config, run=run)
    final = result["final"]
    values: dict[str, Any] = {f"test_{k}": v for k, v in (final.get("metrics") or {}).items() if k != "n"}
    values |= {f"epsilon_{bank}": eps for bank, eps in (final.get("epsilon") or {}).items()}
    values["rounds"] = len(result["rounds"])
    _log_metrics(metrics, values)
    registered = result.get("registered_model")
    lines = [
        f"## FedLoRA run `{run}`: final adapter",
        "",
        f"- adapter: `{final['adapter']}` (sha256 `{final['sha256'][:16]}…`)",
        f"- aggregation: {result['aggregation']}; privacy: {result['privacy_mode']}",
        f"- final pooled test AUC: **{_fmt(final.get('auc'))}** after {len(result['rounds'])} rounds",
        f"- MLflow model: {registered['name']} v{registered['version']}" if registered else "- MLflow: not registered",
        "",
        "| bank | ε | δ | σ | steps |",
        "|---|---|---|---|---|",
    ]
    for bank, info in result.get("privacy", {}).items():
        lines.append(
            f"| {bank} | {_fmt(info['epsilon'])} | {_fmt(info['delta'], 3)} | "
            f"{_fmt(info['noise_multiplier'])} | {info['steps']} |"
        )
    if result.get("stopped_early"):
        lines += ["", f"**{result['stopped_early']}**"]
    _write(summary, "\n".join(lines) + "\n")
    return str(final["adapter"])
