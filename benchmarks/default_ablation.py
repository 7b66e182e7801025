"""Paired ablation rows of the embedded default (eighth session): each variant minus the default, by seed.

    python benchmarks/default_ablation.py

Reads ``benchmarks/results/taiwan4000_default_{eps83,textonly_eps8,headonly_eps8}_seed?.json`` (commands in
``benchmarks/README.md``, "The embedded default") and prints, per variant, its pooled test AUC per seed, its
paired difference from the default (mean ± 95% Student-t half-width), and each bank against itself alone
with DP-LR at ε=8.
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

import numpy as np

from fedlora.baselines import mean_interval

sys.path.insert(0, str(Path(__file__).resolve().parent))
from utility import _paired, load_results

RESULTS = "benchmarks/results/taiwan4000_default"
ROW = "DP-FedLoRA ε=8"


def interval(values: list[float]) -> str:
    """``mean ± half-width of the 95% Student-t interval (n)`` (:func:`fedlora.baselines.mean_interval`)."""
    mean, half = mean_interval(values)
    return f"{mean:+.4f} ± {half:.4f} (n={len(values)})"


def main() -> None:
    base, _ = load_results(sorted(glob.glob(f"{RESULTS}_eps83_seed?.json")))
    for name in ("textonly", "headonly"):
        files = sorted(glob.glob(f"{RESULTS}_{name}_eps8_seed?.json"))
        if not files:
            continue
        variant, seconds = load_results(files)
        per_seed = {seed: round(auc, 4) for seed, auc in variant[ROW].items()}
        print(f"{name}: mean {np.mean(list(per_seed.values())):.4f}, per seed {per_seed}")
        print(f"{name} minus the default: {interval(_paired(variant[ROW], base[ROW]))}")
        for bank in ("bank-a", "bank-b", "bank-c"):
            mine = variant[f"{bank} in consortium, {ROW} (own test)"]
            alone = base[f"{bank} alone, DP-LR ε=8 (own test)"]
            print(f"  {bank} minus itself alone with DP-LR: {interval(_paired(mine, alone))}")
        print(f"  wall s/run: { {seed: round(s) for seed, s in seconds[ROW].items()} }")


if __name__ == "__main__":
    main()
