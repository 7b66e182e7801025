"""Randomness for DP-SGD: Poisson sampling and Gaussian noise, seeded or from the OS CSPRNG.

The seeded source (``torch.Generator``) makes runs reproducible for research and tests. The
secure source draws every bit from ``os.urandom`` (the kernel CSPRNG) and turns it into
Gaussians with the Box–Muller transform in float64, so an adversary who knows the seed or
the PRNG state cannot subtract the noise. (Floating-point attacks on the Gaussian mechanism,
Mironov 2012, remain out of scope, as in Opacus.)
"""

from __future__ import annotations

import math
import os
from typing import Protocol

import numpy as np
import torch


class Randomness(Protocol):
    """A source of sampling masks and Gaussian noise."""

    def poisson_mask(self, n: int, sample_rate: float) -> torch.Tensor:
        """Boolean mask: each of ``n`` examples included independently with probability ``sample_rate``."""
        ...

    def normal(self, shape: torch.Size, std: float, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Independent ``N(0, std²)`` entries of the given shape."""
        ...


class SeededRandomness:
    """Reproducible randomness from a seeded ``torch.Generator`` (not for production)."""

    def __init__(self, seed: int) -> None:
        self._generator = torch.Generator(device="cpu").manual_seed(seed)

    def poisson_mask(self, n: int, sample_rate: float) -> torch.Tensor:
        return torch.rand(n, generator=self._generator) < sample_rate

    def normal(self, shape: torch.Size, std: float, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        noise = torch.normal(0.0, std, size=tuple(shape), generator=self._generator)
        return noise.to(device=device, dtype=dtype)


def _secure_uniform(n: int) -> np.ndarray:
    """``n`` uniforms in (0, 1] with 53 random bits each, from ``os.urandom``."""
    words = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
    return ((words >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53


class SecureRandomness:
    """Randomness from the operating system's CSPRNG (``os.urandom``)."""

    def poisson_mask(self, n: int, sample_rate: float) -> torch.Tensor:
        return torch.from_numpy(_secure_uniform(n) <= sample_rate)

    def normal(self, shape: torch.Size, std: float, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        count = math.prod(shape)
        half = (count + 1) // 2
        u1, u2 = _secure_uniform(half), _secure_uniform(half)
        radius = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])[:count]
        return torch.from_numpy(z * std).reshape(shape).to(device=device, dtype=dtype)


def make_randomness(*, insecure_seed: int | None = None) -> Randomness:
    """The OS CSPRNG, unless a research run asks for a seeded (replayable, hence insecure) source.

    Args:
        insecure_seed: ``None`` (production, the default) draws from ``os.urandom``; an int
            seeds a ``torch.Generator``. Anyone who knows the seed can regenerate the sampled
            rows and the noise and subtract it from the released update, which voids the ε
            claim: only ``privacy.insecure_seeded_noise`` (tests, research) passes one, and a
            bank's Job refuses it.

    """
    return SecureRandomness() if insecure_seed is None else SeededRandomness(insecure_seed)
