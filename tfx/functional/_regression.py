"""Tensor regression (TRL), tensor contraction (TCL) and factorized tensordot."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._errors import ShapeError
from ..tensors import FactorizedTensor, TensorizedTensor
from ..tensors._contract import plan_einsum
from ._planning import batch_bucket, contract_input, is_tracing, traced_batch

__all__ = ["tensor_regression", "trl", "tcl", "factorized_tensordot"]


def factorized_tensordot(x: torch.Tensor, weight: FactorizedTensor, modes: int | Sequence[int]) -> torch.Tensor:
    """Contract the trailing dims of ``x`` with the weight modes ``modes``, through the factors.

    ``modes`` is an int ``n`` (the weight's first ``n`` modes) or the weight
    modes matched, in order, by the last ``len(modes)`` dims of ``x``. The
    result has ``x``'s leading dims, then the weight's remaining modes.

    Example:
        >>> import torch, tfx
        >>> w = tfx.FactorizedTensor.new((3, 4, 5), rank=4, factorization="cp")
        >>> factorized_tensordot(torch.randn(2, 3, 4), w, 2).shape
        torch.Size([2, 5])
    """
    in_modes = tuple(range(modes)) if isinstance(modes, int) else tuple(modes)
    shape = weight.tensor_shape if isinstance(weight, TensorizedTensor) else weight.shape
    expected = tuple(shape[m] for m in in_modes)
    if not is_tracing(x) and tuple(x.shape[x.dim() - len(in_modes):]) != expected:
        raise ShapeError(
            f"factorized_tensordot: the last dims of x {tuple(x.shape)} must be {expected} "
            f"(weight modes {in_modes} of shape {tuple(shape)})."
        )
    return contract_input(x, weight, in_modes, len(in_modes))


def tensor_regression(x: torch.Tensor, weight: FactorizedTensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Tensor regression: ``y[b, o...] = sum_i x[b, i...] W[i..., o...] + bias``.

    ``x`` is ``(batch, *input_shape)``; ``W`` has shape ``(*input_shape, *output_shape)``.
    """
    y = factorized_tensordot(x, weight, x.dim() - 1)
    return y if bias is None else y + bias


trl = tensor_regression


def tcl(x: torch.Tensor, factors: Sequence[torch.Tensor], bias: torch.Tensor | None = None) -> torch.Tensor:
    """Tensor contraction: ``x`` (batch, *in) times one (rank_k, in_k) factor per mode -> (batch, *rank).

    Example:
        >>> import torch
        >>> tcl(torch.randn(2, 3, 4), [torch.randn(5, 3), torch.randn(6, 4)]).shape
        torch.Size([2, 5, 6])
    """
    n = len(factors)
    modes, ranks = "ABCDEFGHIJKL"[:n], "abcdefghijkl"[:n]
    equation = "z" + modes + "," + ",".join(f"{r}{m}" for r, m in zip(ranks, modes)) + "->z" + ranks
    if any(isinstance(f, torch.fx.Proxy) for f in factors):
        # Shapes unknown while tracing the functional form; layers pass planned contractions instead.
        y = torch.einsum(equation, x, *factors)
    else:
        shapes = [tuple(f.shape) for f in factors]
        batch = traced_batch() if is_tracing(x) else batch_bucket(x.shape[0])
        y = plan_einsum(equation, (batch, *(s[1] for s in shapes)), *shapes)(x, *factors)
    return y if bias is None else y + bias
