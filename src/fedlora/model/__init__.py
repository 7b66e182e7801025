"""Base model loading (presets, quantization) and LoRA adapters."""

import torch

__all__ = ["AdapterState"]

AdapterState = dict[str, torch.Tensor]
"""A LoRA adapter's trainable tensors by parameter name (what banks train, publish and the coordinator averages)."""
