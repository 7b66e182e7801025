"""Server optimizers (FedAvgM, FedAdam) on the coordinator: the maths, and their state across rounds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedlora.aggregation import Update, fedavg
from fedlora.config import ConfigError, FederationConfig, load_config
from fedlora.initial import load_global
from fedlora.runtime import Runtime
from fedlora.server_optimizer import FEDADAM_BETA2, FEDADAM_TAU, server_state_prefix, server_step
from fedlora.simulate import simulate
from fedlora.store.adapters import load_adapter
from fedlora.store.base import global_prefix, update_prefix
from fedlora.store.local import LocalStore


def _federation(**fields: object) -> FederationConfig:
    return FederationConfig.model_validate(fields)


def _adapter(b: list[float], a: list[float]) -> dict[str, torch.Tensor]:
    return {"lora_B": torch.tensor(b), "lora_A": torch.tensor(a)}


def test_plain_fedavg_returns_the_average_exactly() -> None:
    previous, averaged = _adapter([1.0, 2.0], [5.0]), _adapter([0.5, 2.5], [5.0])
    adapter, state = server_step(_federation(), previous, averaged, {})
    assert all(torch.equal(adapter[k], averaged[k]) for k in averaged)
    assert state == {}


def test_fedavgm_accumulates_the_pseudo_gradient_with_momentum() -> None:
    federation = _federation(server_optimizer="fedavgm", server_learning_rate=0.5, server_momentum=0.8)
    theta0, avg1 = _adapter([1.0, 2.0], [5.0]), _adapter([0.0, 3.0], [5.0])
    theta1, state1 = server_step(federation, theta0, avg1, {})
    # Δ1 = θ0 − θ̄1 = [1, −1]; m1 = Δ1; θ1 = θ0 − 0.5·m1 = [0.5, 2.5]
    assert torch.allclose(theta1["lora_B"], torch.tensor([0.5, 2.5]))
    avg2 = _adapter([0.5, 2.0], [5.0])
    theta2, _ = server_step(federation, theta1, avg2, state1)
    # Δ2 = [0, 0.5]; m2 = 0.8·[1, −1] + [0, 0.5] = [0.8, −0.3]; θ2 = θ1 − 0.5·m2 = [0.1, 2.65]
    assert torch.allclose(theta2["lora_B"], torch.tensor([0.1, 2.65]))
    assert torch.equal(theta2["lora_A"], theta0["lora_A"])  # a tensor nobody changed (FFA's A) stays exact


def test_fedadam_takes_a_normalised_step() -> None:
    federation = _federation(server_optimizer="fedadam", server_learning_rate=0.1, server_momentum=0.9)
    theta, averaged = _adapter([1.0, -1.0], [0.0]), _adapter([0.0, -0.5], [0.0])
    adapter, state = server_step(federation, theta, averaged, {})
    delta = torch.tensor([1.0, -0.5], dtype=torch.float64)
    m, v = 0.1 * delta, (1 - FEDADAM_BETA2) * delta**2
    expected = theta["lora_B"].double() - 0.1 * m / (v.sqrt() + FEDADAM_TAU)
    assert torch.allclose(adapter["lora_B"].double(), expected)
    assert torch.allclose(state["m/lora_B"], m) and torch.allclose(state["v/lora_B"], v)


def test_bad_server_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="server_optimizer"):
        load_config(None, ["federation.server_optimizer=sgd"])
    with pytest.raises(ConfigError, match="server_momentum"):
        load_config(None, ["federation.server_momentum=1.0"])


def test_a_federation_with_server_momentum_stores_its_state_and_follows_fedavgm(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    overrides = [*tiny_overrides, "federation.rounds=3", "federation.server_optimizer=fedavgm"]
    config = load_config(None, [*overrides, "federation.server_learning_rate=0.7", "federation.server_momentum=0.5"])
    simulate(config)
    store = LocalStore(Path(config.output.dir) / "test")
    banks = [b.name for b in config.federation.banks]
    momentum: dict[str, torch.Tensor] = {}
    for round_index in (1, 2, 3):
        previous = load_global(store, round_index - 1, initial=lambda: Runtime(config).initial_adapter)
        assert previous is not None  # round 0 is a spec: the seeded initial adapter, built here as the banks did
        updates = [
            Update(bank=b, adapter=stored.tensors, num_examples=int(stored.meta["num_examples"]))
            for b in banks
            for stored in [load_adapter(store, update_prefix(round_index, b))]
        ]
        averaged = fedavg(updates)
        state = load_adapter(store, server_state_prefix(round_index)).tensors
        new_global = load_adapter(store, global_prefix(round_index)).tensors
        for name, theta in previous.items():
            m = 0.5 * momentum.get(name, torch.zeros_like(theta, dtype=torch.float64)) + (
                theta.double() - averaged[name].double()
            )
            torch.testing.assert_close(state[f"m/{name}"], m)
            torch.testing.assert_close(new_global[name].double(), theta.double() - 0.7 * m, rtol=1e-6, atol=1e-7)
            momentum[name] = m
