"""The run report: what it shows from which source, each bank's guarantee, and that it fits the page in Chromium.

The layout check renders the page in headless Chromium (Debian's ``chromium``, installed by
``scripts/setup.sh dev``) at a laptop width (1280 px) and a narrow one (800 px), with ten banks
with long names, and fails when the page or a table is wider than its container. Without
Chromium the check skips, except in CI (``CI`` set), where it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedlora.records import BankOutcome
from fedlora.report import latest_released_histograms, write_report
from fedlora.report.guarantee import format_delta, guarantee_sentences
from fedlora.report.views import binary_view_from_histograms, binary_view_from_scores
from fedlora.store.adapters import put_json
from fedlora.store.base import update_prefix
from fedlora.store.local import LocalStore
from report_fixtures import LONG_NAMES, released_for, scores_for, summary_for, text_scores_for

# --- what the page shows, and from where ---------------------------------------------------


def test_simulation_report_shows_the_pooled_view_labelled_as_such(tmp_path: Path) -> None:
    summary = summary_for(["bank-a", "bank-b", "bank-c"])
    page = write_report(summary, tmp_path, scores=scores_for()).read_text(encoding="utf-8")
    for name in ("roc.png", "calibration.png", "scores.png", "quality_by_round.png", "epsilon.png"):
        assert f'src="{name}"' in page and (tmp_path / name).stat().st_size > 1000
    assert "pooled view: this process holds every bank" in page and "from DP histograms" not in page
    assert "Alone vs consortium" in page and (tmp_path / "alone_vs_consortium.png").exists()
    assert "bank-c: (ε, δ) = (7.99, 1.1e-4) per customer record over this run, of the 8.00" in page


def test_consortium_report_draws_only_the_banks_dp_releases(tmp_path: Path) -> None:
    banks = ["bank-a", "bank-b"]
    summary = summary_for(banks, central=False, baselines=False)
    released = released_for(scores_for(), banks)
    page = write_report(summary, tmp_path, released=released).read_text(encoding="utf-8")
    assert "released under differential privacy" in page and "global adapter of round 5" in page
    assert "pooled view" not in page and (tmp_path / "roc.png").exists()
    assert "no central evaluation" in page and "its lifetime ε is in its own ledger" in page


def test_report_without_any_view_of_scores_says_so(tmp_path: Path) -> None:
    summary = summary_for(["bank-a", "bank-b"], central=False, baselines=False)
    page = write_report(summary, tmp_path).read_text(encoding="utf-8")
    assert "No view of the final model" in page and not (tmp_path / "roc.png").exists()


def test_text_task_report_has_accuracy_and_a_confusion_matrix_and_no_roc(tmp_path: Path) -> None:
    summary = summary_for(["bank-a", "bank-b", "bank-c"], text=True)
    page = write_report(summary, tmp_path, scores=text_scores_for()).read_text(encoding="utf-8")
    assert (tmp_path / "confusion.png").stat().st_size > 1000 and not (tmp_path / "roc.png").exists()
    assert "weighted F1" in page and "Test accuracy by round" not in page  # the title is in the PNG
    assert "alone: TF-IDF + LR" in page  # the text baselines' shape
    # In a consortium (no pooled scores, no confusion release) it still renders.
    write_report(summary_for(["bank-a"], central=False, text=True), tmp_path / "dp")


def test_guarantee_sentences_quote_the_accountants_numbers_only() -> None:
    summary = summary_for(["bank-a", "bank-b"])
    sentences = guarantee_sentences(summary, one_process=False)
    assert sentences["bank-a"] == (
        "bank-a: (ε, δ) = (7.99, 1.1e-4) per customer record over this run, of the 8.00 this run may spend; "
        "its lifetime ε is in its own ledger, which only the bank reads."
    )
    assert [format_delta(d) for d in (1e-4, 3.57e-5, 0.01, 1e-5)] == ["1e-4", "3.6e-5", "0.01", "1e-5"]


def test_roc_and_reliability_from_histograms_track_the_exact_ones() -> None:
    """Without noise, the views from the public bins agree with the exact ones (AUC up to the binning)."""
    scores = scores_for(4000)
    exact = binary_view_from_scores(scores, source="")
    counts = np.stack(
        [
            np.histogram(np.log(s / (1 - s)), bins=np.linspace(-6, 6, 41))[0]
            for s in (scores.scores[scores.labels == c] for c in (0, 1))
        ]
    ).astype(float)
    binned = binary_view_from_histograms(counts, noise_std=0.0, adapter_round=1, source="")
    assert binned is not None and abs(binned.auc - exact.auc) < 0.01
    assert binned.fpr[0] == 0.0 and binned.tpr[-1] == pytest.approx(1.0)
    assert sum(binned.reliability.rows) == pytest.approx(4000)
    # With noise, each reliability point stands on at least five times the noise on it.
    noisy = binary_view_from_histograms(counts, noise_std=20.0, adapter_round=1, source="")
    assert noisy is not None and all(r >= 5 * 20.0 * np.sqrt(2) for r in noisy.reliability.rows)


def test_released_histograms_are_summed_from_the_banks_outcomes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    banks = ["bank-a", "bank-b"]
    for bank in banks:
        counts = np.ones((2, 40))
        outcome = BankOutcome(
            bank=bank, round=2, status="ok", evaluation={"counts": counts.tolist(), "noise_multiplier": 3.0}
        )
        put_json(store, f"{update_prefix(2, bank)}/outcome.json", outcome.to_json())
    summary = summary_for(banks, rounds=2)
    released = latest_released_histograms(store, summary.rounds)
    assert released is not None and released.adapter_round == 1 and released.banks == banks
    assert released.counts.sum() == 160 and released.noise_std == pytest.approx(np.sqrt(18))


# --- the page fits the window in Chromium ---------------------------------------------------

CHECK = """<script>
window.addEventListener("load", () => {
  const root = document.documentElement;
  const tables = [...document.querySelectorAll("table")].map(t => ({
    table: t.scrollWidth, container: t.parentElement.clientWidth}));
  const images = [...document.querySelectorAll("img")].map(i => ({
    right: Math.ceil(i.getBoundingClientRect().right), loaded: i.complete && i.naturalWidth > 0}));
  const out = document.createElement("pre");
  out.id = "overflow-check";
  out.textContent = JSON.stringify({scroll: root.scrollWidth, client: root.clientWidth, tables, images});
  document.body.appendChild(out);
});
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    reason = "Chromium is not installed (apt-get install chromium; scripts/setup.sh dev installs it)"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _layout(chromium: str, report: Path, width: int) -> dict[str, Any]:
    """Load a copy of the report with :data:`CHECK` injected at ``width`` px; return what the script measured."""
    page = report.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>")
    probe = report.with_name("layout-check.html")
    probe.write_text(page, encoding="utf-8")
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={width},900",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probe.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    found = re.search(r'<pre id="overflow-check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no layout measurement from Chromium (exit {done.returncode}): {done.stderr[-2000:]}"
    measured: dict[str, Any] = json.loads(found.group(1).replace("&quot;", '"'))
    return measured


@pytest.mark.parametrize(
    ("kind", "widths"),
    [("simulation", (1280, 800)), ("consortium", (800,)), ("text", (800,))],
)
def test_report_fits_the_page_in_chromium(tmp_path: Path, kind: str, widths: tuple[int, ...]) -> None:
    chromium = _chromium()
    if kind == "simulation":
        report = write_report(summary_for(LONG_NAMES), tmp_path, scores=scores_for())
    elif kind == "consortium":
        summary = summary_for(LONG_NAMES, central=False, baselines=False)
        report = write_report(summary, tmp_path, released=released_for(scores_for(), LONG_NAMES))
    else:
        report = write_report(summary_for(LONG_NAMES, text=True), tmp_path, scores=text_scores_for())
    for width in widths:
        layout = _layout(chromium, report, width)
        assert layout["client"] > 0.9 * width - 20, layout  # the window is as wide as asked
        assert layout["scroll"] <= layout["client"], f"{kind} at {width}px: the page scrolls sideways: {layout}"
        wide = [t for t in layout["tables"] if t["table"] > t["container"]]
        assert not wide, f"{kind} at {width}px: tables wider than their container: {wide}"
        assert layout["tables"] and all(i["loaded"] and i["right"] <= layout["client"] for i in layout["images"]), (
            layout
        )
