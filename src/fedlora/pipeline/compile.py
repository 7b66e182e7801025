"""Compile the pipeline and the reusable components to KFP YAML (``pipelines/``, ``components/``)."""

from __future__ import annotations

from pathlib import Path

from kfp import compiler

from fedlora.config import Config, load_config
from fedlora.pipeline.components import CONTROL_IMAGE, make_components
from fedlora.pipeline.pipeline import build_pipeline

__all__ = ["COMPONENT_FILES", "compile_components", "compile_pipeline", "default_config"]

COMPONENT_FILES = {
    "initialize_run": "initialize_run.yaml",
    "train_bank": "train_bank.yaml",
    "aggregate_round": "aggregate_round.yaml",
    "run_round": "run_round.yaml",
    "federate_rounds": "federate_rounds.yaml",
    "finalize_run": "finalize_run.yaml",
}
"""File name of each component under ``components/``."""


def default_config() -> Config:
    """The config of the committed ``pipelines/fedlora.yaml``: the defaults (3 banks, 5 rounds)."""
    return load_config(None)


def compile_pipeline(
    config: Config,
    path: str | Path,
    *,
    image: str | None = None,
    secret: str | None = None,
    ca_bundle: str | None = None,
    secret_keys: tuple[str, ...] = (),
) -> Path:
    """Compile the pipeline for ``config`` to ``path`` (KFP IR YAML, uploadable in the Kubeflow UI).

    ``image``, ``secret``, ``ca_bundle`` and ``secret_keys`` are as in :func:`fedlora.pipeline.pipeline.build_pipeline`.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pipeline = build_pipeline(config, image=image, secret=secret, ca_bundle=ca_bundle, secret_keys=secret_keys)
    compiler.Compiler().compile(pipeline, str(out))
    return out


def compile_components(directory: str | Path, *, image: str = CONTROL_IMAGE) -> list[Path]:
    """Compile each component to ``directory/<name>.yaml`` (load with ``kfp.components.load_component_from_file``)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    components = make_components(image)
    paths = []
    for field, filename in COMPONENT_FILES.items():
        path = out / filename
        compiler.Compiler().compile(getattr(components, field), str(path))
        paths.append(path)
    return paths
