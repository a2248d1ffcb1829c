"""FactorizedConv: an N-dimensional convolution with a factorized kernel."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, get_args

import torch
from torch import nn

from .._errors import OptionError, ShapeError, UnsupportedSiteError
from .._types import ConvImplementation
from ..functional import convolve
from ..functional._conv import PADDING_MODES, conv_padding
from ..tensors import FactorizedTensor
from ._common import SubLayer, check_implementation, make_bias, set_bias, sub_layer, weight_and_bias

__all__ = ["FactorizedConv"]

IMPLEMENTATIONS = get_args(ConvImplementation)
IntOrSeq = int | Sequence[int]


def _per_dim(value: Any, order: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * order
    out = tuple(int(v) for v in value)
    if len(out) != order:
        raise ShapeError(
            f"{name}={value!r} has {len(out)} entries but the convolution has {order} spatial dims."
        )
    return out


class FactorizedConv(nn.Module):
    """A convolution of any number of spatial dims with a factorized kernel (tltorch-compatible).

    The kernel ``(out_channels, in_channels // groups, *kernel_size)`` is a
    ``FactorizedTensor`` (Dense, CP, Tucker, TT or complex variants).

    Args:
        in_channels, out_channels: channels.
        kernel_size: int (then ``order`` gives the number of spatial dims) or tuple.
        order: number of spatial dims when ``kernel_size`` is an int.
        stride, padding, dilation: as ``nn.Conv{1,2,3}d``, per dimension or
            one int; ``padding`` may be ``'same'`` or ``'valid'``.
        bias, has_bias: whether to learn a bias (either one turns it on).
        n_layers: number of stacked layers sharing one factorization.
        factorization: ``'cp'``, ``'tucker'``, ``'tt'``, ``'dense'``, complex variants,
            or a ready ``FactorizedTensor``.
        rank: int, tuple, ``'same'`` or a float fraction; validated against the kernel shape.
        implementation: ``'factorized'``, ``'reconstructed'``, ``'mobilenet'`` (CP only) or
            ``'auto'``.
        fixed_rank_modes: Tucker modes kept at full rank.
        device, dtype: of the parameters.
        groups: ``groups > 1`` needs ``implementation='reconstructed'``.
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``.

    Example:
        >>> import torch, tfx
        >>> conv = tfx.FactorizedConv(
        ...     16, 32, 3, order=2, padding=1, factorization="tucker", rank=0.3
        ... )
        >>> conv(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 32, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrSeq,
        order: int | None = None,
        stride: IntOrSeq = 1,
        padding: IntOrSeq | str = 0,
        dilation: IntOrSeq = 1,
        bias: bool = False,
        has_bias: bool = False,
        n_layers: int = 1,
        factorization: str | FactorizedTensor = "cp",
        rank: Any = "same",
        implementation: ConvImplementation = "factorized",
        fixed_rank_modes: Sequence[int] | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        groups: int = 1,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        if isinstance(kernel_size, int):
            if order is None:
                raise ShapeError(
                    f"kernel_size={kernel_size} is an int, so "
                    "the number of spatial dims is unknown.\n"
                    f"Fix: FactorizedConv(..., kernel_size={kernel_size}, "
                    f"order=2) or kernel_size=({kernel_size}, {kernel_size})."
                )
            kernel_size = (kernel_size,) * order
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.order = len(self.kernel_size)
        if order is not None and order != self.order:
            raise ShapeError(f"order={order} but kernel_size={kernel_size} has {self.order} dims.")
        if in_channels % groups or out_channels % groups:
            raise ShapeError(
                f"groups={groups} must divide in_channels={in_channels} "
                f"and out_channels={out_channels}."
            )
        self.implementation = check_implementation(implementation, IMPLEMENTATIONS)
        if groups != 1 and self.implementation != "reconstructed":
            raise UnsupportedSiteError(
                f"groups={groups}: grouped convolutions have no factorized form here.\n"
                "Fix: implementation='reconstructed' (exact: the "
                "kernel is rebuilt, then F.conv with groups)."
            )
        if padding_mode not in PADDING_MODES:
            raise OptionError(f"padding_mode={padding_mode!r} is not one of {PADDING_MODES}.")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.stride = _per_dim(stride, self.order, "stride")
        self.dilation = _per_dim(dilation, self.order, "dilation")
        self.padding = (
            padding if isinstance(padding, str) else _per_dim(padding, self.order, "padding")
        )
        conv_padding(self.padding, self.kernel_size, self.dilation, self.stride)  # validate now
        self.padding_mode = padding_mode
        self.n_layers = n_layers
        self.weight_shape = (out_channels, in_channels // groups, *self.kernel_size)
        batch = (n_layers,) if n_layers > 1 else ()
        shape = (*batch, *self.weight_shape)
        if isinstance(factorization, FactorizedTensor):
            if tuple(factorization.shape) != shape:
                raise ShapeError(
                    f"the given kernel has shape {factorization.shape}, this layer needs {shape}."
                )
            self.weight = factorization
        else:
            kwargs = {"fixed_rank_modes": fixed_rank_modes} if fixed_rank_modes else {}
            self.weight = FactorizedTensor.new(
                shape, rank=rank, factorization=factorization, device=device, dtype=dtype, **kwargs
            )
        # After the weight, so the bias takes its device and dtype (complex kernels: complex bias).
        self.bias = make_bias((*batch, out_channels), self.weight, bias or has_bias)
        if isinstance(factorization, FactorizedTensor):
            self._reset_bias()
        else:
            self.reset_parameters()
        self.rank = self.weight.rank

    @property
    def has_bias(self) -> bool:
        """Whether the layer has a bias."""
        return self.bias is not None

    def _fan_in(self) -> int:
        return (self.in_channels // self.groups) * math.prod(self.kernel_size)

    def reset_parameters(self) -> None:
        """Kernel entries with ``nn.Conv``'s variance, 1 / (3 fan_in); bias as ``nn.Conv``."""
        with torch.no_grad():
            self.weight.normal_(0, 1.0 / math.sqrt(3 * self._fan_in()))
        self._reset_bias()

    def _reset_bias(self) -> None:
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self._fan_in())
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, indices: int = 0) -> torch.Tensor:
        """Convolve ``x`` (batch, in_channels, *spatial) with layer ``indices`` of the stack."""
        weight, bias = weight_and_bias(self, indices)
        return convolve(
            x,
            weight,
            bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.padding_mode,
            implementation=self.implementation,
        )

    def get_conv(self, indices: int) -> SubLayer:
        """Layer ``indices`` of a stack, sharing this layer's parameters."""
        return sub_layer(self, indices, "get_conv")

    def __getitem__(self, indices: int) -> SubLayer:
        return self.get_conv(indices)

    @classmethod
    def from_factorization(
        cls,
        factorization: FactorizedTensor,
        implementation: ConvImplementation = "factorized",
        stride: IntOrSeq = 1,
        padding: IntOrSeq | str = 0,
        dilation: IntOrSeq = 1,
        bias: torch.Tensor | None = None,
        n_layers: int = 1,
        **kwargs: Any,
    ) -> FactorizedConv:
        """A layer around a ready factorized kernel ``(*[n_layers], out, in, *kernel_size)``."""
        shape = tuple(factorization.shape)[1 if n_layers > 1 else 0 :]
        out_channels, in_channels, *kernel_size = shape
        layer = cls(
            in_channels,
            out_channels,
            tuple(kernel_size),
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=bias is not None,
            n_layers=n_layers,
            factorization=factorization,
            implementation=implementation,
            **kwargs,
        )
        if bias is not None:
            set_bias(layer.bias, layer.weight, bias)  # type: ignore[arg-type]
        return layer

    @classmethod
    def from_conv(
        cls,
        conv_layer: nn.Module,
        rank: Any = "same",
        implementation: ConvImplementation = "reconstructed",
        factorization: str = "CP",
        decompose_weights: bool = True,
        decomposition_kwargs: dict[str, Any] | None = None,
        fixed_rank_modes: Sequence[int] | None = None,
        verbose: bool = False,
    ) -> FactorizedConv:
        """Factorize an ``nn.Conv{1,2,3}d``; dtype and device kept.

        Stride, padding (incl. ``'same'``), dilation, groups and padding_mode carry over
        exactly.

        Example:
            >>> import torch, tfx
            >>> conv = torch.nn.Conv2d(8, 16, 3, padding="same", padding_mode="reflect")
            >>> tfx.FactorizedConv.from_conv(conv, rank=0.5, factorization="tucker").padding
            'same'
        """
        return cls.from_conv_list(
            [conv_layer],
            rank=rank,
            implementation=implementation,
            factorization=factorization,
            decompose_weights=decompose_weights,
            decomposition_kwargs=decomposition_kwargs,
            fixed_rank_modes=fixed_rank_modes,
            _single=True,
        )

    @classmethod
    def from_conv_list(
        cls,
        conv_list: Sequence[nn.Module],
        rank: Any = "same",
        implementation: ConvImplementation = "reconstructed",
        factorization: str = "cp",
        decompose_weights: bool = True,
        decomposition_kwargs: dict[str, Any] | None = None,
        fixed_rank_modes: Sequence[int] | None = None,
        _single: bool = False,
        **kwargs: Any,
    ) -> FactorizedConv:
        """One stacked layer jointly factorizing same-configured convolutions."""
        first = conv_list[0]
        config = _conv_config(first)
        for conv in conv_list[1:]:
            if _conv_config(conv) != config:
                raise ShapeError(
                    "from_conv_list needs identically configured "
                    f"convolutions; {conv} differs from {first}."
                )
        has_bias = [conv.bias is not None for conv in conv_list]
        if any(has_bias) and not all(has_bias):
            raise ShapeError("from_conv_list: either every convolution has a bias or none does.")
        n_layers = 1 if _single else len(conv_list)
        # Checked convolutions (_conv_config): their weight and bias are tensors.
        weights: list[torch.Tensor] = [c.weight for c in conv_list]  # type: ignore[misc]
        weight = weights[0]
        layer = cls(
            config["in_channels"],
            config["out_channels"],
            config["kernel_size"],
            stride=config["stride"],
            padding=config["padding"],
            dilation=config["dilation"],
            bias=all(has_bias),
            n_layers=n_layers,
            factorization=factorization,
            rank=rank,
            implementation=implementation,
            fixed_rank_modes=fixed_rank_modes,
            device=weight.device,
            dtype=weight.dtype,
            groups=config["groups"],
            padding_mode=config["padding_mode"],
            **kwargs,
        )
        if decompose_weights:
            kernels = torch.stack([w.detach() for w in weights])
            kernels = kernels[0] if n_layers == 1 else kernels
            layer.weight.init_from_tensor(kernels, **(decomposition_kwargs or {}))
        if layer.bias is not None:
            biases = torch.stack([c.bias.detach() for c in conv_list])  # type: ignore[operator]
            set_bias(layer.bias, layer.weight, biases[0] if n_layers == 1 else biases)
        return layer

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, padding_mode={self.padding_mode!r}, "
            f"weight={self.weight._name}, rank={self.rank}, "
            f"implementation={self.implementation!r}, n_layers={self.n_layers}"
        )


def _conv_config(conv: nn.Module) -> dict[str, Any]:
    if isinstance(conv, nn.modules.conv._ConvTransposeNd):
        raise UnsupportedSiteError(
            f"{type(conv).__name__} is a transposed convolution, "
            "which FactorizedConv does not implement.\n"
            "Fix: leave it dense."
        )
    if not isinstance(conv, nn.modules.conv._ConvNd):
        raise UnsupportedSiteError(
            f"from_conv needs an nn.Conv1d/2d/3d, got {type(conv).__name__}."
        )
    padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
    return {
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel_size": tuple(conv.kernel_size),
        "stride": tuple(conv.stride),
        "padding": padding,
        "dilation": tuple(conv.dilation),
        "groups": conv.groups,
        "padding_mode": conv.padding_mode,
    }
