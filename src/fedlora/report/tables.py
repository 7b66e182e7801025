"""The report's HTML tables: rounds, privacy per bank, alone vs consortium (escaped, narrow enough for a page).

Numbers sit in ``num`` cells (right-aligned, not broken); names and messages in ``text`` cells,
which wrap anywhere, so a table fits a narrow window whatever the banks are called.
"""

from __future__ import annotations

import html
import math
from typing import Any

from fedlora.records import RoundRecord, RunSummary
from fedlora.report.baselines import BaselineView
from fedlora.report.guarantee import format_delta

__all__ = ["baselines_table", "cell", "privacy_table", "rounds_table", "spans"]


def cell(value: Any, digits: int = 4) -> str:
    """A number's text: ``digits`` decimals, ∞, – for NaN and None; anything else escaped."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞"
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


def _num(value: Any, digits: int = 4) -> str:
    return f'<td class="num">{cell(value, digits)}</td>'


def _text(value: str) -> str:
    return f'<td class="text">{html.escape(value)}</td>'


def _table(head: list[str], rows: list[str], *, caption: str = "") -> str:
    header = "".join(f'<th class="{"text" if i == 0 else "num"}">{html.escape(h)}</th>' for i, h in enumerate(head))
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    body = "".join(rows)
    return f'<div class="table-wrap"><table>{cap}<thead><tr>{header}</tr></thead><tbody>{body}</tbody></table></div>'


def spans(rounds: list[int]) -> str:
    """``[1, 2, 3, 5]`` as ``1–3, 5``."""
    out: list[str] = []
    for r in sorted(rounds):
        if out and out[-1].split("–")[-1] == str(r - 1):
            out[-1] = f"{out[-1].split('–')[0]}–{r}"
        else:
            out.append(str(r))
    return ", ".join(out)


def _left_out(record: RoundRecord) -> str:
    parts = [f"{b} (failed)" for b in record.failed]
    parts += [f"{b} (rejected)" for b in record.rejected]
    parts += [f"{b} (refused)" for b in record.refused]
    parts += [f"{b} (budget spent)" for b in record.budget_exhausted]
    if record.stopped_early:
        parts.append("stopped early")
    return ", ".join(parts) or "–"


def rounds_table(summary: RunSummary, *, text_task: bool) -> str:
    """One row per committed round: the central metrics, the DP-released metric, who was averaged and who not.

    The central columns appear where this process evaluated centrally, the DP column where a bank released.
    """
    total = len(summary.final.epsilon) or max((len(r.epsilon) for r in summary.rounds), default=0)
    central = any(r.auc is not None or r.metrics for r in summary.rounds)
    released = any(r.dp_evaluation for r in summary.rounds)
    if text_task:
        columns = [("accuracy", lambda r: r.metrics.get("accuracy")), ("weighted F1", lambda r: r.metrics.get("f1"))]
        dp_column = ("DP-released accuracy of the previous round's adapter", "accuracy")
    else:
        columns = [("AUC (pooled test)", lambda r: r.auc), ("KS", lambda r: r.ks)]
        dp_column = ("DP-released AUC of the previous round's adapter", "auc")
    shown = columns if central else []
    rows = []
    for r in summary.rounds:
        cells = "".join(_num(value(r)) for _, value in shown)
        if released:
            cells += _num((r.dp_evaluation or {}).get(dp_column[1]))
        rows.append(
            f'<tr><td class="text">{r.round}</td>{cells}'
            f'<td class="num">{len(r.banks)} of {total}</td>{_text(_left_out(r))}</tr>'
        )
    head = ["round", *(name for name, _ in shown), *([dp_column[0]] if released else [])]
    return _table([*head, "banks averaged", "left out"], rows)


def privacy_table(summary: RunSummary) -> str:
    """Each bank's published plan and spent ε (from its privacy report; its own ledger is authoritative)."""
    if not summary.privacy:
        return '<p class="note">No bank published a privacy report: no bank trained with differential privacy.</p>'
    rows = []
    for bank, info in summary.privacy.items():
        steps = f"{info.get('steps', 0)} / {info.get('planned_steps', '–')}"
        rows.append(
            f"<tr>{_text(bank)}{_num(info.get('epsilon'), 2)}{_num(info.get('target_epsilon'), 2)}"
            f'<td class="num">{format_delta(float(info["delta"]))}</td>'
            f"{_num(info.get('noise_multiplier'), 3)}{_num(info.get('sample_rate'), 4)}"
            f'<td class="num">{html.escape(steps)}</td>{_num(info.get("evaluation_noise_multiplier"), 2)}'
            f"{_text(str(info.get('accountant', '–')))}{_text(spans(info.get('charged_rounds', [])) or '–')}</tr>"
        )
    head = [
        "bank",
        "ε spent (run)",
        "target ε",
        "δ",
        "σ DP-SGD",
        "sample rate",
        "steps done / planned",
        "σ evaluation",
        "accountant",
        "rounds charged",
    ]
    return _table(head, rows)


def baselines_table(baselines: BaselineView) -> str:
    """Each bank's metric alone and with the consortium's model, on its own test rows; then the pooled baselines."""
    rows = [
        f"<tr>{_text(bank)}{''.join(_num(v) for v in values)}"
        f"{_num(baselines.epsilon.get(bank) if baselines.epsilon.get(bank) is not None else math.inf, 2)}</tr>"
        for bank, values in baselines.per_bank.items()
    ]
    pooled = [f"<tr>{_text(label)}{_num(value)}</tr>" for label, value in baselines.pooled.items()]
    head = ["bank", *baselines.columns, "ε of the DP baseline"]
    return _table(head, rows, caption=f"{baselines.metric} on each bank's own test rows") + _table(
        ["baseline on every bank's test rows pooled", baselines.metric], pooled
    )
