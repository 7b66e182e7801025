"""Base model loading (presets, quantization) and LoRA adapters."""
