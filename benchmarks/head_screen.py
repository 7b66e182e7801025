"""Screen recipe levers in seconds: the recipe's federation, head only, on frozen mean-pooled features.

An approximation of `fedlora simulate` for screening, not a substitute for `utility.py`: the
model is frozen (no LoRA), so each row's pooled representation ``h̄(x)`` is computed once and
every variant trains only the linear head, in numpy, with the recipe's mechanism: Poisson
sampling at ``q = B/n_declared``, per-example clipping at C = 1, Gaussian noise with σ from the
same PRV calibration (:func:`fedlora.privacy.accounting.plan_privacy`), SGD with momentum 0.9
restarted every round, FedAvg by declared count, optionally a server momentum. The public centre
``μ`` is the product's (:func:`fedlora.model.centring.public_centre`). Noise here is numpy's
seeded generator: this is a research harness, never a bank's mechanism.

Selection uses the pooled **validation** AUC; test AUC is printed for the record.

    python benchmarks/head_screen.py --seeds 10 --points '{}' '{"dp": false, "steps": 40}'
    python benchmarks/head_screen.py --max-length 128 --transforms raw centred --points '{"batch": 128, "steps": 10}'
    python benchmarks/head_screen.py --seeds 10 --ceiling      # + the representation's linear-probe ceiling
    python benchmarks/head_screen.py --dataset taiwan_credit --features columns --banks 5 --fit-batch \
        --set data.partition=dirichlet --set data.dirichlet_alpha=0.5 --points '{"batch": 512}'

``--features columns`` trains the head on the row's columns alone (``model.schema_features``'s
``f − μ_f``, at ``model.schema_feature_scale``), with no text and so no encoder pass: seconds even on
the 30,000 Taiwan rows.
``--set`` passes config overrides (the partition); ``--fit-batch`` gives a bank with fewer than two
batches of training rows half its rows as its batch, as ``utility.py --fit-batch`` does.

``--ceiling`` adds a row no federation can beat with this frozen representation: a non-private,
L2-regularised logistic regression (scikit-learn, converged) on every bank's training rows pooled,
centred features, its regularisation chosen on the pooled validation AUC.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from fedlora.baselines import BankBaselines, bank_alone_baselines, mean_interval
from fedlora.config import load_config
from fedlora.data.banks import build_bank_data
from fedlora.data.datasets import get_schema
from fedlora.model.centring import pooled_representation, public_centre, public_column_centre
from fedlora.model.loading import load_base_model
from fedlora.privacy.accounting import declared_count, plan_privacy

Array = np.ndarray
SPLITS = ("train", "val", "test")


def banks_override(count: int) -> str:
    """The config override for ``count`` banks named ``bank-a``, ``bank-b``, …"""
    return "federation.banks=[" + ", ".join("{name: bank-" + chr(97 + i) + "}" for i in range(count)) + "]"


class Embedder:
    """Mean-pooled last hidden states of the frozen MiniLM, memoised per text."""

    def __init__(self, max_length: int) -> None:
        self.loaded = load_base_model("minilm", quantization="none", seed=0)
        self.loaded.model.eval()
        self.max_length = max_length
        self.memo: dict[str, Array] = {}

    def __call__(self, texts: list[str]) -> Array:
        todo = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if todo:
            pooled = pooled_representation(
                self.loaded.model.bert,  # type: ignore[attr-defined,arg-type]
                self.loaded.tokenizer,
                todo,
                max_length=self.max_length,
                device=torch.device("cpu"),
                batch_size=128,
            )
            for text, row in zip(todo, pooled.numpy(), strict=True):
                self.memo[text] = row.astype(np.float64)
        return np.stack([self.memo[t] for t in texts])


@functools.cache
def _sigma(n: int, eps: float, batch: int, steps: int, rounds: int) -> tuple[float, float]:
    plan = plan_privacy(
        bank="screen",
        num_examples=n,
        target_epsilon=eps,
        delta=None,
        batch_size=batch,
        steps_per_round=steps,
        rounds=rounds,
        max_grad_norm=1.0,
        noise_multiplier=None,
        accountant="prv",
    )
    return plan.noise_multiplier, plan.sample_rate


def _local_steps(
    head: tuple[Array, Array],
    bank: tuple[Array, Array],
    rng: np.random.Generator,
    *,
    plan: tuple[float, float],
    steps: int,
    lr: float,
    dp: bool,
) -> tuple[Array, Array]:
    """``steps`` Poisson-sampled (clipped, noised when ``dp``) SGD steps with momentum 0.9 from ``head``."""
    (w, b), (x, y), (sigma, q) = (head[0].copy(), head[1].copy()), bank, plan
    mom_w, mom_b = np.zeros_like(w), np.zeros_like(b)
    for _ in range(steps):
        idx = np.nonzero(rng.random(len(y)) < q)[0]
        xb, yb = x[idx], y[idx]
        z = xb @ w.T + b
        p1 = 1 / (1 + np.exp(-(z[:, 1] - z[:, 0])))
        g = (p1 - yb)[:, None]
        gz = np.concatenate([-g, g], axis=1)  # dCE/dlogits
        gw = gz[:, :, None] * xb[:, None, :]
        if dp:
            norms = np.sqrt((gw**2).sum(axis=(1, 2)) + (gz**2).sum(axis=1))
            factor = np.minimum(1.0, 1.0 / (norms + 1e-6))
            expected = q * len(y)
            step_w = ((gw * factor[:, None, None]).sum(0) + rng.normal(0, sigma, w.shape)) / expected
            step_b = ((gz * factor[:, None]).sum(0) + rng.normal(0, sigma, 2)) / expected
        elif len(idx):
            step_w, step_b = gw.mean(0), gz.mean(0)
        else:
            continue
        mom_w, mom_b = 0.9 * mom_w + step_w, 0.9 * mom_b + step_b
        w, b = w - lr * mom_w, b - lr * mom_b
    return w, b


def federate(
    banks: list[tuple[Array, Array]],
    rng: np.random.Generator,
    *,
    lr: float = 3.0,
    steps: int = 6,
    rounds: int = 5,
    batch: int = 64,
    eps: float = 8.0,
    dp: bool = True,
    server_lr: float = 1.0,
    server_momentum: float = 0.0,
    fit_batch: bool = False,
    personal_steps: int = 0,
    personal_lr: float | None = None,
    tail_average: int = 0,
) -> list[tuple[Array, Array]]:
    """The recipe's federation of a 2-logit linear head; returns each bank's ``(W, b)``.

    Without personalisation every bank gets the consortium's head. With ``personal_steps`` each
    bank then takes that many more DP steps on its own rows alone (learning rate ``personal_lr``,
    default ``lr``), and σ is planned for ``rounds·steps + personal_steps`` steps, so the bank's ε
    is unchanged. With ``fit_batch`` a bank with fewer than ``2·batch`` rows uses a batch of half
    its rows. With ``tail_average`` the consortium's head is the mean of the coordinator's heads after
    the last that many rounds (post-processing of the released heads, so free in privacy).
    """
    dim = banks[0][0].shape[1]
    weight, bias = np.zeros((2, dim)), np.zeros(2)
    vel_w, vel_b = np.zeros_like(weight), np.zeros_like(bias)
    batches = [max(1, len(y) // 2) if fit_batch and len(y) < 2 * batch else batch for _, y in banks]
    total_steps = rounds * steps + personal_steps
    plans = [
        _sigma(len(y), eps, b, total_steps, 1) if dp else (0.0, min(1.0, b / len(y)))
        for (_, y), b in zip(banks, batches, strict=True)
    ]
    counts = np.array([declared_count(len(y)) for _, y in banks], dtype=np.float64)
    shares = counts / counts.sum()
    tail: list[tuple[Array, Array]] = []
    for _ in range(rounds):
        heads = [
            _local_steps((weight, bias), bank, rng, plan=plan, steps=steps, lr=lr, dp=dp)
            for bank, plan in zip(banks, plans, strict=True)
        ]
        avg_w = sum(s * w for s, (w, _) in zip(shares, heads, strict=True))
        avg_b = sum(s * b for s, (_, b) in zip(shares, heads, strict=True))
        vel_w, vel_b = server_momentum * vel_w + (weight - avg_w), server_momentum * vel_b + (bias - avg_b)
        weight, bias = weight - server_lr * vel_w, bias - server_lr * vel_b
        tail = [*tail, (weight, bias)][-tail_average:] if tail_average else []
    if tail:
        weight, bias = np.mean([w for w, _ in tail], axis=0), np.mean([b for _, b in tail], axis=0)
    if not personal_steps:
        return [(weight, bias)] * len(banks)
    return [
        _local_steps((weight, bias), bank, rng, plan=plan, steps=personal_steps, lr=personal_lr or lr, dp=dp)
        for bank, plan in zip(banks, plans, strict=True)
    ]


def _scores(transform: Callable[[Array], Array], head: tuple[Array, Array], x: Array) -> Array:
    z = transform(x) @ head[0].T + head[1]
    return np.asarray(z[:, 1] - z[:, 0])


def _auc(y: Array, scores: Array) -> float:
    """ROC AUC, NaN when ``y`` holds one class (a small skewed bank's test rows)."""
    return float(roc_auc_score(y, scores)) if len(np.unique(y)) == 2 else float("nan")


def probe_ceiling(
    train: tuple[Array, Array], val: tuple[Array, Array], test: tuple[Array, Array]
) -> tuple[float, float]:
    """(validation, test) AUC of the pooled non-private linear probe, L2 strength chosen on validation."""
    best = (-1.0, 0.0)
    for strength in (1e-3, 1e-2, 1e-1, 1.0, 10.0):
        model = LogisticRegression(C=strength, max_iter=5000).fit(*train)
        scores = (
            roc_auc_score(val[1], model.decision_function(val[0])),
            roc_auc_score(test[1], model.decision_function(test[0])),
        )
        best = max(best, scores, key=lambda pair: pair[0])
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="german_credit")
    parser.add_argument("--features", choices=["text", "columns"], default="text")
    parser.add_argument("--banks", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--fit-batch", action="store_true", help="Small banks get a batch of half their rows.")
    parser.add_argument("--max-rows", type=int)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--transforms", nargs="+", default=["raw", "centred"], choices=["raw", "centred"])
    parser.add_argument("--points", nargs="+", default=["{}"], help="JSON keyword sets for federate().")
    parser.add_argument("--ceiling", action="store_true", help="Also the pooled non-private linear-probe ceiling.")
    parser.add_argument(
        "--per-bank",
        action="store_true",
        help="Also each bank's own test AUC against the same bank alone (DP-LR at the point's ε, and LR).",
    )
    args = parser.parse_args()
    schema = get_schema(args.dataset)
    overrides = [f"data.dataset={args.dataset}", banks_override(args.banks)]
    if args.features == "columns":
        overrides.append("model.schema_features=true")
    overrides.append(f"data.max_rows={args.max_rows or 'null'}")  # every row unless asked (not the run's default)
    overrides += args.overrides
    featurize: Callable[[Any], Array]
    if args.features == "columns":
        scale = load_config(None, overrides).model.schema_feature_scale  # the same scale as the banks' features
        mu = public_column_centre(schema, feature_scale=scale)

        def featurize(split: Any) -> Array:
            return np.asarray(split.features, dtype=np.float64)

    else:
        embed = Embedder(args.max_length)
        mu = public_centre(
            embed.loaded.model.bert,  # type: ignore[attr-defined,arg-type]
            embed.loaded.tokenizer,
            schema,
            max_length=args.max_length,
            device=torch.device("cpu"),
        ).numpy()

        def featurize(split: Any) -> Array:
            return embed(split.texts)

    transforms: dict[str, Callable[[Array], Array]] = {"raw": lambda x: x, "centred": lambda x: x - mu}
    points: list[dict[str, Any]] = [json.loads(p) for p in args.points]
    if args.fit_batch:
        points = [{**p, "fit_batch": True} for p in points]
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    per_bank: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    for seed in range(args.seeds):
        banks = build_bank_data(load_config(None, [*overrides, f"seed={seed}"]))
        split = {k: [(featurize(getattr(d, k)), getattr(d, k).labels) for d in banks.values()] for k in SPLITS}
        train = split["train"]
        if args.ceiling:
            pooled = {
                k: (np.concatenate([x for x, _ in v]) - mu, np.concatenate([y for _, y in v])) for k, v in split.items()
            }
            key = ("centred", "pooled non-private linear probe (ceiling)")
            results.setdefault(key, []).append(probe_ceiling(pooled["train"], pooled["val"], pooled["test"]))
        alone: dict[float, list[BankBaselines]] = {}
        shares = np.array([len(y) for _, y in train], dtype=np.float64) / sum(len(y) for _, y in train)
        for point in points:
            for name in args.transforms:
                tf = transforms[name]
                heads = federate([(tf(x), y) for x, y in train], np.random.default_rng(1000 + seed), **point)
                key = (name, json.dumps(point))
                pooled_aucs = tuple(
                    _auc(
                        np.concatenate([y for _, y in split[k]]),
                        np.concatenate([_scores(tf, h, x) for (x, _), h in zip(split[k], heads, strict=True)]),
                    )
                    for k in ("val", "test")
                )
                results.setdefault(key, []).append((pooled_aucs[0], pooled_aucs[1]))
                if args.per_bank:
                    eps = float(point.get("eps", 8.0))
                    if eps not in alone:
                        alone[eps], _ = bank_alone_baselines(
                            banks, schema, epsilon=dict.fromkeys(banks, eps), seed=seed
                        )
                    for (x, y), head, share, base in zip(split["test"], heads, shares, alone[eps], strict=True):
                        own = _auc(y, _scores(tf, head, x))
                        per_bank.setdefault(key, []).append(
                            (float(share), own, base.alone_dp_lr_auc or math.nan, base.alone_lr_auc)
                        )
        print(f"seed {seed} done", flush=True)
    print(f"\n{args.dataset}, {args.features}, {args.banks} banks {args.overrides}, {args.seeds} seeds (mean ± 95% CI)")
    print("| features | point | validation AUC (selects) | test AUC (record) |\n|---|---|---|---|")
    for (name, label), values in results.items():
        val_mean, val_half = mean_interval([v for v, _ in values])
        test_mean, test_half = mean_interval([t for _, t in values])
        print(f"| {name} | `{label}` | {val_mean:.4f} ± {val_half:.4f} | {test_mean:.4f} ± {test_half:.4f} |")
    if per_bank:
        _print_per_bank(per_bank)


def _print_per_bank(per_bank: dict[tuple[str, str], list[tuple[float, float, float, float]]]) -> None:
    """Own-test AUC differences over every (seed, bank) whose test rows hold both classes."""
    print(
        "\nPer (seed, bank), own test rows; > 20 % / ≤ 20 % = the bank's share of the training rows"
        "\n| features | point | − alone DP-LR, all | − alone DP-LR, > 20 % | − alone LR, ≤ 20 % | worst − alone DP-LR |"
        "\n|---|---|---|---|---|---|"
    )
    for (name, label), rows in per_bank.items():
        kept = [r for r in rows if not math.isnan(r[1])]
        cells = [
            [own - dp for _, own, dp, _ in kept],
            [own - dp for share, own, dp, _ in kept if share > 0.2],
            [own - lr for share, own, _, lr in kept if share <= 0.2],
        ]
        text = [("{:+.4f} ± {:.4f} (n={})".format(*mean_interval(c), len(c)) if c else "–") for c in cells]
        print(f"| {name} | `{label}` | {' | '.join(text)} | {min(cells[0]):+.4f} |")


if __name__ == "__main__":
    main()
