"""Linear layers with factorized weights, as planned contractions.

``y = x @ W.T + b`` with ``W`` (out_features x in_features) in factorized
form. ``'factorized'`` contracts the input with the factors directly, in an
order planned once per batch bucket; ``'reconstructed'`` rebuilds ``W`` and
calls ``F.linear``; ``'auto'`` picks the cheaper by FLOP count.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .._errors import OptionError, ShapeError, unknown_option
from ..tensors import BlockTT, CPTensor, FactorizedTensor, TensorizedTensor, TTTensor, TuckerTensor
from ._planning import batch_bucket, contract_input, input_plan, is_tracing, traced_batch

__all__ = [
    "factorized_linear",
    "linear_cp",
    "linear_tucker",
    "linear_tt",
    "linear_blocktt",
    "linear_in_modes",
    "linear_flops",
]

Implementation = Literal["factorized", "reconstructed", "auto"]
IMPLEMENTATIONS = ("factorized", "reconstructed", "auto")


def linear_in_modes(weight: FactorizedTensor) -> tuple[int, ...]:
    """Positions of the input modes of a linear weight (its column modes)."""
    if isinstance(weight, TensorizedTensor):
        if not isinstance(weight.tensorized_shape[-1], tuple) or len(weight.shape) != 2:
            raise ShapeError(
                f"a linear weight must be one tensorized matrix, got tensorized_shape="
                f"{weight.tensorized_shape}.\nFix: index the layer first (weight[i]) for stacked layers."
            )
        n_in = len(weight.tensorized_shape[-1])
        order = len(weight.tensor_shape)
        return tuple(range(order - n_in, order))
    if len(weight.shape) != 2:
        raise ShapeError(
            f"a linear weight must be a matrix (out_features, in_features), got shape {weight.shape}."
        )
    return (1,)


def linear_flops(weight: FactorizedTensor, batch: int) -> tuple[int, int]:
    """FLOPs of (factorized, reconstructed) for ``batch`` rows: the ``'auto'`` criterion."""
    plan, _, _ = input_plan(weight, linear_in_modes(weight), batch)
    out_features, in_features = weight.shape[-2], weight.shape[-1]
    rebuild = weight._plan.flops + 2 * batch * in_features * out_features
    return plan.flops, rebuild


def _matrix(weight: FactorizedTensor) -> torch.Tensor:
    return weight.to_matrix() if isinstance(weight, TensorizedTensor) else weight.to_tensor()


def factorized_linear(
    x: torch.Tensor,
    weight: FactorizedTensor | torch.Tensor,
    bias: torch.Tensor | None = None,
    in_features: int | None = None,
    implementation: Implementation = "factorized",
) -> torch.Tensor:
    """``x @ W.T + bias`` for a factorized (or dense) weight ``W`` of shape (out, in).

    Args:
        x: input of shape ``(..., in_features)``.
        weight: a tensorized matrix, a 2-D factorized tensor, or a tensor.
        bias: optional ``(out_features,)`` bias.
        in_features: accepted for tltorch compatibility; checked against the weight.
        implementation: ``'factorized'``, ``'reconstructed'`` or ``'auto'``.

    Returns:
        ``(..., out_features)``.

    Example:
        >>> import torch, tfx
        >>> from tfx.functional import factorized_linear
        >>> w = tfx.TensorizedTensor.new(((4, 4), (3, 4)), rank=0.5, factorization="cp")
        >>> factorized_linear(torch.randn(5, 12), w).shape
        torch.Size([5, 16])
    """
    if implementation not in IMPLEMENTATIONS:
        raise unknown_option("implementation", implementation, IMPLEMENTATIONS)
    if isinstance(weight, torch.Tensor):
        return F.linear(x, weight, bias)
    if not isinstance(weight, FactorizedTensor):
        raise OptionError(f"factorized_linear: weight must be a tfx factorized tensor or a tensor, got {type(weight).__name__}.")
    in_modes = linear_in_modes(weight)
    out_features, n_in = weight.shape[-2], weight.shape[-1]
    if in_features is not None and in_features != n_in:
        raise ShapeError(f"in_features={in_features} does not match the weight's {n_in} columns.")
    if implementation == "auto":
        batch = traced_batch() if is_tracing(x) else batch_bucket(x.numel() // max(n_in, 1))
        factorized, rebuild = linear_flops(weight, batch)
        implementation = "factorized" if factorized <= rebuild else "reconstructed"
    if implementation == "reconstructed":
        return F.linear(x, _matrix(weight), bias)
    # x's last dim is unfolded into the weight's input modes inside the plan.
    return contract_input(x, weight, in_modes, 1, (out_features,), bias)


def _typed(weight: object, form: type, name: str) -> None:
    if not isinstance(weight, form):
        raise OptionError(f"{name} needs a {form.__name__}, got {type(weight).__name__}; use factorized_linear.")


def linear_cp(x: torch.Tensor, cp_tensor: CPTensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Linear layer with a CP (plain low-rank or tensorized) weight, contracted factor by factor."""
    _typed(cp_tensor, CPTensor, "linear_cp")
    return factorized_linear(x, cp_tensor, bias)


def linear_tucker(x: torch.Tensor, tucker_tensor: TuckerTensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Linear layer with a Tucker weight."""
    _typed(tucker_tensor, TuckerTensor, "linear_tucker")
    return factorized_linear(x, tucker_tensor, bias)


def linear_tt(x: torch.Tensor, tt_tensor: TTTensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Linear layer with a TT weight."""
    _typed(tt_tensor, TTTensor, "linear_tt")
    return factorized_linear(x, tt_tensor, bias)


def linear_blocktt(x: torch.Tensor, tt_matrix: BlockTT, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Linear layer with a BlockTT (TT-matrix) weight, contracted core by core."""
    _typed(tt_matrix, BlockTT, "linear_blocktt")
    return factorized_linear(x, tt_matrix, bias)
