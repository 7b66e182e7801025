"""The seed's workload (``--config finance_sentiment``): what a step and a run cost on this machine.

``step``: one bank's real TFNS batch (its Poisson-expected size, ``training.batch_size``) through
the completion loss of :mod:`fedlora.model.completion`, timed interleaved (so machine noise hits both
alike) as

* ``plain`` -- the non-private step (:func:`fedlora.training.plain_gradient`, mean loss, SGD step);
* ``dp``    -- the DP-SGD step (:func:`fedlora.training.dp_gradient`: per-example gradients,
  clipping, Gaussian noise, SGD step),

and prints the medians, their ratio and the quantiles of the per-example gradient norms (what
``privacy.max_grad_norm`` clips; bundled public data, no bank's rows).

``curve``: which layers and which learning rate learn, in minutes: centralised non-private LoRA (the
banks' training rows taken in turn, batch 32, SGD with momentum or Adam at a constant rate) from the
config's initial adapter, scored on the banks' pooled *validation* rows (label-scoring accuracy)
every 40 steps, with the mean training loss. One frozen-layer pass serves every ``--points`` entry.

``run``: ``fedlora simulate`` with the built-in config (plus ``--set`` overrides), then FinLoRA's
generation metrics of the final adapter on every bank's test rows (:mod:`fedlora.model.generation`);
prints the wall time, the time per phase and the metrics of every round.

    python benchmarks/finance_sentiment.py step --repeats 3
    python benchmarks/finance_sentiment.py curve --set lora.top_layers=2 --steps 160 --points sgd:1 sgd:4
    python benchmarks/finance_sentiment.py run --set federation.rounds=1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedlora.config import load_config
from fedlora.model.completion import CompletionSet
from fedlora.privacy.per_sample import PerExampleGradients
from fedlora.privacy.randomness import SeededRandomness
from fedlora.runtime import Runtime
from fedlora.training import DPSettings, dp_gradient, make_optimizer, plain_gradient


def _cpu() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text(encoding="utf-8") if cpuinfo.exists() else ""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, avx512={'avx512f' in flags}"


def step(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config("finance_sentiment", args.overrides)
    runtime = Runtime(config)
    model, device = runtime.model, runtime.device
    rows = runtime.bank("bank-a").train
    batch = torch.arange(min(config.training.batch_size, len(rows)))
    collector = PerExampleGradients(model)
    params = collector.parameters()
    optimizer = make_optimizer(params, config.training)
    dp = DPSettings(noise_multiplier=1.0, max_grad_norm=config.privacy.max_grad_norm, sample_rate=0.05)
    randomness = SeededRandomness(0)
    times: dict[str, list[float]] = {"plain": [], "dp": []}
    norms = torch.zeros(0)
    model.train()
    for _ in range(args.repeats):
        for variant in ("plain", "dp"):
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            if variant == "plain":
                plain_gradient(
                    model, rows, batch, physical_batch_size=config.training.physical_batch_size, device=device
                )
            else:
                grads, _, norms = dp_gradient(
                    model,
                    collector,
                    rows,
                    batch,
                    dp=dp,
                    physical_batch_size=config.training.physical_batch_size,
                    randomness=randomness,
                    device=device,
                )
                for p, g in grads.items():
                    p.grad = g.to(p.dtype)
            optimizer.step()
            times[variant].append(time.perf_counter() - started)
    medians = {k: statistics.median(v) for k, v in times.items()}
    width = int(rows.attention_mask[batch].sum(dim=1).max())
    quantiles = np.quantile(norms.numpy(), [0.1, 0.5, 0.9]).tolist() if len(norms) else []
    print(f"machine: {_cpu()}, torch threads {torch.get_num_threads()}")
    print(
        f"batch {len(batch)} rows, padded to {width} tokens, model {config.model.name}, lora top_layers "
        f"{config.lora.top_layers}"
    )
    for variant, seconds in times.items():
        print(f"{variant:5s} step: median {medians[variant]:.2f} s  ({', '.join(f'{s:.2f}' for s in seconds)})")
    print(f"per-example gradient norm quantiles 10/50/90%: {', '.join(f'{q:.3g}' for q in quantiles)}")
    print(f"dp/plain={medians['dp'] / medians['plain']:.3f}")
    return {"machine": _cpu(), "times": times, "medians": medians, "norm_quantiles": quantiles, "tokens": width}


def curve(args: argparse.Namespace) -> dict[str, Any]:
    from fedlora.model.lora import adapter_state, load_adapter_state
    from fedlora.training import predict_scores

    config = load_config("finance_sentiment", ["tracking.enabled=false", *args.overrides])
    runtime = Runtime(config)
    model, device = runtime.model, runtime.device
    banks = [b.name for b in config.federation.banks]
    started = time.perf_counter()
    sets = {b: runtime.bank(b) for b in banks}  # the frozen-layer pass, once
    print(f"machine: {_cpu()}; frozen-layer pass {time.perf_counter() - started:.0f} s; lora {config.lora}")
    initial = adapter_state(model)
    labels = np.concatenate([sets[b].val.labels.numpy() for b in banks])

    def validation_accuracy() -> float:
        scores = [predict_scores(model, sets[b].val, batch_size=64, device=device) for b in banks]
        return float(np.mean(np.concatenate(scores).argmax(axis=1) == labels))

    result: dict[str, Any] = {"machine": _cpu(), "lora": config.lora.model_dump(), "points": {}}
    for point in args.points:
        name, rate = point.split(":")
        load_adapter_state(model, initial)
        training = load_config(
            "finance_sentiment",
            ["privacy.enabled=false", f"training.optimizer={name}", f"training.learning_rate={rate}"],
        ).training
        optimizer = make_optimizer(PerExampleGradients(model).parameters(), training)
        generator = torch.Generator().manual_seed(0)
        losses: list[float] = []
        points: list[dict[str, float]] = []
        started = time.perf_counter()
        for step_index in range(1, args.steps + 1):
            rows = sets[banks[step_index % len(banks)]].train
            batch = torch.randperm(len(rows), generator=generator)[: training.batch_size]
            model.train()
            optimizer.zero_grad(set_to_none=True)
            loss = plain_gradient(model, rows, batch, physical_batch_size=len(batch), device=device)
            losses.append(loss / len(batch))
            optimizer.step()
            if step_index % 40 == 0 or step_index == args.steps:
                points.append(
                    {"step": step_index, "loss": statistics.mean(losses[-40:]), "val_accuracy": validation_accuracy()}
                )
        seconds = time.perf_counter() - started
        print(
            f"{point}: {seconds:.0f} s; "
            + ", ".join(f"step {p['step']} loss {p['loss']:.3f} val {p['val_accuracy']:.4f}" for p in points)
        )
        result["points"][point] = {"seconds": seconds, "curve": points}
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    from fedlora.model.generation import score_text_task
    from fedlora.simulate import simulate

    config = load_config("finance_sentiment", ["tracking.enabled=false", *args.overrides])
    runtime = Runtime(config)
    started = time.perf_counter()
    summary = simulate(config, runtime=runtime)
    wall = time.perf_counter() - started
    print(f"machine: {_cpu()}")
    print(
        f"simulate wall time {wall:.1f} s; phases: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in runtime.timer.seconds.items())
    )
    for record in summary.rounds:
        m = record.metrics or {}
        eps = ", ".join(f"{b} {e:.2f}" for b, e in record.epsilon.items() if e is not None)
        print(
            f"round {record.round}: label-scoring test accuracy {m.get('accuracy', float('nan')):.4f}, weighted F1 "
            f"{m.get('f1', float('nan')):.4f}; ε {eps or '∞'}; banks {record.banks}"
        )
    result: dict[str, Any] = {
        "machine": _cpu(),
        "wall_seconds": wall,
        "phases": runtime.timer.seconds,
        "rounds": [r.metrics for r in summary.rounds],
    }
    if not args.no_generation:
        task = runtime.text_task
        assert task is not None
        from fedlora.model.lora import load_adapter_state
        from fedlora.store.adapters import load_adapter
        from fedlora.store.run import open_run_store

        load_adapter_state(runtime.model, load_adapter(open_run_store(config, summary.run), "final").tensors)
        started = time.perf_counter()
        tests = [runtime.bank(b.name).test for b in config.federation.banks]
        pooled = CompletionSet(  # every bank's test rows in one set: the pooled metrics, not a mean of the banks'
            **{
                f: torch.cat([getattr(t, f) for t in tests])
                for f in ("input_ids", "attention_mask", "answer_mask", "answer_start", "labels")
            },
            label_tokens=tests[0].label_tokens,
        )
        scores = score_text_task(
            runtime.model,
            runtime._tokenizer,
            pooled,
            labels=task.labels,  # type: ignore[arg-type]
            batch_size=config.training.eval_batch_size,
            device=runtime.device,
        )
        print(
            f"final adapter, greedy generation on every bank's test rows ({scores.n} rows, "
            f"{time.perf_counter() - started:.0f} s): accuracy {scores.accuracy:.4f}, weighted F1 "
            f"{scores.weighted_f1:.4f}, label-scoring accuracy {scores.label_scoring_accuracy:.4f}, "
            f"no label named {scores.no_label_fraction:.4f}"
        )
        result["generation"] = scores.as_dict()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("step", "curve", "run"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=160, help="curve: steps per point")
    parser.add_argument(
        "--points", nargs="+", default=["sgd:1"], help="curve: optimizer:learning_rate entries (sgd or adam)"
    )
    parser.add_argument("--no-generation", action="store_true", help="run: skip the generation metrics")
    parser.add_argument("--json", help="also write every number here")
    args = parser.parse_args()
    result = {"step": step, "curve": curve, "run": run}[args.what](args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=float)


if __name__ == "__main__":
    main()
