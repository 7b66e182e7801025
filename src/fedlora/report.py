"""A report a person can open: AUC by round, ε by round per bank, and the summary tables."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from fedlora.records import RoundRecord, RunSummary


def _number(value: float | None) -> float:
    """``None`` as NaN (a gap in the plot), as matplotlib draws it."""
    return math.nan if value is None else value


def _plot_auc(summary: RunSummary, path: Path) -> None:
    rounds = summary.rounds
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(
        [r.round for r in rounds], [_number(r.auc) for r in rounds], marker="o", label="global adapter, pooled test"
    )
    ax.set_xlabel("round")
    ax.set_ylabel("AUC")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Test AUC by round")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_epsilon(summary: RunSummary, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    banks = sorted({b for r in summary.rounds for b in r.epsilon})
    for bank in banks:
        xs = [r.round for r in summary.rounds if bank in r.epsilon]
        ys = [_number(r.epsilon[bank]) for r in summary.rounds if bank in r.epsilon]
        ax.plot(xs, ys, marker="o", label=bank)
    for info in summary.privacy.values():
        target = info.get("target_epsilon")
        if target is not None and math.isfinite(target):
            ax.axhline(target, linestyle="--", linewidth=0.8, color="gray")
    ax.set_xlabel("round")
    ax.set_ylabel("ε spent (upper bound)")
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Privacy spent by round (dashed: target)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(value: Any) -> str:
    """An HTML table cell's text: floats to 4 decimals (∞, – for NaN and None), anything else escaped.

    Not :func:`fedlora.pipeline.cards.fmt` (4 significant digits, Markdown, no escaping): the report's
    tables align decimals and hold text from the config.
    """
    if value is None:
        return "–"
    if isinstance(value, float):
        return "∞" if math.isinf(value) else ("–" if math.isnan(value) else f"{value:.4f}")
    return html.escape(str(value))


def _dp_auc(record: RoundRecord) -> Any:
    return (record.dp_evaluation or {}).get("auc")


def _plot_alone_vs_consortium(baselines: dict[str, Any], path: Path) -> None:
    per_bank = baselines["per_bank"]
    banks = list(per_bank)
    series = [
        ("alone, LR non-private", "alone_lr_auc"),
        ("alone, DP-LR at its ε", "alone_dp_lr_auc"),
        ("consortium (FedLoRA)", "consortium_auc"),
    ]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(series)
    for i, (label, key) in enumerate(series):
        values = [per_bank[b][key] if per_bank[b][key] is not None else math.nan for b in banks]
        ax.bar([j + i * width for j in range(len(banks))], values, width=width, label=label)
    ax.set_xticks([j + width for j in range(len(banks))], banks)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("AUC on the bank's own test rows")
    ax.set_title("Each bank: alone vs consortium")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _baselines_section(summary: RunSummary, directory: Path) -> str:
    baselines = summary.baselines
    if baselines is None:
        return ""
    _plot_alone_vs_consortium(baselines, directory / "alone_vs_consortium.png")
    rows = "".join(
        f"<tr><td>{html.escape(b)}</td><td>{_cell(v['alone_lr_auc'])}</td>"
        f"<td>{_cell(v['alone_dp_lr_auc']) if v['alone_dp_lr_auc'] is not None else '–'}</td>"
        f"<td>{_cell(v['epsilon']) if v['epsilon'] is not None else '∞'}</td><td>{_cell(v['consortium_auc'])}</td></tr>"
        for b, v in baselines["per_bank"].items()
    )
    pooled = "".join(f"<li>{html.escape(k)}: {_cell(v)}</li>" for k, v in baselines["pooled"].items())
    return f"""<h2>Alone vs consortium</h2><img src="alone_vs_consortium.png" alt="alone vs consortium">
<table><tr><th>bank</th><th>alone: LR</th><th>alone: DP-LR</th><th>ε</th><th>consortium model</th></tr>{rows}</table>
<p>AUC on each bank's own test rows, same splits. Pooled test AUC of the baselines:</p><ul>{pooled}</ul>"""


def write_report(summary: RunSummary, directory: Path) -> Path:
    """Write ``auc.png``, ``epsilon.png`` and ``index.html`` into ``directory``; return the HTML path."""
    directory.mkdir(parents=True, exist_ok=True)
    _plot_auc(summary, directory / "auc.png")
    _plot_epsilon(summary, directory / "epsilon.png")
    banks = sorted({b for r in summary.rounds for b in r.epsilon})
    head = "".join(f"<th>ε {html.escape(b)}</th>" for b in banks)
    rows = "".join(
        f"<tr><td>{r.round}</td><td>{_cell(_dp_auc(r))}</td><td>{_cell(r.auc)}</td><td>{_cell(r.ks)}</td>"
        + "".join(f"<td>{_cell(r.epsilon.get(b, float('nan')))}</td>" for b in banks)
        + f"<td>{html.escape(', '.join(r.banks))}</td></tr>"
        for r in summary.rounds
    )
    privacy_rows = "".join(
        f"<tr><td>{html.escape(b)}</td>" + "".join(f"<td>{_cell(v)}</td>" for v in info.values()) + "</tr>"
        for b, info in summary.privacy.items()
    )
    privacy_head = "".join(f"<th>{html.escape(k)}</th>" for k in next(iter(summary.privacy.values()), {}))
    final = summary.final
    title = html.escape(summary.run_dir)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>FedLoRA run {title}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}</style></head><body>
<h1>FedLoRA run</h1><p>{html.escape(summary.run_dir)} — aggregation: {html.escape(summary.aggregation)},
privacy: {html.escape(summary.privacy_mode)}</p>
<h2>Final adapter</h2><p>pooled test AUC {_cell(final.auc)}, KS {_cell(final.metrics["ks"])},
accuracy {_cell(final.metrics["accuracy"])}, Brier {_cell(final.metrics["brier"])}</p>
<img src="auc.png" alt="AUC by round"> <img src="epsilon.png" alt="epsilon by round">
<h2>Rounds</h2><table>
<tr><th>round</th><th>DP AUC of the previous global</th><th>AUC</th><th>KS</th>{head}<th>banks</th></tr>{rows}</table>
<h2>Privacy per bank</h2><table><tr><th>bank</th>{privacy_head}</tr>{privacy_rows}</table>
{_baselines_section(summary, directory)}
</body></html>"""
    out = directory / "index.html"
    out.write_text(page, encoding="utf-8")
    return out
