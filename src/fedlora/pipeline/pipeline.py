"""The FedLoRA pipeline, built from a config, in one of two shapes (``kubeflow.graph``).

``rounds`` (and ``auto``, the default)::

    initialize ─► round-1 ─► round-2 ─► … ─► round-N ─► finalize

Each ``round-N`` is one task (:func:`fedlora.pipeline.coordinator.run_round`): every selected bank
trains (pull: the banks' agents, waited for concurrently; inline: one after the other in the task),
then the aggregation commits the round. A bank that fails is a failed outcome of the round, never a
failed task, and ``federation.min_banks`` decides. Every task has the default trigger policy (all
upstream tasks succeeded) and a single chain of upstreams: no task relies on
``ALL_UPSTREAM_TASKS_COMPLETED`` (``ignore_upstream_failure``), which the KFP backend compiles into an
OR of upstream states up to 2.3 but, from 2.4, into an exit hook on *each* upstream task
(``backend/src/v2/compiler/argocompiler/dag.go``: one aggregation per bank). Each task costs about
6.5 KB of YAML (the KFP compiler writes a component and an executor per task), whatever the banks; so
above ``kubeflow.max_graph_tasks`` - 2 rounds a task runs a fixed chunk of rounds
(:func:`round_chunks`: ``rounds-4-6``), and the graph stays that small. Each task's metrics, ROC and
Markdown card appear in the UI as it finishes.

``coordinator``::

    initialize ─► federate-rounds ─► finalize

``federate-rounds`` loops :func:`~fedlora.pipeline.coordinator.run_round` over every round in one pod.

Tasks are not cached (they read and write the run's store), are retried ``kubeflow.retries`` times
(every step resumes from the store; KFP ≥ 2.5 honours it), request ``kubeflow.task_cpu``/``task_memory``
(limits ``task_cpu_limit``/``task_memory_limit``) and carry the pod label ``fedlora.io/pipeline=fedlora``
(for PodDefaults). The round tasks (and ``federate-rounds``) get a pod deadline from
``kubeflow.job_timeout_seconds`` (:meth:`TaskOptions.round_deadline_seconds` per round) and the
autoscaler's ``safe-to-evict: "false"`` annotation.

Run parameters (see :mod:`fedlora.pipeline.parameters`) carry the config's field names with
``_`` for ``.``; their defaults are the compiled-in config's values. The number of rounds, the
banks' names and the graph's shape are fixed when compiling.
"""

# No "from __future__ import annotations": KFP reads the sub-pipelines' annotations as real types.

import copy
import inspect
from typing import Any

from kfp import dsl

from fedlora.config import Config, config_to_yaml
from fedlora.pipeline.components import CONTROL_IMAGE, make_components
from fedlora.pipeline.parameters import PARAMETERS, parameter_values

__all__ = [
    "CA_BUNDLE_KEY",
    "CA_BUNDLE_PATH",
    "CREDENTIAL_KEYS",
    "PIPELINE_NAME",
    "POD_LABEL",
    "S3_SECRET_KEYS",
    "SAFE_TO_EVICT",
    "TaskOptions",
    "build_pipeline",
    "graph_mode",
    "pipeline_image",
    "round_chunks",
]

PIPELINE_NAME = "fedlora"

POD_LABEL = ("fedlora.io/pipeline", "fedlora")
"""Label on every task's pod: a PodDefault (or a NetworkPolicy) can select the pipeline's pods by it."""

SAFE_TO_EVICT = ("cluster-autoscaler.kubernetes.io/safe-to-evict", "false")
"""Annotation of the round tasks' pods: the cluster autoscaler does not evict them to scale a node down."""


def pipeline_image(config: Config, image: str | None = None) -> str:
    """The tasks' image: ``image`` (``--image``), else ``kubeflow.control_image``."""
    return image or config.kubeflow.control_image or CONTROL_IMAGE


def graph_mode(config: Config) -> str:
    """``rounds`` (a chain of round tasks; ``auto`` too) or ``coordinator`` (one task loops every round)."""
    return "coordinator" if config.kubeflow.graph == "coordinator" else "rounds"


def round_chunks(config: Config) -> list[tuple[int, int]]:
    """The rounds of each task of the ``rounds`` graph, as ``(first, last)``.

    One round per task while rounds + 2 ≤ ``kubeflow.max_graph_tasks``, else the fewest equal chunks that
    keep the graph that small (200 rounds, 64 tasks: 4 rounds a task).
    """
    rounds = config.federation.rounds
    size = -(-rounds // max(1, config.kubeflow.max_graph_tasks - 2))
    return [(first, min(first + size - 1, rounds)) for first in range(1, rounds + 1, size)]


def _named(component: Any, name: str) -> Any:
    """A copy of ``component`` under another name: task ids follow it (``finalize``, not ``finalize-run``)."""
    renamed = copy.deepcopy(component)
    renamed.component_spec.name = name
    return renamed


S3_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
"""The exchange bucket's static keys in the ``--secret`` Secret (each key becomes the variable of its name)."""

CREDENTIAL_KEYS = (
    *S3_SECRET_KEYS,
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
)
"""Keys of the ``--secret`` Secret every task gets as environment variables of the same name; each is
optional (a key the Secret lacks is simply not set), so one Secret carries whatever the cluster needs."""

CA_BUNDLE_PATH = "/etc/fedlora/ca"
"""Where ``--ca-bundle``'s ConfigMap is mounted in every task."""

CA_BUNDLE_KEY = "ca.crt"
"""Key of the PEM bundle in that ConfigMap (the convention of kube-root-ca.crt and trust-manager)."""


class TaskOptions:
    """How every task is set up: credentials, CA bundle, resources, retries, pod label.

    Args:
        config: The compiled-in config (``kubeflow.task_cpu``, ``task_memory``, ``retries``, ``accelerator_*``).
        secret: A Secret in the run's namespace with any of :data:`CREDENTIAL_KEYS`; None: the pods' identity.
        ca_bundle: A ConfigMap in the run's namespace whose ``ca.crt`` is the PEM bundle to trust (private CAs of
            internal S3 / MLflow endpoints; include the public roots if public endpoints are used too).
        secret_keys: The keys of ``secret`` to map (a subset of :data:`CREDENTIAL_KEYS`); empty: all of them,
            each optional. A KFP backend before 2.15 ignores ``optional``: there, name exactly the keys the
            Secret holds.
    """

    def __init__(
        self,
        config: Config,
        secret: str | None = None,
        ca_bundle: str | None = None,
        secret_keys: tuple[str, ...] = (),
    ) -> None:
        unknown = sorted(set(secret_keys) - set(CREDENTIAL_KEYS))
        if unknown:
            raise ValueError(f"secret keys {unknown} are not among {list(CREDENTIAL_KEYS)}")
        self.config = config
        self.secret = secret
        self.ca_bundle = ca_bundle
        self.secret_keys = tuple(k for k in CREDENTIAL_KEYS if k in secret_keys) if secret_keys else CREDENTIAL_KEYS

    def round_deadline_seconds(self) -> int:
        """Longest a round may take: the banks' wait (pull: concurrent; inline: one after the other) plus an hour.

        From the compiled-in ``kubeflow.job_timeout_seconds``: a run that raises it as a run parameter may
        see a round task stopped at this deadline, and retried (it resumes).
        """
        k = self.config.kubeflow
        waits = 1 if k.mode != "inline" else len(self.config.federation.banks)
        return waits * k.job_timeout_seconds + 3600

    def apply(self, task: Any, name: str, *, trains: bool = False, rounds: int = 0) -> Any:
        """Set ``task`` up.

        Args:
            task: The pipeline task.
            name: Its display name.
            trains: It trains a bank in inline mode (accelerators).
            rounds: It runs that many rounds: its pod gets a deadline (``activeDeadlineSeconds``) and may not
                be evicted by the autoscaler.
        """
        from kfp import kubernetes

        k = self.config.kubeflow
        task.set_display_name(name).set_caching_options(False)
        task.set_cpu_request(k.task_cpu).set_memory_request(k.task_memory)
        if k.task_cpu_limit:  # a namespace quota on limits.cpu refuses pods without one
            task.set_cpu_limit(k.task_cpu_limit)
        if k.task_memory_limit:
            task.set_memory_limit(k.task_memory_limit)
        if k.retries:
            task.set_retry(num_retries=k.retries, backoff_duration="30s", backoff_factor=2.0)
        if trains and k.mode == "inline" and k.accelerator_type:
            task.set_accelerator_type(k.accelerator_type).set_accelerator_limit(k.accelerator_count)
        kubernetes.add_pod_label(task, *POD_LABEL)
        if rounds:  # a long task: bounded, and not evicted mid-round by a scale-down
            kubernetes.set_timeout(task, rounds * self.round_deadline_seconds())
            kubernetes.add_pod_annotation(task, *SAFE_TO_EVICT)
        if self.secret:
            kubernetes.use_secret_as_env(
                task, secret_name=self.secret, secret_key_to_env={key: key for key in self.secret_keys}, optional=True
            )
        if self.ca_bundle:
            kubernetes.use_config_map_as_volume(task, config_map_name=self.ca_bundle, mount_path=CA_BUNDLE_PATH)
            bundle = f"{CA_BUNDLE_PATH}/{CA_BUNDLE_KEY}"
            for variable in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
                task.set_env_variable(variable, bundle)
        return task


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


def _description(config: Config) -> str:
    """The pipeline's description in the UI: what it runs, its graph and every parameter.

    The UI lists the parameters alphabetically, so their meaning is spelled out here.
    """
    chunk = round_chunks(config)[0][1]
    each = "each" if chunk == 1 else f"each {chunk} rounds, in turn"
    graph = (
        f"graph: initialize -> round-1 -> ... -> round-N ({each}: the banks train, then the aggregation) -> finalize"
        if graph_mode(config) == "rounds"
        else f"graph: initialize -> federate-rounds (rounds 1-{config.federation.rounds}, each bank's training "
        "then the aggregation, in one task) -> finalize"
    )
    doc = _docstring(config)
    first, _, rest = doc.partition("\n")
    return f"{first}\n{graph}.\n{rest.replace('Args:', 'Parameters (config field with _ for .; 0 or empty = None):')}"


def build_pipeline(
    config: Config,
    *,
    image: str | None = None,
    secret: str | None = None,
    ca_bundle: str | None = None,
    secret_keys: tuple[str, ...] = (),
) -> Any:
    """The FedLoRA pipeline for ``config`` (a KFP graph component: compile it or run it with ``kfp.local``).

    Args:
        config: The consortium's config: its rounds and banks shape the graph, its values are
            the parameters' defaults, and it is compiled in as the base of every run.
        image: The tasks' image (default: :data:`~fedlora.pipeline.components.CONTROL_IMAGE`).
        secret: A Secret in the run's namespace; each of its keys named in :data:`CREDENTIAL_KEYS`
            (AWS keys and session token, MLflow token or user/password) becomes that environment
            variable in every task. None: the pods' own identity (IRSA, workload identity, a PodDefault).
        ca_bundle: A ConfigMap in the run's namespace with the PEM bundle ``ca.crt`` every task trusts
            (``AWS_CA_BUNDLE``, ``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``).
        secret_keys: Only these keys of ``secret`` (see :class:`TaskOptions`); empty: all, each optional.
    """
    components = make_components(pipeline_image(config, image))
    options = TaskOptions(config, secret, ca_bundle, secret_keys)
    mode = graph_mode(config)
    chunks = round_chunks(config) if mode == "rounds" else []
    base_config = config_to_yaml(config)
    names = [p.name for p in PARAMETERS]

    initialize = _named(components.initialize_run, "initialize")
    federate = _named(components.federate_rounds, "federate-rounds")
    round_component = _named(components.run_round, "round")  # task ids round, round-2, round-3, …
    finalize = _named(components.finalize_run, "finalize")

    def body(**parameters: Any) -> None:
        init = initialize(base_config=base_config, kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, **parameters)
        options.apply(init, "initialize")
        config_out, run_out = init.outputs["config"], init.outputs["run"]
        previous: Any = init
        if mode == "coordinator":
            task = federate(config=config_out, run=run_out)
            previous = options.apply(task, "federate-rounds", trains=True, rounds=config.federation.rounds)
        for first, last in chunks:
            task = round_component(config=config_out, run=run_out, round_index=first, last_round=last)
            name = f"round-{first}" if first == last else f"rounds-{first}-{last}"
            previous = options.apply(task, name, trains=True, rounds=last - first + 1).after(previous)
        final = finalize(config=config_out, run=run_out)
        options.apply(final, "finalize").after(previous)

    def fedlora(*args: Any) -> None:
        body(**dict(zip(names, args, strict=True)))

    fedlora.__signature__ = _signature(config)  # type: ignore[attr-defined]
    fedlora.__doc__ = _docstring(config)
    return dsl.pipeline(name=PIPELINE_NAME, description=_description(config))(fedlora)
