"""Size of the compiled pipeline (KFP IR YAML) and its task count by rounds × banks.

Usage::

    .venv/bin/python benchmarks/pipeline_size.py                      # the default table
    .venv/bin/python benchmarks/pipeline_size.py --sizes 200x10 --graph rounds

``--graph`` (``auto`` | ``rounds`` | ``coordinator``) is ``kubeflow.graph``; when the config has no
such field (before the coordinator existed) the option is ignored and the unrolled graph is measured.
Tasks are the leaf executors of the compiled spec (every component task, in every sub-DAG).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from fedlora.config import Config, load_config
from fedlora.pipeline.compile import compile_pipeline


def _config(rounds: int, banks: int, graph: str) -> Config:
    overrides = [
        f"federation.rounds={rounds}",
        "federation.banks=[" + ", ".join(f"{{name: bank-{i:02d}}}" for i in range(banks)) + "]",
    ]
    if "graph" in type(load_config(None).kubeflow).model_fields:
        overrides.append(f"kubeflow.graph={graph}")
    return load_config(None, overrides)


def _tasks(spec: dict[str, Any]) -> int:
    """Component tasks (not sub-DAGs) in the root DAG and every sub-DAG."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec.get("components", {}).values() if "dag" in c]
    executors = {name for name, c in spec.get("components", {}).items() if "executorLabel" in c}
    return sum(1 for dag in dags for t in dag.get("tasks", {}).values() if t["componentRef"]["name"] in executors)


def measure(rounds: int, banks: int, graph: str) -> dict[str, Any]:
    """Compile one pipeline; return its bytes, task count and compile seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.yaml"
        started = time.perf_counter()
        compile_pipeline(_config(rounds, banks, graph), path)
        seconds = time.perf_counter() - started
        text = path.read_text()
    spec = next(yaml.safe_load_all(text))  # a second document holds the Kubernetes platform settings
    if "pipelineSpec" in spec:
        spec = spec["pipelineSpec"]
    return {"rounds": rounds, "banks": banks, "bytes": len(text.encode()), "tasks": _tasks(spec), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", default=["5x3", "20x10", "50x3", "50x10", "200x10"])
    parser.add_argument("--graph", default="auto", choices=["auto", "rounds", "coordinator"])
    args = parser.parse_args()
    print("| rounds × banks | graph | bytes | KiB | tasks | compile s |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        rounds, banks = (int(x) for x in size.split("x"))
        row = measure(rounds, banks, args.graph)
        print(
            f"| {rounds} × {banks} | {args.graph} | {row['bytes']} | {row['bytes'] / 1024:.0f} | {row['tasks']} | "
            f"{row['seconds']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
