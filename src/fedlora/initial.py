"""Round 0 as a spec: the seeded initial adapter, which each bank builds from the model it holds.

The global adapter a run starts from is the LoRA initialisation of the run's model (A drawn from
``config.seed``, B = 0; for a classifier the head as loaded, centred on the public rows): a
deterministic function of the config and public inputs only, no bank's rows. The coordinator
never computes it, so it never loads the base model's weights (a Llama-class ``model.name`` needs
no model in a control pod): it records round 0 as a spec (``rounds/0000/global/meta.json`` with
``"initial": "seeded"``, the seed, model and LoRA settings, and no tensors). A bank builds the
adapter itself in round 1 (:attr:`fedlora.runtime.Runtime.initial_adapter`, from the model it
loads anyway), so nothing about round 0 crosses a bank's boundary and nothing is charged.

A process that holds the model (``fedlora simulate``, an inline run) builds the same tensors from
the same seed; the aggregation of round 1 uses them when it has them, and otherwise checks the
banks' updates against each other (:func:`fedlora.aggregation.peer_reference`). A round committed
with the global adapter unchanged from the start (every bank's budget spent in round 1) is a spec
too. Runs written before round 0 became a spec hold an adapter there; it is read as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedlora.config import Config
from fedlora.model import AdapterState
from fedlora.store.adapters import META_FILE, get_json, load_adapter, put_json
from fedlora.store.base import Store, global_prefix

__all__ = ["SEEDED", "InitialAdapter", "is_seeded", "load_global", "write_seeded_spec"]

SEEDED = "seeded"
"""The ``initial`` field of a global adapter's metadata that is the seeded initial adapter, not tensors."""

InitialAdapter = Callable[[], AdapterState]
"""Builds the seeded initial adapter from the model this process holds (a bank's runtime)."""


def seeded_spec(config: Config, round_index: int) -> dict[str, Any]:
    """The metadata of a global adapter that is the seeded initial adapter of ``config``'s model."""
    return {
        "round": round_index,
        "kind": "global",
        "initial": SEEDED,
        "seed": config.seed,
        "model": config.model.name,
        "lora": config.lora.model_dump(mode="json"),
        "note": "no tensors: each bank builds the seeded initial adapter from the model it holds",
    }


def write_seeded_spec(store: Store, config: Config, round_index: int = 0) -> None:
    """Record that the global adapter after ``round_index`` is the seeded initial adapter."""
    put_json(store, f"{global_prefix(round_index)}/{META_FILE}", seeded_spec(config, round_index))


def is_seeded(store: Store, round_index: int) -> bool:
    """Whether the global adapter after ``round_index`` is recorded as the seeded initial adapter (a spec)."""
    meta = get_json(store, f"{global_prefix(round_index)}/{META_FILE}")
    return isinstance(meta, dict) and meta.get("initial") == SEEDED


def load_global(store: Store, round_index: int, *, initial: InitialAdapter | None = None) -> AdapterState | None:
    """The global adapter after ``round_index``: its stored tensors, or for a spec ``initial()`` (None without it).

    Raises:
        StoreError: the round's global adapter (or its spec) is missing or fails its integrity check.

    """
    if is_seeded(store, round_index):
        return initial() if initial is not None else None
    return load_adapter(store, global_prefix(round_index)).tensors
