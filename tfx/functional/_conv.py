"""N-dimensional convolutions with factorized kernels.

The kernel has shape ``(out_channels, in_channels, *kernel_size)``. Padding
(any ``padding_mode``, ``'same'``, per-dimension and asymmetric) is applied
once, explicitly, with ``F.pad``; every convolution after that is unpadded.
This commutes with the pointwise (1x1) steps below, so every implementation
computes exactly what ``F.conv{1,2,3}d`` computes on the reconstructed kernel.

* CP, ``'factorized'``: pointwise in, one depthwise 1-D convolution per
  spatial dimension (separable), pointwise out.
* CP, ``'mobilenet'``: pointwise in, one depthwise convolution with the
  rank-one kernels, pointwise out (MobileNet-v2 style).
* Tucker: pointwise in to the input rank, a full convolution of the core
  (its spatial modes expanded), pointwise out.
* TT: a convolution into the first bond, then pointwise out.
* ``'reconstructed'``: one convolution with the reconstructed kernel (the only
  implementation that supports ``groups > 1``).

The public per-form functions (``cp_conv``, ``cp_conv_mobilenet``,
``tucker_conv``, ``tt_conv``), ``convNd`` and ``general_conv1d`` keep tltorch
0.5's signatures; they check the form and call :func:`convolve`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .._errors import ShapeError, UnsupportedSiteError, unknown_option
from ..tensors import CPTensor, DenseTensor, FactorizedTensor, TTTensor, TuckerTensor

__all__ = [
    "convolve",
    "convNd",
    "general_conv1d",
    "general_conv1d_",
    "cp_conv",
    "cp_conv_mobilenet",
    "tucker_conv",
    "tt_conv",
    "conv_padding",
    "PADDING_MODES",
]

IntOrSeq = int | Sequence[int]
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
CONV_IMPLEMENTATIONS = ("factorized", "reconstructed", "mobilenet", "auto")
_LOG = logging.getLogger(__name__)


def _conv(order: int) -> Callable[..., torch.Tensor]:
    if order not in (1, 2, 3):
        raise ShapeError(
            f"convolutions with {order} spatial dimensions "
            "are not supported by torch.nn.functional.\n"
            "Fix: use a 1, 2 or 3-d kernel."
        )
    return (F.conv1d, F.conv2d, F.conv3d)[order - 1]


def _tuple(value: IntOrSeq, order: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * order
    out = tuple(int(v) for v in value)
    if len(out) != order:
        raise ShapeError(f"{name}={value!r} has {len(out)} entries for a {order}-d convolution.")
    return out


def conv_padding(
    padding: IntOrSeq | str,
    kernel_size: Sequence[int],
    dilation: Sequence[int],
    stride: Sequence[int],
) -> tuple[int, ...]:
    """``F.pad`` pairs (last dim first) for a conv's ``padding``.

    ``padding`` is ints, ``'same'`` or ``'valid'``.
    """
    order = len(kernel_size)
    if isinstance(padding, str):
        if padding == "valid":
            pairs = [(0, 0)] * order
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise ShapeError(
                    "padding='same' is not supported for strided convolutions (as in torch)."
                )
            totals = [d * (k - 1) for k, d in zip(kernel_size, dilation, strict=False)]
            pairs = [(t // 2, t - t // 2) for t in totals]
        else:
            raise unknown_option("padding", padding, ("same", "valid"), hint="Or pass ints.")
    else:
        pairs = [(p, p) for p in _tuple(padding, order, "padding")]
    return tuple(v for pair in reversed(pairs) for v in pair)


def _pad(x: torch.Tensor, pad: tuple[int, ...], padding_mode: str) -> torch.Tensor:
    if not any(pad):
        return x
    if padding_mode == "zeros":
        return F.pad(x, pad)
    return F.pad(x, pad, mode=padding_mode)


def _pointwise(order: int, matrix: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A (rows, cols) matrix as a 1x1...1 convolution kernel (static sizes: fx-traceable)."""
    return matrix.reshape(rows, cols, *([1] * order))


def _cp_sandwich(
    x: torch.Tensor,
    cp_tensor: CPTensor,
    bias: torch.Tensor | None,
    pad: tuple[int, ...],
    padding_mode: str,
    depthwise: Callable[
        [torch.Tensor, Callable[..., torch.Tensor], list[torch.Tensor]], torch.Tensor
    ],
) -> torch.Tensor:
    """Pointwise into the rank channels, pad, ``depthwise`` over the spatial factors.

    Then pointwise out.
    """
    weights, (f_out, f_in, *f_space) = cp_tensor.decomposition
    order, rank = len(f_space), cp_tensor.rank
    out_c, in_c = cp_tensor.shape[:2]
    conv = _conv(order)
    y = conv(x, _pointwise(order, f_in.transpose(0, 1), rank, in_c))
    y = depthwise(_pad(y, pad, padding_mode), conv, f_space)
    return conv(y, _pointwise(order, f_out * weights, out_c, rank), bias)


def _cp_conv(
    x: torch.Tensor,
    cp_tensor: CPTensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    pad: tuple[int, ...],
    dilation: Sequence[int],
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Separable CP convolution: pointwise, one depthwise 1-D conv per spatial dim, pointwise."""
    rank, kernel_size = cp_tensor.rank, cp_tensor.shape[2:]

    def separable(
        y: torch.Tensor, conv: Callable[..., torch.Tensor], f_space: list[torch.Tensor]
    ) -> torch.Tensor:
        order = len(f_space)
        for axis, factor in enumerate(f_space):
            shape, step, dil = [1] * order, [1] * order, [1] * order
            shape[axis], step[axis], dil[axis] = kernel_size[axis], stride[axis], dilation[axis]
            y = conv(
                y,
                factor.transpose(0, 1).reshape(rank, 1, *shape),
                stride=step,
                dilation=dil,
                groups=rank,
            )
        return y

    return _cp_sandwich(x, cp_tensor, bias, pad, padding_mode, separable)


def _cp_conv_mobilenet(
    x: torch.Tensor,
    cp_tensor: CPTensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    pad: tuple[int, ...],
    dilation: Sequence[int],
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """CP convolution as pointwise, one depthwise conv with the rank-one kernels, pointwise."""
    rank, kernel_size = cp_tensor.rank, cp_tensor.shape[2:]

    def rank_one(
        y: torch.Tensor, conv: Callable[..., torch.Tensor], f_space: list[torch.Tensor]
    ) -> torch.Tensor:
        kernel = f_space[0].transpose(0, 1)  # (rank, k0)
        for axis, factor in enumerate(
            f_space[1:], start=1
        ):  # outer products of the spatial factors
            kernel = kernel.unsqueeze(-1) * factor.transpose(0, 1).reshape(
                rank, *([1] * axis), kernel_size[axis]
            )
        return conv(
            y, kernel.unsqueeze(1), stride=tuple(stride), dilation=tuple(dilation), groups=rank
        )

    return _cp_sandwich(x, cp_tensor, bias, pad, padding_mode, rank_one)


def _tucker_conv(
    x: torch.Tensor,
    tucker_tensor: TuckerTensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    pad: tuple[int, ...],
    dilation: Sequence[int],
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Tucker convolution: pointwise to the input rank, core convolution, pointwise out."""
    core, (f_out, f_in, *f_space) = tucker_tensor.decomposition
    order = len(f_space)
    out_c, in_c, *kernel = tucker_tensor.shape
    r_out, r_in, *r_space = tucker_tensor.rank
    conv = _conv(order)
    # Expand the core's spatial modes to kernel sizes in one GEMM with the Kronecker product of
    # the (small) spatial factors: no per-axis tensordot, movedim and copy (static sizes:
    # fx-traceable).
    kron, rows, cols = f_space[0], kernel[0], r_space[0]
    for size, rank, factor in zip(kernel[1:], r_space[1:], f_space[1:], strict=False):
        kron = (kron.reshape(rows, 1, cols, 1) * factor.reshape(1, size, 1, rank)).reshape(
            rows * size, cols * rank
        )
        rows, cols = rows * size, cols * rank
    # (kernel taps x channels pairs) is the fast GEMM orientation: a tall GEMM with a handful of
    # columns runs several times slower in MKL; the transposed result is copied once by reshape.
    core = (
        torch.mm(kron, core.reshape(r_out * r_in, cols).transpose(0, 1))
        .transpose(0, 1)
        .reshape(r_out, r_in, *kernel)
    )
    y = conv(x, _pointwise(order, f_in.transpose(0, 1), r_in, in_c))
    y = _pad(y, pad, padding_mode)
    y = conv(y, core, stride=tuple(stride), dilation=tuple(dilation))
    return conv(y, _pointwise(order, f_out, out_c, r_out), bias)


def _tt_conv(
    x: torch.Tensor,
    tt_tensor: TTTensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    pad: tuple[int, ...],
    dilation: Sequence[int],
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """TT convolution: a convolution into the first bond (rank[1] channels), then pointwise out."""
    cores = tt_tensor.decomposition
    order = len(cores) - 2
    conv = _conv(order)
    shape, rank = tt_tensor.shape, tt_tensor.rank  # static sizes: fx-traceable
    # The kernel (rank[1], in, *kernel_size): chain the small spatial cores first, then one GEMM
    # with the channel core (a tensordot per core copied the whole kernel at every step).
    spatial, width = cores[2].reshape(rank[2] * shape[2], rank[3]), shape[2]
    for j in range(3, order + 2):
        spatial = torch.mm(spatial, cores[j].reshape(rank[j], shape[j] * rank[j + 1]))
        spatial = spatial.reshape(rank[2] * width * shape[j], rank[j + 1])
        width *= shape[j]
    # Computed transposed, (taps, channel pairs): the tall GEMM with a handful of columns runs
    # several times slower in MKL; the transposed result is copied once by reshape.
    kernel = torch.mm(
        spatial.reshape(rank[2], width).transpose(0, 1),
        cores[1].reshape(rank[1] * shape[1], rank[2]).transpose(0, 1),
    )
    kernel = kernel.transpose(0, 1).reshape(rank[1], shape[1], *shape[2:])
    y = conv(_pad(x, pad, padding_mode), kernel, stride=tuple(stride), dilation=tuple(dilation))
    return conv(y, _pointwise(order, cores[0][0], tt_tensor.shape[0], tt_tensor.rank[1]), bias)


_FACTORIZED: dict[type, Callable[..., torch.Tensor]] = {
    CPTensor: _cp_conv,
    TuckerTensor: _tucker_conv,
    TTTensor: _tt_conv,
}


def convolve(
    x: torch.Tensor,
    weight: FactorizedTensor | torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntOrSeq = 1,
    padding: IntOrSeq | str = 0,
    dilation: IntOrSeq = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    implementation: str = "factorized",
) -> torch.Tensor:
    """Convolve ``x`` with a (factorized) kernel of shape ``(out, in // groups, *kernel_size)``.

    Args:
        x: ``(batch, in_channels, *spatial)``.
        weight: a factorized tensor (Dense, CP, Tucker, TT) or a tensor.
        bias: optional ``(out_channels,)``.
        stride: as ``F.conv{1,2,3}d``.
        padding: as ``F.conv{1,2,3}d``; may be ``'same'``/``'valid'`` or per dimension.
        dilation: as ``F.conv{1,2,3}d``.
        groups: only with ``implementation='reconstructed'`` (or a dense weight).
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``.
        implementation: ``'factorized'``, ``'reconstructed'``, ``'mobilenet'`` (CP only)
            or ``'auto'`` (by FLOP count, see :func:`conv_flops`).

    Example:
        >>> import torch, tfx
        >>> from tfx.functional import convolve
        >>> w = tfx.FactorizedTensor.new((16, 8, 3, 3), rank=0.5, factorization="cp")
        >>> convolve(torch.randn(2, 8, 10, 10), w, padding=1).shape
        torch.Size([2, 16, 10, 10])
    """
    if implementation not in CONV_IMPLEMENTATIONS:
        raise unknown_option("implementation", implementation, CONV_IMPLEMENTATIONS)
    if padding_mode not in PADDING_MODES:
        raise unknown_option("padding_mode", padding_mode, PADDING_MODES)
    shape = tuple(weight.shape)
    order = len(shape) - 2
    kernel_size = shape[2:]
    stride_t = _tuple(stride, order, "stride")
    dilation_t = _tuple(dilation, order, "dilation")
    pad = conv_padding(padding, kernel_size, dilation_t, stride_t)
    conv = _conv(order)
    if implementation == "auto":
        implementation = _auto(weight, x, stride_t)
    dense = isinstance(weight, torch.Tensor | DenseTensor)
    if groups != 1 and not dense and implementation != "reconstructed":
        raise UnsupportedSiteError(
            f"groups={groups}: the {implementation!r} implementation of a {type(weight).__name__} "
            "kernel has no grouped form.\nFix: implementation='reconstructed' (exact, uses the "
            "rebuilt kernel), or factorize an ungrouped convolution."
        )
    if dense or implementation == "reconstructed":
        kernel = weight if isinstance(weight, torch.Tensor) else weight.to_tensor()
        return conv(_pad(x, pad, padding_mode), kernel, bias, stride_t, 0, dilation_t, groups)
    if implementation == "mobilenet":
        if not isinstance(weight, CPTensor):
            raise UnsupportedSiteError(
                f"implementation='mobilenet' needs a CP kernel, got {type(weight).__name__}.\n"
                "Fix: factorization='cp', or implementation='factorized'."
            )
        return _cp_conv_mobilenet(x, weight, bias, stride_t, pad, dilation_t, padding_mode)
    for form, fn in _FACTORIZED.items():
        if isinstance(weight, form):
            return fn(x, weight, bias, stride_t, pad, dilation_t, padding_mode)
    raise UnsupportedSiteError(  # pragma: no cover - every registered form is handled above
        f"no factorized convolution for {type(weight).__name__}; "
        "use implementation='reconstructed'."
    )


# ------------------------------------------------------------ tltorch's per-form functions
def _form(weight: object, form: type, name: str) -> None:
    if not isinstance(weight, form):
        raise UnsupportedSiteError(
            f"{name} needs a {form.__name__} kernel, got {type(weight).__name__}.\n"
            "Fix: convolve(x, weight, ...), which takes every form."
        )


def cp_conv(
    x: torch.Tensor,
    cp_tensor: CPTensor,
    bias: torch.Tensor | None = None,
    stride: IntOrSeq = 1,
    padding: IntOrSeq | str = 0,
    dilation: IntOrSeq = 1,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Separable CP convolution, tltorch's ``cp_conv``.

    Pointwise, a depthwise 1-D conv per dim, pointwise.

    Args:
        x: ``(batch, in_channels, *spatial)``.
        cp_tensor: a CP kernel ``(out_channels, in_channels, *kernel_size)``.
        bias: optional ``(out_channels,)``.
        stride: as ``F.conv{1,2,3}d``.
        padding: as ``F.conv{1,2,3}d``, or ``'same'`` / ``'valid'``.
        dilation: as ``F.conv{1,2,3}d``.
        padding_mode: tfx's addition, as in :func:`convolve`.

    Example:
        >>> import torch, tfx
        >>> w = tfx.FactorizedTensor.new((16, 8, 3, 3), rank=4, factorization="cp")
        >>> tfx.functional.cp_conv(torch.randn(2, 8, 10, 10), w, padding=1).shape
        torch.Size([2, 16, 10, 10])
    """
    _form(cp_tensor, CPTensor, "cp_conv")
    return convolve(x, cp_tensor, bias, stride, padding, dilation, padding_mode=padding_mode)


def cp_conv_mobilenet(
    x: torch.Tensor,
    cp_tensor: CPTensor,
    bias: torch.Tensor | None = None,
    stride: IntOrSeq = 1,
    padding: IntOrSeq | str = 0,
    dilation: IntOrSeq = 1,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """CP convolution as pointwise, one depthwise conv, pointwise: tltorch's ``cp_conv_mobilenet``.

    Arguments as :func:`cp_conv`.

    Example:
        >>> import torch, tfx
        >>> w = tfx.FactorizedTensor.new((16, 8, 3, 3), rank=4, factorization="cp")
        >>> tfx.functional.cp_conv_mobilenet(torch.randn(2, 8, 10, 10), w, stride=2).shape
        torch.Size([2, 16, 4, 4])
    """
    _form(cp_tensor, CPTensor, "cp_conv_mobilenet")
    return convolve(
        x,
        cp_tensor,
        bias,
        stride,
        padding,
        dilation,
        padding_mode=padding_mode,
        implementation="mobilenet",
    )


def tucker_conv(
    x: torch.Tensor,
    tucker_tensor: TuckerTensor,
    bias: torch.Tensor | None = None,
    stride: IntOrSeq = 1,
    padding: IntOrSeq | str = 0,
    dilation: IntOrSeq = 1,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Tucker convolution, tltorch's ``tucker_conv``.

    Pointwise to the input rank, the core, pointwise out.

    Arguments as :func:`cp_conv`, with a Tucker kernel
    ``(out_channels, in_channels, *kernel_size)``.

    Example:
        >>> import torch, tfx
        >>> w = tfx.FactorizedTensor.new((16, 8, 3, 3), rank=0.5, factorization="tucker")
        >>> tfx.functional.tucker_conv(torch.randn(2, 8, 10, 10), w, padding=1).shape
        torch.Size([2, 16, 10, 10])
    """
    _form(tucker_tensor, TuckerTensor, "tucker_conv")
    return convolve(x, tucker_tensor, bias, stride, padding, dilation, padding_mode=padding_mode)


def tt_conv(
    x: torch.Tensor,
    tt_tensor: TTTensor,
    bias: torch.Tensor | None = None,
    stride: IntOrSeq = 1,
    padding: IntOrSeq | str = 0,
    dilation: IntOrSeq = 1,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """TT convolution, tltorch's ``tt_conv``.

    A convolution into the first TT bond, then pointwise out.

    The TT kernel is ``(out_channels, in_channels, *kernel_size)``, as for every
    other form (tltorch orders a TT kernel ``(in_channels, *kernel_size, out_channels)``).
    Other arguments as :func:`cp_conv`.

    Example:
        >>> import torch, tfx
        >>> w = tfx.FactorizedTensor.new((16, 8, 3, 3), rank=0.5, factorization="tt")
        >>> tfx.functional.tt_conv(torch.randn(2, 8, 10, 10), w, padding=1).shape
        torch.Size([2, 16, 10, 10])
    """
    _form(tt_tensor, TTTensor, "tt_conv")
    return convolve(x, tt_tensor, bias, stride, padding, dilation, padding_mode=padding_mode)


def convNd(  # noqa: N802 - tltorch's name
    x: torch.Tensor,
    weight: FactorizedTensor | torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntOrSeq = 1,
    padding: IntOrSeq | str = 0,
    dilation: IntOrSeq = 1,
    implementation: str = "factorized",
) -> torch.Tensor:
    """Convolve as :func:`convolve` does, with tltorch's ``convNd`` argument order (no ``groups``).

    Example:
        >>> import torch, tfx
        >>> w = tfx.FactorizedTensor.new((4, 3, 3), rank=0.5, factorization="tucker")
        >>> x = torch.randn(2, 3, 9)
        >>> tfx.functional.convNd(x, w, padding=1, implementation="reconstructed").shape
        torch.Size([2, 4, 9])
    """
    return convolve(x, weight, bias, stride, padding, dilation, implementation=implementation)


def general_conv1d(
    x: torch.Tensor,
    kernel: torch.Tensor,
    mode: int,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
    dilation: int = 1,
    verbose: bool = False,
) -> torch.Tensor:
    """A 1-D convolution of ``x`` along its dim ``mode`` only: tltorch's ``general_conv1d``.

    Args:
        x: ``(batch, in_channels, *spatial)``, with 1 to 3 spatial dims.
        kernel: ``(out_channels, in_channels // groups, kernel_size)``.
        mode: the spatial dim of ``x`` to convolve along (2 is the first).
        bias: optional ``(out_channels,)``.
        stride: along ``mode``, as ``F.conv1d``.
        padding: along ``mode`` (zeros), as ``F.conv1d``.
        groups: as ``F.conv1d``.
        dilation: along ``mode``, as ``F.conv1d``.
        verbose: log the shapes (at INFO level; tltorch prints them).

    Returns:
        ``x`` with ``out_channels`` channels, convolved along ``mode``; the other
        spatial dims are unchanged.

    Example:
        >>> import torch, tfx
        >>> x, k = torch.randn(2, 3, 9, 8), torch.randn(5, 3, 3)
        >>> y = tfx.functional.general_conv1d(x, k, mode=3, padding=1)
        >>> y.shape
        torch.Size([2, 5, 9, 8])
    """
    order = x.dim() - 2
    conv = _conv(order)
    axis = (mode % x.dim() if mode < 0 else mode) - 2
    if not 0 <= axis < order:
        raise ShapeError(
            f"general_conv1d: mode={mode} is not a spatial "
            f"dim of an input of shape {tuple(x.shape)}.\n"
            f"Fix: mode in {list(range(2, x.dim()))}."
        )
    if verbose:
        _LOG.info(
            "general_conv1d: %s with %s along mode %d, stride=%s, padding=%s, groups=%s",
            tuple(x.shape),
            tuple(kernel.shape),
            mode,
            stride,
            padding,
            groups,
        )

    def along(value: int, rest: int) -> tuple[int, ...]:
        return tuple(value if i == axis else rest for i in range(order))

    kernel = kernel.reshape(*kernel.shape[:2], *along(kernel.shape[-1], 1))
    return conv(x, kernel, bias, along(stride, 1), along(padding, 0), along(dilation, 1), groups)


general_conv1d_ = general_conv1d  # tltorch's second spelling (a permute-based variant, same result)


def conv_flops(
    weight: FactorizedTensor, spatial_out: int, batch: int, stride: Sequence[int] = ()
) -> dict[str, int]:
    """Approximate FLOPs of each implementation.

    For ``batch`` images of ``spatial_out`` output positions.
    """
    out_c, in_c, *kernel = weight.shape
    k = math.prod(kernel)
    n = batch * spatial_out
    s = math.prod(stride) if stride else 1
    flops = {"reconstructed": 2 * n * out_c * in_c * k + weight._plan.flops}
    if isinstance(weight, CPTensor):
        r = weight.rank
        flops["factorized"] = 2 * n * s * r * in_c + 2 * n * s * r * sum(kernel) + 2 * n * r * out_c
        flops["mobilenet"] = 2 * n * s * r * in_c + 2 * n * r * k + 2 * n * r * out_c
    elif isinstance(weight, TuckerTensor):
        ro, ri = weight.rank[0], weight.rank[1]
        flops["factorized"] = 2 * n * s * ri * in_c + 2 * n * ro * ri * k + 2 * n * ro * out_c
    elif isinstance(weight, TTTensor):
        r1 = weight.rank[1]
        flops["factorized"] = 2 * n * r1 * in_c * k + 2 * n * r1 * out_c
    return flops


def _auto(weight: Any, x: torch.Tensor, stride: Sequence[int]) -> str:
    if isinstance(weight, torch.Tensor | DenseTensor):
        return "reconstructed"
    from ._planning import is_tracing, traced_batch

    if is_tracing(x):
        batch, spatial = traced_batch(), 32 ** (len(weight.shape) - 2)
    else:
        batch, spatial = x.shape[0], math.prod(x.shape[2:]) // max(math.prod(stride), 1)
    flops = conv_flops(weight, spatial, batch, stride)
    return min(flops, key=flops.__getitem__)
