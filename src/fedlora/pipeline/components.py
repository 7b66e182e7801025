# ruff: noqa: UP045  (KFP reads typing.Optional / typing.NamedTuple annotations, not X | None)
"""The FedLoRA Kubeflow components (kfp v2 lightweight Python components on our own image).

Each body imports :mod:`fedlora.pipeline.task_bodies` inside the function (KFP ships the function's
source to the pod) and makes one call into it. Nothing is installed at run time: the image
(``images/control.Dockerfile``) already holds fedlora, kfp and the kubernetes client, and
``install_kfp_package=False`` keeps KFP from pip-installing itself.

This module deliberately has no ``from __future__ import annotations``: KFP reads the
annotations as real types.
"""

from typing import NamedTuple, Optional

from kfp import dsl
from kfp.dsl import ClassificationMetrics, Markdown, Metrics, Output
from kfp.dsl.base_component import BaseComponent

from fedlora.images import CONTROL_IMAGE, TRAINER_IMAGE

__all__ = [
    "COMPONENT_FUNCTIONS",
    "CONTROL_IMAGE",
    "TRAINER_IMAGE",
    "aggregate_round",
    "federate_rounds",
    "finalize_run",
    "initialize_run",
    "make_components",
    "run_round",
    "train_bank",
]


def initialize_run(
    base_config: str,
    kfp_run_name: str,
    plan: Output[Markdown],
    seed: Optional[int] = None,
    data_dataset: Optional[str] = None,
    data_partition: Optional[str] = None,
    data_dirichlet_alpha: Optional[float] = None,
    data_max_rows: Optional[int] = None,
    model_name: Optional[str] = None,
    model_quantization: Optional[str] = None,
    model_max_length: Optional[int] = None,
    model_schema_features: Optional[bool] = None,
    lora_rank: Optional[int] = None,
    lora_alpha: Optional[float] = None,
    lora_dropout: Optional[float] = None,
    lora_ffa: Optional[bool] = None,
    privacy_enabled: Optional[bool] = None,
    privacy_target_epsilon: Optional[float] = None,
    privacy_delta: Optional[float] = None,
    privacy_max_grad_norm: Optional[float] = None,
    privacy_noise_multiplier: Optional[float] = None,
    privacy_accountant: Optional[str] = None,
    privacy_release_metrics: Optional[bool] = None,
    privacy_evaluation_epsilon: Optional[float] = None,
    training_local_epochs: Optional[float] = None,
    training_local_steps: Optional[int] = None,
    training_batch_size: Optional[int] = None,
    training_physical_batch_size: Optional[int] = None,
    training_learning_rate: Optional[float] = None,
    training_lora_learning_rate: Optional[float] = None,
    training_optimizer: Optional[str] = None,
    federation_fraction_fit: Optional[float] = None,
    federation_min_banks: Optional[int] = None,
    federation_server_optimizer: Optional[str] = None,
    federation_server_learning_rate: Optional[float] = None,
    federation_server_momentum: Optional[float] = None,
    federation_banks: Optional[list[str]] = None,
    store_uri: Optional[str] = None,
    store_endpoint_url: Optional[str] = None,
    store_region: Optional[str] = None,
    store_path_style: Optional[bool] = None,
    tracking_enabled: Optional[bool] = None,
    tracking_uri: Optional[str] = None,
    tracking_experiment: Optional[str] = None,
    tracking_registered_model: Optional[str] = None,
    kubeflow_mode: Optional[str] = None,
    kubeflow_job_timeout_seconds: Optional[int] = None,
    output_run_name: Optional[str] = None,
) -> NamedTuple("InitializeOutputs", [("config", str), ("run", str)]):  # type: ignore[valid-type]
    """Resolve the run's config, calibrate each bank's noise and write the initial global adapter.

    Args:
        base_config: The FedLoRA config (YAML) compiled into the pipeline.
        kfp_run_name: The KFP run's name; the run's name unless output_run_name is given.
        plan: Markdown: the run and each bank's privacy plan (target ε, δ, σ, sample rate).
        seed: Config field seed (empty keeps base_config's value; so for every field below).
        data_dataset: Config field data.dataset.
        data_partition: Config field data.partition.
        data_dirichlet_alpha: Config field data.dirichlet_alpha.
        data_max_rows: Config field data.max_rows.
        model_name: Config field model.name.
        model_quantization: Config field model.quantization.
        model_max_length: Config field model.max_length.
        model_schema_features: Config field model.schema_features.
        lora_rank: Config field lora.rank.
        lora_alpha: Config field lora.alpha.
        lora_dropout: Config field lora.dropout.
        lora_ffa: Config field lora.ffa.
        privacy_enabled: Config field privacy.enabled.
        privacy_target_epsilon: Config field privacy.target_epsilon.
        privacy_delta: Config field privacy.delta.
        privacy_max_grad_norm: Config field privacy.max_grad_norm.
        privacy_noise_multiplier: Config field privacy.noise_multiplier.
        privacy_accountant: Config field privacy.accountant.
        privacy_release_metrics: Config field privacy.release_metrics.
        privacy_evaluation_epsilon: Config field privacy.evaluation_epsilon.
        training_local_epochs: Config field training.local_epochs.
        training_local_steps: Config field training.local_steps.
        training_batch_size: Config field training.batch_size.
        training_physical_batch_size: Config field training.physical_batch_size.
        training_learning_rate: Config field training.learning_rate.
        training_lora_learning_rate: Config field training.lora_learning_rate.
        training_optimizer: Config field training.optimizer.
        federation_fraction_fit: Config field federation.fraction_fit.
        federation_min_banks: Config field federation.min_banks.
        federation_server_optimizer: Config field federation.server_optimizer.
        federation_server_learning_rate: Config field federation.server_learning_rate.
        federation_server_momentum: Config field federation.server_momentum.
        federation_banks: Names of the banks of base_config that take part.
        store_uri: Config field store.uri.
        store_endpoint_url: Config field store.endpoint_url.
        store_region: Config field store.region.
        store_path_style: Config field store.path_style.
        tracking_enabled: Config field tracking.enabled.
        tracking_uri: Config field tracking.uri.
        tracking_experiment: Config field tracking.experiment.
        tracking_registered_model: Config field tracking.registered_model.
        kubeflow_mode: Config field kubeflow.mode.
        kubeflow_job_timeout_seconds: Config field kubeflow.job_timeout_seconds.
        output_run_name: Config field output.run_name.

    Returns:
        config: The resolved config (YAML) every later task uses.
        run: The run's name (its folder in the store).
    """
    from fedlora.pipeline.parameters import PARAMETERS
    from fedlora.pipeline.task_bodies import initialize_step

    values = locals()  # the signature above is the one KFP reads; the names come from PARAMETERS
    return initialize_step(
        base_config=base_config,
        kfp_run_name=kfp_run_name,
        plan=plan,
        parameters={p.name: values[p.name] for p in PARAMETERS},
    )


def train_bank(
    config: str,
    run: str,
    bank: str,
    round_index: int,
    metrics: Output[Metrics],
    summary: Output[Markdown],
) -> str:
    """Train one bank for one round: inline, or wait for the bank's own agent to train it (kubeflow.mode=pull).

    A bank that fails or times out does not fail this task: it is reported as a failed bank
    (summary and metrics) and the aggregation applies federation.min_banks.

    Args:
        config: The run's resolved config (YAML), from initialize-run.
        run: The run's name.
        bank: The bank's name.
        round_index: The round, from 1.
        metrics: ok, failed, refused, epsilon, num_examples (declared, rounded), steps.
        summary: Markdown: the bank's outcome (status, message, loss, ε, validation AUC).

    Returns:
        The bank's outcome (JSON).
    """
    from fedlora.pipeline.task_bodies import train_bank_step

    return train_bank_step(
        config_yaml=config, run=run, bank=bank, round_index=round_index, metrics=metrics, summary=summary
    )


def aggregate_round(
    config: str,
    run: str,
    round_index: int,
    metrics: Output[Metrics],
    roc: Output[ClassificationMetrics],
    summary: Output[Markdown],
) -> str:
    """Average the round's adapters (FedAvg by examples), evaluate, commit the round, log to MLflow.

    Fails the run when fewer than federation.min_banks banks delivered a valid update.

    Args:
        config: The run's resolved config (YAML).
        run: The run's name.
        round_index: The round, from 1.
        metrics: Test AUC, KS, accuracy, Brier, training loss, ε per bank, banks accepted/failed.
        roc: ROC curve of the new global adapter on the pooled test rows.
        summary: Markdown: the round's banks (averaged, failed, rejected, budget spent) and metrics.

    Returns:
        The round record (JSON).
    """
    from fedlora.pipeline.task_bodies import aggregate_step

    return aggregate_step(
        config_yaml=config, run=run, round_index=round_index, metrics=metrics, roc=roc, summary=summary
    )


def run_round(
    config: str,
    run: str,
    round_index: int,
    metrics: Output[Metrics],
    roc: Output[ClassificationMetrics],
    summary: Output[Markdown],
    last_round: int = 0,
) -> str:
    """One round (or round_index..last_round): the selected banks train, then their adapters are averaged.

    Pull mode: the banks' own agents train, all waited for concurrently.

    A bank that fails or times out does not fail this task: it is a failed bank of the round, and
    federation.min_banks decides. Resumable: a retry skips committed rounds, and a bank that already
    published its outcome is not launched again.

    Args:
        config: The run's resolved config (YAML).
        run: The run's name.
        round_index: The (first) round, from 1.
        metrics: Test AUC, KS, accuracy, Brier, training loss, ε per bank, banks accepted/failed (several
            rounds: also rNNN_test_auc / _train_loss / _banks_accepted / _banks_failed).
        roc: ROC curve of the new global adapter on the pooled test rows.
        summary: Markdown: the round's banks (averaged, failed, rejected, budget spent) and metrics.
        last_round: The last round of this task (0: round_index only).

    Returns:
        The (last) round record (JSON).
    """
    from fedlora.pipeline.task_bodies import round_step

    return round_step(
        config_yaml=config,
        run=run,
        round_index=round_index,
        last_round=last_round,
        metrics=metrics,
        roc=roc,
        summary=summary,
    )


def federate_rounds(
    config: str,
    run: str,
    metrics: Output[Metrics],
    roc: Output[ClassificationMetrics],
    summary: Output[Markdown],
) -> str:
    """Every round in one task: the banks of a round train (pull: waited for concurrently), then aggregate.

    The graph of large federations (kubeflow.graph): its size does not grow with rounds × banks.
    Resumable: a retry continues after the last round committed in the store. Per-round metrics go
    to MLflow (step = round), to this task's metrics (rNNN_test_auc, ...) and its Markdown table.

    Args:
        config: The run's resolved config (YAML).
        run: The run's name.
        metrics: The last round's metrics, and rNNN_test_auc / _train_loss / _banks_accepted / _banks_failed.
        roc: ROC curve of the last global adapter on the pooled test rows.
        summary: Markdown: one line per round, then the last round's banks.

    Returns:
        The last round's record (JSON).
    """
    from fedlora.pipeline.task_bodies import federate_step

    return federate_step(config_yaml=config, run=run, metrics=metrics, roc=roc, summary=summary)


def finalize_run(config: str, run: str, metrics: Output[Metrics], summary: Output[Markdown]) -> str:
    """Write the final adapter and report, and register the adapter in MLflow with each bank's (ε, δ).

    Args:
        config: The run's resolved config (YAML).
        run: The run's name.
        metrics: Final test metrics and ε per bank.
        summary: Markdown: final adapter, AUC, MLflow model version, privacy per bank.

    Returns:
        URI of the final adapter (safetensors).
    """
    from fedlora.pipeline.task_bodies import finalize_step

    return finalize_step(config_yaml=config, run=run, metrics=metrics, summary=summary)


COMPONENT_FUNCTIONS = (initialize_run, train_bank, aggregate_round, run_round, federate_rounds, finalize_run)


class Components(NamedTuple):
    """The six components, built for one image."""

    initialize_run: BaseComponent
    train_bank: BaseComponent
    aggregate_round: BaseComponent
    run_round: BaseComponent
    federate_rounds: BaseComponent
    finalize_run: BaseComponent


def make_components(image: str = CONTROL_IMAGE) -> Components:
    """The components with ``image`` as their base image (nothing is installed at run time)."""
    built = [dsl.component(func, base_image=image, install_kfp_package=False) for func in COMPONENT_FUNCTIONS]
    return Components(*built)
