"""Per-example clipping (Abadi et al., 2016, "Deep Learning with Differential Privacy", Alg. 1).

Each example's gradient over all trainable parameters is scaled to L2 norm at most ``C``:

    ḡ_i = g_i · min(1, C / ‖g_i‖₂)

and the clipped gradients are summed. The sensitivity of the sum to adding or removing one
example is then ``C``.

Precision, whatever the gradients' dtype (bfloat16 on GPU): norms are accumulated in
float64, factors computed in float64 and the clipped sum formed in float32. A factor rounded
to bfloat16 (8-bit mantissa) could scale an example to ``(1 + 2⁻⁸)·C``, above the sensitivity
the accountant assumes, and a batch summed in bfloat16 loses the low bits of every term. The
factor is ``C·(1 − 10⁻⁶)/(‖g_i‖ + 10⁻⁶)``: the relative margin of 10⁻⁶ exceeds the float32
rounding of the factor and of each product (2⁻²⁴ ≈ 6·10⁻⁸ each), so every clipped example's
norm is at most ``C`` after rounding, not merely ``C`` up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MARGIN = 1e-6  # relative; see the module docstring


@dataclass(frozen=True)
class ClippedSum:
    """Sum of clipped per-example gradients and the per-example norms before clipping."""

    summed: dict[torch.Tensor, torch.Tensor]  # float32, whatever the parameters' dtype
    norms: torch.Tensor


def clip_and_sum(per_example: dict[torch.Tensor, torch.Tensor], *, max_grad_norm: float) -> ClippedSum:
    """Clip every example's gradient to ``max_grad_norm`` (L2, all parameters) and sum.

    Args:
        per_example: ``{param: (batch, *shape)}`` gradients.
        max_grad_norm: Clipping bound ``C``.

    """
    squares = [g.reshape(g.shape[0], -1).double().square().sum(dim=1) for g in per_example.values()]
    norms = torch.sqrt(torch.stack(squares).sum(dim=0))
    factors = (max_grad_norm * (1 - _MARGIN) / (norms + 1e-6)).clamp(max=1.0).float()
    summed = {p: torch.einsum("b,b...->...", factors, g.float()) for p, g in per_example.items()}
    return ClippedSum(summed=summed, norms=norms.float())
