"""The seed's objective on decoders: completion-only loss on the answer tokens of an instruction prompt.

FinLoRA (``lora/flowertune-llm``) tunes a causal LM on ``context + target`` (the instruction prompt
of :mod:`fedlora.data.text_tasks` and the label word) with the loss on the answer tokens only. For
example ``i`` with tokens ``x_1 … x_T`` whose answer tokens are ``A_i ⊂ {1 … T}``::

    L_i = −(1/|A_i|) · Σ_{t ∈ A_i} log p_θ(x_t | x_<t)

one loss per example (the mean over its own answer tokens, so every example weighs the same
whatever its answer's length), which is what per-example DP-SGD clips (Abadi et al., 2016;
:func:`fedlora.training.dp_gradient` sums ``L_i`` and :mod:`fedlora.privacy.per_sample` takes each
example's gradient). Hugging Face's built-in loss averages over every token of the batch and would
mix the examples. The LM head is applied at the answer positions only (not the whole vocabulary at
every position), so the step costs the decoder's forward and backward and little more.

Label scoring (an evaluation without generation): the next-token logits after the prompt,
restricted to the first answer token of each label, ``s_k = logit(first token of label k | prompt)``;
the prediction is ``argmax_k s_k`` and ``softmax(s)`` the class probabilities. The adapter stays a
generative LoRA adapter: greedy generation is :mod:`fedlora.model.generation`.

Tokens: the text ``context + target`` is tokenized once (right padding); a token is an answer token
when it covers a character of ``target`` (offset end > ``len(context)``), so a BPE token that
merges the prompt's trailing space with the label (``"Ġnegative"``) is the answer's, exactly as
the model saw it in training. A row longer than ``max_length`` keeps its last ``max_length`` tokens
(the answer and the end of the input; the instruction's start is cut).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedlora.data.banks import TextSet
from fedlora.errors import FedLoRAError


class LabelTokenError(FedLoRAError, ValueError):
    """Two labels begin with the same token, so label scoring cannot tell them apart (names the labels only)."""


def decoder_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The decoder stack and the LM head of a (PEFT-wrapped) causal LM (LoRA sits inside the stack)."""
    unwrap = getattr(model, "get_base_model", None)
    core: Any = unwrap() if callable(unwrap) else model
    decoder, head = core.get_decoder(), core.get_output_embeddings()
    if not isinstance(decoder, nn.Module) or not isinstance(head, nn.Module):
        raise TypeError(f"{type(core).__name__} is not a causal LM with a decoder and an LM head")
    return decoder, head


def decoder_layers(
    decoder: Any, hidden: torch.Tensor, attention_mask: torch.Tensor, *, start: int, stop: int | None
) -> torch.Tensor:
    """Run decoder layers ``start … stop−1`` on ``hidden`` (the states entering layer ``start``).

    ``stop=None`` runs the remaining layers and the final norm (the decoder's output); a ``stop``
    returns the states entering layer ``stop``. The causal mask and rotary embeddings are built as
    the decoder's own forward builds them (positions ``0 … T−1``, right padding), so
    ``decoder_layers(decoder_layers(embed(x), 0, k), k, None)`` is the decoder's forward.
    """
    from transformers.masking_utils import create_causal_mask

    positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
    mask = create_causal_mask(
        config=decoder.config, inputs_embeds=hidden, attention_mask=attention_mask, cache=None, position_ids=positions
    )
    rotary = decoder.rotary_emb(hidden, position_ids=positions)
    for layer in decoder.layers[start:stop]:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=positions)
    return decoder.norm(hidden) if stop is None else hidden


def first_adapted_layer(decoder: Any) -> int:
    """Index of the lowest decoder layer holding a LoRA module or a trainable parameter (layer count if none)."""
    for index, layer in enumerate(decoder.layers):
        if any("lora_" in name for name, _ in layer.named_modules()) or any(
            p.requires_grad for p in layer.parameters()
        ):
            return index
    return len(decoder.layers)


@torch.no_grad()
def cache_frozen_prefix(
    model: nn.Module,
    rows: CompletionSet,
    *,
    batch_size: int,
    device: torch.device,
    progress: Callable[[int, int], None] | None = None,
) -> CompletionSet:
    """``rows`` with the frozen decoder layers below the lowest adapter computed once (exact; kept in the bank).

    With adapters only in the top layers (``lora.top_layers``), layers ``< k`` are frozen and deterministic:
    their output is the same every step, round and bank, so it is computed once and each step runs layers
    ``≥ k`` only (as :mod:`fedlora.model.cache` does for encoders). The loss and every per-example gradient
    are functions of that output, so they are unchanged up to floating-point reassociation; the cache is a
    function of the bank's own rows and never leaves the bank. ``rows`` unchanged when ``k = 0``. Rows are
    processed in chunks of similar length (each chunk is padded to its longest row only: on TFNS about 1.3x fewer
    token positions than chunks in row order). ``progress(rows_done, rows_total)`` is called after every chunk.
    """
    decoder: Any = decoder_parts(model)[0]
    start = first_adapted_layer(decoder)
    if start == 0 or len(rows) == 0:
        return rows
    was_training = decoder.training
    decoder.eval()
    embed = decoder.get_input_embeddings()
    prefix = torch.zeros(len(rows), rows.input_ids.shape[1], decoder.config.hidden_size, dtype=torch.float32)
    by_length = torch.argsort(rows.attention_mask.sum(dim=1), stable=True)  # chunks of similar length: less padding
    done = 0
    try:
        for chunk in torch.split(by_length, batch_size):
            input_ids, mask, _ = rows._batch(chunk, device)
            hidden = decoder_layers(decoder, embed(input_ids), mask, start=0, stop=start)
            prefix[chunk, : hidden.shape[1]] = hidden.float().cpu()
            done += len(chunk)
            if progress is not None:
                progress(done, len(rows))
    finally:
        decoder.train(was_training)
    return replace(rows, prefix=prefix, start_layer=start)


def answer_span(tokenizer: PreTrainedTokenizerBase, context: str, target: str) -> tuple[list[int], int, int]:
    """Token ids of ``context + target``, the index of the first answer token and the number of answer tokens."""
    enc = tokenizer(context + target, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    answer = [i for i, (start, end) in enumerate(offsets) if end > len(context) and end > start]
    if not answer:
        raise ValueError("the answer has no token of its own (empty label?)")
    return ids, answer[0], answer[-1] - answer[0] + 1


def label_first_tokens(tokenizer: PreTrainedTokenizerBase, labels: Sequence[str]) -> torch.Tensor:
    r"""The first answer token of each label after FinLoRA's ``"\\nAnswer: "``.

    Raises:
        LabelTokenError: two labels share their first token.

    """
    prefix = "\nAnswer: "
    first = []
    for label in labels:
        ids, start, _ = answer_span(tokenizer, prefix, label)
        first.append(ids[start])
    if len(set(first)) != len(first):
        raise LabelTokenError(
            f"the labels {list(labels)} (data.labels) do not begin with distinct tokens; label scoring needs "
            "labels whose first tokens differ"
        )
    return torch.tensor(first, dtype=torch.long)


@dataclass(frozen=True)
class CompletionSet:
    """Prompt-and-answer token ids of a text task's rows, which of them are the answer, and the class ids.

    Implements the :class:`~fedlora.model.encoding.RowSet` seam: :meth:`losses` is the per-example
    completion loss (training), :meth:`logits` the label scores (evaluation).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answer_mask: torch.Tensor
    """1 where the token is an answer token (it is predicted from the position before it)."""
    answer_start: torch.Tensor
    """Index of each row's first answer token (its prompt is the tokens before it)."""
    labels: torch.Tensor
    label_tokens: torch.Tensor
    """First answer token of each label, in class-id order."""
    prefix: torch.Tensor | None = None
    """Hidden states entering layer ``start_layer`` (:func:`cache_frozen_prefix`), else None."""
    start_layer: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _batch(self, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = self.attention_mask[index]
        width = max(int(mask.sum(dim=1).max()), 1) if len(index) else 1
        return (
            self.input_ids[index, :width].to(device),
            mask[:, :width].to(device),
            self.answer_mask[index, :width].to(device),
        )

    def _last_hidden(self, decoder: nn.Module, index: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> Any:
        """The decoder's output for rows ``index``: a full pass, or layers ``≥ start_layer`` from the cached prefix."""
        if self.prefix is None:
            return decoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        hidden = self.prefix[index, : input_ids.shape[1]].to(input_ids.device)
        return decoder_layers(decoder, hidden, mask, start=self.start_layer, stop=None)

    def losses(self, model: nn.Module, index: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``L_i``: the mean negative log-likelihood of each row's answer tokens (module docstring)."""
        input_ids, mask, answer = self._batch(index, device)
        decoder, head = decoder_parts(model)
        hidden = self._last_hidden(decoder, index, input_ids, mask)
        rows, cols = answer[:, 1:].nonzero(as_tuple=True)  # token cols+1 is predicted at position cols
        log_probs = F.log_softmax(head(hidden[rows, cols]).float(), dim=-1)
        nll = -log_probs.gather(1, input_ids[rows, cols + 1].unsqueeze(1)).squeeze(1)
        summed = torch.zeros(len(index), device=nll.device, dtype=nll.dtype).index_add(0, rows, nll)
        return summed / answer[:, 1:].sum(dim=1).clamp(min=1).to(nll.dtype)

    def prompt_states(self, model: nn.Module, index: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The decoder's output (after its final norm) at each row's last prompt token: what predicts the answer."""
        input_ids, mask, _ = self._batch(index, device)
        decoder, _ = decoder_parts(model)
        hidden = self._last_hidden(decoder, index, input_ids, mask)
        last = self.answer_start[index].to(device) - 1
        states: torch.Tensor = hidden[torch.arange(len(index), device=device), last]
        return states

    def logits(self, model: nn.Module, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Label scores ``s_k`` (next-token logits after the prompt at each label's first token) and class ids."""
        head = decoder_parts(model)[1]
        scores = head(self.prompt_states(model, index, device)).float()
        return scores[:, self.label_tokens.to(device)], self.labels[index].to(device)

    def prompt_ids(self, row: int) -> list[int]:
        """Token ids of row ``row``'s prompt (what generation starts from)."""
        return self.input_ids[row, : int(self.answer_start[row])].tolist()


def encode_completion(
    texts: TextSet, tokenizer: PreTrainedTokenizerBase, *, labels: Sequence[str], max_length: int
) -> CompletionSet:
    """Tokenize every prompt with its own label word appended (``texts.labels`` index ``labels``)."""
    rows = [
        answer_span(tokenizer, context, labels[int(y)]) for context, y in zip(texts.texts, texts.labels, strict=True)
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), max_length), int(pad), dtype=torch.long)
    attention = torch.zeros((len(rows), max_length), dtype=torch.long)
    answer = torch.zeros((len(rows), max_length), dtype=torch.long)
    starts = torch.zeros(len(rows), dtype=torch.long)
    for i, (ids, start, count) in enumerate(rows):
        cut = max(len(ids) - max_length, 0)  # keep the last max_length tokens: the answer survives
        kept = ids[cut:]
        input_ids[i, : len(kept)] = torch.tensor(kept)
        attention[i, : len(kept)] = 1
        starts[i] = max(start - cut, 1)
        answer[i, starts[i] : starts[i] + count] = 1
    return CompletionSet(
        input_ids=input_ids,
        attention_mask=attention,
        answer_mask=answer,
        answer_start=starts,
        labels=torch.tensor(np.asarray(texts.labels, dtype=np.int64)),
        label_tokens=label_first_tokens(tokenizer, labels),
    )
