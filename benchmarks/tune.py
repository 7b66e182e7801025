"""Choose the DP recipe's hyper-parameters on *validation* data (never test).

For each seed, one runtime (model, data split, cached frozen activations) serves every grid point;
each point is a full ``fedlora simulate`` run, and its final global adapter is scored on the pooled
validation rows of the banks. Prints the mean validation score per point (and the test score, for the
record only: selection uses validation). The score is AUC for credit scoring, and label-scoring accuracy
for a text task (``--config finance_sentiment``).

    python benchmarks/tune.py --seeds 0 1 2 --grid training.learning_rate=0.5,1,2 training.batch_size=64,128
    python benchmarks/tune.py --config finance_sentiment --seeds 0 --points "lora.top_layers=2" "lora.top_layers=4"

Privacy note: the validation rows are the banks' private rows. Choosing among G grid points on them
is itself a data-dependent release that the accountant does not charge; Papernot & Steinke (2022,
"Hyperparameter Tuning with Renyi Differential Privacy") bound the cost of a random-size search
at about 2-3x the per-run ε. We report it rather than hide it.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import tempfile
import time
from typing import Any

import numpy as np

from fedlora.config import Config, load_config
from fedlora.evaluation import compute_metrics
from fedlora.model.lora import load_adapter_state
from fedlora.runtime import Runtime
from fedlora.simulate import simulate
from fedlora.store.adapters import load_adapter
from fedlora.store.local import LocalStore
from fedlora.training import predict_scores


def selection_metric(runtime: Runtime) -> str:
    """What selects: label-scoring accuracy for a text task, AUC for credit scoring."""
    return "accuracy" if runtime.text_task is not None else "auc"


def validation_score(runtime: Runtime, run_dir: str) -> float:
    """Pooled validation score (:func:`selection_metric`) of a run's final adapter."""
    final = load_adapter(LocalStore(run_dir), "final").tensors
    load_adapter_state(runtime.model, final)
    labels, scores = [], []
    for spec in runtime.config.federation.banks:
        val = runtime.bank(spec.name).val
        scores.append(predict_scores(runtime.model, val, batch_size=64, device=runtime.device))
        labels.append(val.labels.numpy())
    metrics = compute_metrics(np.concatenate(labels), np.concatenate(scores))
    return float(getattr(metrics, selection_metric(runtime)))


def run_point(config: Config, runtime: Runtime) -> dict[str, Any]:
    started = time.perf_counter()
    summary = simulate(config, runtime=runtime)
    return {
        "val": validation_score(runtime, summary.run_dir),
        "test": float(summary.final.metrics.get(selection_metric(runtime), "nan")),
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--grid", nargs="+", default=[], help="key=v1,v2,... (cartesian product)")
    parser.add_argument(
        "--points", nargs="+", default=[], help="Explicit points instead of a grid: 'k=v;k2=v2' each ('' = defaults)."
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    axes = [(g.split("=", 1)[0], g.split("=", 1)[1].split(",")) for g in args.grid]
    points = [dict(zip([k for k, _ in axes], vs, strict=True)) for vs in itertools.product(*[v for _, v in axes])]
    if args.points:
        points = [dict(kv.split("=", 1) for kv in p.split(";") if kv) for p in args.points]
    stamp = int(time.time())
    out = tempfile.mkdtemp(prefix="fedlora-tune-")  # one directory per invocation: concurrent runs never share
    results: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(points))}
    for seed in args.seeds:
        base = [*args.overrides, f"seed={seed}", "tracking.enabled=false", f"output.dir={out}"]
        runtimes = [Runtime(load_config(args.config, base))]
        for i, point in enumerate(points):
            sets = [f"{k}={v}" for k, v in point.items()]
            config = load_config(args.config, [*base, *sets, f"output.run_name=t{stamp}-s{seed}-p{i}"])
            runtime = next((r for r in runtimes if r.serves(config)), None)
            if runtime is None:  # the point changes the model or LoRA shape: it needs its own runtime
                runtime = Runtime(config)
                runtimes.append(runtime)
            res = run_point(config, runtime)
            results[i].append(res)
            print(f"seed {seed} {point} val {res['val']:.4f} test {res['test']:.4f} {res['seconds']:.0f}s", flush=True)
    metric = selection_metric(runtimes[0])
    print(f"\n| point | val {metric} (mean) | test {metric} (mean, not used to select) | s/run |\n|---|---|---|---|")
    for i, point in enumerate(points):
        r = results[i]
        print(
            f"| {point} | {np.mean([x['val'] for x in r]):.4f} | {np.mean([x['test'] for x in r]):.4f} "
            f"| {np.mean([x['seconds'] for x in r]):.0f} |"
        )


if __name__ == "__main__":
    main()
