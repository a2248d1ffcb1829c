"""Shared helpers of the factorized layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._errors import OptionError, ShapeError, unknown_option
from ..tensors._base import as_size

__all__ = [
    "as_shape",
    "check_implementation",
    "select_layer",
    "weight_and_bias",
    "sub_layer",
    "SubLayer",
    "make_bias",
    "bias_value",
    "set_bias",
]


def as_shape(value: Sequence[int] | int, name: str) -> tuple[int, ...]:
    """A tensorized feature shape as a tuple of positive ints (lists and tuples accepted)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    try:
        shape = tuple(as_size(v) for v in value)
    except TypeError:
        raise ShapeError(f"{name}={value!r} must be a tuple of ints, e.g. (8, 8, 12).") from None
    if not shape or any(s < 1 for s in shape):
        raise ShapeError(f"{name}={value!r} must be a non-empty tuple of positive ints.")
    return shape


def check_implementation(implementation: str, valid: Sequence[str]) -> str:
    """Validate an ``implementation=`` name."""
    if implementation not in valid:
        raise unknown_option("implementation", implementation, valid)
    return implementation


def select_layer(n_layers: int, indices: Any) -> None:
    """Check a stacked-layer index against ``n_layers`` (python ints only: it picks parameters)."""
    if isinstance(indices, torch.fx.Proxy):
        # Tracing the layer itself makes ``indices`` a placeholder: fine for one layer.
        if n_layers == 1:
            return
        raise OptionError(
            "a stacked layer cannot be traced with a symbolic layer index.\n"
            "Fix: trace layer[i] (a module for layer i) instead."
        )
    if n_layers == 1:
        if not (isinstance(indices, int) and indices == 0):
            raise OptionError(
                f"indices={indices!r} given to a single layer (n_layers=1).\nFix: call layer(x)."
            )
        return
    if not isinstance(indices, int) or not -n_layers <= indices < n_layers:
        raise OptionError(
            f"indices={indices!r} must be an int in [0, "
            f"{n_layers}) for a stack of {n_layers} layers."
        )


class SubLayer(nn.Module):
    """Layer ``indices`` of a stacked factorized layer; shares its parameters."""

    def __init__(self, main: nn.Module, indices: int) -> None:
        super().__init__()
        self.main = main
        self.indices = indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the shared stack's layer ``indices``."""
        return self.main(x, self.indices)

    def extra_repr(self) -> str:
        return f"indices={self.indices}"


def make_bias(shape: Sequence[int], weight: nn.Module, enabled: bool) -> nn.Parameter | None:
    """A bias matching the weight's device and dtype.

    Complex weights get a complex bias, stored as real ``(..., 2)`` like their factors (so
    DistributedDataParallel works).
    """
    if not enabled:
        return None
    first = next(iter(weight.parameters()))
    shape = (*shape, 2) if getattr(weight, "_complex", False) else tuple(shape)
    return nn.Parameter(torch.zeros(shape, device=first.device, dtype=first.dtype))


def bias_value(bias: torch.Tensor | None, weight: nn.Module) -> torch.Tensor | None:
    """The bias as the layer adds it (a complex view for complex weights)."""
    if bias is None or not getattr(weight, "_complex", False):
        return bias
    return torch.view_as_complex(bias)


@torch.no_grad()
def set_bias(bias: torch.Tensor, weight: nn.Module, value: torch.Tensor) -> None:
    """Copy ``value`` (real or complex) into a bias made by :func:`make_bias`."""
    target = bias_value(bias, weight)
    target.copy_(value.to(target.dtype) if target.is_complex() else value)  # type: ignore[union-attr]


def weight_and_bias(layer: Any, indices: Any) -> tuple[Any, torch.Tensor | None]:
    """The (possibly hooked) weight and the bias of layer ``indices`` of a stacked layer.

    ``layer`` has ``n_layers``, a factorized ``weight`` and a ``bias`` made by :func:`make_bias`.
    """
    select_layer(layer.n_layers, indices)
    if layer.n_layers == 1:
        return layer.weight(), bias_value(layer.bias, layer.weight)
    bias = None if layer.bias is None else bias_value(layer.bias[indices], layer.weight)
    return layer.weight(indices), bias


def sub_layer(layer: Any, indices: int, what: str) -> SubLayer:
    """Layer ``indices`` of a stack as a module sharing ``layer``'s parameters.

    ``what`` names the caller in error messages.
    """
    if layer.n_layers == 1:
        raise OptionError(
            f"{what}: a single layer is parametrized (n_layers=1); use the layer itself."
        )
    select_layer(layer.n_layers, indices)
    return SubLayer(layer, indices)
