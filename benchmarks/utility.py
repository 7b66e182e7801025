"""Utility table: centralized LoRA, each bank alone, FedLoRA (non-private and DP), logistic regression.

All rows use the same data partition, splits and pooled test set (every bank's held-out
rows). Non-federated rows train the same LoRA model for the same number of local epochs as
the federation in total (rounds x local_epochs).

    python benchmarks/utility.py                      # default config, ε = 1, 3, 8
    python benchmarks/utility.py --set data.dataset=credit_data --epsilons 8
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from fedlora.config import Config, load_config
from fedlora.data.banks import TextSet, build_bank_data
from fedlora.data.datasets import get_schema
from fedlora.evaluation import compute_metrics
from fedlora.model.encoding import encode
from fedlora.model.loading import load_base_model
from fedlora.model.lora import adapter_state, attach_lora, load_adapter_state
from fedlora.privacy.randomness import SeededRandomness
from fedlora.simulate import simulate
from fedlora.training import predict_default_probability, steps_per_round, train_local


def logistic_regression_auc(config: Config, banks: dict[str, Any]) -> float:
    schema = get_schema(config.data.dataset)
    train = pd.concat([b.frames["train"] for b in banks.values()], ignore_index=True)
    test = pd.concat([b.frames["test"] for b in banks.values()], ignore_index=True)
    numeric = [c.name for c in schema.columns if c.kind == "numeric"]
    categorical = [c.name for c in schema.columns if c.kind == "categorical"]
    model = make_pipeline(
        ColumnTransformer(
            [
                ("num", make_pipeline(SimpleImputer(), StandardScaler()), numeric),
                (
                    "cat",
                    make_pipeline(
                        SimpleImputer(strategy="constant", fill_value="unknown"), OneHotEncoder(handle_unknown="ignore")
                    ),
                    categorical,
                ),
            ]
        ),
        LogisticRegression(max_iter=2000),
    )
    model.fit(train[numeric + categorical].astype({c: object for c in categorical}), train["label"])
    scores = model.predict_proba(test[numeric + categorical].astype({c: object for c in categorical}))[:, 1]
    return compute_metrics(test["label"].to_numpy(), scores).auc


def local_lora_auc(
    config: Config, train: TextSet, test: TextSet, loaded: Any, model: Any, init: dict[str, torch.Tensor]
) -> float:
    load_adapter_state(model, init)
    enc_train = encode(train, loaded.tokenizer, max_length=config.model.max_length)
    enc_test = encode(test, loaded.tokenizer, max_length=config.model.max_length)
    steps = steps_per_round(num_examples=len(enc_train), config=config.training) * config.federation.rounds
    train_local(
        model,
        enc_train,
        config=config.training,
        steps=steps,
        sample_rate=min(1.0, config.training.batch_size / len(enc_train)),
        dp=None,
        randomness=SeededRandomness(config.seed),
        device=loaded.device,
    )
    scores = predict_default_probability(
        model, enc_test, batch_size=config.training.eval_batch_size, device=loaded.device
    )
    return compute_metrics(test.labels, scores).auc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--epsilons", type=float, nargs="*", default=[1.0, 3.0, 8.0])
    parser.add_argument("--skip-local", action="store_true", help="Skip centralized and bank-alone LoRA rows.")
    args = parser.parse_args()
    base = [*args.overrides, "tracking.enabled=false", "output.dir=/tmp/fedlora-utility"]
    config = load_config(args.config, base)
    banks = build_bank_data(config)
    test = TextSet.concat([b.test for b in banks.values()])
    rows: list[tuple[str, float, float]] = []

    def record(name: str, started: float, auc: float) -> None:
        rows.append((name, auc, time.perf_counter() - started))
        print(f"{name:<34} AUC {auc:.4f}  ({rows[-1][2]:.0f}s)", flush=True)

    started = time.perf_counter()
    record("logistic regression (pooled)", started, logistic_regression_auc(config, banks))
    if not args.skip_local:
        loaded = load_base_model(config.model.name, quantization=config.model.quantization, seed=config.seed)
        model = attach_lora(loaded, config.lora, seed=config.seed)
        init = adapter_state(model)
        started = time.perf_counter()
        central = TextSet.concat([b.train for b in banks.values()])
        record("centralized LoRA, non-private", started, local_lora_auc(config, central, test, loaded, model, init))
        for name, bank in banks.items():
            started = time.perf_counter()
            record(f"{name} alone, non-private", started, local_lora_auc(config, bank.train, test, loaded, model, init))
        del model, loaded
    stamp = int(time.time())
    started = time.perf_counter()
    summary = simulate(load_config(args.config, [*base, "privacy.enabled=false", f"output.run_name=np-{stamp}"]))
    record("FedLoRA, non-private", started, summary["final"]["auc"])
    for eps in args.epsilons:
        started = time.perf_counter()
        summary = simulate(
            load_config(args.config, [*base, f"privacy.target_epsilon={eps}", f"output.run_name=dp{eps}-{stamp}"])
        )
        record(f"DP-FedLoRA, ε={eps:g}", started, summary["final"]["auc"])
    print("\n| setting | pooled test AUC | seconds |\n|---|---|---|")
    for name, auc, seconds in rows:
        print(f"| {name} | {auc:.4f} | {seconds:.0f} |")
    print(json.dumps({"config_overrides": args.overrides, "rows": [{"setting": n, "auc": a} for n, a, _ in rows]}))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
