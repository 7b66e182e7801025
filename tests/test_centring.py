"""The head is centred on public rows only: exact change of variables, no bank data, nothing exchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedlora.data.datasets import get_schema
from fedlora.data.public_rows import public_rows
from fedlora.data.schema import validate_frame
from fedlora.data.serialize import serialize_frame
from fedlora.model.cache import splittable_core
from fedlora.model.centring import PUBLIC_ROWS, PUBLIC_SEED
from fedlora.model.heads import CentredLinear, masked_mean
from fedlora.model.lora import adapter_state
from fedlora.runtime import Runtime
from helpers import tiny_runtime

CPU = torch.device("cpu")


@pytest.mark.parametrize("dataset", ["german_credit", "taiwan_credit"])
def test_public_rows_lie_in_the_schemas_declared_domain_and_are_seeded(dataset: str) -> None:
    schema = get_schema(dataset)
    rows = public_rows(schema, 300, seed=7)
    frame = rows.assign(**{schema.label_column: schema.negative})
    validate_frame(frame, schema, source="public rows")  # raises on any out-of-domain value
    assert rows.equals(public_rows(schema, 300, seed=7))
    assert not rows.equals(public_rows(schema, 300, seed=8))
    for column in schema.columns:
        if column.kind == "numeric":  # the draw covers the range, not one corner of it
            assert rows[column.name].nunique() > 10, column.name


def _head(runtime: Runtime) -> CentredLinear:
    """The head the PEFT model trains (its copy of the base model's classifier)."""
    core = splittable_core(runtime.model)
    assert core is not None
    head = core.classifier.modules_to_save["default"]  # type: ignore[index]
    assert isinstance(head, CentredLinear)
    return head


def test_the_head_subtracts_the_mean_of_public_rows_and_nothing_else(tmp_path: Path) -> None:
    runtime = tiny_runtime(tmp_path, "model.cache_frozen_layers=false")
    core = splittable_core(runtime.model)
    assert core is not None
    head = _head(runtime)
    # μ is the mean pooled representation of the public rows, recomputed here independently
    schema = get_schema("german_credit")
    texts = serialize_frame(public_rows(schema, PUBLIC_ROWS, seed=PUBLIC_SEED), schema)
    tokenizer = runtime._tokenizer
    assert tokenizer is not None
    max_length = runtime.config.model.max_length
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = core.bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        expected = masked_mean(hidden, enc["attention_mask"]).mean(dim=0)
    assert float(expected.norm()) > 0
    assert torch.allclose(head.offset, expected, atol=1e-5)
    # exact change of variables: W·(h̄ − μ) + b = W·h̄ + (b − W·μ)
    data = runtime.bank("bank-a").train
    index = torch.arange(6)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_()
        input_ids, mask, _ = data.batch(index, CPU)
        pooled = masked_mean(core.bert(input_ids=input_ids, attention_mask=mask).last_hidden_state, mask)
        folded = pooled @ head.weight.T + (head.bias - head.weight @ head.offset)
        assert torch.allclose(data.logits(runtime.model, index, CPU)[0], folded, atol=1e-5)
    # the offset is not trained and not exchanged: it is not part of the adapter
    assert not any("offset" in name for name in adapter_state(runtime.model))
    assert not head.offset.requires_grad


def test_every_party_computes_the_same_offset_and_it_can_be_switched_off(tmp_path: Path) -> None:
    first = _head(tiny_runtime(tmp_path / "a"))
    second = _head(tiny_runtime(tmp_path / "b", "data.max_rows=120", "federation.rounds=2"))  # other rows, same μ
    off = _head(tiny_runtime(tmp_path / "c", "model.centre_features=false"))
    assert torch.equal(first.offset, second.offset)
    assert float(first.offset.abs().max()) > 0
    assert float(off.offset.abs().max()) == 0.0


def test_the_saved_peft_head_carries_the_offset(tmp_path: Path) -> None:
    runtime = tiny_runtime(tmp_path)
    head = _head(runtime)
    runtime.model.save_pretrained(tmp_path / "peft")
    saved = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    offsets = [v for k, v in saved.items() if k.endswith("offset")]
    assert len(offsets) == 1
    np.testing.assert_allclose(offsets[0].numpy(), head.offset.numpy())
