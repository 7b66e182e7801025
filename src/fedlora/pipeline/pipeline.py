"""The FedLoRA pipeline, built from a config: rounds and banks are unrolled so the graph names them.

Graph (3 banks, 2 rounds)::

    initialize ─► round-1 ──────────────────────► round-2 ─► … ─► finalize
                  ├─ train-bank-a ─┐              (same shape)
                  ├─ train-bank-b ─┼─► aggregate-round-1
                  └─ train-bank-c ─┘

Each ``round-N`` is a sub-pipeline (a group node in the Kubeflow UI). The banks' tasks of a
round run in parallel; ``aggregate-round-N`` waits for all of them (a bank that failed is
reported by its own task and counted as failed by the aggregation). Tasks are not cached:
they read and write the run's store.

Run parameters (see :mod:`fedlora.pipeline.parameters`) carry the config's field names with
``_`` for ``.``; their defaults are the compiled-in config's values. The number of rounds and
the banks' names, namespaces and templates are fixed when compiling.
"""

# No "from __future__ import annotations": KFP reads the sub-pipelines' annotations as real types.

import copy
import inspect
from typing import Any

from kfp import dsl

from fedlora.config import Config, config_to_yaml
from fedlora.pipeline.components import CONTROL_IMAGE, Components, make_components
from fedlora.pipeline.parameters import PARAMETERS, parameter_values

__all__ = ["PIPELINE_NAME", "S3_SECRET_KEYS", "build_pipeline", "pipeline_image"]

PIPELINE_NAME = "fedlora"


def pipeline_image(config: Config, image: str | None = None) -> str:
    """The tasks' image: ``image`` (``--image``), else ``kubeflow.control_image``."""
    return image or config.kubeflow.control_image or CONTROL_IMAGE


def _named(component: Any, name: str) -> Any:
    """A copy of ``component`` under another name: task ids follow it (``train-bank-a``, not ``train-bank-2``)."""
    renamed = copy.deepcopy(component)
    renamed.component_spec.name = name
    return renamed


S3_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
"""Keys of the ``--secret`` Secret and the environment variables they become in every task."""


def _with_secret(task: Any, secret: str | None) -> Any:
    """Give ``task`` the exchange bucket's credentials from Secret ``secret`` (kfp-kubernetes), if any."""
    if secret:
        from kfp import kubernetes

        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=dict(S3_SECRET_KEYS))
    return task


def _round(components: Components, round_index: int, banks: list[str], secret: str | None = None) -> Any:
    """The sub-pipeline of one round: every bank trains, then the aggregation."""
    train = {bank: _named(components.train_bank, f"train-{bank}") for bank in banks}
    aggregate_round = _named(components.aggregate_round, f"aggregate-round-{round_index}")

    def round_dag(config: str, run: str) -> str:
        trained = []
        for bank in banks:
            task = train[bank](config=config, run=run, bank=bank, round_index=round_index)
            task.set_display_name(f"train-{bank}").set_caching_options(False)
            trained.append(_with_secret(task, secret))
        aggregate = aggregate_round(config=config, run=run, round_index=round_index)
        aggregate.set_display_name(f"aggregate-round-{round_index}").set_caching_options(False).after(*trained)
        _with_secret(aggregate, secret)
        return aggregate.outputs["Output"]  # type: ignore[no-any-return]

    round_dag.__name__ = f"round_{round_index}"
    round_dag.__doc__ = f"Round {round_index}: {', '.join(banks)} train; the adapters are averaged."
    return dsl.pipeline(name=f"round-{round_index}")(round_dag)


def _signature(config: Config) -> inspect.Signature:
    values = parameter_values(config)
    params = []
    for p in PARAMETERS:
        default = values[p.name]
        params.append(
            inspect.Parameter(
                p.name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=default,
                annotation=p.type,
            )
        )
    return inspect.Signature(params)


def _docstring(config: Config) -> str:
    banks = ", ".join(b.name for b in config.federation.banks)
    lines = [
        f"FedLoRA: {config.federation.rounds} rounds of federated, differentially private LoRA fine-tuning "
        f"for credit risk; banks {banks}.",
        "",
        "Args:",
    ]
    for p in PARAMETERS:
        if p.field == "federation.banks":
            text = "Which of the compiled-in banks take part (the others sit out as not_selected)."
        else:
            text = p.description or p.field
            if p.optional:
                text += f" ({'empty' if p.type is str else '0'} = None)"
        lines.append(f"    {p.name}: {text} (config field {p.field})")
    return "\n".join(lines) + "\n"


def build_pipeline(config: Config, *, image: str | None = None, secret: str | None = None) -> Any:
    """The FedLoRA pipeline for ``config`` (a KFP graph component: compile it or run it with ``kfp.local``).

    Args:
        config: The consortium's config: its rounds and banks shape the graph, its values are
            the parameters' defaults, and it is compiled in as the base of every run.
        image: The tasks' image (default: :data:`~fedlora.pipeline.components.CONTROL_IMAGE`).
        secret: A Secret in the run's namespace whose keys ``AWS_ACCESS_KEY_ID`` and
            ``AWS_SECRET_ACCESS_KEY`` every task gets as environment variables (the exchange
            bucket's credentials). None: the pods' own identity (IRSA, workload identity, a PodDefault).
    """
    components = make_components(pipeline_image(config, image))
    banks = [b.name for b in config.federation.banks]
    rounds = [_round(components, r, banks, secret) for r in range(1, config.federation.rounds + 1)]
    base_config = config_to_yaml(config)
    names = [p.name for p in PARAMETERS]

    initialize = _named(components.initialize_run, "initialize")
    finalize = _named(components.finalize_run, "finalize")

    def body(**parameters: Any) -> None:
        init = initialize(base_config=base_config, kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, **parameters)
        _with_secret(init.set_display_name("initialize").set_caching_options(False), secret)
        config_out, run_out = init.outputs["config"], init.outputs["run"]
        previous: Any = init
        for round_index, round_dag in enumerate(rounds, start=1):
            task = round_dag(config=config_out, run=run_out)
            task.set_display_name(f"round-{round_index}").set_caching_options(False).after(previous)
            previous = task
        final = finalize(config=config_out, run=run_out)
        _with_secret(final.set_display_name("finalize").set_caching_options(False).after(previous), secret)

    def fedlora(*args: Any) -> None:
        body(**dict(zip(names, args, strict=True)))

    fedlora.__signature__ = _signature(config)  # type: ignore[attr-defined]
    fedlora.__doc__ = _docstring(config)
    return dsl.pipeline(name=PIPELINE_NAME, description=fedlora.__doc__.splitlines()[0])(fedlora)
