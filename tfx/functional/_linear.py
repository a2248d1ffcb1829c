"""Linear layers with factorized weights, as planned contractions.

``y = x @ W.T + b`` with ``W`` (out_features x in_features) in factorized
form. ``'factorized'`` contracts the input with the factors directly, in an
order planned once per batch bucket; ``'reconstructed'`` rebuilds ``W`` and
calls ``F.linear``; ``'auto'`` picks the cheaper by FLOP count.

The per-form functions (``linear_cp``, ``linear_tucker``, ``linear_blocktt``,
and tfx's ``linear_tt``) keep tltorch 0.5's signature and output shapes: the
input is read as rows of the weight's input modes, ``transpose=False``
multiplies by ``W`` instead of ``W.T``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final, Literal

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

_MSG_TRANSPOSE: Final = (
    "{name}: transpose={value} must be True or False (tltorch's third argument is `transpose`; "
    "tfx takes `bias` by keyword only).\nFix: {name}(x, weight, bias=bias) or "
    "{name}(x, weight, transpose=False)."
)
_MSG_ROWS: Final = (
    "{name}(transpose={transpose}): x must end in the weight's {n} {side} features, as (..., {n}) "
    "or (..., {modes}); got x of shape {shape}.\nFix: {fix}"
)
_MSG_PLAIN_IN: Final = (
    "factorized_linear: cannot read a {shape} weight as a matrix with in_features={n} columns "
    "({numel} entries).\nFix: pass in_features= (the input size), or use a (out, in) weight."
)
_MSG_TRACE_IN: Final = (
    "factorized_linear: a {shape} weight of order {order} needs in_features= under torch.fx "
    "tracing (the input's size is not known).\nFix: factorized_linear(x, weight, in_features=...)."
)


def linear_in_modes(weight: FactorizedTensor, in_features: int | None = None) -> tuple[int, ...]:
    """Positions of the input modes of a linear weight (its column modes).

    A tensorized matrix's column modes; a plain ``(out, in)`` tensor's mode 1;
    for a plain tensor of higher order, the trailing modes whose sizes multiply
    to ``in_features`` (tltorch reads such a weight as ``reshape(-1, in_features)``).
    """
    if isinstance(weight, TensorizedTensor):
        if not isinstance(weight.tensorized_shape[-1], tuple) or len(weight.shape) != 2:
            raise ShapeError(
                "a linear weight must be one tensorized matrix, "
                f"got tensorized_shape={weight.tensorized_shape}.\n"
                "Fix: index the layer first (weight[i]) for stacked layers."
            )
        n_in = len(weight.tensorized_shape[-1])
        order = len(weight.tensor_shape)
        return tuple(range(order - n_in, order))
    shape = tuple(weight.shape)
    if len(shape) == 2 and in_features in (None, shape[1]):
        return (1,)
    if len(shape) > 2 and in_features is not None:
        for start in range(len(shape) - 1, 0, -1):
            if math.prod(shape[start:]) == in_features:
                return tuple(range(start, len(shape)))
    raise ShapeError(
        f"a linear weight must be a matrix (out_features, in_features), got shape {shape}"
        + ("." if in_features is None else f" for in_features={in_features}.")
        + "\nFix: pass a 2-d weight, or in_features= equal to the product of its trailing modes."
    )


def linear_flops(
    weight: FactorizedTensor, batch: int, in_modes: Sequence[int] | None = None
) -> tuple[int, int]:
    """FLOPs of (factorized, reconstructed) for ``batch`` rows: the ``'auto'`` criterion."""
    modes = linear_in_modes(weight) if in_modes is None else tuple(in_modes)
    plan, in_sizes, out_sizes = input_plan(weight, modes, batch)
    rebuild = weight._plan.flops + 2 * batch * math.prod(in_sizes) * math.prod(out_sizes)
    return plan.flops, rebuild


def _matrix(weight: FactorizedTensor) -> torch.Tensor:
    return weight.to_matrix() if isinstance(weight, TensorizedTensor) else weight.to_tensor()


def _plain_columns(
    x: torch.Tensor, weight: FactorizedTensor | torch.Tensor, in_features: int | None
) -> int | None:
    """Columns of a plain weight read as a matrix.

    ``in_features``, else x's last dim (None: 2-d).
    """
    if in_features is not None or len(weight.shape) == 2:
        return in_features
    if isinstance(x, torch.fx.Proxy):
        raise ShapeError(_MSG_TRACE_IN.format(shape=tuple(weight.shape), order=len(weight.shape)))
    return int(x.shape[-1])


def _reshaped(matrix: torch.Tensor, columns: int | None) -> torch.Tensor:
    if columns is None or (matrix.dim() == 2 and matrix.shape[1] == columns):
        return matrix
    if matrix.numel() % max(columns, 1):
        raise ShapeError(
            _MSG_PLAIN_IN.format(shape=tuple(matrix.shape), n=columns, numel=matrix.numel())
        )
    return matrix.reshape(-1, columns)


def factorized_linear(
    x: torch.Tensor,
    weight: FactorizedTensor | torch.Tensor,
    bias: torch.Tensor | None = None,
    in_features: int | None = None,
    implementation: Implementation = "factorized",
) -> torch.Tensor:
    """``x @ W.T + bias`` for a factorized (or dense) weight ``W`` of shape (out, in).

    The signature is tltorch 0.5's. A weight that is not a matrix (a plain
    factorized tensor or tensor of order > 2) is read, as in tltorch, as
    ``W.reshape(-1, in_features)``; its trailing modes are then contracted
    with the input directly where their sizes multiply to ``in_features``.

    Args:
        x: input of shape ``(..., in_features)``.
        weight: a tensorized matrix, a plain factorized tensor, or a tensor.
        bias: optional ``(out_features,)`` bias.
        in_features: the number of input features (default: ``x``'s last dim);
            checked against a matrix weight.
        implementation: ``'factorized'``, ``'reconstructed'`` or ``'auto'``.

    Returns:
        ``(..., out_features)``.

    Example:
        >>> import torch, tfx
        >>> from tfx.functional import factorized_linear
        >>> w = tfx.TensorizedTensor.new(((4, 4), (3, 4)), rank=0.5, factorization="cp")
        >>> factorized_linear(torch.randn(5, 12), w).shape
        torch.Size([5, 16])
        >>> t = tfx.FactorizedTensor.new((4, 4, 3, 4), rank=0.5, factorization="tucker")
        >>> factorized_linear(torch.randn(5, 12), t).shape    # read as a (16, 12) matrix
        torch.Size([5, 16])
    """
    if implementation not in IMPLEMENTATIONS:
        raise unknown_option("implementation", implementation, IMPLEMENTATIONS)
    if isinstance(weight, torch.Tensor):
        return F.linear(x, _reshaped(weight, _plain_columns(x, weight, in_features)), bias)
    if not isinstance(weight, FactorizedTensor):
        raise OptionError(
            "factorized_linear: weight must be a tfx factorized "
            f"tensor or a tensor, got {type(weight).__name__}."
        )
    tensorized = isinstance(weight, TensorizedTensor)
    columns = in_features if tensorized else _plain_columns(x, weight, in_features)
    if tensorized or len(weight.shape) == 2:
        in_modes = linear_in_modes(weight)
        n_in = weight.shape[-1]
        if in_features is not None and in_features != n_in:
            raise ShapeError(
                f"in_features={in_features} does not match the weight's {n_in} columns."
            )
    else:
        try:
            in_modes = linear_in_modes(weight, columns)
        except ShapeError:  # the columns cut a mode: only the rebuilt tensor can be reshaped so
            return F.linear(x, _reshaped(weight.to_tensor(), columns), bias)
        n_in = math.prod(weight.shape[m] for m in in_modes)
    out_features = math.prod(weight.shape) // n_in if not tensorized else weight.shape[-2]
    if implementation == "auto":
        batch = traced_batch() if is_tracing(x) else batch_bucket(x.numel() // max(n_in, 1))
        factorized, rebuild = linear_flops(weight, batch, in_modes)
        implementation = "factorized" if factorized <= rebuild else "reconstructed"
    if implementation == "reconstructed":
        return F.linear(x, _reshaped(_matrix(weight), columns), bias)
    # x's last dim is unfolded into the weight's input modes inside the plan.
    return contract_input(x, weight, in_modes, 1, (out_features,), bias)


# ------------------------------------------------------------ tltorch's per-form functions
def _row_col_modes(weight: FactorizedTensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The sizes of a linear weight's row (output) modes and column (input) modes."""
    in_modes = linear_in_modes(weight)
    sizes = tuple(weight.tensor_shape if isinstance(weight, TensorizedTensor) else weight.shape)
    return sizes[: in_modes[0]], sizes[in_modes[0] :]


def _check_rows(x: torch.Tensor, shape: tuple[int, ...], name: str, transpose: bool) -> None:
    n = math.prod(shape)
    if x.dim() >= 1 and x.shape[-1] == n:
        return
    if x.dim() >= len(shape) and tuple(x.shape[x.dim() - len(shape) :]) == shape:
        return
    side = "input" if transpose else "output"
    fix = (
        "pass the input the weight multiplies (transpose=True: x @ W.T needs W's columns; "
        "transpose=False: x @ W needs W's rows)."
    )
    raise ShapeError(
        _MSG_ROWS.format(
            name=name,
            transpose=transpose,
            n=n,
            side=side,
            modes=", ".join(map(str, shape)),
            shape=tuple(x.shape),
            fix=fix,
        )
    )


def _linear_form(
    x: torch.Tensor,
    weight: FactorizedTensor,
    transpose: bool,
    bias: torch.Tensor | None,
    form: type,
    name: str,
    *,
    flat: bool,
) -> torch.Tensor:
    """Rows of ``x`` times ``W.T`` (or ``W``), shaped as tltorch's ``linear_*`` return them."""
    if not isinstance(weight, form):
        raise OptionError(
            f"{name} needs a {form.__name__}, got {type(weight).__name__}; use factorized_linear."
        )
    if not isinstance(transpose, bool):
        value = (
            f"<a tensor of shape {tuple(transpose.shape)}>"
            if isinstance(transpose, torch.Tensor)
            else repr(transpose)
        )
        raise OptionError(_MSG_TRANSPOSE.format(name=name, value=value))
    rows, cols = _row_col_modes(weight)
    if transpose:
        in_shape, out_shape, in_modes = cols, rows, tuple(range(len(rows), len(rows) + len(cols)))
    else:
        in_shape, out_shape, in_modes = rows, cols, tuple(range(len(rows)))
    if not is_tracing(x):
        _check_rows(x, in_shape, name, transpose)
    out = (math.prod(out_shape),) if flat else out_shape
    y = contract_input(x.reshape((-1, *in_shape)), weight, in_modes, len(in_shape), out)
    return y if bias is None else y + bias.reshape(out)


def linear_cp(
    x: torch.Tensor, weight: CPTensor, transpose: bool = True, *, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Rows of ``x`` times a CP weight's ``W.T`` (or ``W``), factor by factor.

    As tltorch's ``linear_cp``.

    ``x`` is read as rows of the weight's input modes (``x.reshape(-1, *in_shape)``),
    as tltorch does, so it may end in ``in_features`` or in the tensorized input shape.

    Args:
        x: ``(..., in_features)`` or ``(..., *in_shape)``; with ``transpose=False``
            the weight's output size or shape instead.
        weight: a CP tensorized matrix ``(out, in)`` or a plain 2-d CP tensor.
        transpose: True (tltorch's default): ``x @ W.T``, a linear layer.
            False: ``x @ W``.
        bias: optional, tfx's addition, of ``out_features`` entries (``in_features``
            with ``transpose=False``).

    Returns:
        ``(rows, *out_shape)``, the output modes unflattened, as in tltorch
        (``rows`` is ``x.numel() // in_features``).

    Example:
        >>> import torch, tfx
        >>> w = tfx.TensorizedTensor.new(((2, 3), (4, 2)), rank=0.5, factorization="cp")
        >>> tfx.functional.linear_cp(torch.randn(5, 8), w).shape
        torch.Size([5, 2, 3])
        >>> tfx.functional.linear_cp(torch.randn(5, 6), w, transpose=False).shape
        torch.Size([5, 4, 2])
    """
    return _linear_form(x, weight, transpose, bias, CPTensor, "linear_cp", flat=False)


def linear_tucker(
    x: torch.Tensor,
    weight: TuckerTensor,
    transpose: bool = True,
    channels_first: bool = True,
    *,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rows of ``x`` times a Tucker weight's ``W.T`` (or ``W``): tltorch's ``linear_tucker``.

    Args:
        x: ``(..., in_features)`` or ``(..., *in_shape)`` (the output's with ``transpose=False``).
        weight: a Tucker tensorized matrix ``(out, in)`` or a plain 2-d Tucker tensor.
        transpose: True (tltorch's default): ``x @ W.T``. False: ``x @ W``.
        channels_first: accepted and ignored, as in tltorch.
        bias: optional, tfx's addition.

    Returns:
        ``(rows, *out_shape)``, as in tltorch.

    Example:
        >>> import torch, tfx
        >>> w = tfx.TensorizedTensor.new(((2, 3), (4, 2)), rank=0.5, factorization="tucker")
        >>> tfx.functional.linear_tucker(torch.randn(5, 4, 2), w).shape
        torch.Size([5, 2, 3])
    """
    del channels_first  # tltorch's parameter; it has no effect there either
    return _linear_form(x, weight, transpose, bias, TuckerTensor, "linear_tucker", flat=False)


def linear_tt(
    x: torch.Tensor, weight: TTTensor, transpose: bool = True, *, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The rows of ``x`` times a TT weight's ``W.T`` (or ``W``); tfx's companion of ``linear_cp``.

    Args:
        x: ``(..., in_features)`` or ``(..., *in_shape)`` (the output's with ``transpose=False``).
        weight: a TT tensorized matrix ``(out, in)`` or a plain 2-d TT tensor.
        transpose: True: ``x @ W.T``. False: ``x @ W``.
        bias: optional.

    Returns:
        ``(rows, *out_shape)``, like :func:`linear_cp`.

    Example:
        >>> import torch, tfx
        >>> w = tfx.TensorizedTensor.new(((2, 3), (4, 2)), rank=0.5, factorization="tt")
        >>> tfx.functional.linear_tt(torch.randn(5, 8), w).shape
        torch.Size([5, 2, 3])
    """
    return _linear_form(x, weight, transpose, bias, TTTensor, "linear_tt", flat=False)


def linear_blocktt(
    x: torch.Tensor, weight: BlockTT, transpose: bool = True, *, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Rows of ``x`` times a BlockTT weight's ``W.T`` (or ``W``), core by core.

    As tltorch's ``linear_blocktt``.

    Args:
        x: ``(..., in_features)`` or ``(..., *in_shape)`` (the output's with ``transpose=False``).
        weight: a BlockTT (TT-matrix).
        transpose: True (tltorch's default): ``x @ W.T``. False: ``x @ W``.
        bias: optional, tfx's addition.

    Returns:
        ``(rows, out_features)``: flat, as in tltorch (unlike ``linear_cp``).

    Example:
        >>> import torch, tfx
        >>> w = tfx.TensorizedTensor.new(((2, 3), (4, 2)), rank=0.5, factorization="blocktt")
        >>> tfx.functional.linear_blocktt(torch.randn(5, 8), w).shape
        torch.Size([5, 6])
    """
    return _linear_form(x, weight, transpose, bias, BlockTT, "linear_blocktt", flat=True)
