"""Per-example gradients of the trainable Linear layers (LoRA A/B and the head).

For a Linear layer ``y = x Wᵀ + b`` applied to example ``i`` with inputs ``x_i ∈ R^{T×d_in}``
and output gradients ``g_i = ∂L_i/∂y_i ∈ R^{T×d_out}``, the example's gradients are

    ∇_W L_i = g_iᵀ x_i  (d_out × d_in),    ∇_b L_i = Σ_t g_{i,t}

(Goodfellow, 2015, "Efficient Per-Example Gradient Computations"; the same identity as the
Opacus grad samplers). For LoRA these are tiny ((d_in + d_out)·r per layer), so they are
materialised. Instead of a full ``backward()`` -- which would also form the batch-summed
weight gradients that DP-SGD throws away -- we ask autograd only for ``∂L/∂y`` of the
trainable layers (``torch.autograd.grad`` w.r.t. their outputs); the per-example weight
gradients are then one batched matmul per layer. This keeps a DP step within a few percent
of a non-private step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType

import torch
from torch import nn

from fedlora.errors import FedLoRAError


class UnsupportedLayerError(FedLoRAError, TypeError):
    """A trainable parameter lives in a layer for which per-example gradients are not implemented."""


def weight_input(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the layer's weight multiplies: ``x``, or ``module.weight_input(x)`` for a layer that transforms it.

    The centred head (:class:`fedlora.model.heads.CentredLinear`) multiplies ``x − μ``.

    ``∇_W L_i = g_iᵀ·u_i`` holds for the vector ``u_i`` the weight actually multiplies; using the raw input
    of a layer that centres it would give ``g_iᵀ·x_i``, a different (wrong) gradient.
    """
    transform = getattr(module, "weight_input", None)
    return transform(x) if callable(transform) else x


@dataclass
class _Record:
    module: nn.Linear
    inputs: torch.Tensor
    output: torch.Tensor


@dataclass
class PerExampleGradients:
    """Collects, during one forward pass, what is needed for per-example gradients.

    Use as a context manager around the forward pass, then call :meth:`compute` with the
    summed per-example loss.
    """

    model: nn.Module
    layers: list[nn.Linear] = field(init=False)
    _records: list[_Record] = field(init=False, default_factory=list)
    _handles: list[torch.utils.hooks.RemovableHandle] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        trainable = {id(p) for p in self.model.parameters() if p.requires_grad}
        self.layers = []
        covered: set[int] = set()
        for module in self.model.modules():
            own = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            if not isinstance(module, nn.Linear):
                raise UnsupportedLayerError(
                    f"trainable parameters in a {type(module).__name__}: per-example gradients support Linear "
                    "layers only (LoRA A/B and the classification head)"
                )
            self.layers.append(module)
            covered.update(id(p) for p in own)
        if covered != trainable:
            raise UnsupportedLayerError("some trainable parameters are not in a Linear layer")

    def parameters(self) -> list[nn.Parameter]:
        """Trainable parameters, in the order used by :meth:`compute`."""
        params: list[torch.Tensor] = []
        for layer in self.layers:
            params.append(layer.weight)
            if layer.bias is not None and layer.bias.requires_grad:
                params.append(layer.bias)
        return [p for p in params if isinstance(p, nn.Parameter) and p.requires_grad]

    def __enter__(self) -> PerExampleGradients:
        self._records.clear()
        for layer in self.layers:
            self._handles.append(layer.register_forward_hook(self._save))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _save(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if torch.is_grad_enabled():
            assert isinstance(module, nn.Linear)
            self._records.append(_Record(module, weight_input(module, inputs[0].detach()), output))

    def compute(self, summed_loss: torch.Tensor) -> dict[torch.Tensor, torch.Tensor]:
        """Per-example gradients ``{param: tensor of shape (batch, *param.shape)}``.

        Args:
            summed_loss: ``Σ_i L_i`` over the examples of the batch (not the mean).

        """
        records = self._records
        self._records = []
        output_grads = torch.autograd.grad(summed_loss, [r.output for r in records], allow_unused=True)
        grads: dict[torch.Tensor, torch.Tensor] = {}
        for record, g in zip(records, output_grads, strict=True):
            if g is None:
                continue
            x = record.inputs
            batch = x.shape[0]
            x3 = x.reshape(batch, -1, x.shape[-1])
            g3 = g.reshape(batch, -1, g.shape[-1]).to(x3.dtype)
            pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
            weight = record.module.weight
            if weight.requires_grad:
                pairs.append((weight, torch.bmm(g3.transpose(1, 2), x3)))
            bias = record.module.bias
            if bias is not None and bias.requires_grad:
                pairs.append((bias, g3.sum(dim=1)))
            for param, value in pairs:
                grads[param] = grads[param] + value if param in grads else value
        return grads
