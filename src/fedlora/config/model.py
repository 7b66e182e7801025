"""The ``model`` and ``lora`` sections: the base model, its quantization and head, and the adapter's shape."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from fedlora.config.base import _Section


class ModelConfig(_Section):
    """Base model and quantization."""

    name: str = Field(
        "minilm",
        description="Preset (minilm, smollm2, tiny-bert, tiny-llama), a transformers model id or a local path.",
    )
    quantization: Literal["none", "8", "4"] = Field("none", description="bitsandbytes quantization of the base model.")
    max_length: int = Field(64, ge=8, le=4096, description="Tokens per serialized row (truncated/padded).")
    centre_features: bool = Field(
        True,
        description="Subtract the mean pooled representation of public rows (drawn from the dataset's schema, "
        "no bank data, no privacy cost) before the head; encoder presets only (fedlora.model.centring).",
    )
    schema_features: bool = Field(
        True,
        description="Also feed the row's columns to the head beside the pooled text: one-hot categories and "
        "numbers scaled by the schema's public bounds (fedlora.data.features), logits = W·[h̄ − μ, f − μ_f] + b. "
        "Needs an encoder preset (minilm, tiny-bert) and a schema whose categorical columns list their "
        "categories; left at its default it turns itself off where either is missing, set to true it is refused "
        "there.",
    )
    schema_feature_scale: float = Field(
        4.0,
        gt=0,
        description="Length bound of the head's column vector f (‖f‖ ≤ this; the pooled, centred text is about 1). "
        "4 was chosen on validation AUC (Taiwan, benchmarks/README.md).",
    )
    cache_frozen_layers: bool = Field(
        True,
        description="Compute the frozen layers below the lowest adapter once per bank and train on the cached "
        "activations (exact; encoder presets minilm/tiny-bert).",
    )

    @field_validator("quantization", mode="before")
    @classmethod
    def _quantization_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value


class LoraConfig(_Section):
    """LoRA adapter shape (Hu et al., 2021) and the FFA-LoRA variant (Sun et al., 2024)."""

    rank: int = Field(4, ge=1, le=512, description="LoRA rank r.")
    alpha: float = Field(8.0, gt=0, description="LoRA scaling numerator: the update is (alpha/r)·B·A.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt; None = the preset's default (attention q and v)."
    )
    ffa: bool = Field(
        True, description="FFA-LoRA: A frozen at a shared seed, only B and the head trained (exact average)."
    )
    enabled: bool = Field(
        True, description="false = train the head only (a linear probe on the frozen model; for ablations)."
    )
    top_layers: int | None = Field(
        1,
        ge=1,
        description="Adapt only the top N transformer layers (None = all). The frozen layers below are "
        "computed once per bank and cached (model.cache_frozen_layers).",
    )
