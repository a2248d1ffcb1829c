"""Kernel layouts of factorized convolutions: tltorch 0.5's four helpers.

tltorch stores a TT-factorized convolution kernel with the output channels moved
last, ``(in_channels, *kernel_size, out_channels)``, so that the TT chain starts at
the input; every other form keeps PyTorch's ``(out_channels, in_channels,
*kernel_size)``. These helpers convert shapes and tensors between the two layouts
(tltorch's ``factorized_layers.factorized_convolution`` functions, same results).

tfx's own :class:`~tfx.FactorizedConv` keeps every kernel, TT included, in PyTorch's
layout; the helpers are here for code written against tltorch's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import torch

from .._errors import OptionError, ShapeError

__all__ = [
    "kernel_shape_to_factorization_shape",
    "factorization_shape_to_kernel_shape",
    "kernel_to_tensor",
    "tensor_to_kernel",
]

_MSG_FACTORIZATION: Final = (
    "factorization={value!r} must be a factorization name such as "
    "'cp', 'tucker' or 'tt' (got a {kind}).\n"
    "Fix: {caller}('tt', ...); a FactorizedTensor's name is its .name, "
    "e.g. {caller}(weight.name, ...)."
)

_MSG_ORDER: Final = """{caller}('tt', ...) got a {what} of order {order}: a convolution kernel \
has an output and an input channel mode, then the kernel sizes.
Fix: pass the full kernel, e.g. (out_channels, in_channels, 3, 3)."""


def _moves_channels(factorization: str, order: int, caller: str, what: str) -> bool:
    """Whether ``factorization`` stores the output channels last (TT, as in tltorch).

    Checks that a ``what`` of ``order`` modes has the two channel modes to move.
    """
    if not isinstance(factorization, str):
        raise OptionError(
            _MSG_FACTORIZATION.format(
                value=factorization, kind=type(factorization).__name__, caller=caller
            )
        )
    if factorization.lower() != "tt":
        return False
    if order < 2:
        raise ShapeError(_MSG_ORDER.format(caller=caller, what=what, order=order))
    return True


def kernel_shape_to_factorization_shape(
    factorization: str, kernel_shape: Sequence[int]
) -> tuple[int, ...]:
    """The shape of the tensor to factorize for a kernel of ``kernel_shape``.

    Args:
        factorization: the form's name (case-insensitive); only ``'tt'`` moves modes.
        kernel_shape: ``(out_channels, in_channels, *kernel_size)``.

    Returns:
        ``(in_channels, *kernel_size, out_channels)`` for TT, else ``kernel_shape``.

    Raises:
        OptionError: ``factorization`` is not a string.
        ShapeError: a TT kernel shape with fewer than two modes.

    Example:
        >>> kernel_shape_to_factorization_shape("tt", (16, 8, 3, 3))
        (8, 3, 3, 16)
        >>> kernel_shape_to_factorization_shape("cp", (16, 8, 3, 3))
        (16, 8, 3, 3)
    """
    shape = tuple(int(s) for s in kernel_shape)
    if not _moves_channels(
        factorization, len(shape), "kernel_shape_to_factorization_shape", "kernel shape"
    ):
        return shape
    return (*shape[1:], shape[0])


def factorization_shape_to_kernel_shape(
    factorization: str, factorization_shape: Sequence[int]
) -> tuple[int, ...]:
    """The kernel shape of a factorized tensor of ``factorization_shape``.

    The inverse of :func:`kernel_shape_to_factorization_shape`.

    Args:
        factorization: the form's name (case-insensitive); only ``'tt'`` moves modes.
        factorization_shape: the factorized tensor's shape.

    Returns:
        ``(out_channels, in_channels, *kernel_size)``.

    Raises:
        OptionError: ``factorization`` is not a string.
        ShapeError: a TT shape with fewer than two modes.

    Example:
        >>> factorization_shape_to_kernel_shape("tt", (8, 3, 3, 16))
        (16, 8, 3, 3)
    """
    shape = tuple(int(s) for s in factorization_shape)
    if not _moves_channels(
        factorization, len(shape), "factorization_shape_to_kernel_shape", "factorization shape"
    ):
        return shape
    return (shape[-1], *shape[:-1])


def kernel_to_tensor(factorization: str, kernel: torch.Tensor) -> torch.Tensor:
    """A convolution kernel laid out for ``factorization`` (a view, no copy).

    Args:
        factorization: the form's name (case-insensitive); only ``'tt'`` moves modes.
        kernel: ``(out_channels, in_channels, *kernel_size)``.

    Returns:
        For TT, ``kernel`` with the output channels moved last; otherwise ``kernel``.

    Raises:
        OptionError: ``factorization`` is not a string.
        ShapeError: a TT kernel with fewer than two dims.

    Example:
        >>> import torch
        >>> kernel_to_tensor("tt", torch.zeros(16, 8, 3, 3)).shape
        torch.Size([8, 3, 3, 16])
    """
    if not _moves_channels(factorization, kernel.dim(), "kernel_to_tensor", "kernel"):
        return kernel
    return torch.movedim(kernel, 0, -1)


def tensor_to_kernel(factorization: str, tensor: torch.Tensor) -> torch.Tensor:
    """A convolution kernel from a reconstructed factorized tensor (a view, no copy).

    The inverse of :func:`kernel_to_tensor`.

    Args:
        factorization: the form's name (case-insensitive); only ``'tt'`` moves modes.
        tensor: the reconstruction, e.g. ``weight.to_tensor()``.

    Returns:
        ``(out_channels, in_channels, *kernel_size)``: for TT, ``tensor`` with its last
        mode moved first; otherwise ``tensor``.

    Raises:
        OptionError: ``factorization`` is not a string.
        ShapeError: a TT tensor with fewer than two dims.

    Example:
        >>> import torch
        >>> tensor_to_kernel("tt", torch.zeros(8, 3, 3, 16)).shape
        torch.Size([16, 8, 3, 3])
    """
    if not _moves_channels(factorization, tensor.dim(), "tensor_to_kernel", "tensor"):
        return tensor
    return torch.movedim(tensor, -1, 0)
