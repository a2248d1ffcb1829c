"""Tensor regression (TRL) and tensor contraction (TCL) layers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._errors import OptionError, ShapeError
from ..functional import factorized_tensordot
from ..functional._planning import batch_bucket, is_tracing, traced_batch
from ..tensors import FactorizedTensor
from ..tensors._contract import plan_einsum
from ._common import select_layer

__all__ = ["TRL", "TCL"]


def _shape(value: int | Sequence[int]) -> tuple[int, ...]:
    return (value,) if isinstance(value, int) else tuple(int(v) for v in value)


class TRL(nn.Module):
    """Tensor regression layer: ``y[b, o...] = <x[b], W[..., o...]> + bias`` with a factorized ``W``.

    Args:
        input_shape: ``(batch, *in)``; the batch size entry is ignored.
        output_shape: ``(batch, *out)``; the batch size entry is ignored.
        bias: whether to learn a bias of shape ``out``.
        verbose: unused (tltorch compatibility).
        factorization: ``'cp'``, ``'tucker'``, ``'tt'``, ``'dense'``, complex variants or a ready tensor.
        rank: int, tuple, ``'same'`` or float.
        n_layers: stacked regressions sharing one factorization (``layer(x, indices=i)``).
        device, dtype: of the parameters.

    Example:
        >>> import torch, tfx
        >>> trl = tfx.TRL((8, 3, 4, 5), (8, 10), rank=0.5, factorization="tucker", bias=True)
        >>> trl(torch.randn(8, 3, 4, 5)).shape
        torch.Size([8, 10])
    """

    def __init__(
        self,
        input_shape: int | Sequence[int],
        output_shape: int | Sequence[int],
        bias: bool = False,
        verbose: bool = False,
        factorization: str | FactorizedTensor = "cp",
        rank: Any = "same",
        n_layers: int = 1,
        device: Any = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.input_shape, self.output_shape = _shape(input_shape), _shape(output_shape)
        if len(self.input_shape) < 2 or len(self.output_shape) < 1:
            raise ShapeError(
                f"TRL input_shape={self.input_shape} must be (batch, *in) with at least one mode.\n"
                "Fix: e.g. TRL(input_shape=(batch, 3, 4), output_shape=(batch, 10))."
            )
        self.n_input = len(self.input_shape) - 1
        out = self.output_shape[1:] if len(self.output_shape) > 1 else self.output_shape
        self.weight_shape = (*self.input_shape[1:], *out)
        self._out_shape = tuple(out)
        self.order = len(self.weight_shape)
        self.n_layers = n_layers
        batch = (n_layers,) if n_layers > 1 else ()
        if bias:
            self.bias = nn.Parameter(torch.empty((*batch, *out), device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        if isinstance(factorization, FactorizedTensor):
            self.weight = factorization
            if self.bias is not None:
                with torch.no_grad():
                    self.bias.zero_()
        else:
            self.weight = FactorizedTensor.new((*batch, *self.weight_shape), rank=rank, factorization=factorization,
                                               device=device, dtype=dtype, **kwargs)
            self.init_from_random()
        self.factorization = self.weight.name
        self.rank = self.weight.rank

    def init_from_random(self, decompose_full_weight: bool = False) -> None:
        """Weight entries N(0, 1 / sqrt(3 n_in)), bias 0; or decompose a random full weight."""
        n_in = math.prod(self.input_shape[1:])
        std = 1.0 / math.sqrt(3 * n_in)
        with torch.no_grad():
            if decompose_full_weight:
                first = next(iter(self.weight.parameters()))
                full = torch.randn(self.weight.shape, device=first.device, dtype=first.dtype) * std
                self.weight.init_from_tensor(full)
            else:
                self.weight.normal_(0, std)
            if self.bias is not None:
                self.bias.zero_()

    def init_from_linear(self, linear: nn.Linear, unsqueezed_modes: Sequence[int] | None = None, **kwargs: Any) -> TRL:
        """Initialise from a linear layer on the flattened input (bias copied where both have one).

        With ``unsqueezed_modes`` (Tucker weights), the linear acts on the input
        averaged over those modes (e.g. global pooling): the weight gets rank 1
        on them and the TRL reproduces ``linear(x.mean(unsqueezed_modes))``.
        """
        weight = linear.weight.detach().t()  # (in, out)
        if unsqueezed_modes is not None:
            kept = [s for i, s in enumerate(self.input_shape[1:]) if i not in set(unsqueezed_modes)]
            self.weight.init_from_tensor(weight.reshape(*kept, *self._out_shape), unsqueezed_modes=unsqueezed_modes, **kwargs)
        else:
            self.weight.init_from_tensor(weight.reshape(self.weight.shape), **kwargs)
        if self.bias is not None and linear.bias is not None:
            with torch.no_grad():
                self.bias.copy_(linear.bias.reshape(self.bias.shape))
        return self

    def forward(self, x: torch.Tensor, indices: int = 0) -> torch.Tensor:
        """``(batch, *in) -> (batch, *out)``."""
        select_layer(self.n_layers, indices)
        weight = self.weight() if self.n_layers == 1 else self.weight(indices)
        bias = self.bias if self.n_layers == 1 or self.bias is None else self.bias[indices]
        y = factorized_tensordot(x, weight, self.n_input)
        return y if bias is None else y + bias


class TCL(nn.Module):
    """Tensor contraction layer: multiply each input mode by a ``(rank_k, in_k)`` factor.

    Args:
        input_shape: the input's shape without the batch dim.
        rank: the output shape (one rank per input mode).
        verbose: unused (tltorch compatibility).
        bias: whether to learn a bias of shape ``rank``.
        device, dtype: of the parameters.
        n_layers: stacked contractions (``layer(x, indices=i)``).

    Example:
        >>> import torch, tfx
        >>> tcl = tfx.TCL((3, 32, 32), rank=(3, 8, 8), bias=True)
        >>> tcl(torch.randn(5, 3, 32, 32)).shape
        torch.Size([5, 3, 8, 8])
    """

    def __init__(
        self,
        input_shape: int | Sequence[int],
        rank: int | Sequence[int],
        verbose: bool = False,
        bias: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
        n_layers: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            raise OptionError(f"TCL got unexpected keyword arguments {sorted(kwargs)}.")
        self.input_shape, self.rank = _shape(input_shape), _shape(rank)
        if len(self.input_shape) != len(self.rank):
            raise ShapeError(
                f"TCL rank={self.rank} needs one entry per input mode {self.input_shape}.\n"
                f"Fix: e.g. rank={tuple(max(1, s // 2) for s in self.input_shape)}."
            )
        self.order = len(self.input_shape)
        self.output_shape = self.rank
        self.n_layers = n_layers
        batch = (n_layers,) if n_layers > 1 else ()
        for i, (s, r) in enumerate(zip(self.input_shape, self.rank)):
            self.register_parameter(f"factor_{i}", nn.Parameter(torch.empty((*batch, r, s), device=device, dtype=dtype)))
        if bias:
            self.bias = nn.Parameter(torch.empty((*batch, *self.rank), device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        n = self.order
        modes, ranks = "ABCDEFGHIJKL"[:n], "abcdefghijkl"[:n]
        self._equation = "z" + modes + "," + ",".join(f"{r}{m}" for r, m in zip(ranks, modes)) + "->z" + ranks
        self.reset_parameters()

    @property
    def factors(self) -> list[torch.Tensor]:
        """The ``(rank_k, in_k)`` factors (with a leading ``n_layers`` dim when stacked)."""
        return [getattr(self, f"factor_{i}") for i in range(self.order)]

    def reset_parameters(self) -> None:
        """Factors as ``nn.Linear`` weights (Kaiming uniform); bias uniform in +-1/sqrt(input_shape[0])."""
        for factor in self.factors:
            for matrix in factor.reshape(-1, *factor.shape[-2:]):
                nn.init.kaiming_uniform_(matrix, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.input_shape[0])
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, indices: int = 0) -> torch.Tensor:
        """``(batch, *input_shape) -> (batch, *rank)``."""
        select_layer(self.n_layers, indices)
        factors = self.factors if self.n_layers == 1 else [f[indices] for f in self.factors]
        batch = traced_batch() if is_tracing(x) else batch_bucket(x.shape[0])
        plan = plan_einsum(self._equation, (batch, *self.input_shape), *zip(self.rank, self.input_shape))
        y = plan(x, *factors)
        if self.bias is not None:
            y = y + (self.bias if self.n_layers == 1 else self.bias[indices])
        return y
