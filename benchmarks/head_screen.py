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
``f − μ_f``, scale 4), with no text and so no encoder pass: seconds even on the 30,000 Taiwan rows.
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
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from fedlora.baselines import mean_interval
from fedlora.config import load_config
from fedlora.data.banks import build_bank_data
from fedlora.data.datasets import get_schema
from fedlora.data.features import head_features
from fedlora.data.public_rows import public_rows
from fedlora.model.centring import PUBLIC_ROWS, PUBLIC_SEED, pooled_representation, public_centre
from fedlora.model.loading import load_base_model
from fedlora.privacy.accounting import declared_count, plan_privacy

Array = np.ndarray


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
) -> tuple[Array, Array]:
    """The recipe's federation of a 2-logit linear head; returns ``(W, b)``.

    With ``fit_batch`` a bank with fewer than ``2·batch`` rows uses a batch of half its rows.
    """
    dim = banks[0][0].shape[1]
    weight, bias = np.zeros((2, dim)), np.zeros(2)
    vel_w, vel_b = np.zeros_like(weight), np.zeros_like(bias)
    batches = [max(1, len(y) // 2) if fit_batch and len(y) < 2 * batch else batch for _, y in banks]
    plans = [
        _sigma(len(y), eps, b, steps, rounds) if dp else (0.0, min(1.0, b / len(y)))
        for (_, y), b in zip(banks, batches, strict=True)
    ]
    for _ in range(rounds):
        new_w, new_b, counts = [], [], []
        for (x, y), (sigma, q) in zip(banks, plans, strict=True):
            w, b = weight.copy(), bias.copy()
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
            new_w.append(w)
            new_b.append(b)
            counts.append(declared_count(len(y)))
        shares = np.array(counts, dtype=np.float64) / sum(counts)
        avg_w = sum(s * w for s, w in zip(shares, new_w, strict=True))
        avg_b = sum(s * b for s, b in zip(shares, new_b, strict=True))
        vel_w, vel_b = server_momentum * vel_w + (weight - avg_w), server_momentum * vel_b + (bias - avg_b)
        weight, bias = weight - server_lr * vel_w, bias - server_lr * vel_b
    return weight, bias


def _auc(transform: Callable[[Array], Array], w: Array, b: Array, x: Array, y: Array) -> float:
    z = transform(x) @ w.T + b
    return float(roc_auc_score(y, z[:, 1] - z[:, 0]))


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
    args = parser.parse_args()
    schema = get_schema(args.dataset)
    featurize: Callable[[Any], Array]
    if args.features == "columns":
        scale = 4.0
        mu = head_features(public_rows(schema, PUBLIC_ROWS, seed=PUBLIC_SEED), schema, scale=scale).mean(axis=0)

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
    bank_list = ", ".join("{name: bank-" + chr(97 + i) + "}" for i in range(args.banks))
    for seed in range(args.seeds):
        overrides = [f"data.dataset={args.dataset}", f"federation.banks=[{bank_list}]", f"seed={seed}"]
        if args.features == "columns":
            overrides.append("model.schema_features=true")
        if args.max_rows:
            overrides.append(f"data.max_rows={args.max_rows}")
        banks = build_bank_data(load_config(None, [*overrides, *args.overrides]))
        train = [(featurize(d.train), d.train.labels) for d in banks.values()]
        val_x = np.concatenate([featurize(d.val) for d in banks.values()])
        val_y = np.concatenate([d.val.labels for d in banks.values()])
        test_x = np.concatenate([featurize(d.test) for d in banks.values()])
        test_y = np.concatenate([d.test.labels for d in banks.values()])
        if args.ceiling:
            pooled = (np.concatenate([x for x, _ in train]) - mu, np.concatenate([y for _, y in train]))
            key = ("centred", "pooled non-private linear probe (ceiling)")
            results.setdefault(key, []).append(probe_ceiling(pooled, (val_x - mu, val_y), (test_x - mu, test_y)))
        for point in points:
            for name in args.transforms:
                tf = transforms[name]
                w, b = federate([(tf(x), y) for x, y in train], np.random.default_rng(1000 + seed), **point)
                key = (name, json.dumps(point))
                results.setdefault(key, []).append((_auc(tf, w, b, val_x, val_y), _auc(tf, w, b, test_x, test_y)))
        print(f"seed {seed} done", flush=True)
    print(f"\n{args.dataset}, {args.features}, {args.banks} banks {args.overrides}, {args.seeds} seeds (mean ± 95% CI)")
    print("| features | point | validation AUC (selects) | test AUC (record) |\n|---|---|---|---|")
    for (name, label), values in results.items():
        val_mean, val_half = mean_interval([v for v, _ in values])
        test_mean, test_half = mean_interval([t for _, t in values])
        print(f"| {name} | `{label}` | {val_mean:.4f} ± {val_half:.4f} | {test_mean:.4f} ± {test_half:.4f} |")


if __name__ == "__main__":
    main()
