"""DP-SGD step cost next to a non-private LoRA step, Opacus, and a naive per-example loop.

In one process, on the same batches, interleaved (so machine noise hits every variant alike):

* ``plain``  -- non-private LoRA step: mean loss, ``backward()``, Adam step;
* ``dp``     -- our DP step (:func:`fedlora.training.dp_gradient`): output-gradient
  per-example gradients, clipping, Gaussian noise, Adam step;
* ``opacus`` -- Opacus ``GradSampleModule`` hooks + ``DPOptimizer`` (reference), on a copy;
* ``naive``  -- one backward per example, clip, sum, noise, step.

Before timing, our per-example gradients are checked against the naive loop (eval mode, no
dropout); ``--check-only`` stops there (exit 1 when above tolerance). Peak memory per
variant: on CPU, peak RSS growth over the RSS right after loading, in a child process; on
GPU, ``torch.cuda.max_memory_allocated`` growth over one step, in this process (the peak
counter is reset before each variant, so it is exact there).

    python benchmarks/dp_step.py --model minilm      # or smollm2, or a checkpoint folder
The last line is ``dp/plain=<ratio> opacus/plain=<ratio> mem=<ratio>`` (medians; mem = dp/plain);
``--json PATH`` also writes every number.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812

from fedlora.config import LoraConfig, TrainingConfig
from fedlora.model.encoding import EncodedSet
from fedlora.model.heads import CentredLinear
from fedlora.model.loading import load_base_model
from fedlora.model.lora import attach_lora
from fedlora.privacy.clipping import clip_and_sum
from fedlora.privacy.per_sample import PerExampleGradients
from fedlora.privacy.randomness import Randomness, SecureRandomness, SeededRandomness
from fedlora.training import DPSettings, dp_gradient, make_optimizer

VARIANTS = ("plain", "dp", "opacus", "naive")
SIGMA, CLIP = 1.0, 1.0


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, EncodedSet, torch.device]:
    device = torch.device(args.device)
    loaded = load_base_model(args.model, quantization=args.quantization, seed=0, device=device)
    model = attach_lora(loaded, LoraConfig.model_validate({"rank": 8, "alpha": 16}), seed=0)
    if args.bf16:
        model = model.to(torch.bfloat16)
    model.train()  # training mode as in real training (Opacus hooks only capture in train mode)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (args.batch, args.seq), generator=gen)
    data = EncodedSet(ids, torch.ones_like(ids), torch.randint(0, 2, (args.batch,), generator=gen))
    return model, data, device


def teach_opacus_centred_linear() -> None:
    """Register Opacus' per-sample gradient of :class:`CentredLinear` (``y = W·(x − offset) + b``).

    The weight's per-example gradient is ``Σ_t δ_t (x_t − offset)ᵀ`` and the bias's ``Σ_t δ_t``: Opacus'
    own ``nn.Linear`` rule applied to the centred input (the same maths as :mod:`fedlora.privacy.per_sample`).
    Without it Opacus falls back to functorch for this subclass.
    """
    from opacus.grad_sample import GradSampleModule, register_grad_sampler

    if CentredLinear in GradSampleModule.GRAD_SAMPLERS:
        return

    @register_grad_sampler(CentredLinear)
    def _centred_linear(
        layer: CentredLinear, activations: list[torch.Tensor], backprops: torch.Tensor
    ) -> dict[torch.nn.Parameter, torch.Tensor]:
        centred = layer.weight_input(activations[0])
        samples: dict[torch.nn.Parameter, torch.Tensor] = {}
        if layer.weight.requires_grad:
            samples[layer.weight] = torch.einsum("n...i,n...j->nij", backprops, centred)
        if layer.bias is not None and layer.bias.requires_grad:
            samples[layer.bias] = torch.einsum("n...k->nk", backprops)
        return samples


def make_steps(
    model: torch.nn.Module,
    data: EncodedSet,
    device: torch.device,
    include: tuple[str, ...] = VARIANTS,
    *,
    secure_rng: bool = False,
) -> dict[str, Callable[[], None]]:
    config = TrainingConfig.model_validate({"physical_batch_size": 10_000})
    index = torch.arange(len(data))
    ids, mask, labels = data.batch(index, device)
    rng: Randomness = SecureRandomness() if secure_rng else SeededRandomness(0)
    dp = DPSettings(noise_multiplier=SIGMA, max_grad_norm=CLIP, sample_rate=1.0)
    collector = PerExampleGradients(model)
    params = collector.parameters()
    opt = make_optimizer(params, config)

    def plain() -> None:
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        F.cross_entropy(logits, labels).backward()
        opt.step()

    def ours() -> None:
        opt.zero_grad(set_to_none=True)
        grads, _, _ = dp_gradient(
            model, collector, data, index, dp=dp, physical_batch_size=10_000, randomness=rng, device=device
        )
        for p, g in grads.items():
            p.grad = g.to(p.dtype)
        opt.step()

    def naive() -> None:
        per_example: dict[torch.Tensor, list[torch.Tensor]] = {p: [] for p in params}
        for i in range(len(labels)):
            model.zero_grad(set_to_none=True)
            logits = model(input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1]).logits.float()
            F.cross_entropy(logits, labels[i : i + 1], reduction="sum").backward()
            for p in params:
                per_example[p].append(p.grad.detach().clone())  # type: ignore[union-attr]
        clipped = clip_and_sum({p: torch.stack(g) for p, g in per_example.items()}, max_grad_norm=CLIP)
        for tensor, s in clipped.summed.items():
            noised = (s + rng.normal(s.shape, SIGMA * CLIP, device=s.device, dtype=s.dtype)) / len(labels)
            tensor.grad = noised.to(tensor.dtype)
        opt.step()

    steps = {k: v for k, v in {"plain": plain, "dp": ours, "naive": naive}.items() if k in include}
    if "opacus" not in include:
        return steps
    try:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        teach_opacus_centred_linear()
        twin = copy.deepcopy(model)
        # strict=False: Opacus refuses trainable layers with buffers (BatchNorm's running statistics are data);
        # CentredLinear's one buffer, its offset, is a constant computed from public rows, never updated by data.
        gsm = GradSampleModule(twin, batch_first=True, loss_reduction="sum", strict=False)
        twin_params = [p for p in twin.parameters() if p.requires_grad]
        dpo = DPOptimizer(
            make_optimizer(twin_params, config),
            noise_multiplier=SIGMA,
            max_grad_norm=CLIP,
            expected_batch_size=len(labels),
        )

        def opacus_step() -> None:
            dpo.zero_grad(set_to_none=True)
            logits = gsm(input_ids=ids, attention_mask=mask).logits.float()
            F.cross_entropy(logits, labels, reduction="sum").backward()
            dpo.step()

        steps["opacus"] = opacus_step
    except Exception as exc:  # report, do not hide: Opacus may not support a layer
        print(f"opacus unavailable for this model: {type(exc).__name__}: {exc}", file=sys.stderr)
    return steps


def check_against_naive(model: torch.nn.Module, data: EncodedSet, device: torch.device) -> float:
    """Max abs difference between our per-example gradients and a per-example backward loop."""
    model.eval()
    ids, mask, labels = data.batch(torch.arange(min(4, len(data))), device)
    collector = PerExampleGradients(model)
    params = collector.parameters()
    with collector:
        losses = F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits.float(), labels, reduction="none")
    ours = collector.compute(losses.sum())
    worst = 0.0
    for i in range(len(labels)):
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1]).logits.float()
        F.cross_entropy(logits, labels[i : i + 1], reduction="sum").backward()
        for p in params:
            scale = float(p.grad.abs().max()) + 1e-12  # type: ignore[union-attr]
            worst = max(worst, float((ours[p][i] - p.grad).abs().max()) / scale)  # type: ignore[operator]
    model.train()
    model.zero_grad(set_to_none=True)
    return worst


def time_noise(model: torch.nn.Module, device: torch.device, *, secure: bool, repeats: int = 3) -> float:
    """Median seconds to draw (and move to ``device``) the Gaussian noise of one DP step."""
    rng: Randomness = SecureRandomness() if secure else SeededRandomness(0)
    shapes = [p.shape for p in model.parameters() if p.requires_grad]
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        for shape in shapes:
            rng.normal(shape, SIGMA * CLIP, device=device, dtype=torch.float32)
        sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def cuda_step_memory(step: Callable[[], None]) -> float:
    """Peak CUDA memory growth (MiB) of one step over what is allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def measure_memory(args: argparse.Namespace, variant: str) -> float:
    """Peak memory growth (MiB) of a variant's steps, measured in a fresh child process (CPU)."""
    cmd = [sys.executable, __file__, *sys.argv[1:], "--memory-child", variant]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return float(out)


def memory_child(args: argparse.Namespace) -> None:
    model, data, device = build(args)
    step = make_steps(model, data, device, include=(args.memory_child,), secure_rng=args.secure_rng)[args.memory_child]
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(3):
            step()
        sync(device)
        print((torch.cuda.max_memory_allocated() - base) / 2**20)
        return
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    for _ in range(3):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print((peak - rss) / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm", help="minilm, smollm2, tiny-bert, ... (default minilm)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quantization", default="none", choices=["none", "4", "8"])
    parser.add_argument("--bf16", action="store_true", help="cast the model to bfloat16 (GPU)")
    parser.add_argument("--skip", nargs="*", default=[], choices=VARIANTS, help="variants not to run")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant memory children")
    parser.add_argument("--check-only", action="store_true", help="only check per-example gradients, then exit")
    parser.add_argument("--no-check", action="store_true", help="time without the gradient check (run it separately)")
    parser.add_argument("--secure-rng", action="store_true", help="noise from the OS CSPRNG (production setting)")
    parser.add_argument("--json", dest="json_path", help="also write the results to this JSON file")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.memory_child:
        memory_child(args)
        return
    model, data, device = build(args)
    # Relative to the largest entry of each example's gradient: fp32 agrees to rounding; a
    # 4-bit base in fp32 compute to 1e-2; bf16 (8-bit mantissa, 2^-8 = 3.9e-3 per rounding,
    # compounded over the layers, batched vs single-row kernels) to 3e-2.
    tolerance = 3e-2 if args.bf16 else 1e-2 if args.quantization != "none" else 1e-4
    error = float("nan") if args.no_check else check_against_naive(model, data, device)
    print(f"per-example gradients vs naive loop: max relative error {error:.2e} (tolerance {tolerance:g})")
    setting = {
        "model": args.model,
        "batch": args.batch,
        "seq": args.seq,
        "device": device.type,
        "dtype": "bf16" if args.bf16 else "fp32",
        "quantization": args.quantization,
        "secure_rng": args.secure_rng,
        "grad_error": error,
        "grad_tolerance": tolerance,
    }
    if not args.no_check and error > tolerance:
        write_json(args.json_path, setting)
        sys.exit("per-example gradients do not match the naive loop; refusing to time")
    if args.check_only:
        write_json(args.json_path, setting)
        return
    steps = make_steps(
        model, data, device, include=tuple(v for v in VARIANTS if v not in args.skip), secure_rng=args.secure_rng
    )
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.steps):
        for name, step in steps.items():  # interleaved: each round times every variant once
            sync(device)
            started = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - started)
    median = {k: statistics.median(v) for k, v in times.items()}
    noise_s = time_noise(model, device, secure=args.secure_rng)
    print(f"noise for all trainable parameters ({'OS CSPRNG' if args.secure_rng else 'seeded'}): {noise_s:.4f} s")
    if args.no_memory:
        memory: dict[str, float] = {}
    elif device.type == "cuda":
        memory = {k: cuda_step_memory(step) for k, step in steps.items() if k != "naive"}
    else:
        memory = {k: measure_memory(args, k) for k in steps if k != "naive"}
    machine = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(f"\nmodel {args.model}, batch {args.batch}, seq {args.seq}, LoRA r=8 on q,v, {device.type} ({machine})")
    print(f"{'variant':<8} {'median s':>9} {'x plain':>8} {'peak MiB':>9}")
    for name in steps:
        mem = memory.get(name)
        print(
            f"{name:<8} {median[name]:9.3f} {median[name] / median['plain']:8.3f} "
            f"{'' if mem is None else f'{mem:9.1f}'}"
        )
    print(json.dumps({"median_s": median, "peak_mib": memory, "steps": times}))
    opacus = median.get("opacus", float("nan")) / median["plain"]
    mem_ratio = memory["dp"] / memory["plain"] if memory.get("plain") and "dp" in memory else float("nan")
    dp_ratio = median["dp"] / median["plain"] if "dp" in median else float("nan")
    write_json(
        args.json_path,
        {
            **setting,
            "machine": machine,
            "median_s": median,
            "peak_mib": memory,
            "examples_per_s": {k: args.batch / v for k, v in median.items()},
            "noise_s": noise_s,
            "dp_over_plain": dp_ratio,
            "opacus_over_plain": opacus,
            "memory_dp_over_plain": mem_ratio,
            "memory_opacus_over_plain": memory["opacus"] / memory["plain"]
            if memory.get("plain") and "opacus" in memory
            else float("nan"),
        },
    )
    print(f"dp/plain={dp_ratio:.3f} opacus/plain={opacus:.3f} mem={mem_ratio:.3f}")


def write_json(path: str | None, result: dict[str, object]) -> None:
    """Write ``result`` to ``path`` (when given) as JSON; NaN becomes null."""
    if path is None:
        return
    clean = {k: None if isinstance(v, float) and v != v else v for k, v in result.items()}
    with open(path, "w") as f:
        json.dump(clean, f, indent=2)


if __name__ == "__main__":
    main()
