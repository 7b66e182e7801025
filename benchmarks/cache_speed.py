"""Speed-up of training on cached frozen-layer activations (``model.cache_frozen_layers``).

Same model (MiniLM, FFA-LoRA r=4 on the top ``--top-layers`` layers + head), same rows, same
Poisson batches and noise seed: times ``--steps`` DP-SGD steps on token ids (every layer runs) and
on cached activations (only the adapted layers run), plus the one-off cost of building the cache,
and checks that both give the same parameters afterwards.

    python benchmarks/cache_speed.py --rows 256 --steps 10 --top-layers 1
"""

from __future__ import annotations

import argparse
import time

from fedlora.config import load_config
from fedlora.model.cache import cache_frozen_layers
from fedlora.model.encoding import EncodedSet
from fedlora.model.lora import adapter_state, load_adapter_state
from fedlora.privacy.randomness import SeededRandomness
from fedlora.runtime import Runtime
from fedlora.training import DPSettings, train_local


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top-layers", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    config = load_config(
        None,
        [
            f"lora.top_layers={args.top_layers}",
            "model.cache_frozen_layers=false",
            "tracking.enabled=false",
            f"data.max_rows={int(args.rows / 0.7) + 10}",
            "federation.banks=[{name: bank-a}]",
            "federation.min_banks=1",
            *args.overrides,
        ],
    )
    runtime = Runtime(config)
    model, device = runtime.model, runtime.device
    tokens = runtime.bank("bank-a").train
    if not isinstance(tokens, EncodedSet):
        raise SystemExit("cache_speed needs the token rows: run it with model.cache_frozen_layers=false")
    init = adapter_state(model)
    started = time.perf_counter()
    cached = cache_frozen_layers(model, tokens, batch_size=128, device=device)
    cache_seconds = time.perf_counter() - started
    dp = DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=config.training.batch_size / len(tokens))
    results = {}
    for name, data in (("tokens", tokens), ("cached", cached)):
        load_adapter_state(model, init)
        started = time.perf_counter()
        train_local(
            model,
            data,
            config=config.training,
            steps=args.steps,
            sample_rate=dp.sample_rate,
            dp=dp,
            randomness=SeededRandomness(1),
            device=device,
        )
        results[name] = (time.perf_counter() - started, adapter_state(model))
    diff = max(float((results["tokens"][1][k] - results["cached"][1][k]).abs().max()) for k in init)
    t_tok, t_cache = results["tokens"][0], results["cached"][0]
    layers = int(model.config.num_hidden_layers)  # type: ignore[union-attr,arg-type]
    print(
        f"rows {len(tokens)}, batch {config.training.batch_size}, {args.steps} DP steps, top {args.top_layers} "
        f"of {layers} layers adapted\n"
        f"tokens: {t_tok:.1f}s ({t_tok / args.steps:.3f} s/step)   cached: {t_cache:.1f}s "
        f"({t_cache / args.steps:.3f} s/step)   cache build (once per bank): {cache_seconds:.1f}s\n"
        f"speed-up per step {t_tok / t_cache:.2f}x; max |Δθ| after training, tokens vs cached: {diff:.2e}"
    )


if __name__ == "__main__":
    main()
