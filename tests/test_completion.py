"""The seed's objective on decoders: per-example completion loss, its DP gradients, a DP round, a generative adapter."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from peft import PeftModel
from safetensors.torch import load_file

from fedlora.bank_round import run_bank_round
from fedlora.config import LoraConfig, load_config
from fedlora.data.banks import TextSet
from fedlora.data.text_tasks import TFNS
from fedlora.federation import initialize
from fedlora.model.completion import cache_frozen_prefix, encode_completion
from fedlora.model.encoding import example_losses
from fedlora.model.loading import load_causal_lm
from fedlora.model.lora import adapter_state, attach_lora
from fedlora.privacy.clipping import clip_and_sum
from fedlora.privacy.per_sample import PerExampleGradients
from fedlora.runtime import Runtime
from fedlora.simulate import simulate
from fedlora.training import round_training
from helpers import randomize_trainable, text_task_overrides

CPU = torch.device("cpu")
TWEETS = ["shares jump after upgrade", "profit warning, stock falls", "company holds annual meeting", "guidance cut"]


def _model_and_rows(ffa: bool) -> tuple[torch.nn.Module, object]:
    loaded = load_causal_lm("tiny-llama", seed=0, device=CPU)
    model = attach_lora(loaded, LoraConfig(rank=4, ffa=ffa, top_layers=None), seed=0)
    randomize_trainable(model)
    model.eval()  # no dropout: the loop and the batch see the same function
    texts = TextSet(texts=[TFNS.prompt(t) for t in TWEETS], labels=torch.tensor([2, 0, 1, 0]).numpy())
    return model, encode_completion(texts, loaded.tokenizer, labels=TFNS.labels, max_length=48)


def test_completion_loss_is_the_mean_nll_of_each_rows_answer_tokens() -> None:
    model, rows = _model_and_rows(ffa=True)
    index = torch.arange(len(TWEETS))
    losses = example_losses(model, rows, index, CPU)
    logits = model(input_ids=rows.input_ids, attention_mask=rows.attention_mask).logits.float()
    for i in range(len(TWEETS)):
        answer = rows.answer_mask[i].nonzero().flatten()
        assert len(answer) >= 1 and int(answer[0]) == int(rows.answer_start[i])
        nll = F.cross_entropy(logits[i, answer - 1], rows.input_ids[i, answer])  # token t predicted at t − 1
        torch.testing.assert_close(losses[i], nll, atol=1e-5, rtol=1e-5)
    scores, labels = rows.logits(model, index, CPU)
    assert scores.shape == (len(TWEETS), 3) and labels.tolist() == [2, 0, 1, 0]
    first = logits[index, rows.answer_start - 1][:, rows.label_tokens]
    torch.testing.assert_close(scores, first, atol=1e-5, rtol=1e-5)
    # each row's own answer token is its label's first token: label scoring reads the trained position
    assert rows.input_ids[index, rows.answer_start].tolist() == rows.label_tokens[labels].tolist()


def test_per_example_dp_gradients_of_the_completion_loss_match_a_per_example_loop() -> None:
    for ffa in (True, False):
        model, rows = _model_and_rows(ffa=ffa)
        collector = PerExampleGradients(model)
        params = collector.parameters()
        index = torch.arange(len(TWEETS))
        with collector:
            losses = example_losses(model, rows, index, CPU)
        per_example = collector.compute(losses.sum())
        clipped = clip_and_sum(per_example, max_grad_norm=0.05)
        summed = [torch.zeros_like(p) for p in params]
        for i in range(len(TWEETS)):
            loss = example_losses(model, rows, index[i : i + 1], CPU).sum()
            grads = torch.autograd.grad(loss, params)
            norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
            for j, (p, g) in enumerate(zip(params, grads, strict=True)):
                torch.testing.assert_close(per_example[p][i], g, atol=1e-5, rtol=1e-3)  # float32, other pad widths
                summed[j] += g * min(1.0, 0.05 / float(norm))
        for p, ref in zip(params, summed, strict=True):
            torch.testing.assert_close(clipped.summed[p], ref, atol=1e-5, rtol=1e-3)


def _text_overrides(root: Path) -> list[str]:
    return [*text_task_overrides(root), "lora.top_layers=null"]


def test_a_dp_round_of_the_completion_objective_runs_through_run_bank_round(tmp_path: Path) -> None:
    config = load_config(None, _text_overrides(tmp_path))
    runtime = Runtime(config)
    initialize(config, run="text", runtime=runtime)
    before = runtime.initial_adapter
    outcome = run_bank_round(config, run="text", bank="bank-a", round_index=1, runtime=runtime)
    assert outcome.status == "ok", outcome.message
    assert outcome.steps == 2 and outcome.epsilon is not None and 0 < outcome.epsilon <= 8.0
    after = adapter_state(runtime.model)
    assert set(after) == set(before) and all("lora_" in k for k in after)
    assert any(not torch.equal(after[k], before[k]) for k in after if "lora_B" in k)


def test_the_final_adapter_loads_with_peft_for_generation(tmp_path: Path) -> None:
    config = load_config(None, [*_text_overrides(tmp_path), "output.run_name=gen"])
    summary = simulate(config)
    assert 0.0 <= summary.final.metrics["accuracy"] <= 1.0 and summary.final.metrics["n"] > 0
    base = load_causal_lm("tiny-llama", seed=config.seed, device=CPU)
    model = PeftModel.from_pretrained(base.model, summary.final.peft_adapter)
    assert type(model).__name__ == "PeftModelForCausalLM"
    final = load_file(summary.final.adapter)  # the global adapter of the last round, as the exchange holds it
    loaded = {k: v for k, v in model.named_parameters() if "lora_" in k}
    assert set(loaded) == set(final) and len(final) > 0
    for name, value in final.items():
        torch.testing.assert_close(loaded[name].detach(), value)
    prompt = base.tokenizer(TFNS.prompt("shares jump after upgrade"), return_tensors="pt")
    out = model.generate(
        input_ids=prompt["input_ids"], attention_mask=prompt["attention_mask"], max_new_tokens=10, do_sample=False
    )
    assert out.shape[1] > prompt["input_ids"].shape[1]


def test_the_cosine_learning_rate_goes_from_the_rate_to_the_minimum_over_the_rounds() -> None:
    training = load_config(None, ["training.learning_rate=1e-4", "training.min_learning_rate=1e-5"]).training
    rates = [round_training(training, round_index=t, rounds=5).learning_rate for t in range(1, 6)]
    assert rates[0] == pytest.approx(1e-4) and rates[-1] == pytest.approx(1e-5)
    assert rates[2] == pytest.approx(5.5e-5)  # halfway: the mean of the two
    assert all(a > b for a, b in itertools.pairwise(rates))
    constant = load_config(None, ["training.learning_rate=0.5"]).training
    assert round_training(constant, round_index=3, rounds=5) == constant


def test_the_cached_frozen_prefix_gives_the_same_losses_scores_and_per_example_gradients() -> None:
    loaded = load_causal_lm("tiny-llama", seed=0, device=CPU)
    model = attach_lora(loaded, LoraConfig(rank=4, ffa=False, top_layers=1), seed=0)
    randomize_trainable(model)
    model.eval()
    texts = TextSet(texts=[TFNS.prompt(t) for t in TWEETS], labels=torch.tensor([2, 0, 1, 0]).numpy())
    rows = encode_completion(texts, loaded.tokenizer, labels=TFNS.labels, max_length=48)
    cached = cache_frozen_prefix(model, rows, batch_size=3, device=CPU)
    assert cached.start_layer == 1 and cached.prefix is not None  # layer 0 is frozen: computed once
    index = torch.tensor([3, 0, 2])
    collector = PerExampleGradients(model)
    grads = []
    for data in (rows, cached):
        with collector:
            losses = example_losses(model, data, index, CPU)
        grads.append(collector.compute(losses.sum()))
        torch.testing.assert_close(losses, example_losses(model, rows, index, CPU), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(data.logits(model, index, CPU)[0], rows.logits(model, index, CPU)[0])
    for p in collector.parameters():
        torch.testing.assert_close(grads[1][p], grads[0][p], atol=1e-6, rtol=1e-4)
