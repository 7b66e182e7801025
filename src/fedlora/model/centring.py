"""Centre the pooled representation on a public reference before the head (free in privacy).

Mean-pooled sentence embeddings of serialized credit rows share a large common component: every
row repeats the same template (column names, separators, formats), so ``h̄(x) = c + v(x)`` with
``‖c‖ ≫ ‖v(x)‖``. A linear head ``W·h̄ + b`` trained by DP-SGD then sees badly conditioned
features: the step along ``c`` couples the weights with the bias, and the same noise budget buys
less progress along the directions ``v(x)`` that separate borrowers. Centring the features,
``W·(h̄ − μ) + b``, removes that coupling; it is the classical preconditioning of a linear model
(LeCun et al., 1998, "Efficient BackProp", §4.3) and is what makes DP linear probes work well in
practice (Tramèr & Boneh, 2021, "Differentially Private Learning Needs Better Features", standardise
features before DP-SGD).

Estimating ``μ`` from a bank's rows would be a release about them. We estimate it from **public**
rows only: rows drawn from the dataset's declared schema (:mod:`fedlora.data.public_rows`), fed
through the same frozen model. ``μ`` is then a function of public configuration (model, schema,
``max_length``, a fixed seed): every bank and the coordinator compute the same vector, nothing is
charged, nothing is exchanged. It is a fixed buffer of the head (``CentredLinear.offset``), not a
trained parameter: the adapter and FedAvg are unchanged, and PEFT's saved head carries it.

The change of variables is exact: ``W·(h̄ − μ) + b = W·h̄ + (b − W·μ)``; only the optimisation
path differs. Across devices, ``μ`` can differ in the last float bits; the head's output moves by
``|W·δμ|``, far below anything the noise does.

With ``model.schema_features`` the head also reads the row's columns ``f``; their part of the
offset, ``μ_f``, is the mean of :func:`fedlora.data.features.head_features` over the same public rows.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedlora.data.features import head_features
from fedlora.data.public_rows import public_rows
from fedlora.data.schema import DatasetSchema
from fedlora.data.serialize import serialize_frame
from fedlora.model.heads import MeanPooledBertForSequenceClassification, masked_mean
from fedlora.model.loading import LoadedModel

PUBLIC_ROWS = 256
PUBLIC_SEED = 20240517  # fixed: every party draws the same public rows


@torch.no_grad()
def pooled_representation(
    encoder: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    max_length: int,
    device: torch.device,
    batch_size: int = 64,
) -> torch.Tensor:
    """``h̄(x)`` for every text: the masked mean of the encoder's last hidden states (float32, on CPU).

    Args:
        encoder: A BERT-style model returning ``last_hidden_state`` (the frozen base encoder).
        tokenizer: Its tokenizer.
        texts: Serialized rows.
        max_length: Tokens per row, as in training.
        device: Where the encoder runs.
        batch_size: Rows per forward pass.

    """
    was_training = encoder.training
    encoder.eval()
    pooled: list[torch.Tensor] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        ).to(device)
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        pooled.append(masked_mean(hidden.float(), batch["attention_mask"]).cpu())
    encoder.train(was_training)
    return torch.cat(pooled)


def public_centre(
    encoder: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    schema: DatasetSchema,
    *,
    max_length: int,
    device: torch.device,
    rows: int = PUBLIC_ROWS,
) -> torch.Tensor:
    """``μ = mean_i h̄(x_i)`` over ``rows`` public rows of ``schema`` (:func:`pooled_representation`)."""
    texts = serialize_frame(public_rows(schema, rows, seed=PUBLIC_SEED), schema)
    return pooled_representation(encoder, tokenizer, texts, max_length=max_length, device=device).mean(dim=0)


def public_column_centre(schema: DatasetSchema, *, feature_scale: float) -> np.ndarray:
    """``μ_f = mean_i f(x_i)`` of :func:`fedlora.data.features.head_features` over the same public rows as ``μ``."""
    rows = public_rows(schema, PUBLIC_ROWS, seed=PUBLIC_SEED)
    return np.asarray(head_features(rows, schema, scale=feature_scale).mean(axis=0))


def centre_head_on_public_rows(
    loaded: LoadedModel, schema: DatasetSchema, *, max_length: int, feature_scale: float = 1.0
) -> bool:
    """Set the head's offset to the public centre ``μ`` (:func:`public_centre`), before LoRA is attached.

    Returns False (model unchanged) for models without a centred head (decoders: their score head
    starts from the LM head's rows instead, :func:`fedlora.model.heads.init_score_from_lm_head`).
    """
    model = loaded.model
    if not isinstance(model, MeanPooledBertForSequenceClassification):
        return False
    centre = public_centre(model.bert, loaded.tokenizer, schema, max_length=max_length, device=loaded.device)
    if model.feature_count:
        columns = public_column_centre(schema, feature_scale=feature_scale)
        centre = torch.cat([centre, torch.as_tensor(columns, dtype=centre.dtype)])
    with torch.no_grad():
        model.classifier.offset.copy_(centre.to(model.classifier.offset.device))
    return True
