"""Utility table over seeds: logistic regression (non-private, DP), each bank alone, FedLoRA, DP-FedLoRA.

Every seed draws a new partition and new splits; all rows of one seed use the same pooled test set
(every bank's held-out rows). Per row: mean pooled test AUC ± half-width of the 95% Student-t
interval over the seeds, and mean wall seconds. One runtime per seed (model, data, cached frozen
layers) serves every FedLoRA row, so the rows differ only in what they train.

    python benchmarks/utility.py --seeds 10                                   # German Credit, 3 IID banks
    python benchmarks/utility.py --seeds 5 --set data.dataset=taiwan_credit --set data.max_rows=6000 \\
        --set model.max_length=128
    python benchmarks/utility.py --seeds 5 --set data.partition=dirichlet --set data.dirichlet_alpha=0.5 \\
        --banks 5 ...                                                         # 5 banks, label skew, unequal sizes

``--fit-batch``: a bank with fewer than twice ``training.batch_size`` training rows runs with half its
rows as its batch (``federation.banks[].batch_size``), as a small bank would choose for itself; the
others keep the consortium's batch. Without it, such a bank is refused (batch > rows).

Every seed's runtime takes its frozen-layer activations from one per-row memo (token ids → hidden
states entering the first adapted layer): the rows are the same in every seed, only their partition
and split change, so the one-off pass over the frozen layers (about 10 minutes for the 30,000 Taiwan
rows on 2 CPU cores) runs once per invocation, not once per seed. A row's activations do not depend
on the batch it was computed in (up to floating-point reassociation), so this changes no number
beyond that.

Bank-alone rows are logistic regression on the bank's own training rows, scored on the bank's own
test rows ("alone"), beside the DP-FedLoRA model on the same rows ("consortium").
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
from head_screen import banks_override

from fedlora.baselines import (
    DPLogisticSettings,
    dp_logistic_regression,
    logistic_regression_scores,
    logistic_scores,
    mean_interval,
)
from fedlora.config import Config, load_config
from fedlora.data.banks import build_bank_data
from fedlora.data.datasets import get_schema
from fedlora.data.features import schema_features
from fedlora.evaluation import compute_metrics
from fedlora.model.cache import CachedSet, cache_frozen_layers
from fedlora.model.encoding import EncodedSet, RowSet
from fedlora.privacy.randomness import SeededRandomness
from fedlora.runtime import Runtime
from fedlora.simulate import simulate

POOLED_LR = "LR, pooled data, non-private"
"""The row every federation is also paired against: what pooling the data without privacy would give."""


class RowMemo:
    """Frozen-layer activations of every row seen so far, keyed by its token ids (one model and LoRA layout)."""

    def __init__(self) -> None:
        self.rows: dict[bytes, torch.Tensor] = {}
        self.start_layer: int | None = None

    def cached(self, runtime: Runtime, encoded: EncodedSet, progress: Callable[[int, int], None]) -> RowSet:
        """``encoded`` as a :class:`CachedSet`, computing only the rows not seen before."""
        keys = [row.numpy().tobytes() for row in encoded.input_ids]
        first = {key: i for i, key in reversed(list(enumerate(keys)))}
        todo = sorted(first[key] for key in dict.fromkeys(keys) if key not in self.rows)
        if todo:
            index = torch.tensor(todo)
            part = EncodedSet(encoded.input_ids[index], encoded.attention_mask[index], encoded.labels[index])
            batch = runtime.config.training.eval_batch_size
            done = cache_frozen_layers(runtime.model, part, batch_size=batch, device=runtime.device, progress=progress)
            if not isinstance(done, CachedSet):
                return encoded
            self.start_layer = done.start_layer
            for j, i in enumerate(todo):
                self.rows[keys[i]] = done.hidden[j, : int(part.attention_mask[j].sum())].clone()
        assert self.start_layer is not None
        width = max(int(encoded.attention_mask.sum(dim=1).max()), 1)
        hidden = torch.zeros(len(encoded), width, next(iter(self.rows.values())).shape[-1])
        for i, key in enumerate(keys):
            hidden[i, : self.rows[key].shape[0]] = self.rows[key]
        return CachedSet(hidden, encoded.attention_mask[:, :width], encoded.labels, self.start_layer, encoded.features)


class MemoRuntime(Runtime):
    """A seed's runtime whose frozen-layer pass reads and fills a :class:`RowMemo` shared across seeds."""

    def __init__(self, config: Config, memo: RowMemo) -> None:
        super().__init__(config)
        self.memo = memo

    def _cached(self, encoded: EncodedSet, progress: Callable[[int, int], None]) -> RowSet:
        if not self.config.model.cache_frozen_layers:
            return encoded
        return self.memo.cached(self, encoded, progress)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    return compute_metrics(y, p).auc


def baseline_rows(config: Config, runtime: Runtime, epsilons: list[float]) -> dict[str, float]:
    """Pooled and per-bank AUCs of the logistic-regression baselines for one seed."""
    schema = get_schema(config.data.dataset)
    banks = {b.name: runtime.bank_data(b.name) for b in config.federation.banks}
    feats = {name: {k: schema_features(f, schema) for k, f in bank.frames.items()} for name, bank in banks.items()}
    labels = {name: {k: f["label"].to_numpy() for k, f in bank.frames.items()} for name, bank in banks.items()}
    test_x = np.vstack([feats[b]["test"] for b in banks])
    test_y = np.concatenate([labels[b]["test"] for b in banks])
    train_x = np.vstack([feats[b]["train"] for b in banks])
    train_y = np.concatenate([labels[b]["train"] for b in banks])
    out = {POOLED_LR: _auc(test_y, logistic_regression_scores(train_x, train_y, test_x))}
    for b in banks:
        own = logistic_regression_scores(feats[b]["train"], labels[b]["train"], feats[b]["test"])
        out[f"{b} alone, LR non-private (own test)"] = _auc(labels[b]["test"], own)
    for eps in epsilons:
        weights, sizes = [], []
        for i, b in enumerate(banks):
            settings = DPLogisticSettings(target_epsilon=eps)
            w = dp_logistic_regression(
                feats[b]["train"], labels[b]["train"], settings=settings, randomness=SeededRandomness(config.seed + i)
            )
            weights.append(w)
            sizes.append(len(labels[b]["train"]))
            own_dp = logistic_scores(w, feats[b]["test"])
            out[f"{b} alone, DP-LR ε={eps:g} (own test)"] = _auc(labels[b]["test"], own_dp)
        avg = np.average(np.stack(weights), axis=0, weights=sizes)
        out[f"DP-LR ε={eps:g}, each bank then averaged"] = _auc(test_y, logistic_scores(avg, test_x))
    return out


def fitted_banks(config: Config) -> str:
    """A ``federation.banks`` override giving each bank with < 2 batches of training rows a batch of half its rows."""
    sizes = {name: len(bank.train) for name, bank in build_bank_data(config).items()}
    batch = config.training.batch_size
    specs = [
        f"{{name: {b.name}, batch_size: {max(1, sizes[b.name] // 2)}}}"
        if sizes[b.name] < 2 * batch
        else f"{{name: {b.name}}}"
        for b in config.federation.banks
    ]
    return f"federation.banks=[{', '.join(specs)}]"


Results = dict[str, dict[int, float]]
"""Row name → seed → value: rows measured in several invocations (other seeds, other rows) merge by seed."""


def _write_json(path: str, config: str | None, overrides: list[str], aucs: Results, seconds: Results) -> None:
    rows = {"aucs": aucs, "seconds": seconds}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(
            {
                "config": config,
                "overrides": overrides,
                **{key: {name: list(values.values()) for name, values in part.items()} for key, part in rows.items()},
                "seeds": {name: list(values) for part in rows.values() for name, values in part.items()},
            },
            f,
            indent=1,
        )


SAME_AUC_TOLERANCE = 1e-5
"""Two files' AUCs of one row and seed closer than this are the same run on the same split.

The same logistic regression fitted twice on the same split can differ in the 7th decimal (the
solver's floating-point order: 0.7797191 and 0.7797186 were seen on the full Taiwan split); a
different split moves it far more (the closest pooled LRs of two seeds in ``benchmarks/results``
differ by 6e-4).
"""


def _same(a: float | None, b: float | None) -> bool:
    """Equal within :data:`SAME_AUC_TOLERANCE`, counting two missing AUCs (NaN/None: one class) as the same."""
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
    return math.isclose(a, b, rel_tol=0.0, abs_tol=SAME_AUC_TOLERANCE)


def load_results(paths: list[str]) -> tuple[Results, Results]:
    """The rows of one or more ``--json`` files, merged by seed (files from before seeds were stored: 0..N-1).

    Raises:
        SystemExit: two files hold different values for the same row and seed.

    """
    aucs: Results = defaultdict(dict)
    seconds: Results = defaultdict(dict)
    for path in paths:
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
        config = f"config {stored['config']}, " if stored.get("config") else ""
        print(f"{path}: {config}overrides {stored['overrides']}")
        seeds: dict[str, list[int]] = stored.get("seeds", {})
        for key, merged in (("aucs", aucs), ("seconds", seconds)):
            for name, values in stored[key].items():
                row_seeds = seeds.get(name, list(range(len(values))))
                for seed, value in zip(row_seeds, values, strict=True):
                    if key == "aucs" and seed in merged[name] and not _same(merged[name][seed], value):
                        raise SystemExit(f"{path}: row {name!r}, seed {seed} differs from an earlier file")
                    merged[name][seed] = value
    return aucs, seconds


def _pairs(aucs: Results) -> list[tuple[str, str]]:
    """The (row, reference) pairs worth a paired difference: ablations, DP vs non-private and vs DP-LR, banks."""
    pairs = []
    for name in aucs:
        base, sep, _ = name.partition(", ")
        if name.startswith("DP-FedLoRA") and sep and " in consortium" not in name:
            pairs.append((name, base))  # an ablation row against its DP-FedLoRA row
        elif name.startswith("DP-FedLoRA ε="):
            eps = name.removeprefix("DP-FedLoRA ε=")
            pairs += [(name, "FedLoRA, non-private"), (name, f"DP-LR ε={eps}, each bank then averaged")]
            pairs.append((name, POOLED_LR))  # what the federation, private, loses to pooling the data
        elif name == "FedLoRA, non-private":
            pairs.append((name, POOLED_LR))
        elif " in consortium, DP-FedLoRA ε=" in name:
            bank, rest = name.split(" in consortium, DP-FedLoRA ε=")
            eps = rest.removesuffix(" (own test)")
            if "," not in eps:  # the recipe's row, not an ablation's
                pairs.append((name, f"{bank} alone, DP-LR ε={eps} (own test)"))
    return [(row, ref) for row, ref in pairs if ref in aucs]


def _paired(row: dict[int, float], reference: dict[int, float]) -> list[float]:
    """``row − reference`` on the seeds both hold."""
    return [row[seed] - reference[seed] for seed in sorted(row) if seed in reference]


def _print_paired(aucs: Results) -> None:
    """Each pair of :func:`_pairs`, seed by seed (mean ± 95% CI of the difference; seeds without both skipped)."""
    for name, base in _pairs(aucs):
        diffs = _paired(aucs[name], aucs[base])
        mean, half = mean_interval(diffs)
        print(f"paired: {name} minus {base}: {mean:+.4f} ± {half:.4f} over {len(diffs)} seeds")


def _print_comparison(path_a: str, path_b: str) -> None:
    """B − A for every pooled row both runs hold, seed by seed (both runs must share seeds and splits)."""
    (a, _), (b, _) = load_results([path_a]), load_results([path_b])
    for name in [n for n in b if n in a and " (own test)" not in n]:
        diffs = _paired(b[name], a[name])
        mean, half = mean_interval(diffs)
        print(f"paired: {name}: B minus A {mean:+.4f} ± {half:.4f} over {len(diffs)} seeds")


def _print_table(aucs: Results, seconds: Results) -> None:
    print("\n| setting | pooled test AUC, mean ± 95% CI | seeds | s/run |\n|---|---|---|---|")
    for name, values in aucs.items():
        mean, half = mean_interval(list(values.values()))
        wall = seconds.get(name, seconds.get("baselines", {}) if "LR" in name else {})
        seeds = ",".join(str(seed) for seed in sorted(values))
        print(f"| {name} | {mean:.4f} ± {half:.4f} | {seeds} | {np.mean(list(wall.values()) or [math.nan]):.0f} |")
    _print_paired(aucs)


_MEMOS: dict[str, RowMemo] = defaultdict(RowMemo)
"""One memo per model and LoRA layout, kept for the process: a driver calling :func:`main` again
(another partition of the same rows) reuses the frozen-layer pass."""


def _runtime(config: Config) -> Runtime:
    model = config.model.model_dump(mode="json", exclude={"schema_features"})  # the frozen layers do not read them
    layout = json.dumps([model, config.lora.model_dump(mode="json")], sort_keys=True)
    return MemoRuntime(config, _MEMOS[layout])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--seeds", type=int, default=10, help="How many seeds (10 for German Credit, >= 5 else).")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="Seeds first..first+N-1 (to add seeds to a stored --json later)."
    )
    parser.add_argument("--banks", type=int, default=3)
    parser.add_argument("--epsilons", type=float, nargs="*", default=[1.0, 3.0, 8.0])
    parser.add_argument("--skip-nonprivate-fedlora", action="store_true")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=KEY=VALUE[,KEY=VALUE]",
        help="An ablation row: DP-FedLoRA at every ε with these overrides too, on the same seeds and splits "
        "(e.g. 'no centring=model.centre_features=false'). Printed with its paired difference.",
    )
    parser.add_argument("--skip-baselines", action="store_true", help="Skip the logistic-regression rows.")
    parser.add_argument("--fit-batch", action="store_true", help="Small banks get a batch of half their rows.")
    parser.add_argument("--json", help="Write every per-seed number here.")
    parser.add_argument(
        "--summarize",
        nargs="+",
        metavar="JSON",
        help="Only print the table and paired rows of stored --json files, merged by seed (e.g. seeds 0-2 from "
        "one invocation, 3-4 from another; or a non-private row run later on the same seeds).",
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="Only print B minus A, paired by seed, for every row two stored --json runs share (same seeds, splits).",
    )
    args = parser.parse_args()
    if args.compare:
        _print_comparison(*args.compare)
        return
    if args.summarize:
        _print_table(*load_results(args.summarize))
        return
    banks = [banks_override(args.banks)]
    out = tempfile.mkdtemp(prefix="fedlora-utility-")  # one directory per invocation: concurrent runs never share
    base = [*banks, *args.overrides, "tracking.enabled=false", f"output.dir={out}"]
    stamp = int(time.time())
    aucs: Results = defaultdict(dict)
    seconds: Results = defaultdict(dict)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        config = load_config(args.config, [*base, f"seed={seed}"])
        seeded = [f"seed={seed}"]
        if args.fit_batch:
            seeded.append(fitted_banks(config))
            config = load_config(args.config, [*base, *seeded])
            print(f"seed {seed} {seeded[-1]}", flush=True)
        runtime = _runtime(config)
        started = time.perf_counter()
        if not args.skip_baselines:
            for name, auc in baseline_rows(config, runtime, args.epsilons).items():
                aucs[name][seed] = auc
            seconds["baselines"][seed] = time.perf_counter() - started
        runs = [] if args.skip_nonprivate_fedlora else [("FedLoRA, non-private", ["privacy.enabled=false"])]
        runs += [(f"DP-FedLoRA ε={eps:g}", [f"privacy.target_epsilon={eps}"]) for eps in args.epsilons]
        for variant in args.variant:
            label, _, sets = variant.partition("=")
            runs += [
                (f"DP-FedLoRA ε={eps:g}, {label}", [f"privacy.target_epsilon={eps}", *sets.split(",")])
                for eps in args.epsilons
            ]
        for index, (name, sets) in enumerate(runs):
            started = time.perf_counter()
            run = f"output.run_name=u{stamp}-s{seed}-r{index}"
            run_config = load_config(args.config, [*base, *seeded, *sets, run])
            if not runtime.serves(run_config):  # an ablation of the model or LoRA needs its own runtime
                runtime = _runtime(run_config)
            summary = simulate(run_config, runtime=runtime)
            seconds[name][seed] = time.perf_counter() - started
            aucs[name][seed] = math.nan if summary.final.auc is None else summary.final.auc
            for bank, metrics in summary.final.per_bank_test.items():
                aucs[f"{bank} in consortium, {name} (own test)"][seed] = metrics["auc"]
            print(f"seed {seed} {name}: AUC {aucs[name][seed]:.4f} ({seconds[name][seed]:.0f}s)", flush=True)
        if args.json:  # after every seed: a stopped run keeps what it measured
            _write_json(args.json, args.config, args.overrides, aucs, seconds)
    _print_table(aucs, seconds)


if __name__ == "__main__":
    main()
