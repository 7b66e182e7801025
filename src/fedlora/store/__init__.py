"""Adapter store: the run layout, atomic writes, safetensors adapters with sha256 metadata."""
