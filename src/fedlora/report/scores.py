"""The final adapter's score on every bank's test rows, for the report of ``fedlora simulate`` only.

Only a simulation holds every bank's rows. The scores go into the local run directory's report
(as figures) and nowhere else: not into the store's manifests, the summary or MLflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedlora.model.lora import load_adapter_state
from fedlora.report.views import CREDIT_CLASSES, PooledScores
from fedlora.training import predict_scores

if TYPE_CHECKING:
    from fedlora.model import AdapterState
    from fedlora.runtime import Runtime

__all__ = ["pooled_test_scores"]


def pooled_test_scores(runtime: Runtime, adapter: AdapterState, *, adapter_round: int) -> PooledScores:
    """Score every bank's test rows with ``adapter`` (P(default), or K class probabilities for a text task).

    Args:
        runtime: The simulation's runtime (it holds every bank's rows).
        adapter: The adapter to score, loaded into the runtime's model.
        adapter_round: The round whose global adapter ``adapter`` is.

    """
    config = runtime.config
    with runtime.timer.phase("evaluate"):
        load_adapter_state(runtime.model, adapter)
        labels, scores = [], []
        for spec in config.federation.banks:
            test = runtime.bank(spec.name).test
            scores.append(
                predict_scores(runtime.model, test, batch_size=config.training.eval_batch_size, device=runtime.device)
            )
            labels.append(test.labels.numpy())
    task = runtime.text_task
    return PooledScores(
        labels=np.concatenate(labels),
        scores=np.concatenate(scores),
        class_names=tuple(task.labels) if task is not None else CREDIT_CLASSES,
        adapter_round=adapter_round,
    )
