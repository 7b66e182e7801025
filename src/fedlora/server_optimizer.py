"""Server optimizers on the coordinator: FedAvgM and FedAdam (post-processing of DP updates, free in privacy).

Reddi et al., 2021, "Adaptive Federated Optimization" (FedOpt): treat the round's averaged change as a
pseudo-gradient and give it to a server optimizer. With ``θ`` the previous global adapter and ``θ̄``
the FedAvg of the round's valid updates, ``Δ = θ − θ̄`` and

* ``fedavg``: ``θ' = θ − η·Δ`` (``η = 1``: plain FedAvg, ``θ' = θ̄`` exactly);
* ``fedavgm`` (Hsu et al., 2019): ``m ← β·m + Δ``, ``θ' = θ − η·m``;
* ``fedadam``: ``m ← β₁·m + (1−β₁)·Δ``, ``v ← β₂·v + (1−β₂)·Δ²``, ``θ' = θ − η·m/(√v + τ)``.

Privacy: ``θ̄`` is a function of the banks' DP releases only, and so are ``m``, ``v`` and ``θ'``
(post-processing; Dwork & Roth, 2014, Prop. 2.1): nothing is charged and no bank data is read.
A tensor that no bank changed (FFA-LoRA's frozen A) has ``Δ = 0`` and stays exactly as it was.

The optimizer state is the coordinator's own: it is written under the round
(``rounds/NNNN/server``) before the round's manifest, so a resumed run continues from the last
committed round's state, and a round that crashed before its manifest is recomputed from scratch.
"""

from __future__ import annotations

import torch

from fedlora.config import FederationConfig
from fedlora.model import AdapterState
from fedlora.store.adapters import ADAPTER_FILE, load_adapter, save_adapter
from fedlora.store.base import Store, round_prefix

FEDADAM_BETA2 = 0.99
FEDADAM_TAU = 1e-3


def is_plain_fedavg(federation: FederationConfig) -> bool:
    """FedAvg with ``η = 1``: the new global adapter is the average itself, and there is no state."""
    return federation.server_optimizer == "fedavg" and federation.server_learning_rate == 1.0


def server_state_prefix(round_index: int) -> str:
    """Where the server optimizer's state after ``round_index`` lives (``rounds/NNNN/server``)."""
    return f"{round_prefix(round_index)}/server"


def server_step(
    federation: FederationConfig, previous: AdapterState, averaged: AdapterState, state: AdapterState
) -> tuple[AdapterState, AdapterState]:
    """One server step: the new global adapter and the new optimizer state (see the module docstring).

    Args:
        federation: ``server_optimizer``, ``server_learning_rate`` and ``server_momentum`` (β, β₁).
        previous: The global adapter the round started from (``θ``).
        averaged: The FedAvg of the round's valid updates (``θ̄``).
        state: The state after the previous round (``m/<name>``, ``v/<name>``; empty at the start).

    """
    kind, lr, beta = federation.server_optimizer, federation.server_learning_rate, federation.server_momentum
    if is_plain_fedavg(federation):
        return dict(averaged), {}
    adapter: AdapterState = {}
    new_state: AdapterState = {}
    for name, theta in previous.items():
        delta = theta.double() - averaged[name].double()
        m_before = state.get(f"m/{name}", torch.zeros_like(delta)).double()
        if kind == "fedavg":
            step = delta
        elif kind == "fedavgm":
            step = beta * m_before + delta
            new_state[f"m/{name}"] = step
        else:
            m = beta * m_before + (1 - beta) * delta
            v_before = state.get(f"v/{name}", torch.zeros_like(delta)).double()
            v = FEDADAM_BETA2 * v_before + (1 - FEDADAM_BETA2) * delta**2
            new_state[f"m/{name}"], new_state[f"v/{name}"] = m, v
            step = m / (v.sqrt() + FEDADAM_TAU)
        adapter[name] = (theta.double() - lr * step).to(theta.dtype)
    return adapter, new_state


def apply_server_optimizer(
    federation: FederationConfig, store: Store, round_index: int, previous: AdapterState, averaged: AdapterState
) -> AdapterState:
    """Read the previous round's state, take one :func:`server_step`, write the new state; return ``θ'``."""
    if is_plain_fedavg(federation):
        return averaged
    before = server_state_prefix(round_index - 1)
    state = load_adapter(store, before).tensors if store.exists(f"{before}/{ADAPTER_FILE}") else {}
    adapter, new_state = server_step(federation, previous, averaged, state)
    meta = {"round": round_index, "kind": "server_state", "optimizer": federation.server_optimizer}
    save_adapter(store, server_state_prefix(round_index), new_state, meta)
    return adapter
