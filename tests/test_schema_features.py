"""The row's columns beside the pooled text (``model.schema_features``): layout, head, gradients, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from fedlora.data.datasets import get_schema, load_dataset
from fedlora.data.features import SchemaFeaturesError, head_feature_width, head_features
from fedlora.data.schema import DatasetSchema, categorical, numeric
from fedlora.model.cache import splittable_core
from fedlora.model.heads import masked_mean
from fedlora.privacy.per_sample import PerExampleGradients
from fedlora.runtime import Runtime
from helpers import randomize_trainable, tiny_runtime

CPU = torch.device("cpu")


@pytest.mark.parametrize("dataset", ["german_credit", "taiwan_credit"])
def test_every_bundled_row_maps_inside_the_declared_layout(dataset: str) -> None:
    frame, schema = load_dataset(dataset)
    features = head_features(frame, schema)
    assert features.shape == (len(frame), head_feature_width(schema))
    assert features.dtype == np.float32
    norms = np.linalg.norm(features, axis=1)
    assert norms.max() <= 1.0 + 1e-6  # per-example gradient of the feature weights is at most |p − y|
    assert np.all(features >= 0.0)
    # every categorical value is one the schema declares: the "unknown" slot of each column stays empty
    offset = 0
    for column in schema.columns:
        if column.kind == "numeric":
            offset += 1
            continue
        assert column.categories is not None
        block = features[:, offset : offset + len(column.categories) + 1]
        assert np.all(block[:, -1] == 0.0), column.name
        assert np.allclose(block.sum(axis=1), 1.0 / math.sqrt(len(schema.columns)))
        offset += len(column.categories) + 1
    assert offset == features.shape[1]


def test_a_categorical_column_without_categories_is_refused_by_name() -> None:
    schema = DatasetSchema(
        name="loans",
        columns=(numeric("amount", 0, 1e6), categorical("addr_state")),
        label_column="y",
        positive="1",
        negative="0",
    )
    with pytest.raises(SchemaFeaturesError, match=r"column 'addr_state' lists none"):
        head_feature_width(schema)


def _features_runtime(tmp_path: Path, *extra: str) -> Runtime:
    return tiny_runtime(
        tmp_path, "data.dataset=taiwan_credit", "model.max_length=96", "model.schema_features=true", *extra
    )


def test_the_head_reads_text_and_columns_as_one_centred_linear_map(tmp_path: Path) -> None:
    runtime = _features_runtime(tmp_path, "model.cache_frozen_layers=false")
    model = runtime.model
    core = splittable_core(model)
    assert core is not None
    width = head_feature_width(get_schema("taiwan_credit"))
    assert core.feature_count == width
    head = core.classifier
    assert all(float(p.detach().abs().max()) == 0.0 for p in head.parameters())  # zero start, p = 1/2
    hidden = core.config.hidden_size
    offset = head.offset.detach()
    assert offset.shape == (hidden + width,) and float(offset[hidden:].abs().sum()) > 0  # public μ_f
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.5)
    data = runtime.bank("bank-a").train
    assert data.features is not None and data.features.shape == (len(data), width)
    index = torch.arange(6)
    logits, _ = data.logits(model, index, CPU)
    ids, mask, _ = data.batch(index, CPU)
    with torch.no_grad():
        pooled = masked_mean(model.get_base_model().bert(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
        inputs = torch.cat([pooled, data.features[index]], dim=1) - offset
        trained = head.modules_to_save["default"]  # PEFT trains (and exchanges) a copy of the head
        expected = inputs @ trained.weight.T + trained.bias
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=f"reads {width} schema features per row; got none"):
        model(input_ids=ids, attention_mask=mask)


def test_the_heads_per_example_gradient_matches_one_backward_per_row(tmp_path: Path) -> None:
    # cached and uncached rows with columns agree: tests/test_recipe.py (the "text+columns" case)
    runtime = _features_runtime(tmp_path, "lora.top_layers=1", "model.cache_frozen_layers=false")
    model = runtime.model
    randomize_trainable(model)
    tokens = runtime.bank("bank-a").train
    collector = PerExampleGradients(model)
    index = torch.arange(0, len(tokens), 3)
    with collector:
        logits, labels = tokens.logits(model, index, CPU)
        losses = F.cross_entropy(logits, labels, reduction="none")
    per_example = collector.compute(losses.sum())
    # the head's per-example gradient is (p − y)·[h̄ − μ, f − μ_f]: check it against one backward per row
    head = splittable_core(model).classifier.modules_to_save["default"]  # type: ignore[union-attr]
    for position, row in enumerate(index[:4].tolist()):
        model.zero_grad(set_to_none=True)
        logits, labels = tokens.logits(model, torch.tensor([row]), CPU)
        F.cross_entropy(logits, labels, reduction="sum").backward()
        assert head.weight.grad is not None
        torch.testing.assert_close(per_example[head.weight][position], head.weight.grad, rtol=1e-4, atol=1e-6)


def test_a_decoder_with_schema_features_is_refused_before_training(tmp_path: Path) -> None:
    runtime = _features_runtime(tmp_path, "model.name=tiny-llama")
    with pytest.raises(SchemaFeaturesError, match="needs an encoder preset"):
        _ = runtime.model


def test_a_short_private_run_trains_and_exchanges_the_wider_head(tmp_path: Path) -> None:
    from fedlora.config import load_config
    from fedlora.simulate import simulate

    config = load_config(
        None,
        [
            "model.name=tiny-bert",
            "data.dataset=taiwan_credit",
            "data.max_rows=300",
            "model.max_length=96",
            "model.schema_features=true",
            "federation.rounds=2",
            "training.batch_size=16",
            "tracking.enabled=false",
            f"output.dir={tmp_path}",
            "output.run_name=wide",
        ],
    )
    summary = simulate(config)
    from safetensors.torch import load_file

    adapter = load_file(summary.final.adapter)
    heads = [v for k, v in adapter.items() if "classifier" in k and k.endswith("weight")]
    assert len(heads) == 1
    width = head_feature_width(get_schema("taiwan_credit"))
    assert heads[0].shape[1] > width and float(heads[0][:, -width:].abs().sum()) > 0  # the columns were trained
    spent = summary.final.epsilon
    assert spent and all(e is not None and 0 < e <= 8.0 + 1e-9 for e in spent.values())
    assert summary.final.auc is not None
