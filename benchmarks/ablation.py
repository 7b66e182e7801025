"""Paired ablation rows: each variant's DP-FedLoRA row minus the base run's, seed by seed.

    python benchmarks/ablation.py                     # the embedded default (2026-12-02, commit 2856326)
    python benchmarks/ablation.py --epsilon 8 \\
        --base 'benchmarks/results/german_columns_eps8_seed?.json' \\
        --variant 'text only=benchmarks/results/german_textonly_eps8_seed?.json'

Each ``--base`` / ``--variant`` is a glob of ``utility.py --json`` files, merged by seed. For every
variant it prints its pooled test AUC per seed, its paired difference from the base (mean ± 95%
Student-t half-width over the seeds both hold, :func:`fedlora.baselines.mean_interval`), and each bank
in the variant's consortium against the same bank alone with DP-LR at the same ε (from the base run's
baselines: the same seeds give the same splits). Without options it reads the default's ablation,
``benchmarks/results/taiwan4000_default_{eps83,textonly_eps8,headonly_eps8}_seed?.json`` (commands in
``benchmarks/README.md``, "The embedded default").
"""

from __future__ import annotations

import argparse
import glob
import re
import sys
from pathlib import Path

import numpy as np

from fedlora.baselines import mean_interval

sys.path.insert(0, str(Path(__file__).resolve().parent))
from utility import _paired, load_results

DEFAULT = "benchmarks/results/taiwan4000_default"
DEFAULT_VARIANTS = [f"text only={DEFAULT}_textonly_eps8_seed?.json", f"head only={DEFAULT}_headonly_eps8_seed?.json"]


def interval(values: list[float]) -> str:
    """``mean ± half-width of the 95% Student-t interval (n)`` (:func:`fedlora.baselines.mean_interval`)."""
    mean, half = mean_interval(values)
    return f"{mean:+.4f} ± {half:.4f} (n={len(values)})"


def _files(pattern: str) -> list[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        raise SystemExit(f"no file matches {pattern!r}")
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=f"{DEFAULT}_eps83_seed?.json", help="Glob of the base run's --json files.")
    parser.add_argument(
        "--variant", action="append", metavar="NAME=GLOB", help="A variant's --json files (repeatable)."
    )
    parser.add_argument("--epsilon", default="8", help="The ε of the rows compared (as utility.py names them).")
    args = parser.parse_args()
    row = f"DP-FedLoRA ε={args.epsilon}"
    base, _ = load_results(_files(args.base))
    banks = sorted(
        {m[1] for name in base if (m := re.fullmatch(rf"(bank-\w+) alone, DP-LR ε={args.epsilon} .*", name))}
    )
    for spec in args.variant or DEFAULT_VARIANTS:
        name, sep, pattern = spec.partition("=")
        if not sep:
            raise SystemExit(f"--variant {spec!r}: expected NAME=GLOB")
        variant, seconds = load_results(_files(pattern))
        per_seed = {seed: round(auc, 4) for seed, auc in variant[row].items()}
        print(f"{name}: mean {np.mean(list(per_seed.values())):.4f}, per seed {per_seed}")
        print(f"{name} minus the base: {interval(_paired(variant[row], base[row]))}")
        for bank in banks:
            mine = variant[f"{bank} in consortium, {row} (own test)"]
            alone = base[f"{bank} alone, DP-LR ε={args.epsilon} (own test)"]
            print(f"  {bank} minus itself alone with DP-LR: {interval(_paired(mine, alone))}")
        print(f"  wall s/run: { {seed: round(s) for seed, s in seconds[row].items()} }")


if __name__ == "__main__":
    main()
