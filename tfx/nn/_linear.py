"""FactorizedLinear: a linear layer whose weight is a tensorized matrix."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .._errors import OptionError, ShapeError
from .._types import Implementation
from ..functional import factorized_linear, linear_flops
from ..functional._linear import linear_in_modes
from ..functional._planning import FastCache, batch_bucket, compile_linear, is_tracing
from ..tensors import TensorizedTensor
from ..tensors._tensorize import get_tensorized_shape
from ._common import (
    SubLayer,
    as_shape,
    check_implementation,
    make_bias,
    set_bias,
    sub_layer,
    weight_and_bias,
)

__all__ = ["FactorizedLinear"]

IMPLEMENTATIONS = get_args(Implementation)
#: Distinct input shapes whose fast forward a layer keeps (then it starts over).
_MAX_SHAPES = 256


class FactorizedLinear(nn.Module):
    """A linear layer with a tensorized, factorized weight (tltorch-compatible).

    The weight is a ``TensorizedTensor`` of shape ``(out_features, in_features)``
    whose rows are tensorized as ``out_tensorized_features`` and columns as
    ``in_tensorized_features``. With ``n_layers > 1`` one factorized tensor holds
    a stack of layers (``layer(x, indices=i)``, ``layer[i]``).

    Args:
        in_tensorized_features: e.g. ``(8, 8, 12)`` for 768 inputs.
        out_tensorized_features: e.g. ``(12, 16, 16)`` for 3072 outputs.
        bias: whether to learn a bias.
        factorization: ``'cp'``, ``'tucker'``, ``'tt'``, ``'blocktt'``, ``'dense'``,
            a ``'Complex...'`` variant, or a ready ``TensorizedTensor``.
        rank: int, tuple, ``'same'`` or a float fraction of the dense parameters.
        implementation: ``'factorized'`` (contract with the factors),
            ``'reconstructed'`` (rebuild the matrix, then ``F.linear``) or
            ``'auto'`` (the cheaper by FLOPs for each input's batch size).
        n_layers: number of stacked layers sharing one factorization.
        checkpointing: recompute the forward in backward (saves activation memory).
        device, dtype: of the parameters.

    Example:
        >>> import torch, tfx
        >>> layer = tfx.FactorizedLinear(
        ...     (8, 8, 12), (12, 16, 16), factorization="blocktt", rank=0.1
        ... )
        >>> layer(torch.randn(4, 768)).shape
        torch.Size([4, 3072])
    """

    def __init__(
        self,
        in_tensorized_features: Sequence[int],
        out_tensorized_features: Sequence[int],
        bias: bool = True,
        factorization: str | TensorizedTensor = "cp",
        rank: Any = "same",
        implementation: Implementation = "factorized",
        n_layers: int = 1,
        checkpointing: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(n_layers, int) or n_layers < 1:
            raise OptionError(f"n_layers={n_layers!r} must be a positive int.")
        self.in_tensorized_features = as_shape(in_tensorized_features, "in_tensorized_features")
        self.out_tensorized_features = as_shape(out_tensorized_features, "out_tensorized_features")
        self.in_features = math.prod(self.in_tensorized_features)
        self.out_features = math.prod(self.out_tensorized_features)
        self.tensorized_shape = self.out_tensorized_features + self.in_tensorized_features
        self.weight_shape = (self.out_features, self.in_features)
        self.input_rank = rank
        self.implementation = check_implementation(implementation, IMPLEMENTATIONS)
        self.checkpointing = checkpointing
        self.n_layers = n_layers
        batch = (n_layers,) if n_layers > 1 else ()
        shape = (*batch, self.out_tensorized_features, self.in_tensorized_features)
        if isinstance(factorization, TensorizedTensor):
            if tuple(factorization.tensorized_shape) != shape:
                raise ShapeError(
                    f"the given weight has tensorized_shape={factorization.tensorized_shape}, "
                    f"but this layer needs {shape}."
                )
            self.weight = (
                factorization.to(device=device, dtype=dtype) if (device or dtype) else factorization
            )
        else:
            self.weight = TensorizedTensor.new(
                shape, rank=rank, factorization=factorization, device=device, dtype=dtype
            )
        # After the weight, so the bias takes its device and dtype (complex weights: complex bias).
        self.bias = make_bias((*batch, self.out_features), self.weight, bias)
        if isinstance(factorization, TensorizedTensor):
            self._reset_bias()
        else:
            self.reset_parameters()
        self.rank = self.weight.rank
        self._fast = FastCache()  # input shape -> (generated forward, output shape); see forward

    def reset_parameters(self) -> None:
        """Weight entries of variance 1 / (3 in_features), bias as ``nn.Linear`` sets it."""
        with torch.no_grad():
            self.weight.normal_(0, 1.0 / math.sqrt(3 * self.in_features))
        self._reset_bias()

    def _reset_bias(self) -> None:
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, indices: int = 0) -> torch.Tensor:
        """``x @ W.T + b`` for layer ``indices`` of the stack."""
        # Eager fast path: one generated function per input shape (see compile_linear); it
        # returns None whenever the general path below is needed (hooks, stacked layers, ...).
        if (
            not torch.compiler.is_compiling()
            and type(x) is torch.Tensor
            and indices.__class__ is int
            and indices == 0
        ):
            entry = self._fast.get(x.shape)
            if entry is None:
                entry = self._fast_entry(x)
            if entry:
                try:
                    y = entry[0](x, self, entry[1])
                except KeyError:  # a factor moved (e.g. parametrized): rebuild on the next call
                    self._fast.clear()
                    y = None
                if y is not None:
                    return y  # type: ignore[no-any-return]
        weight, bias = weight_and_bias(self, indices)
        if self.checkpointing and self.training and not is_tracing(x):
            out: torch.Tensor = checkpoint(self._linear, x, weight, bias, use_reentrant=False)
            return out
        return self._linear(x, weight, bias)

    def _fast_entry(self, x: torch.Tensor) -> tuple[Any, tuple[int, ...]] | Literal[False]:
        """Compile (or reuse) the fast forward for inputs shaped like ``x``; False if none fits."""
        fast = self._fast
        if len(fast) >= _MAX_SHAPES:
            fast.clear()
        weight = self.weight
        ok = (
            self.n_layers == 1
            and x.ndim >= 1
            and x.shape[-1] == self.in_features
            and x.numel() > 0
            and isinstance(weight, TensorizedTensor)
        )
        entry: tuple[Any, tuple[int, ...]] | Literal[False] = False
        if ok:
            in_modes = linear_in_modes(weight)
            batch = batch_bucket(x.numel() // self.in_features)
            implementation = self.implementation
            if implementation == "auto":
                factorized, rebuild = linear_flops(weight, batch)
                implementation = "factorized" if factorized <= rebuild else "reconstructed"
            key = (weight._plan, batch, x.ndim == 2, implementation)
            run = fast.programs.get(key)
            if run is None:
                run = fast.programs[key] = (
                    compile_linear(self, weight, in_modes, batch, x.ndim, implementation) or False
                )
            if run:
                entry = (run, (*x.shape[:-1], self.out_features))
        fast[x.shape] = entry
        return entry

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_fast", FastCache())

    def _linear(self, x: torch.Tensor, weight: Any, bias: torch.Tensor | None) -> torch.Tensor:
        return factorized_linear(x, weight, bias=bias, implementation=self.implementation)  # type: ignore[arg-type]

    def get_linear(self, indices: int) -> SubLayer:
        """Layer ``indices`` of a stack, as a module sharing this layer's parameters."""
        return sub_layer(self, indices, "get_linear")

    def __getitem__(self, indices: int) -> SubLayer:
        return self.get_linear(indices)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        rank: Any = "same",
        auto_tensorize: bool = True,
        n_tensorized_modes: int = 3,
        in_tensorized_features: Sequence[int] | None = None,
        out_tensorized_features: Sequence[int] | None = None,
        bias: bool = True,
        factorization: str = "CP",
        implementation: Implementation = "reconstructed",
        checkpointing: bool = False,
        decomposition_kwargs: dict[str, Any] | None = None,
        verbose: bool = False,
    ) -> FactorizedLinear:
        """Factorize an ``nn.Linear``: weight decomposed, bias copied, dtype and device kept.

        Example:
            >>> import torch, tfx
            >>> layer = tfx.FactorizedLinear.from_linear(
            ...     torch.nn.Linear(64, 32), rank=0.5, factorization="tucker"
            ... )
            >>> layer.in_tensorized_features, layer.out_tensorized_features
            ((4, 4, 4), (2, 4, 4))
        """
        out_features, in_features = linear.weight.shape
        in_shape, out_shape = _tensorized_features(
            in_features,
            out_features,
            auto_tensorize,
            n_tensorized_modes,
            in_tensorized_features,
            out_tensorized_features,
            verbose,
        )
        layer = cls(
            in_shape,
            out_shape,
            bias=bias and linear.bias is not None,
            factorization=factorization,
            rank=rank,
            implementation=implementation,
            checkpointing=checkpointing,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        layer.weight.init_from_matrix(linear.weight.detach(), **(decomposition_kwargs or {}))
        if layer.bias is not None:
            set_bias(layer.bias, layer.weight, linear.bias.detach())
        return layer

    @classmethod
    def from_linear_list(
        cls,
        linear_list: Sequence[nn.Linear],
        in_tensorized_features: Sequence[int],
        out_tensorized_features: Sequence[int],
        rank: Any = "same",
        bias: bool = True,
        factorization: str = "CP",
        implementation: Implementation = "reconstructed",
        checkpointing: bool = False,
        decomposition_kwargs: dict[str, Any] | None = None,
    ) -> FactorizedLinear:
        """One stacked layer of ``len(linear_list)`` jointly factorized same-shaped linears."""
        shapes = {tuple(lin.weight.shape) for lin in linear_list}
        if len(shapes) != 1:
            raise ShapeError(f"from_linear_list needs linears of one shape, got {sorted(shapes)}.")
        has_bias = [lin.bias is not None for lin in linear_list]
        if any(has_bias) and not all(has_bias):
            raise ShapeError("from_linear_list: either every linear has a bias or none does.")
        first = linear_list[0].weight
        layer = cls(
            in_tensorized_features,
            out_tensorized_features,
            bias=bias and all(has_bias),
            factorization=factorization,
            rank=rank,
            implementation=implementation,
            n_layers=len(linear_list),
            checkpointing=checkpointing,
            device=first.device,
            dtype=first.dtype,
        )
        if layer.weight_shape != tuple(first.shape):
            raise ShapeError(
                f"the tensorized features describe a {layer.weight_shape} "
                f"weight, the linears have {tuple(first.shape)}."
            )
        weights = torch.stack([lin.weight.detach() for lin in linear_list])
        layer.weight.init_from_tensor(
            weights.reshape(layer.weight.tensor_shape), **(decomposition_kwargs or {})
        )
        if layer.bias is not None:
            set_bias(
                layer.bias, layer.weight, torch.stack([lin.bias.detach() for lin in linear_list])
            )
        return layer

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features} {self.in_tensorized_features}, out_features="
            f"{self.out_features} {self.out_tensorized_features}, weight={self.weight._name}, "
            f"rank={self.rank}, implementation={self.implementation!r}, "
            f"n_layers={self.n_layers}, bias={self.bias is not None}"
        )


def _tensorized_features(
    in_features: int,
    out_features: int,
    auto_tensorize: bool,
    n_modes: int,
    in_shape: Sequence[int] | None,
    out_shape: Sequence[int] | None,
    verbose: bool,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if in_shape is not None and out_shape is not None:
        in_t, out_t = (
            as_shape(in_shape, "in_tensorized_features"),
            as_shape(out_shape, "out_tensorized_features"),
        )
        if (math.prod(in_t), math.prod(out_t)) != (in_features, out_features):
            raise ShapeError(
                f"in_tensorized_features={in_t} and out_tensorized_features={out_t} "
                f"describe a {math.prod(out_t)}x{math.prod(in_t)} weight, but the "
                f"layer's is {out_features}x{in_features}."
            )
        return in_t, out_t
    if not auto_tensorize:
        raise OptionError(
            "auto_tensorize=False needs both in_tensorized_features and out_tensorized_features.\n"
            "Fix: pass them, or leave auto_tensorize=True."
        )
    return get_tensorized_shape(
        in_features, out_features, order=n_modes, min_dim=2, verbose=verbose
    )
