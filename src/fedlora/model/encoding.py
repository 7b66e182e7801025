"""Tokenize a bank's text once and hand out batches trimmed to their longest row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedlora.data.banks import TextSet


class RowSet(Protocol):
    """Rows a model can score: token ids (:class:`EncodedSet`) or cached activations (``CachedSet``)."""

    @property
    def labels(self) -> torch.Tensor:
        """0/1 labels of every row."""
        ...

    def __len__(self) -> int: ...

    def logits(self, model: nn.Module, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Float logits and labels of rows ``index``."""
        ...


@runtime_checkable
class OwnLoss(Protocol):
    """Rows with their own per-example objective (the completion loss of :mod:`fedlora.model.completion`)."""

    def losses(self, model: nn.Module, index: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The loss ``L_i`` of each row of ``index`` (one per row, so DP-SGD can clip each)."""
        ...


def example_losses(model: nn.Module, data: RowSet, index: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``L_i`` for rows ``index``: the rows' own objective when they have one, else ``CE(logits_i, y_i)``."""
    if isinstance(data, OwnLoss):
        return data.losses(model, index, device)
    logits, labels = data.logits(model, index, device)
    return F.cross_entropy(logits, labels, reduction="none")


@dataclass(frozen=True)
class EncodedSet:
    """Token ids, attention mask and labels of a :class:`TextSet`, padded to ``max_length``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    features: torch.Tensor | None = None
    """The rows' columns for the head (``model.schema_features``), else None."""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows ``index``, with padding columns beyond the longest row removed."""
        mask = self.attention_mask[index]
        width = max(int(mask.sum(dim=1).max()), 1) if len(index) else 1
        return (
            self.input_ids[index, :width].to(device),
            mask[:, :width].to(device),
            self.labels[index].to(device),
        )

    def logits(self, model: nn.Module, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Float logits and labels of rows ``index`` (a full forward pass)."""
        input_ids, mask, labels = self.batch(index, device)
        extra = {} if self.features is None else {"features": self.features[index].to(device)}
        out = model(input_ids=input_ids, attention_mask=mask, **extra)
        return out.logits.float(), labels


def encode(texts: TextSet, tokenizer: PreTrainedTokenizerBase, *, max_length: int) -> EncodedSet:
    """Tokenize (right padding, truncation at ``max_length``); the head features, if any, travel along."""
    tokenizer.padding_side = "right"
    enc = tokenizer(texts.texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return EncodedSet(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        labels=torch.tensor(np.asarray(texts.labels, dtype=np.int64)),
        features=None if texts.features is None else torch.as_tensor(texts.features, dtype=torch.float32),
    )
