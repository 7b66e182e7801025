"""``benchmarks/utility.py`` stores rows by seed, so runs on other seeds or other rows merge honestly."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from utility import POOLED_LR, _paired, _pairs, _write_json, load_results


def test_files_from_other_seeds_and_rows_merge_by_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = tmp_path / "old.json"  # written before seeds were stored: seeds 0..N-1
    old.write_text(json.dumps({"overrides": [], "aucs": {"DP": [0.70, 0.72]}, "seconds": {"DP": [10.0, 11.0]}}))
    later = tmp_path / "later.json"  # seeds 2-3 of the same row, and a reference row on seeds 1-3
    _write_json(
        str(later),
        "benchmarks/before-s8.yaml",
        ["model.schema_features=true"],
        {"DP": {2: 0.74, 3: 0.75}, "ref": {1: 0.71, 2: 0.73, 3: 0.70}},
        {"DP": {2: 12.0, 3: 9.0}},
    )
    aucs, seconds = load_results([str(old), str(later)])
    # the --config file is stored and shown beside the overrides, so a stored run says how to rerun it
    assert json.loads(later.read_text())["config"] == "benchmarks/before-s8.yaml"
    assert "config benchmarks/before-s8.yaml, overrides ['model.schema_features=true']" in capsys.readouterr().out
    assert aucs["DP"] == {0: 0.70, 1: 0.72, 2: 0.74, 3: 0.75}
    assert seconds["DP"] == {0: 10.0, 1: 11.0, 2: 12.0, 3: 9.0}
    assert _paired(aucs["DP"], aucs["ref"]) == pytest.approx([0.01, 0.01, 0.05])  # only seeds both rows hold


def test_two_files_disagreeing_on_a_seed_are_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    _write_json(str(a), None, [], {"DP": {0: 0.70}}, {})
    _write_json(str(b), None, [], {"DP": {0: 0.71}}, {})
    with pytest.raises(SystemExit, match=r"b\.json: row 'DP', seed 0 differs"):
        load_results([str(a), str(b)])


def test_the_same_fit_differing_in_the_seventh_decimal_merges(tmp_path: Path) -> None:
    # the pooled LR of the full Taiwan split, fitted in two runs (ε=3 and ε=8 files of seed 3)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    _write_json(str(a), None, [], {"LR": {3: 0.7797191}}, {})
    _write_json(str(b), None, [], {"LR": {3: 0.7797186}}, {})
    aucs, _ = load_results([str(a), str(b)])
    assert aucs["LR"][3] == pytest.approx(0.7797186, abs=1e-6)
    c = tmp_path / "c.json"  # a different split: refused
    _write_json(str(c), None, [], {"LR": {3: 0.7796}}, {})
    with pytest.raises(SystemExit, match=r"c\.json: row 'LR', seed 3 differs"):
        load_results([str(a), str(c)])


def test_a_missing_auc_in_two_files_is_not_a_disagreement(tmp_path: Path) -> None:
    # a bank whose test rows hold one class has no AUC (NaN) in every file that reports it
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    _write_json(str(a), None, [], {"bank-b alone": {4: float("nan")}, "DP": {4: 0.70}}, {})
    _write_json(str(b), None, [], {"bank-b alone": {4: float("nan")}, "DP 3": {4: 0.69}}, {})
    aucs, _ = load_results([str(a), str(b)])
    assert math.isnan(aucs["bank-b alone"][4])
    assert aucs["DP"] == {4: 0.70} and aucs["DP 3"] == {4: 0.69}


def test_the_federation_is_paired_against_pooled_lr_dp_lr_and_non_private() -> None:
    aucs = {
        POOLED_LR: {0: 0.80},
        "DP-LR ε=8, each bank then averaged": {0: 0.74},
        "FedLoRA, non-private": {0: 0.78},
        "DP-FedLoRA ε=8": {0: 0.77},
        "DP-FedLoRA ε=8, head only": {0: 0.76},
    }
    assert sorted(_pairs(aucs)) == sorted(
        [
            ("DP-FedLoRA ε=8", "FedLoRA, non-private"),
            ("DP-FedLoRA ε=8", "DP-LR ε=8, each bank then averaged"),
            ("DP-FedLoRA ε=8", POOLED_LR),
            ("FedLoRA, non-private", POOLED_LR),
            ("DP-FedLoRA ε=8, head only", "DP-FedLoRA ε=8"),
        ]
    )
