"""4-bit (bitsandbytes NF4) base weights stay trainable after the model was evaluated.

bitsandbytes repacks a 4-bit weight into an inference-only layout the first time the layer
runs in eval mode without grad on a CPU with AVX512-BF16; a bank evaluates the incoming
adapter and then trains on the same model. ``has_avx512bf16`` is forced true so the layers
take the repacking branch on any CPU (the repacking itself is plain torch code); nothing
else is faked.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from fedlora.config import LoraConfig
from fedlora.data.banks import TextSet
from fedlora.model.encoding import encode
from fedlora.model.loading import load_base_model
from fedlora.model.lora import attach_lora
from fedlora.model.quantization import keep_trainable_layout, packed_for_inference
from fedlora.privacy.per_sample import PerExampleGradients
from fedlora.training import predict_default_probability

bnb_modules = pytest.importorskip("bitsandbytes.nn.modules")

CPU = torch.device("cpu")
TEXTS = ["checking <0 DM, months 6, history critical", "checking none, months 48, history paid"] * 3


@pytest.fixture
def avx512_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every Linear4bit built from now on believe the CPU has AVX512-BF16."""
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)


def test_evaluate_then_train_keeps_the_trainable_layout(avx512_bf16: None) -> None:
    loaded = load_base_model("minilm", quantization="4", seed=0, device=CPU)
    model = attach_lora(loaded, LoraConfig(rank=4), seed=0)
    assert any(isinstance(m, bnb_modules.Linear4bit) for m in model.modules())
    data = encode(TextSet(texts=TEXTS, labels=[0, 1] * 3), loaded.tokenizer, max_length=24)

    before = predict_default_probability(model, data, batch_size=4, device=CPU)
    assert packed_for_inference(model) == []
    again = predict_default_probability(model, data, batch_size=4, device=CPU)
    assert before.tolist() == again.tolist()

    # The recipe starts the head at zero, which sends no gradient into the adapters at all; give it
    # weights as after some training so that a stopped gradient would show as a zero lora_B gradient.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and "lora_" not in name:
                param.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(0))
    model.train()
    collector = PerExampleGradients(model)
    ids, mask, labels = data.batch(torch.arange(len(data)), CPU)
    with collector:
        losses = F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits.float(), labels, reduction="none")
    grads = collector.compute(losses.sum())
    # Every LoRA B (and the head) gets a per-example gradient: the gradient flows back
    # through every frozen 4-bit layer down to the first layer's adapter.
    names = {p: n for n, p in model.named_parameters()}
    missing = [names[p] for p in collector.parameters() if p not in grads]
    assert missing == []
    for p, g in grads.items():
        assert g.shape == (len(data), *p.shape)
        assert torch.isfinite(g).all()
        if "lora_B" in names[p]:
            assert float(g.abs().sum()) > 0, names[p]


def test_a_model_already_repacked_is_refused(avx512_bf16: None) -> None:
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    loaded = load_base_model("minilm", quantization="4", seed=0, device=CPU)
    name, layer = next((n, m) for n, m in loaded.model.named_modules() if isinstance(m, bnb_modules.Linear4bit))
    weight = layer.weight
    weight.data, weight.quant_state = _convert_weight_packed_for_cpu(weight.data, weight.quant_state)
    assert packed_for_inference(loaded.model) == [name]
    with pytest.raises(ValueError, match="cannot be trained nor restored"):
        keep_trainable_layout(loaded.model)
