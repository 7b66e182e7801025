"""Empirical privacy audit of the DP-SGD step in one run (Steinke, Nasr & Jagielski, 2023).

Prints, for each noise mode, the accountant's ε beside the audit's 95% lower bound, over
several independent runs (median and range). With the OS CSPRNG the bound must stay below
the reported ε; with no noise, or with seeded noise whose seed the auditor knows, it must
exceed it (the audit has power).

    .venv/bin/python benchmarks/privacy_audit.py [--runs 5] [--canaries 4000] [--sigma 4]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

from fedlora.privacy.audit import run_audit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--canaries", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sample-rate", type=float, default=0.5)
    parser.add_argument("--sigma", type=float, nargs="+", default=[4.0, 2.0])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print(f"canaries={args.canaries} guesses={args.canaries // 2} steps={args.steps} q={args.sample_rate} delta=1e-5")
    print(f"{'sigma':>6} {'mode':>11} {'reported eps':>13} {'audit eps LB (median [min, max])':>34} {'s/run':>6}")
    for sigma in args.sigma:
        for mode in ("secure", "off", "known-seed"):
            started = time.perf_counter()
            results = [
                run_audit(
                    mode=mode,  # type: ignore[arg-type]
                    canaries=args.canaries,
                    guesses=args.canaries // 2,
                    steps=args.steps,
                    sample_rate=args.sample_rate,
                    noise_multiplier=sigma,
                    seed=seed,
                )
                for seed in range(args.runs)
            ]
            lbs = [r.epsilon_lower_bound for r in results]
            per_run = (time.perf_counter() - started) / args.runs
            print(
                f"{sigma:>6} {mode:>11} {results[0].reported_epsilon:>13.3f} "
                f"{statistics.median(lbs):>14.3f} [{min(lbs):.3f}, {max(lbs):.3f}]{'':>6} {per_run:>6.1f}"
            )


if __name__ == "__main__":
    main()
