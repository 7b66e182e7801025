"""Per (seed, bank) comparison from a ``utility.py --json`` file: the consortium's model against each bank alone.

``utility.py`` prints per-bank rows by bank *name*; under a Dirichlet or quantity partition the bank
called ``bank-a`` is large in one seed and small in the next. This script rebuilds every seed's
partition from the overrides stored in the JSON (the data layer only, no training) and pairs, for each
(seed, bank) whose test rows hold both classes (at least ``--min-per-class`` rows of each), the
consortium's DP model on the bank's own test rows
with the bank alone (DP-LR at the same ε, and non-private LR), overall, for the large banks and for
the small ones (holding at most ``--small`` of the training rows). Pairs within a seed share a
partition, so the intervals are optimistic.

    python benchmarks/per_bank.py taiwan_dirichlet.json --epsilon 8
    python benchmarks/per_bank.py seeds_0-2.json seeds_3-4.json --epsilon 8     # files merged by seed
    python benchmarks/per_bank.py run.json --min-per-class 10    # only test sets with >= 10 defaults and payers
    python benchmarks/per_bank.py old.json --config benchmarks/before-s8.yaml # before commit 2856326

An AUC on a test set with one or two defaults is noise (it moves by 0.5 with a single row), so
``--min-per-class`` keeps only the banks whose own test rows can say anything; the pairs it leaves out
are counted.
"""

from __future__ import annotations

import argparse
import json
import math

from utility import load_results

from fedlora.baselines import mean_interval
from fedlora.config import load_config
from fedlora.data.banks import build_bank_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json_paths", nargs="+", metavar="JSON", help="utility.py --json files (merged by seed).")
    parser.add_argument("--epsilon", default="8")
    parser.add_argument("--small", type=float, default=0.2, help="Share of training rows that makes a bank small.")
    parser.add_argument(
        "--min-per-class", type=int, default=1, help="Skip banks whose test rows hold fewer defaults or payers."
    )
    parser.add_argument(
        "--config",
        help="Config file under the stored overrides when the results store none: benchmarks/before-s8.yaml for "
        "results written before commit 2856326 (2026-12-02) changed the defaults (see benchmarks/README.md).",
    )
    args = parser.parse_args()
    aucs, _ = load_results(args.json_paths)
    with open(args.json_paths[0], encoding="utf-8") as f:
        stored = json.load(f)  # the partition is the data layer's: one per file set
    overrides: list[str] = stored["overrides"]
    config_path: str | None = stored.get("config") or args.config
    banks = sorted({key.split(" ")[0] for key in aucs if key.startswith("bank-")})
    spec = "federation.banks=[" + ", ".join(f"{{name: {b}}}" for b in banks) + "]"
    consortium = f"DP-FedLoRA ε={args.epsilon}"
    diffs: dict[str, list[float]] = {
        "alone DP-LR": [],
        "alone DP-LR, large": [],
        "alone DP-LR, small": [],
        "alone LR, small": [],
    }
    skipped = 0
    for seed in sorted(aucs[consortium]):
        data = build_bank_data(load_config(config_path, [spec, *overrides, f"seed={seed}"]))
        total = sum(len(d.train) for d in data.values())
        for bank in banks:
            share = len(data[bank].train) / total
            ours = aucs[f"{bank} in consortium, {consortium} (own test)"][seed]
            dp_lr = aucs[f"{bank} alone, DP-LR ε={args.epsilon} (own test)"][seed]
            lr = aucs[f"{bank} alone, LR non-private (own test)"][seed]
            print(
                f"seed {seed} {bank}: share {share:.2f}, test rows {len(data[bank].test)} "
                f"({int(data[bank].test.labels.sum())} defaults), consortium {ours:.4f}, "
                f"alone DP-LR {dp_lr:.4f}, alone LR {lr:.4f}"
            )
            if any(v is None or math.isnan(v) for v in (ours, dp_lr, lr)):
                continue  # one class in the bank's test rows: no AUC
            defaults = int(data[bank].test.labels.sum())
            if min(defaults, len(data[bank].test) - defaults) < args.min_per_class:
                skipped += 1
                continue
            diffs["alone DP-LR"].append(ours - dp_lr)
            if share <= args.small:
                diffs["alone DP-LR, small"].append(ours - dp_lr)
                diffs["alone LR, small"].append(ours - lr)
            else:
                diffs["alone DP-LR, large"].append(ours - dp_lr)
    if skipped:
        print(f"left out {skipped} (seed, bank) pairs with fewer than {args.min_per_class} test rows of a class")
    for name, values in diffs.items():
        mean, half = mean_interval(values)
        print(
            f"consortium ε={args.epsilon} minus {name}: {mean:+.4f} ± {half:.4f} over {len(values)} (seed, bank) pairs"
        )


if __name__ == "__main__":
    main()
