"""One-run privacy audit of a whole bank round on a real model (Steinke, Nasr & Jagielski, 2023).

Runs :func:`fedlora.privacy.round_audit.audit_bank_round`: Dirac gradient canaries on the LoRA B
coordinates of tiny-bert, sampled with the bank's rows, through ``run_bank_round`` (plan, ledger
charge, DP-SGD with SGD-momentum, published adapter). Prints, per noise mode and seed, the run's
σ, q, T, δ, the canaries and guesses, the ε the bank's ledger reports and the audit's lower bound.
``secure`` is the product (OS CSPRNG noise, σ calibrated from the target ε): the bound must stay
below the reported ε. ``off`` is DP-SGD with σ = 0 on the same path: a large bound shows power.

    .venv/bin/python benchmarks/audit_round.py [--seeds 0 1 2 3 4] [--canaries 256] [--guesses-in 60]
        [--target-epsilons 8 1] [--set training.local_steps=8 ...]

The ``off`` mode has no target (σ = 0, reported ε = ∞). The audit's ceiling with m = 256, 60
guesses and this δ is 2.76 (every guess right): a secure run at ε = 8 stays below its ε whatever
the noise, so ε = 1 is the informative check.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from pathlib import Path

from fedlora.config import load_config
from fedlora.privacy.round_audit import audit_bank_round

SETUP = [  # the configuration of tests/test_privacy_audit.py: two banks of ≈350 German Credit rows
    "data.dataset=german_credit",
    "data.max_rows=1000",
    "model.name=tiny-bert",
    "model.schema_features=false",
    "federation.banks=[{name: bank-a}, {name: bank-b}]",
    "federation.rounds=1",
    "training.local_steps=8",
    "training.batch_size=64",
    "tracking.enabled=false",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="auditor's seeds")
    parser.add_argument("--canaries", type=int, default=256, help="m (at most the LoRA coordinates: 256 here)")
    parser.add_argument("--guesses-in", type=int, default=60, help="k₊: 'in' guesses for the top scores")
    parser.add_argument("--guesses-out", type=int, default=0, help="k₋: 'out' guesses for the bottom scores")
    parser.add_argument("--modes", nargs="+", default=["secure", "off"], choices=["secure", "off"])
    parser.add_argument(
        "--target-epsilons", type=float, nargs="+", default=[8.0, 1.0], help="the bank's target ε (secure mode)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override, on SETUP")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    header = (
        "mode",
        "target ε",
        "seed",
        "σ",
        "q",
        "T",
        "δ",
        "m",
        "in",
        "guesses",
        "correct",
        "reported ε",
        "ε LB 95%",
        "wall s",
    )
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    runs = [(m, e) for m in args.modes for e in (args.target_epsilons if m == "secure" else [None])]
    for mode, target in runs:
        for seed in args.seeds:
            target_set = [] if target is None else [f"privacy.target_epsilon={target}"]
            with tempfile.TemporaryDirectory() as out:
                config = load_config(None, [*SETUP, f"output.dir={Path(out)}", *target_set, *args.overrides])
                r = audit_bank_round(
                    config,
                    mode=mode,
                    canaries=args.canaries,
                    guesses_in=args.guesses_in,
                    guesses_out=args.guesses_out,
                    seed=seed,
                )
            shown = "—" if target is None else f"{target:g}"
            print(
                f"{r.mode} | {shown} | {seed} | {r.noise_multiplier:.3f} | {r.sample_rate:.3f} | {r.steps} | "
                f"{r.delta:.2g} | {r.canaries} | {r.included} | {r.guesses} | {r.correct} | {r.reported_epsilon:.2f} | "
                f"{r.epsilon_lower_bound:.2f} | {r.seconds:.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
