"""LoRA adapters (Hu et al., 2021) on a base classifier, and the FFA-LoRA variant.

LoRA adds ``ΔW = (α/r)·B·A`` to each targeted weight ``W ∈ R^{d_out×d_in}``, with
``A ∈ R^{r×d_in}`` (random init) and ``B ∈ R^{d_out×r}`` (zero init); only A, B and the
classification head are trained. Averaging A and B separately across banks does not give
the average of the products ``B_k·A_k``. FFA-LoRA (Sun et al., 2024, "Improving LoRA in
Privacy-preserving Federated Learning") freezes A at a seed shared by all banks and trains
only B (and the head): then ``mean_k(B_k)·A = mean_k(B_k·A)`` and FedAvg is exact.

The adapter is the state of every LoRA and head parameter, keyed by parameter name;
swapping adapters copies tensors into the already-built model (no reload).
"""

from __future__ import annotations

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, TaskType, get_peft_model
from torch import nn

from fedlora.config import LoraConfig
from fedlora.model import AdapterState
from fedlora.model.loading import LoadedModel


def _is_adapter_param(name: str) -> bool:
    return "lora_" in name or "modules_to_save" in name


def num_layers(model: nn.Module) -> int:
    """Number of transformer layers (``config.num_hidden_layers``)."""
    return int(getattr(model, "config").num_hidden_layers)  # noqa: B009


def adapted_layers(model: nn.Module, lora: LoraConfig) -> list[int] | None:
    """Indices of the layers that get adapters: the top ``lora.top_layers`` (None = all).

    Raises:
        ValueError: when ``top_layers`` exceeds the model's layer count.

    """
    if lora.top_layers is None:
        return None
    total = num_layers(model)
    if lora.top_layers > total:
        raise ValueError(f"lora.top_layers={lora.top_layers} exceeds the model's {total} layers")
    return list(range(total - lora.top_layers, total))


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` keeps its LM head (a text task's generative model), not a classification head."""
    return type(model).__name__.endswith("ForCausalLM")


def attach_lora(loaded: LoadedModel, lora: LoraConfig, *, seed: int) -> PeftModel:
    """Wrap the base model with LoRA; A (and the head) are initialised from ``seed``.

    In FFA mode the A matrices are frozen, so only B and the head are trainable. With
    ``lora.top_layers`` only the top layers get adapters (small, late adapters: the lower layers
    stay exactly the pretrained ones and can be cached, :mod:`fedlora.model.cache`).
    """
    layers = adapted_layers(loaded.model, lora)
    peft_config = PeftLoraConfig(
        task_type=TaskType.CAUSAL_LM if is_causal_lm(loaded.model) else TaskType.SEQ_CLS,
        r=lora.rank,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft accepts float scaling
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules or loaded.target_modules,
        layers_to_transform=layers,
    )
    torch.manual_seed(seed)
    model = get_peft_model(loaded.model, peft_config)
    for name, param in model.named_parameters():
        if ("lora_A" in name and lora.ffa) or ("lora_" in name and not lora.enabled):
            param.requires_grad_(False)
        elif _is_adapter_param(name) and param.is_floating_point():
            param.requires_grad_("original_module" not in name)
    return model


def adapter_state(model: nn.Module) -> AdapterState:
    """A detached CPU copy of every adapter parameter (LoRA A/B and the head)."""
    return {
        name: param.detach().to("cpu", copy=True)
        for name, param in model.named_parameters()
        if _is_adapter_param(name) and "original_module" not in name
    }


def load_adapter_state(model: nn.Module, state: AdapterState) -> None:
    """Copy ``state`` into the model's adapter parameters in place.

    Raises:
        ValueError: when a key is missing or unknown, or a shape differs.

    """
    params = {n: p for n, p in model.named_parameters() if _is_adapter_param(n) and "original_module" not in n}
    missing = sorted(set(params) - set(state))
    unknown = sorted(set(state) - set(params))
    if missing or unknown:
        raise ValueError(f"adapter keys differ from the model: missing {missing[:3]}, unknown {unknown[:3]}")
    with torch.no_grad():
        for name, param in params.items():
            value = state[name]
            if value.shape != param.shape:
                raise ValueError(f"adapter tensor {name}: shape {tuple(value.shape)} != {tuple(param.shape)}")
            param.copy_(value.to(device=param.device, dtype=param.dtype))


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters that local training updates (what FedAvg must average)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]
