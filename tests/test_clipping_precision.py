"""Clipping of bfloat16 per-example gradients (the GPU path) keeps the sensitivity at C.

The per-example gradients of a bf16 model are bf16; the clipping factors and the sum must be
float32, or an example's clipped norm can exceed C by the bf16 rounding of its factor.
"""

from __future__ import annotations

import torch

from fedlora.privacy.clipping import clip_and_sum


def test_a_clipped_bf16_example_never_exceeds_the_bound() -> None:
    param = torch.nn.Parameter(torch.zeros(100, dtype=torch.bfloat16))
    for value in (1.0, 3.0, 7.0, 0.37):
        grad = torch.full((1, 100), value, dtype=torch.bfloat16)  # norm 10·value, above C = 1
        clipped = clip_and_sum({param: grad}, max_grad_norm=1.0)
        assert clipped.summed[param].dtype == torch.float32
        assert float(torch.linalg.vector_norm(clipped.summed[param].double())) <= 1.0


def test_the_sum_of_bf16_examples_is_float32_exact() -> None:
    gen = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.zeros(8, 64, dtype=torch.bfloat16))
    grads = (torch.randn(256, 8, 64, generator=gen) * 0.01).to(torch.bfloat16)  # all below C: factor 1
    clipped = clip_and_sum({param: grads}, max_grad_norm=100.0)
    reference = grads.double().sum(dim=0)
    torch.testing.assert_close(clipped.summed[param].double(), reference, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(clipped.norms.double(), grads.double().reshape(256, -1).norm(dim=1), rtol=1e-6, atol=0)
