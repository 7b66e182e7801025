"""The seed's workload over seeds and ε: FedLoRA against centralised LoRA and the baselines, on shared splits.

For every seed, on the splits that seed gives (``--config finance_sentiment``, the 4 banks' TFNS rows):

* ``fedlora`` at each ε of ``--epsilons`` (``inf`` = ``privacy.enabled=false``, the seed's own non-private
  run), with ``--baselines`` (zero-shot, head-only ± DP at the run's ε, TF-IDF + LR, each bank alone) in
  every DP run and the non-private one. The runs of one seed share one :class:`~fedlora.runtime.Runtime`:
  the model and the frozen-layer cache are computed once (the runs differ only in privacy settings);
* ``central``: centralised LoRA with the same compute, non-private: one bank holding every training row,
  the same rounds and, each round, as many local steps as all the banks that train a round take together
  (the same number of gradient evaluations), the same schedule.

Every metric is label-scoring accuracy / weighted F1 on the pooled test rows of the 4 banks. A row's
split is a keyed hash of the row under the seed's public key (:mod:`fedlora.data.row_split`), whatever
bank holds it, so the central run of a seed tests on exactly the same rows as the federated runs and
the baselines of that seed: every difference is paired by seed. Prints means with 95 % Student-t
intervals over the seeds, and the paired differences the issue's targets name:

    python benchmarks/finance_sentiment_sweep.py --seeds 0 1 2 --epsilons 1 3 8 inf --json sweep.json
    python benchmarks/finance_sentiment_sweep.py --summarize sweep.json [more.json ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

from fedlora.aggregation import select_banks
from fedlora.baselines import mean_interval
from fedlora.config import load_config
from fedlora.runtime import Runtime
from fedlora.simulate import simulate


def _cpu() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text(encoding="utf-8") if cpuinfo.exists() else ""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, avx512={'avx512f' in flags}"


def _privacy(epsilon: float) -> list[str]:
    return ["privacy.enabled=false"] if math.isinf(epsilon) else [f"privacy.target_epsilon={epsilon:g}"]


def _run(overrides: list[str], runtime: Runtime | None, *, baselines: bool) -> tuple[dict[str, Any], Runtime]:
    config = load_config("finance_sentiment", overrides)
    if runtime is None or not runtime.serves(config):
        runtime = Runtime(config)
    runtime.timer.seconds.clear()
    started = time.perf_counter()
    summary = simulate(config, runtime=runtime, baselines=baselines)
    wall = time.perf_counter() - started
    final = summary.final.metrics
    return {
        "accuracy": final.get("accuracy"),
        "weighted_f1": final.get("f1"),
        "rounds": [{"accuracy": r.metrics.get("accuracy"), "weighted_f1": r.metrics.get("f1")} for r in summary.rounds],
        "bank_epsilon": {b: e for r in summary.rounds[-1:] for b, e in r.epsilon.items()},
        "baselines": summary.baselines,
        "wall_seconds": wall,
        "phases": dict(runtime.timer.seconds),
    }, runtime


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": _cpu(),
        "config": "finance_sentiment",
        "overrides": args.overrides,
        "runs": [],
    }
    out = Path(args.json) if args.json else None
    for seed in args.seeds:
        common = ["tracking.enabled=false", f"seed={seed}", f"output.dir={args.output_dir}", *args.overrides]
        runtime: Runtime | None = None
        for epsilon in args.epsilons:
            # The baselines that do not depend on ε (zero-shot, head-only, TF-IDF) come with every DP run's
            # (which adds the DP head at its ε); the non-private run computes them only when no DP run does.
            baselines = args.baselines and (math.isfinite(epsilon) or all(math.isinf(e) for e in args.epsilons))
            run, runtime = _run(
                [*common, *_privacy(epsilon), f"output.run_name=s{seed}-eps-{epsilon:g}"], runtime, baselines=baselines
            )
            results["runs"].append({"seed": seed, "kind": "fedlora", "epsilon": epsilon, **run})
            print(f"seed {seed} fedlora ε={epsilon:g}: accuracy {run['accuracy']:.4f} ({run['wall_seconds']:.0f} s)")
            if out:
                out.write_text(json.dumps(results, indent=2, default=float), encoding="utf-8")
        if args.central:
            shipped = load_config("finance_sentiment", args.overrides)
            per_round = len(select_banks(shipped, 1))  # the banks that train a round (as many every round)
            steps = per_round * (shipped.training.local_steps or 0)
            central = [
                *common,
                "privacy.enabled=false",
                "federation.banks=[{name: central}]",
                "federation.min_banks=1",
                "federation.fraction_fit=1.0",
                f"training.local_steps={steps}",
                f"output.run_name=s{seed}-central",
            ]
            run, _ = _run(central, None, baselines=False)
            results["runs"].append({"seed": seed, "kind": "central", "epsilon": math.inf, **run})
            print(f"seed {seed} central LoRA: accuracy {run['accuracy']:.4f} ({run['wall_seconds']:.0f} s)")
            if out:
                out.write_text(json.dumps(results, indent=2, default=float), encoding="utf-8")
    return results


def _interval(values: list[float]) -> str:
    mean, half = mean_interval(values)
    return f"{mean:.4f} ± {half:.4f}" if math.isfinite(half) else f"{mean:.4f}"


def summarize(results: dict[str, Any], baseline_runs: list[dict[str, Any]] | None = None) -> None:
    """Means ± 95 % intervals over seeds, and the paired differences the targets name.

    ``baseline_runs``: runs of another sweep of the same seeds whose ε-free baselines (zero-shot,
    head-only, TF-IDF) stand in for seeds whose runs here computed none (``--no-baselines``).
    """
    runs = results["runs"]
    own = _seed_baselines(runs)
    seed_baselines = {**_seed_baselines(baseline_runs or []), **own}
    seed_baselines = {seed: r for seed, r in seed_baselines.items() if seed in {x["seed"] for x in runs}}
    seeds = sorted({r["seed"] for r in runs})
    print(f"machine: {results['machine']}; seeds {seeds}; label-scoring accuracy on the 4 banks' pooled test rows")
    epsilons = sorted({r["epsilon"] for r in runs if r["kind"] == "fedlora"})
    print("| model | ε | accuracy (mean ± 95 % CI) | weighted F1 | wall s (median) |")
    print("|---|---|---|---|---|")

    def row(name: str, eps: str, chosen: list[dict[str, Any]], key: str = "") -> None:
        acc = [r["accuracy"] if not key else r["baselines"]["pooled"][key]["accuracy"] for r in chosen]
        f1 = [r["weighted_f1"] if not key else r["baselines"]["pooled"][key]["weighted_f1"] for r in chosen]
        walls = sorted(r["wall_seconds"] for r in chosen) if not key else []
        wall = f"{walls[len(walls) // 2]:.0f}" if walls else "–"
        print(f"| {name} | {eps} | {_interval(acc)} | {_interval(f1)} | {wall} |")

    for eps in epsilons:
        row("DP-FedLoRA" if math.isfinite(eps) else "FedLoRA", f"{eps:g}", _runs(runs, "fedlora", eps))
    central = [r for r in runs if r["kind"] == "central"]
    if central:
        row("centralised LoRA (same compute)", "inf", central)
    base = list(seed_baselines.values())
    for key in ("zero_shot", "head_only", "tfidf_lr"):
        if base:
            row(f"baseline: {key}", "inf", base, key)
    for eps in epsilons:
        chosen = _runs(runs, "fedlora", eps)
        if math.isfinite(eps) and chosen and chosen[0].get("baselines"):
            row("baseline: DP head-only, banks averaged", f"{eps:g}", chosen, "dp_head_only_averaged")
    print()
    print("Paired differences (same seed, same test rows), mean ± 95 % CI:")
    by_seed_baselines = seed_baselines
    for eps in epsilons:
        chosen = [r for r in _runs(runs, "fedlora", eps) if r["seed"] in by_seed_baselines]
        if not chosen:
            continue
        pooled = [by_seed_baselines[r["seed"]]["baselines"]["pooled"] for r in chosen]
        if math.isfinite(eps) and not all(r.get("baselines") for r in chosen):
            continue  # the DP head at this ε was not computed
        if math.isfinite(eps):
            diff = [r["accuracy"] - r["baselines"]["pooled"]["dp_head_only_averaged"]["accuracy"] for r in chosen]
            print(f"- ε={eps:g}: FedLoRA − DP head-only (averaged): {_interval(diff)}")
            per_bank = [  # per seed: the mean over banks of (consortium − alone), each on the bank's own test rows
                sum(b["consortium"]["accuracy"] - b["dp_head_only"]["accuracy"] for b in banks) / len(banks)
                for banks in (list(r["baselines"]["per_bank"].values()) for r in chosen)
            ]
            print(
                f"  each bank, own test rows: consortium − alone DP head-only, mean over banks: {_interval(per_bank)}"
            )
        else:
            for key, name in (("head_only", "the frozen-feature head (best frozen/head-only)"), ("tfidf_lr", "TF-IDF")):
                diff = [r["accuracy"] - p[key]["accuracy"] for r, p in zip(chosen, pooled, strict=True)]
                print(f"- non-private FedLoRA − {name}: {_interval(diff)}")
            by_seed = {r["seed"]: r["accuracy"] for r in central}
            gap = [r["accuracy"] - by_seed[r["seed"]] for r in chosen if r["seed"] in by_seed]
            if gap:
                print(f"  non-private FedLoRA − centralised LoRA (same seed, same test rows): {_interval(gap)}")


def _seed_baselines(runs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per seed, a FedLoRA run that computed the baselines (its ε-free ones are the same in every run of the seed)."""
    found: dict[int, dict[str, Any]] = {}
    for r in runs:
        if r["kind"] == "fedlora" and r.get("baselines") and r["seed"] not in found:
            found[r["seed"]] = r
    return dict(sorted(found.items()))


def _runs(runs: list[dict[str, Any]], kind: str, epsilon: float) -> list[dict[str, Any]]:
    return sorted((r for r in runs if r["kind"] == kind and r["epsilon"] == epsilon), key=lambda r: r["seed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--epsilons", type=float, nargs="*", default=[8.0, math.inf], help="FedLoRA runs (none: only the central runs)"
    )
    parser.add_argument("--no-central", dest="central", action="store_false", help="skip centralised LoRA")
    parser.add_argument(
        "--baselines-from", metavar="JSON", help="summarize: the ε-free baselines of seeds that have none, from here"
    )
    parser.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="skip the baselines (summarize takes them "
        "from another file of the same seeds: they depend on the seed's split, the model and ε, not on the schedule)",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--output-dir", default="runs/sweep", help="where the runs are written")
    parser.add_argument("--json", help="write every number here (rewritten after each run)")
    parser.add_argument(
        "--summarize", metavar="JSON", nargs="+", help="only print the tables of earlier sweeps (their runs merged)"
    )
    args = parser.parse_args()
    if args.summarize:
        files = [json.loads(Path(f).read_text(encoding="utf-8")) for f in args.summarize]
        borrowed = (
            json.loads(Path(args.baselines_from).read_text(encoding="utf-8"))["runs"] if args.baselines_from else None
        )
        summarize({**files[0], "runs": [r for f in files for r in f["runs"]]}, borrowed)
        return
    summarize(sweep(args))


if __name__ == "__main__":
    main()
