"""The pipeline's run parameters: config fields, named with ``_`` for ``.`` (``privacy_target_epsilon``).

One config, one spelling: a parameter is the config field of the same dotted name, so the
Kubeflow UI, ``fedlora submit`` and the YAML config agree. Each parameter's type and default
come from the config compiled into the pipeline. A field that may be ``None`` (e.g.
``privacy.delta``: None = 0.1/n, ``store.uri``, ``output.run_name``) is given as ``0`` or an
empty string for ``None``: every such field must be positive or non-empty when set, so the
zero value is unambiguous (and the Kubeflow UI needs a default for every parameter).

Structural fields are not parameters: ``federation.rounds`` and the banks' namespaces and
templates shape the graph (one node per round and bank) and are fixed when compiling
(``fedlora compile --config``). ``federation_banks`` selects which of the compiled-in banks
take part in a run; the others show as ``not_selected``.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from fedlora.config import Config, ConfigError, load_config_text, set_dotted

__all__ = ["BANKS_PARAMETER", "FIELDS", "PARAMETERS", "Parameter", "parameter_values", "resolve_config", "to_overrides"]

FIELDS: tuple[str, ...] = (
    "seed",
    "data.dataset",
    "data.partition",
    "data.dirichlet_alpha",
    "data.max_rows",
    "model.name",
    "model.quantization",
    "model.max_length",
    "model.schema_features",
    "lora.rank",
    "lora.alpha",
    "lora.dropout",
    "lora.ffa",
    "privacy.enabled",
    "privacy.target_epsilon",
    "privacy.delta",
    "privacy.max_grad_norm",
    "privacy.noise_multiplier",
    "privacy.accountant",
    "privacy.release_metrics",
    "privacy.evaluation_epsilon",
    "training.local_epochs",
    "training.local_steps",
    "training.batch_size",
    "training.physical_batch_size",
    "training.learning_rate",
    "training.lora_learning_rate",
    "training.optimizer",
    "federation.fraction_fit",
    "federation.min_banks",
    "federation.server_optimizer",
    "federation.server_learning_rate",
    "federation.server_momentum",
    "federation.banks",
    "store.uri",
    "store.endpoint_url",
    "store.region",
    "store.path_style",
    "tracking.enabled",
    "tracking.uri",
    "tracking.experiment",
    "tracking.registered_model",
    "kubeflow.mode",
    "kubeflow.job_timeout_seconds",
    "output.run_name",
)
"""Dotted config fields that are run parameters, in the order the UI lists them."""


@dataclass(frozen=True)
class Parameter:
    """One run parameter.

    Attributes:
        name: Pipeline parameter name (``privacy_target_epsilon``).
        field: Dotted config name (``privacy.target_epsilon``).
        type: ``int``, ``float``, ``str``, ``bool`` or ``list`` (bank names).
        optional: The config allows ``None`` for it.
        description: The config field's description.
    """

    name: str
    field: str
    type: type
    optional: bool
    description: str


def _scalar_type(annotation: Any) -> tuple[type, bool]:
    """``(int|float|str|bool|list, optional)`` of a pydantic field annotation."""
    optional = False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        optional = type(None) in args
        (annotation,) = [a for a in args if a is not type(None)]
    if typing.get_origin(annotation) is Literal:
        return type(typing.get_args(annotation)[0]), optional
    if typing.get_origin(annotation) is list:
        return list, optional
    if annotation in (int, float, str, bool):
        return annotation, optional
    raise TypeError(f"unsupported parameter type {annotation!r}")


def _field(dotted: str) -> Any:
    model: type[BaseModel] = Config
    *sections, key = dotted.split(".")
    for section in sections:
        model = model.model_fields[section].annotation  # type: ignore[assignment]
    return model.model_fields[key]


def _parameter(dotted: str) -> Parameter:
    info = _field(dotted)
    kind, optional = _scalar_type(info.annotation)
    return Parameter(dotted.replace(".", "_"), dotted, kind, optional, info.description or "")


PARAMETERS: tuple[Parameter, ...] = tuple(_parameter(f) for f in FIELDS)
"""Every run parameter, with its type from the config model."""

_BY_NAME = {p.name: p for p in PARAMETERS}


def _zero(kind: type) -> Any:
    return kind()  # 0, 0.0, "" or False


def parameter_values(config: Config) -> dict[str, Any]:
    """Each parameter's value in ``config``: ``None`` as ``0``/``""``, ``federation_banks`` as the bank names."""
    tree = config.model_dump(mode="json")
    values: dict[str, Any] = {}
    for p in PARAMETERS:
        node: Any = tree
        for part in p.field.split("."):
            node = node[part]
        if p.field == "federation.banks":
            node = [b["name"] for b in node]
        values[p.name] = _zero(p.type) if node is None else node
    return values


def to_overrides(parameters: dict[str, Any]) -> dict[str, Any]:
    """Parameter values by parameter name -> config values by dotted name.

    A parameter that is ``None`` (not given to the component) is left out: the compiled-in
    value stays. ``0``/``""`` of a field that may be ``None`` becomes ``None``.

    Raises:
        KeyError: an unknown parameter name.
    """
    overrides: dict[str, Any] = {}
    for name, value in parameters.items():
        p = _BY_NAME[name]
        if value is None:
            continue
        if p.optional and p.type is not bool and value == _zero(p.type):
            value = None
        overrides[p.field] = value
    return overrides


BANKS_PARAMETER = "federation.banks"
"""The one list parameter: names of the compiled-in banks that take part (a subset of them)."""


def resolve_config(base_config: str, overrides: dict[str, Any]) -> Config:
    """The compiled-in config with the run's parameter values applied.

    Args:
        base_config: The config YAML compiled into the pipeline (``fedlora compile --config``).
        overrides: Dotted config names to values (see :func:`fedlora.pipeline.parameters.to_overrides`).
            ``federation.banks`` is a list of bank names: only those compiled-in banks take part
            (their namespaces and templates stay as compiled).

    Raises:
        ConfigError: an unknown bank, or a value the config refuses (the message names it).
    """
    tree = yaml.safe_load(base_config) or {}
    for dotted, value in overrides.items():
        if dotted == BANKS_PARAMETER:
            compiled = tree.get("federation", {}).get("banks", [])
            known = [b["name"] for b in compiled]
            unknown = [n for n in value if n not in known]
            if unknown:
                raise ConfigError(f"{BANKS_PARAMETER}: {unknown} are not compiled into this pipeline (it has {known})")
            value = [b for b in compiled if b["name"] in set(value)]
        set_dotted(tree, dotted, value)
    return load_config_text(yaml.safe_dump(tree, sort_keys=False), source="pipeline parameters")
