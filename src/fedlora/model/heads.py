"""Classification heads that read the representation the base model was trained to produce.

* **Encoders (BERT family, e.g. all-MiniLM-L6-v2):** a linear head on the *masked mean* of the
  last hidden states, ``h̄ = Σ_t m_t·h_t / Σ_t m_t``, ``logits = W·h̄ + b``. Sentence-transformers
  models are trained with mean pooling; BERT's pooler (``tanh(W_p·h_CLS)``) was never trained
  for all-MiniLM-L6-v2 and is a random projection of a token nobody optimised. The head is
  **zero-initialised** (``W = 0, b = 0``): the first logits are 0 (p = ½ for every row) and the
  first gradient ``(p − y)·h̄`` is exactly a linear probe's, rather than noise from a random head
  that DP-SGD must first undo (cf. LP-FT, Kumar et al. 2022; Tobaben et al. 2023 on DP heads).
  Dropout is switched off: DP noise is the regulariser, and deterministic frozen layers make the
  activation cache (:mod:`fedlora.model.cache`) exact.
  The head subtracts a fixed public offset first, ``W·(h̄ − μ) + b`` (:class:`CentredLinear`;
  ``μ`` from public rows, :mod:`fedlora.model.centring`; zero until set).
  With ``model.schema_features`` the head also reads the row's columns as numbers beside the
  text, ``W·[h̄ − μ, f − μ_f] + b`` (:func:`add_feature_inputs`, :mod:`fedlora.data.features`).
* **Decoders (Llama family):** the score head is initialised from the language-model head's rows
  for the words "good" and "bad" (label 0 = good, 1 = bad), so training starts from the model's
  own next-word preference instead of a random projection (Li et al., 2022, "Large Language
  Models Can Be Strong Differentially Private Learners", §3: reuse the pretraining head).

The encoder forward is split at a layer index ``k``: :meth:`prefix` runs the embeddings and
layers ``< k``; :meth:`head_from` runs layers ``≥ k``, the pooling and the head. ``forward`` is
``head_from(prefix(x, k), k)`` with ``k = 0``, so a cached prefix goes through exactly the code
that an uncached forward runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from transformers import BertConfig, BertModel, BertPreTrainedModel, PreTrainedModel, PreTrainedTokenizerBase
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import SequenceClassifierOutput


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``Σ_t m_t·h_t / max(1, Σ_t m_t)`` over the sequence axis (per example)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class CentredLinear(nn.Linear):
    """``y = W·(x − offset) + b`` with ``offset`` a fixed (non-trained, saved) buffer, zero by default."""

    offset: torch.Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("offset", torch.zeros(in_features))

    def weight_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x − offset``: what the weight multiplies (read by :mod:`fedlora.privacy.per_sample`)."""
        return x - self.offset.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The linear map of the centred input."""
        return F.linear(self.weight_input(x), self.weight, self.bias)


class MeanPooledBertForSequenceClassification(BertPreTrainedModel):
    """BERT encoder + masked mean pooling + a (zero-initialised, centred) linear head; no pooler."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.classifier = CentredLinear(config.hidden_size, config.num_labels or 2)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation, and a zero offset for the centred head (not in any checkpoint)."""
        super()._init_weights(module)
        if isinstance(module, CentredLinear):
            with torch.no_grad():
                module.offset.zero_()

    @property
    def num_layers(self) -> int:
        return len(self.bert.encoder.layer)

    def _mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        return create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)

    def prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, upto: int) -> torch.Tensor:
        """Hidden states after the embeddings and encoder layers ``0 … upto−1``."""
        hidden: torch.Tensor = self.bert.embeddings(input_ids=input_ids)
        mask = self._mask(hidden, attention_mask)
        for layer in self.bert.encoder.layer[:upto]:
            hidden = layer(hidden, mask)
        return hidden

    @property
    def feature_count(self) -> int:
        """How many schema features the head reads beside the pooled text (0 = text only)."""
        return int(self.classifier.in_features - self.config.hidden_size)

    def head_from(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits from the hidden states entering layer ``start``: layers ``≥ start``, mean pool, head.

        With schema features (:func:`add_feature_inputs`), the head reads ``[h̄, f]``.
        """
        mask = self._mask(hidden, attention_mask)
        for layer in self.bert.encoder.layer[start:]:
            hidden = layer(hidden, mask)
        pooled = masked_mean(hidden, attention_mask)
        if self.feature_count:
            if features is None or features.shape[-1] != self.feature_count:
                got = "none" if features is None else str(features.shape[-1])
                raise ValueError(f"the head reads {self.feature_count} schema features per row; got {got}")
            pooled = torch.cat([pooled, features.to(pooled.dtype)], dim=-1)
        elif features is not None:
            raise ValueError("schema features given to a head that reads text only (model.schema_features is off)")
        logits: torch.Tensor = self.classifier(pooled)
        return logits

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        """Logits of every row (``labels`` given: also the mean cross-entropy); ``features``: the schema features."""
        if input_ids is None:
            raise ValueError("input_ids are required")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        logits = self.head_from(self.prefix(input_ids, attention_mask, 0), attention_mask, 0, features=features)
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def add_feature_inputs(model: MeanPooledBertForSequenceClassification, count: int) -> None:
    """Widen the (zero) head to read ``[h̄, f]`` with ``f`` the row's ``count`` schema features.

    ``logits = W_t·(h̄ − μ) + W_f·(f − μ_f) + b``, one linear map of the concatenation, so the
    per-example gradient, clipping and the adapter exchange treat it like the text-only head.
    The new head is zero-initialised; the text part of the offset is kept, the feature part
    starts at 0 (set it with :func:`fedlora.model.centring.centre_head_on_public_rows`).
    Call before LoRA is attached (PEFT copies the head into the trained modules).
    """
    old = model.classifier
    if model.feature_count:
        raise ValueError("the head already reads schema features")
    head = CentredLinear(old.in_features + count, old.out_features, bias=old.bias is not None)
    head.to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        head.offset.zero_()
        head.offset[: old.in_features] = old.offset
    model.classifier = head
    zero_head(model)


def zero_head(model: nn.Module) -> None:
    """Set the classification head's weight and bias to 0 (logits 0, p = ½ at the start)."""
    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Linear):
        raise TypeError(f"expected a Linear classification head, got {type(head).__name__}")
    with torch.no_grad():
        nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)


GOOD_BAD_WORDS = (" good", " bad")


def init_score_from_lm_head(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> bool:
    """Decoder score head ← the (tied) LM-head rows of " good" (label 0) and " bad" (label 1).

    Uses the first token of each word. Returns False (head unchanged) when the model has no
    ``score`` head of shape ``(2, hidden)`` or the embedding matrix is not the output matrix.
    """
    score = getattr(model, "score", None)
    embeddings = model.get_input_embeddings()
    if not isinstance(score, nn.Linear) or score.weight.shape[0] != 2 or embeddings is None:
        return False
    if not getattr(model.config, "tie_word_embeddings", False):
        return False
    ids = [tokenizer.encode(word, add_special_tokens=False)[0] for word in GOOD_BAD_WORDS]
    with torch.no_grad():
        score.weight.copy_(embeddings.weight[ids].to(score.weight.dtype))  # type: ignore[index]
        if score.bias is not None:
            nn.init.zeros_(score.bias)
    return True
