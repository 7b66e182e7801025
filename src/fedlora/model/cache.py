"""Train on cached activations of the frozen layers below the lowest adapter (exact, no privacy cost).

With adapters only in the top layers (``lora.top_layers``), every layer below the lowest adapted
one is frozen and deterministic (no dropout, :mod:`fedlora.model.heads`): for a row ``x`` its
output ``h_k(x)`` at layer ``k`` is the same every epoch, round and bank. We compute ``h_k`` once
per bank and split, and each training or evaluation step runs only layers ``≥ k``, the pooling
and the head (:meth:`MeanPooledBertForSequenceClassification.head_from`, the very code the
uncached forward runs).

Exactness: the loss and every per-example gradient of the trainable parameters (which all sit in
layers ``≥ k`` or the head) are functions of ``h_k(x)`` only, so they are unchanged -- up to
floating-point reassociation when a batch is padded to a different width. Privacy: the cache is
a deterministic function of the bank's own rows, kept inside the bank like the rows themselves;
nothing about it leaves the bank, and clipping, noise and accounting are untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fedlora.model.encoding import EncodedSet
from fedlora.model.heads import MeanPooledBertForSequenceClassification


def splittable_core(model: nn.Module) -> MeanPooledBertForSequenceClassification | None:
    """The mean-pooled encoder inside a (PEFT-wrapped) model, or None for models without a split forward."""
    unwrap = getattr(model, "get_base_model", None)
    core = unwrap() if callable(unwrap) else model
    return core if isinstance(core, MeanPooledBertForSequenceClassification) else None


def first_trained_layer(core: MeanPooledBertForSequenceClassification) -> int:
    """Index of the lowest encoder layer holding an adapter or a trainable parameter (layers count if none)."""
    for index, layer in enumerate(core.bert.encoder.layer):
        if any("lora_" in name for name, _ in layer.named_modules()) or any(
            p.requires_grad for p in layer.parameters()
        ):
            return index
    return core.num_layers


@dataclass(frozen=True)
class CachedSet:
    """Hidden states entering layer ``start_layer`` for every row, with their masks and labels."""

    hidden: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    start_layer: int
    features: torch.Tensor | None = None
    """The rows' columns for the head (``model.schema_features``), else None."""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def logits(self, model: nn.Module, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of rows ``index`` from their cached hidden states (layers ``≥ start_layer`` only)."""
        core = splittable_core(model)
        if core is None:
            raise TypeError("cached activations need a model with a split forward (MeanPooledBert...)")
        mask = self.attention_mask[index]
        width = max(int(mask.sum(dim=1).max()), 1) if len(index) else 1
        hidden = self.hidden[index, :width].to(device)
        features = None if self.features is None else self.features[index].to(device)
        out = core.head_from(hidden, mask[:, :width].to(device), self.start_layer, features=features)
        return out.float(), self.labels[index].to(device)


@torch.no_grad()
def cache_frozen_layers(
    model: nn.Module,
    data: EncodedSet,
    *,
    batch_size: int,
    device: torch.device,
    progress: Callable[[int, int], None] | None = None,
) -> EncodedSet | CachedSet:
    """``data`` with the frozen layers below the lowest trained layer precomputed, when the model allows it.

    Returns ``data`` unchanged for models without a split forward or with adapters in layer 0
    (nothing to save). ``progress(rows_done, rows_total)`` is called after every chunk (the pass
    over a large bank's rows takes minutes on a CPU).
    """
    core = splittable_core(model)
    if core is None:
        return data
    start = first_trained_layer(core)
    if start == 0 or len(data) == 0:
        return data
    was_training = core.training
    core.eval()
    width = max(int(data.attention_mask.sum(dim=1).max()), 1)
    hidden = torch.zeros(len(data), width, core.config.hidden_size, dtype=torch.float32)
    try:
        for chunk in torch.split(torch.arange(len(data)), batch_size):
            input_ids, mask, _ = data.batch(chunk, device)
            out = core.prefix(input_ids, mask, start).float().cpu()
            hidden[chunk, : out.shape[1]] = out
            if progress is not None:
                progress(int(chunk[-1]) + 1, len(data))
    finally:
        core.train(was_training)
    return CachedSet(
        hidden=hidden,
        attention_mask=data.attention_mask[:, :width],
        labels=data.labels,
        start_layer=start,
        features=data.features,
    )
