"""Per-example clipping (Abadi et al., 2016, "Deep Learning with Differential Privacy", Alg. 1).

Each example's gradient over all trainable parameters is scaled to L2 norm at most ``C``:

    ḡ_i = g_i · min(1, C / ‖g_i‖₂)

and the clipped gradients are summed. The sensitivity of the sum to adding or removing one
example is then ``C``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClippedSum:
    """Sum of clipped per-example gradients and the per-example norms before clipping."""

    summed: dict[torch.Tensor, torch.Tensor]
    norms: torch.Tensor


def clip_and_sum(per_example: dict[torch.Tensor, torch.Tensor], *, max_grad_norm: float) -> ClippedSum:
    """Clip every example's gradient to ``max_grad_norm`` (L2, all parameters) and sum.

    Args:
        per_example: ``{param: (batch, *shape)}`` gradients.
        max_grad_norm: Clipping bound ``C``.

    """
    flat = [g.reshape(g.shape[0], -1).float() for g in per_example.values()]
    norms = torch.sqrt(sum((f * f).sum(dim=1) for f in flat))  # type: ignore[arg-type]
    factors = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    summed = {p: torch.einsum("b,b...->...", factors.to(g.dtype), g).to(p.dtype) for p, g in per_example.items()}
    return ClippedSum(summed=summed, norms=norms)
