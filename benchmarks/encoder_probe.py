#!/usr/bin/env python3
"""Which frozen representation carries the signal? Linear-probe ceilings per base model, ± the row's columns.

For each base model (a preset of :func:`fedlora.model.loading.load_base_model`) and seed, every
bank's rows are split as ``fedlora simulate`` splits them; each row's text is encoded once by
the frozen model and read two ways: the masked mean of the last hidden states ``h̄(x)`` (what
the head of ``minilm`` reads) and the last real token's hidden state (what a decoder's score head
reads). Each representation, alone and concatenated with the row's schema columns
(``model.schema_features``), and the columns alone, is scored by the pooled **non-private**
linear probe of :func:`head_screen.probe_ceiling`: logistic regression on every bank's training
rows, features standardised with the pooled training mean and deviation, L2 strength chosen on
the pooled validation AUC. Standardising with the banks' own statistics is a non-private
shortcut: this is an upper bound to compare representations by, never a bank's mechanism, and no
DP federation of a linear head on the same features can be expected to beat it.

    python benchmarks/encoder_probe.py --models minilm smollm2 --seeds 10      # German Credit, 64 tokens
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from head_screen import SPLITS, banks_override, probe_ceiling

from fedlora.baselines import mean_interval
from fedlora.config import load_config
from fedlora.data.banks import build_bank_data
from fedlora.model.heads import masked_mean
from fedlora.model.loading import load_base_model

Array = np.ndarray
VARIANTS = ("mean", "last", "mean + columns", "last + columns", "columns")


class FrozenEncoder:
    """A base model's last hidden states, read as the masked mean and as the last real token, memoised."""

    def __init__(self, name: str, max_length: int, batch_size: int = 64) -> None:
        loaded = load_base_model(name, quantization="none", seed=0)
        model = loaded.model.eval()
        self.body = model.bert if hasattr(model, "bert") else model.model  # the encoder/decoder stack
        self.tokenizer = loaded.tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.memo: dict[str, tuple[Array, Array]] = {}

    @torch.inference_mode()
    def _encode(self, texts: list[str]) -> None:
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            batch = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            mask = batch["attention_mask"]
            hidden = self.body(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state.float()
            mean = masked_mean(hidden, mask)
            if self.tokenizer.padding_side == "left":
                last = hidden[:, -1]
            else:
                last = hidden[torch.arange(len(chunk)), mask.sum(1) - 1]
            for text, m, t in zip(chunk, mean.numpy(), last.numpy(), strict=True):
                self.memo[text] = (m.astype(np.float64), t.astype(np.float64))

    def __call__(self, texts: list[str]) -> tuple[Array, Array]:
        """``(masked mean, last token)`` hidden states of each text, one row per text."""
        self._encode([t for t in dict.fromkeys(texts) if t not in self.memo])
        return np.stack([self.memo[t][0] for t in texts]), np.stack([self.memo[t][1] for t in texts])


def _standardised(parts: dict[str, dict[str, Array]], variant: str) -> dict[str, Array]:
    """The variant's features per split, standardised with the pooled training mean and deviation."""
    names = [p.strip() for p in variant.split("+")]
    x = {k: np.hstack([parts[k][n] for n in names]) for k in SPLITS}
    mu, sd = x["train"].mean(0), x["train"].std(0) + 1e-6
    return {k: (v - mu) / sd for k, v in x.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="german_credit")
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"])
    parser.add_argument("--banks", type=int, default=3)
    parser.add_argument("--max-rows", type=int, help="Stratified sample (default: every row).")
    parser.add_argument("--max-length", type=int, default=64, help="Tokens per serialized row.")
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    overrides = [
        f"data.dataset={args.dataset}",
        f"data.max_rows={args.max_rows or 'null'}",
        "model.schema_features=true",
        banks_override(args.banks),
    ]
    print(f"{args.dataset}, {args.banks} banks, max_length {args.max_length}, {args.seeds} seeds (mean ± 95% CI)")
    print("| model | features | validation AUC (selects C) | test AUC |\n|---|---|---|---|", flush=True)
    for name in args.models:
        encoder = FrozenEncoder(name, args.max_length)
        scores: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
        for seed in range(args.seeds):
            banks = list(build_bank_data(load_config(None, [*overrides, f"seed={seed}"])).values())
            parts: dict[str, dict[str, Array]] = {}
            labels: dict[str, Array] = {}
            for k in SPLITS:
                splits = [getattr(bank, k) for bank in banks]
                mean, last = encoder([t for s in splits for t in s.texts])
                columns = np.concatenate([np.asarray(s.features, dtype=np.float64) for s in splits])
                parts[k] = {"mean": mean, "last": last, "columns": columns}
                labels[k] = np.concatenate([s.labels for s in splits])
            for variant in VARIANTS:
                x = _standardised(parts, variant)
                pairs = [(x[k], labels[k]) for k in SPLITS]
                scores[variant].append(probe_ceiling(pairs[0], pairs[1], pairs[2]))
        for variant, values in scores.items():
            val = "{:.4f} ± {:.4f}".format(*mean_interval([v for v, _ in values]))
            test = "{:.4f} ± {:.4f}".format(*mean_interval([t for _, t in values]))
            print(f"| {name} | {variant} | {val} | {test} |", flush=True)


if __name__ == "__main__":
    main()
