"""Tensor regression (TRL) and tensor contraction (TCL) layers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

import torch
from torch import nn

from .._errors import OptionError, ShapeError
from ..functional import factorized_tensordot
from ..functional._planning import batch_bucket, is_tracing, traced_batch
from ..tensors import FactorizedTensor, TuckerTensor
from ..tensors._contract import plan_einsum
from ._common import as_shape, select_layer

__all__ = ["TRL", "TCL"]


_MSG_INPUT: Final = (
    "TRL(input_shape={input_shape}) got an input of shape {x_shape}; "
    "it must be (batch, *input_shape) = (batch, {dims}).\n"
    "{why}Fix: {fix}"
)
_WHY_BATCH: Final = (
    "input_shape is the shape of one sample, without the batch size (tltorch's convention; "
    "earlier tfx versions took (batch, *in)).\n"
)
_MSG_WEIGHT: Final = (
    "TRL(input_shape={input_shape}, output_shape={output_shape}) needs a weight of shape "
    "{expected} (input_shape + output_shape{stacked}); the factorization given has shape {got}.\n"
    "Fix: {fix}"
)
_MSG_LINEAR: Final = (
    "TRL.init_from_linear: a TRL from {kept} to {output_shape}{pooled} "
    "needs a Linear({n_in}, {n_out}); got {linear}.\n"
    "Fix: {fix}"
)


def _dims(shape: Sequence[int]) -> str:
    return ", ".join(str(s) for s in shape)


class TRL(nn.Module):
    """Tensor regression layer: ``y[b, o...] = <x[b], W[..., o...]> + bias``, ``W`` factorized.

    The signature is tltorch 0.5's: ``input_shape`` and ``output_shape`` are the
    shapes of one sample, without the batch size, and the weight has shape
    ``input_shape + output_shape``.

    Args:
        input_shape: the input's shape without the batch dim, e.g. ``(3, 4, 5)``.
        output_shape: the output's shape without the batch dim (an int for a vector).
        bias: whether to learn a bias of shape ``output_shape``.
        verbose: unused (tltorch compatibility).
        factorization: ``'cp'``, ``'tucker'``, ``'tt'``, ``'dense'``, complex variants or a ready
            tensor
            of shape ``input_shape + output_shape``.
        rank: int, tuple, ``'same'`` or float.
        n_layers: stacked regressions sharing one factorization (``layer(x, indices=i)``).
        device, dtype: of the parameters.
        **kwargs: passed to :meth:`FactorizedTensor.new`.

    Raises:
        ShapeError: when the shapes are empty, a given weight does not have shape
            ``input_shape + output_shape``, or (on call) the input does not end in
            ``input_shape``, e.g. because ``input_shape`` included the batch size.

    Example:
        >>> import torch, tfx
        >>> trl = tfx.TRL((3, 4, 5), (10,), rank=0.5, factorization="tucker", bias=True)
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
        self.input_shape = as_shape(input_shape, "TRL input_shape")
        self.output_shape = as_shape(output_shape, "TRL output_shape")
        self.n_input, self.n_output = len(self.input_shape), len(self.output_shape)
        self.weight_shape = (*self.input_shape, *self.output_shape)
        self.order = len(self.weight_shape)
        self.n_layers = n_layers
        batch = (n_layers,) if n_layers > 1 else ()
        if bias:
            self.bias = nn.Parameter(
                torch.empty((*batch, *self.output_shape), device=device, dtype=dtype)
            )
        else:
            self.register_parameter("bias", None)
        if isinstance(factorization, FactorizedTensor):
            self._check_weight(factorization, batch)
            self.weight = factorization
            if self.bias is not None:
                with torch.no_grad():
                    self.bias.zero_()
        else:
            self.weight = FactorizedTensor.new(
                (*batch, *self.weight_shape),
                rank=rank,
                factorization=factorization,
                device=device,
                dtype=dtype,
                **kwargs,
            )
            self.init_from_random()
        self.factorization = self.weight.name
        self.rank = self.weight.rank

    def _check_weight(self, weight: FactorizedTensor, batch: tuple[int, ...]) -> None:
        expected = (*batch, *self.weight_shape)
        got = tuple(weight.shape)
        if got == expected:
            return
        if got == (*batch, *self.input_shape[1:], *self.output_shape[1:]):
            fix = (
                f"input_shape and output_shape without the batch size: TRL({self.input_shape[1:]}, "
                f"{self.output_shape[1:] or self.output_shape}, factorization=weight)."
            )
        else:
            n = len(got) - len(batch) - self.n_output
            fix = f"a weight of shape {expected}."
            if n > 0 and got[len(got) - self.n_output :] == self.output_shape:
                fix = (
                    f"TRL({got[len(batch):len(batch) + n]}, "
                    f"{self.output_shape}, factorization=weight), or " + fix
                )
        raise ShapeError(
            _MSG_WEIGHT.format(
                input_shape=self.input_shape,
                output_shape=self.output_shape,
                expected=expected,
                stacked=", after n_layers" if batch else "",
                got=got,
                fix=fix,
            )
        )

    def init_from_random(self, decompose_full_weight: bool = False) -> None:
        """Weight entries N(0, 1 / sqrt(3 n_in)), bias 0; or decompose a random full weight."""
        n_in = math.prod(self.input_shape)
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

    def init_from_linear(
        self, linear: nn.Linear, unsqueezed_modes: Sequence[int] | None = None, **kwargs: Any
    ) -> TRL:
        """Initialise from a linear layer on the flattened input (bias copied where both have one).

        With ``unsqueezed_modes`` (Tucker weights, as in tltorch), the linear acts
        on the input averaged over those input modes (counted in ``input_shape``,
        from 0), as after global average pooling: the weight gets rank 1 on them
        and the TRL reproduces ``linear(x.mean(dims))`` with ``dims`` the modes + 1.

        Args:
            linear: an ``nn.Linear(prod(kept input_shape), prod(output_shape))``.
            unsqueezed_modes: input modes the linear does not see (pooled).
            **kwargs: passed to the weight's ``init_from_tensor``.

        Returns:
            self.

        Example:
            >>> import torch, tfx
            >>> head = torch.nn.Linear(10, 12)                     # after x.mean((2, 3))
            >>> trl = tfx.TRL(
            ...     (10, 4, 4), (12,), rank=(10, 1, 1, 12), factorization="tucker", bias=True
            ... )
            >>> trl = trl.init_from_linear(head, unsqueezed_modes=(1, 2))
            >>> x = torch.randn(2, 10, 4, 4)
            >>> torch.allclose(trl(x), head(x.mean((2, 3))), atol=1e-5)
            True
        """
        pooled = sorted(set(unsqueezed_modes)) if unsqueezed_modes is not None else []
        if unsqueezed_modes is not None and not isinstance(self.weight, TuckerTensor):
            raise OptionError(
                f"init_from_linear(unsqueezed_modes={unsqueezed_modes}) needs "
                f"a Tucker weight; this TRL's is {self.factorization!r}.\n"
                "Fix: TRL(..., factorization='tucker', rank=... with 1 on those modes)."
            )
        if self.n_layers > 1:
            raise OptionError(
                f"init_from_linear on a stack of {self.n_layers} regressions "
                f"(n_layers={self.n_layers}) would give every layer the same weight.\n"
                "Fix: build TRL(..., n_layers=1) per linear."
            )
        if any(not 0 <= m < self.n_input for m in pooled):
            raise ShapeError(
                f"init_from_linear: unsqueezed_modes={unsqueezed_modes} must be input "
                f"modes, 0 to {self.n_input - 1} (input_shape={self.input_shape}).\n"
                "Fix: count the modes in input_shape, without the batch dim: "
                "x.mean((2, 3)) on (batch, C, H, W) is unsqueezed_modes=(1, 2)."
            )
        kept = tuple(s for i, s in enumerate(self.input_shape) if i not in pooled)
        n_in, n_out = math.prod(kept), math.prod(self.output_shape)
        if tuple(linear.weight.shape) != (n_out, n_in):
            raise ShapeError(
                _MSG_LINEAR.format(
                    kept=kept,
                    output_shape=self.output_shape,
                    n_in=n_in,
                    n_out=n_out,
                    pooled=f" (modes {pooled} pooled)" if pooled else "",
                    linear=linear,
                    fix=f"nn.Linear({n_in}, {n_out}), or other unsqueezed_modes / shapes.",
                )
            )
        weight = linear.weight.detach().t().reshape(*kept, *self.output_shape)
        if pooled:
            self.weight.init_from_tensor(weight, unsqueezed_modes=pooled, **kwargs)
        else:
            self.weight.init_from_tensor(weight, **kwargs)
        if self.bias is not None and linear.bias is not None:
            with torch.no_grad():
                self.bias.copy_(linear.bias.reshape(self.bias.shape))
        return self

    def _check_input(self, x: torch.Tensor) -> None:
        shape, n = tuple(x.shape), self.n_input
        if len(shape) > n and shape[len(shape) - n :] == self.input_shape:
            return
        why, fix = (
            "",
            f"reshape x to (batch, {_dims(self.input_shape)}), "
            "or build TRL(input_shape=x.shape[1:], ...).",
        )
        if n > 1 and len(shape) == n and shape[1:] == self.input_shape[1:]:
            out = self.output_shape
            fixed_out = out[1:] if len(out) > 1 and out[0] == self.input_shape[0] else out
            why, fix = (
                _WHY_BATCH,
                f"TRL(input_shape={self.input_shape[1:]}, output_shape={fixed_out}, ...).",
            )
        raise ShapeError(
            _MSG_INPUT.format(
                input_shape=self.input_shape,
                x_shape=shape,
                dims=_dims(self.input_shape),
                why=why,
                fix=fix,
            )
        )

    def forward(self, x: torch.Tensor, indices: int = 0) -> torch.Tensor:
        """``(batch, *input_shape) -> (batch, *output_shape)`` (any number of leading dims)."""
        select_layer(self.n_layers, indices)
        if not is_tracing(x):
            self._check_input(x)
        weight = self.weight() if self.n_layers == 1 else self.weight(indices)
        bias = self.bias if self.n_layers == 1 or self.bias is None else self.bias[indices]
        y = factorized_tensordot(x, weight, self.n_input)
        return y if bias is None else y + bias


class TCL(nn.Module):
    """Tensor contraction layer: multiply each input mode by a ``(rank_k, in_k)`` factor.

    Args:
        input_shape: the input's shape without the batch dim.
        rank: the output shape: one rank per input mode, or an int for every mode.
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
        self.input_shape = as_shape(input_shape, "TCL input_shape")
        if isinstance(rank, int) and not isinstance(rank, bool):
            rank = (rank,) * len(self.input_shape)  # tltorch: one int is the rank of every mode
        self.rank = as_shape(rank, "TCL rank")
        if len(self.input_shape) != len(self.rank):
            raise ShapeError(
                f"TCL rank={self.rank} needs one entry per input mode {self.input_shape}.\n"
                f"Fix: e.g. rank={tuple(max(1, s // 2) for s in self.input_shape)}."
            )
        self.order = len(self.input_shape)
        self.output_shape = self.rank
        self.n_layers = n_layers
        batch = (n_layers,) if n_layers > 1 else ()
        for i, (s, r) in enumerate(zip(self.input_shape, self.rank, strict=False)):
            self.register_parameter(
                f"factor_{i}", nn.Parameter(torch.empty((*batch, r, s), device=device, dtype=dtype))
            )
        if bias:
            self.bias = nn.Parameter(torch.empty((*batch, *self.rank), device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        n = self.order
        modes, ranks = "ABCDEFGHIJKL"[:n], "abcdefghijkl"[:n]
        self._equation = (
            "z"
            + modes
            + ","
            + ",".join(f"{r}{m}" for r, m in zip(ranks, modes, strict=False))
            + "->z"
            + ranks
        )
        self.reset_parameters()

    @property
    def factors(self) -> list[torch.Tensor]:
        """The ``(rank_k, in_k)`` factors (with a leading ``n_layers`` dim when stacked)."""
        return [getattr(self, f"factor_{i}") for i in range(self.order)]

    def reset_parameters(self) -> None:
        """Factors as ``nn.Linear`` weights (Kaiming uniform).

        The bias is uniform in +-1/sqrt(input_shape[0]).
        """
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
        plan = plan_einsum(
            self._equation,
            (batch, *self.input_shape),
            *zip(self.rank, self.input_shape, strict=False),
        )
        y = plan(x, *factors)
        if self.bias is not None:
            y = y + (self.bias if self.n_layers == 1 else self.bias[indices])
        return y
