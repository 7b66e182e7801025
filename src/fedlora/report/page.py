"""``report/index.html``: the page a bank's risk team opens, and its figures beside it.

Order: each bank's guarantee in a sentence; the final model (ROC, calibration, scores by class,
or a confusion matrix for text tasks); quality by round; privacy spent; alone vs consortium
when ``--baselines`` computed it. Every view says where its numbers come from: the
simulation's pooled test rows, or the banks' DP releases, never both mixed.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from fedlora.data.text_tasks import is_text_task
from fedlora.records import RunSummary
from fedlora.report import plots
from fedlora.report.baselines import baseline_view
from fedlora.report.guarantee import guarantee_sentences
from fedlora.report.released import ReleasedHistograms
from fedlora.report.tables import baselines_table, cell, privacy_table, rounds_table
from fedlora.report.views import (
    CREDIT_CLASSES,
    BinaryView,
    ClassView,
    PooledScores,
    binary_view_from_histograms,
    binary_view_from_scores,
    class_view_from_counts,
    class_view_from_scores,
)

__all__ = ["STYLE", "write_report"]

STYLE = """
:root{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;font-size:15px;line-height:1.45;color:#222}
body{margin:0 auto;padding:1.2em 1.5em;max-width:72em;box-sizing:border-box}
h1{font-size:1.6em;margin:.2em 0}
h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
p,li{overflow-wrap:anywhere}
.meta{color:#555;font-size:.9em}
.note{background:#f6f6f2;border-left:3px solid #bbb;padding:.5em .8em;font-size:.9em}
.guarantees li{margin:.35em 0}
.figures{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
figure{margin:0;flex:1 1 20em;max-width:100%;min-width:0}
figure.wide{flex-basis:34em}
img{display:block;max-width:100%;height:auto}
figcaption{font-size:.85em;color:#555}
.table-wrap{max-width:100%;overflow-x:auto;margin:.6em 0}
table{border-collapse:collapse;width:100%;font-size:.85em}
caption{text-align:left;font-size:.9em;color:#555}
th,td{border:1px solid #ccc;padding:.3em .45em;vertical-align:top}
th{background:#f3f3f3;font-weight:600;overflow-wrap:break-word}
.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
th.num{white-space:normal}
.text{text-align:left;overflow-wrap:anywhere;word-break:break-word}
th.text{overflow-wrap:normal;word-break:normal}
"""


def _figure(name: str, alt: str, caption: str = "", *, wide: bool = False) -> str:
    cls = ' class="wide"' if wide else ""
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure{cls}><img src="{name}" alt="{html.escape(alt)}">{cap}</figure>'


def _scores_source(scores: PooledScores) -> str:
    return (
        f"The simulation's pooled view: this process holds every bank's test rows ({len(scores.labels):,} rows) "
        f"and scored them with the final adapter (round {scores.adapter_round}). In a real consortium no one sees "
        "these rows together; the coordinator sees only what the banks release under differential privacy."
    )


def _released_source(released: ReleasedHistograms, summary: RunSummary, *, what: str) -> str:
    noise = (
        f" (Gaussian noise of standard deviation {released.noise_std:.1f} on each summed count)"
        if math.isfinite(released.noise_std)
        else ""
    )

    return (
        f"What the banks released under differential privacy: the sum of the noised {what} of "
        f"{', '.join(released.banks)}{noise}, for the global adapter of round {released.adapter_round}. A bank scores "
        "the incoming adapter when the next round starts, so the final adapter has no release of its own. Counts are "
        "noisy and bins are coarse: the curves are approximate."
    )


def _class_view(
    summary: RunSummary, scores: PooledScores | None, released: ReleasedHistograms | None, names: tuple[str, ...]
) -> ClassView | None:
    if scores is not None:
        return class_view_from_scores(scores, source=_scores_source(scores))
    if released is not None and released.kind == "confusion":
        source = _released_source(released, summary, what="confusion counts")
        return class_view_from_counts(
            released.counts, class_names=names, adapter_round=released.adapter_round, source=source
        )
    return None


def _binary_view(
    summary: RunSummary, scores: PooledScores | None, released: ReleasedHistograms | None
) -> BinaryView | None:
    if scores is not None:
        binary = scores.binary and len(set(scores.labels.tolist())) == 2
        return binary_view_from_scores(scores, source=_scores_source(scores)) if binary else None
    if released is not None and released.kind == "logit_bins":
        source = _released_source(released, summary, what="per-class score histograms")
        noise = released.noise_std if math.isfinite(released.noise_std) else 0.0
        return binary_view_from_histograms(
            released.counts, noise_std=noise, adapter_round=released.adapter_round, source=source
        )
    return None


def _final_model(
    summary: RunSummary,
    directory: Path,
    scores: PooledScores | None,
    released: ReleasedHistograms | None,
    class_names: tuple[str, ...],
) -> str:
    """The final model's section: from pooled scores (simulation), else from the DP releases, else a note."""
    if is_text_task(summary.dataset) or (scores is not None and not scores.binary):
        view = _class_view(summary, scores, released, scores.class_names if scores is not None else class_names)
        if view is None:
            return _no_view("accuracy by round below")
        plots.plot_confusion(view, directory / "confusion.png")
        figure = _figure("confusion.png", "confusion matrix", "rows: true class; columns: predicted class")
        return f'<p class="note">{html.escape(view.source)}</p><div class="figures">{figure}</div>'
    binary = _binary_view(summary, scores, released)
    if binary is None:
        return _no_view("the metrics by round below")
    names = scores.class_names if scores is not None else CREDIT_CLASSES
    plots.plot_roc(binary, directory / "roc.png")
    plots.plot_reliability(binary, directory / "calibration.png")
    plots.plot_distributions(binary, directory / "scores.png", names)
    rows = ", ".join(f"{name} {n:,.0f}" for name, n in zip(names, binary.rows, strict=False))
    return f"""<p class="note">{html.escape(binary.source)}</p>
<div class="figures">{_figure("roc.png", "ROC curve", f"AUC {binary.auc:.3f}")}
{_figure("calibration.png", "calibration plot", "on the diagonal, predicted P(default) is the observed rate")}
{_figure("scores.png", "score distribution by class", f"rows: {rows}")}</div>"""


def _no_view(where: str) -> str:
    return (
        "<p class=\"note\">No view of the final model's scores here: this process holds no bank's rows and no bank "
        f"released its scores under DP (privacy.release_metrics off). See {where}; each bank can evaluate the "
        "final adapter on its own rows.</p>"
    )


def _headline(summary: RunSummary, *, text_task: bool) -> str:
    m = summary.final.metrics
    if text_task:
        return f"accuracy {cell(m.get('accuracy'))}, weighted F1 {cell(m.get('f1'))} on the pooled test rows"
    if summary.final.auc is None:
        return "no central evaluation (the coordinator holds no bank's rows)"
    return (
        f"pooled test AUC {cell(summary.final.auc)}, KS {cell(m.get('ks'))}, Brier {cell(m.get('brier'))}, "
        f"accuracy at 0.5 {cell(m.get('accuracy'))}"
    )


def write_report(
    summary: RunSummary,
    directory: Path,
    *,
    scores: PooledScores | None = None,
    released: ReleasedHistograms | None = None,
    class_names: tuple[str, ...] = (),
) -> Path:
    """Write ``index.html`` and its PNG figures into ``directory``; return the HTML path.

    Args:
        summary: The run's summary (rounds, privacy reports, baselines).
        directory: Where the report goes (created).
        scores: Every test row's final score; only ``fedlora simulate`` has them, and the page
            then says it is the simulation's pooled view. Never pass them where the report is
            published to a store or tracker a bank's rows must not reach.
        released: The banks' pooled DP histograms (:func:`~fedlora.report.released.latest_released_histograms`),
            drawn when there are no pooled scores.
        class_names: A text task's label words, to name the rows and columns of a DP-released
            confusion matrix (pooled scores carry their own).

    """
    directory.mkdir(parents=True, exist_ok=True)
    text_task = is_text_task(summary.dataset)
    one_process = bool(summary.rounds) and all(r.auc is not None for r in summary.rounds)
    baselines_view = baseline_view(summary.baselines) if summary.baselines is not None else None
    plots.plot_quality_by_round(
        summary, directory / "quality_by_round.png", text_task=text_task, baselines=baselines_view
    )
    plots.plot_epsilon(summary, directory / "epsilon.png")
    guarantees = "".join(
        f"<li>{html.escape(s)}</li>" for s in guarantee_sentences(summary, one_process=one_process).values()
    )
    baselines = ""
    if baselines_view is not None and baselines_view.per_bank:
        plots.plot_alone_vs_consortium(baselines_view, directory / "alone_vs_consortium.png")
        baselines = f"""<h2>Alone vs consortium</h2>
<div class="figures">{_figure("alone_vs_consortium.png", "alone vs consortium", wide=True)}</div>
<p>{baselines_view.metric} on each bank's own test rows, same splits; a DP baseline runs at the bank's ε.</p>
{baselines_table(baselines_view)}"""
    quality_note = (
        "Fixed axis from 0 to 1."
        if text_task
        else "Fixed axis from AUC 0.5 (chance) to 1, so round-to-round noise stays small."
    )
    title = html.escape(summary.run)
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>FedLoRA run {title}</title>
<style>{STYLE}</style></head><body>
<h1>FedLoRA run {title}</h1>
<p class="meta">{html.escape(summary.dataset)} · {html.escape(summary.model)} · {len(summary.final.epsilon)} banks ·
{len(summary.rounds)} rounds · aggregation: {html.escape(summary.aggregation)} ·
privacy: {html.escape(summary.privacy_mode)}</p>
<h2>What each bank is promised</h2><ul class="guarantees">{guarantees}</ul>
<p class="meta">ε is an upper bound from each bank's accountant, for any one customer's record being in or out of its
training and evaluation rows; smaller is more private.</p>
<h2>Final model</h2><p>{html.escape(_headline(summary, text_task=text_task))}.</p>
{_final_model(summary, directory, scores, released, class_names)}
<h2>Quality by round</h2>
<div class="figures">{_figure("quality_by_round.png", "quality by round", quality_note, wide=True)}</div>
{rounds_table(summary, text_task=text_task)}
<h2>Privacy spent</h2>
<div class="figures">{_figure("epsilon.png", "epsilon by round", wide=True)}</div>
{privacy_table(summary)}
<p class="meta">From each bank's published privacy report; the bank's own ledger is authoritative.</p>
{baselines}
<p class="meta">Run directory: {html.escape(summary.run_dir)}</p>
</body></html>"""
    out = directory / "index.html"
    out.write_text(page, encoding="utf-8")
    return out
