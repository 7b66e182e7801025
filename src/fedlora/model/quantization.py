"""Keep bitsandbytes 4-bit base weights in the layout that training needs.

bitsandbytes ≥ 0.49 repacks an NF4/FP4 weight into an AVX512-BF16 inference layout the
first time a ``Linear4bit`` runs on a CPU that has the ``avx512_bf16`` feature while the
module is in eval mode and its input does not require grad (``Linear4bit.forward`` →
``_convert_weight_packed_for_cpu``; the quant state is flagged ``packing_format_for_cpu``).
The repacking is permanent, and ``matmul_4bit`` then takes an inference-only path
(``gemv_4bit`` + ``result += bias``) with no autograd support: a later training forward
fails ("a view of a leaf Variable that requires grad is being used in an in-place
operation") or, without a bias, gradients stop at the frozen base layer.

A bank evaluates the incoming global adapter (eval mode, no grad) and then trains on the
same model, so the repacking must never happen. :func:`keep_trainable_layout` turns it off
per layer (the layer's ``support_avx512bf16_for_cpu`` flag, read at every forward) right
after loading, so evaluation and training run the same dequantize-and-matmul kernel on every
CPU (evaluation in the configured compute dtype, not forced bf16). A layer that was already
repacked cannot be restored: the repacking rounds the block scales (absmax) to bf16, and
bitsandbytes' own inverse (0.50.2) leaves non-nested scales transposed, so such a model is
refused rather than trained on altered weights. On CUDA the repacking never applies.
"""

from __future__ import annotations

from torch import nn


def _linear4bit_layers(model: nn.Module) -> list[nn.Module]:
    try:
        from bitsandbytes.nn.modules import Linear4bit
    except ImportError:  # no bitsandbytes: nothing can be quantized
        return []
    return [m for m in model.modules() if isinstance(m, Linear4bit)]


def packed_for_inference(model: nn.Module) -> list[str]:
    """Names of the 4-bit layers whose weights are in bitsandbytes' CPU inference layout."""
    layers = {id(m) for m in _linear4bit_layers(model)}
    return [
        name
        for name, module in model.named_modules()
        if id(module) in layers and getattr(module.weight.quant_state, "packing_format_for_cpu", False)
    ]


def keep_trainable_layout(model: nn.Module) -> int:
    """Disable bitsandbytes' CPU inference repacking on every 4-bit layer of ``model``.

    Call it on a freshly loaded model, before any forward pass.

    Returns:
        The number of 4-bit layers seen.

    Raises:
        ValueError: when a layer was already repacked (its weights can no longer be restored).

    """
    packed = packed_for_inference(model)
    if packed:
        raise ValueError(
            f"4-bit layers {packed[:3]} were already repacked by bitsandbytes for CPU inference (eval mode on an "
            "AVX512-BF16 CPU); that layout cannot be trained nor restored exactly: reload the model"
        )
    layers = _linear4bit_layers(model)
    for module in layers:
        setattr(module, "support_avx512bf16_for_cpu", False)  # noqa: B010  # a plain attribute of Linear4bit
    return len(layers)
