"""Scoring a generative adapter the way FinLoRA does: greedy generation, the first label word found.

For each prompt the model generates ``max_new_tokens`` (10 in FinLoRA) tokens greedily; the
prediction is the label whose word occurs *earliest* in the lower-cased generated text (no label
word at all counts as wrong). FinLoRA reports the accuracy and the weighted F1 (per-class F1
weighted by support, ``sklearn.metrics.f1_score(average="weighted")``) of these predictions.
Beside them, label scoring (:meth:`fedlora.model.completion.CompletionSet.logits`, no generation):
``argmax_k`` of the next-token logit of label ``k``'s first token after the prompt.

Generation starts from exactly the prompt tokens the model was trained on (the tokens before the
first answer token of ``context + target``), left-padded so every row's next token is at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedlora.model.completion import CompletionSet


def first_label(text: str, labels: Sequence[str]) -> int:
    """The index of the label whose word occurs earliest in ``text`` (case-insensitive); −1 when none does."""
    lowered = text.lower()
    found = [(lowered.find(label.lower()), k) for k, label in enumerate(labels)]
    hits = [(position, k) for position, k in found if position >= 0]
    return min(hits)[1] if hits else -1


@torch.no_grad()
def generate_answers(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: CompletionSet,
    *,
    max_new_tokens: int = 10,
    batch_size: int = 32,
    device: torch.device,
) -> list[str]:
    """Greedy continuations (``max_new_tokens`` tokens) of every row's prompt, decoded, in row order."""
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    answers: list[str] = []
    for chunk in torch.split(torch.arange(len(rows)), batch_size):
        prompts = [rows.prompt_ids(int(i)) for i in chunk]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), int(pad), dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for j, prompt in enumerate(prompts):  # left padding: every row's next token is at the end
            ids[j, width - len(prompt) :] = torch.tensor(prompt)
            mask[j, width - len(prompt) :] = 1
        out = model.generate(  # type: ignore[operator]
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=int(pad),
        )
        answers.extend(tokenizer.batch_decode(out[:, width:].cpu(), skip_special_tokens=True))
    return answers


@dataclass(frozen=True)
class TextTaskScores:
    """FinLoRA's metrics of a generative adapter on one file, plus label scoring."""

    accuracy: float
    """Accuracy of the first label word in the greedy generation."""
    weighted_f1: float
    """Weighted F1 of those predictions (FinLoRA's F1)."""
    label_scoring_accuracy: float
    """Accuracy of ``argmax_k`` of the label's first-token logit after the prompt."""
    label_scoring_weighted_f1: float
    no_label_fraction: float
    """Share of generations that name no label (counted wrong)."""
    n: int
    labels: list[str]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def score_text_task(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: CompletionSet,
    *,
    labels: Sequence[str],
    max_new_tokens: int = 10,
    batch_size: int = 32,
    device: torch.device,
) -> TextTaskScores:
    """Generate and score every row (module docstring)."""
    y = rows.labels.numpy()
    texts = generate_answers(
        model, tokenizer, rows, max_new_tokens=max_new_tokens, batch_size=batch_size, device=device
    )
    generated = np.array([first_label(t, labels) for t in texts], dtype=np.int64)
    scored: list[torch.Tensor] = []
    for chunk in torch.split(torch.arange(len(rows)), batch_size):
        logits, _ = rows.logits(model, chunk, device)
        scored.append(logits.argmax(dim=-1).cpu())
    by_score = torch.cat(scored).numpy() if scored else np.zeros(0, dtype=np.int64)
    return TextTaskScores(
        accuracy=float(accuracy_score(y, generated)),
        weighted_f1=float(f1_score(y, generated, average="weighted", labels=list(range(len(labels))), zero_division=0)),
        label_scoring_accuracy=float(accuracy_score(y, by_score)),
        label_scoring_weighted_f1=float(f1_score(y, by_score, average="weighted", zero_division=0)),
        no_label_fraction=float(np.mean(generated < 0)) if len(generated) else 0.0,
        n=len(y),
        labels=list(labels),
    )
