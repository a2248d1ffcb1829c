"""Tensor regression (TRL), tensor contraction (TCL) and factorized tensordot.

``trl``, ``tucker_trl``, ``tensor_dot_tucker`` and ``tensor_dot_cp`` keep
tltorch 0.5's signatures; they contract through the factors like the rest of
``tfx.functional``.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any, Final

import torch

from .._errors import OptionError, ShapeError, TraceError
from ..tensors import CPTensor, FactorizedTensor, TensorizedTensor, TuckerTensor
from ..tensors._contract import plan_einsum
from ._planning import batch_bucket, contract_input, is_tracing, traced_batch, weight_shapes

__all__ = [
    "tensor_regression",
    "trl",
    "tucker_trl",
    "tcl",
    "factorized_tensordot",
    "tensor_dot_tucker",
    "tensor_dot_cp",
]

#: tensorly's contraction modes: ``n`` (the last ``n`` dims of x with the weight's first ``n``),
#: ``(modes of x, modes of the weight)``, or one list used for both.
Modes = int | Sequence[Any]

_MSG_MODES: Final = (
    "{name}: modes={modes!r} {why}.\nFix: modes=n (x's last n dims with the weight's first n), "
    "or modes=(x_modes, weight_modes) with one weight mode of the same size per x mode."
)
_MSG_TRACE: Final = (
    "{name}: modes={modes!r} needs x's number of dims, "
    "which torch.fx does not know while tracing.\n"
    "Fix: move the contracted dims of x last "
    "(x.movedim(...)) and pass modes=n, or use torch.compile."
)


def _weight_sizes(weight: FactorizedTensor) -> tuple[int, ...]:
    return tuple(weight.tensor_shape if isinstance(weight, TensorizedTensor) else weight.shape)


def factorized_tensordot(
    x: torch.Tensor, weight: FactorizedTensor, modes: int | Sequence[int]
) -> torch.Tensor:
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
    shape = _weight_sizes(weight)
    expected = tuple(shape[m] for m in in_modes)
    if not is_tracing(x) and tuple(x.shape[x.dim() - len(in_modes) :]) != expected:
        raise ShapeError(
            f"factorized_tensordot: the last dims of x {tuple(x.shape)} must be {expected} "
            f"(weight modes {in_modes} of shape {tuple(shape)})."
        )
    return contract_input(x, weight, in_modes, len(in_modes))


def _mode_list(value: Any) -> list[int]:
    return [value] if isinstance(value, int) else [int(m) for m in value]


def _contraction_modes(
    modes: Modes, x_shape: tuple[int, ...], sizes: tuple[int, ...], name: str
) -> tuple[list[int], list[int]]:
    """Read ``modes`` as tensorly does; normalised to non-negative dims and checked."""
    if isinstance(modes, int):
        pair: tuple[Any, Any] = (
            list(range(len(x_shape) - modes, len(x_shape))),
            list(range(modes)),
        )
    else:
        try:
            first, second = modes  # a pair: (modes of x, modes of the weight)
            pair = (first, second)
        except (TypeError, ValueError):
            pair = (modes, modes)  # one list of modes, the same for both
    try:
        mx, mw = _mode_list(pair[0]), _mode_list(pair[1])
    except (TypeError, ValueError):
        raise ShapeError(
            _MSG_MODES.format(name=name, modes=modes, why="is not an int or lists of ints")
        ) from None
    why = ""
    if len(mx) != len(mw):
        why = f"pairs {len(mx)} dims of x with {len(mw)} weight modes"
    elif any(not -len(x_shape) <= m < len(x_shape) for m in mx) or any(
        not -len(sizes) <= m < len(sizes) for m in mw
    ):
        why = f"names a dim outside x {x_shape} or the weight {sizes}"
    else:
        mx, mw = [m % len(x_shape) for m in mx], [m % len(sizes) for m in mw]
        bad = [(a, b) for a, b in zip(mx, mw, strict=False) if x_shape[a] != sizes[b]]
        if len(set(mx)) != len(mx) or len(set(mw)) != len(mw):
            why = "repeats a mode"
        elif bad:
            a, b = bad[0]
            why = f"pairs dim {a} of x (size {x_shape[a]}) with weight mode {b} (size {sizes[b]})"
    if why:
        raise ShapeError(_MSG_MODES.format(name=name, modes=modes, why=why))
    return mx, mw


def _tensor_dot(
    x: torch.Tensor, weight: FactorizedTensor, modes: Modes, batched: Modes, name: str
) -> torch.Tensor:
    """Contract to x's free dims, then the weight's modes but the contracted ones.

    Batched modes are kept, in order.
    """
    no_batch = isinstance(batched, tuple | list) and not batched
    if isinstance(x, torch.fx.Proxy):
        if isinstance(modes, int) and modes > 0 and no_batch:
            return factorized_tensordot(x, weight, modes)
        raise TraceError(_MSG_TRACE.format(name=name, modes=modes))
    sizes, x_shape = _weight_sizes(weight), tuple(x.shape)
    mx, mw = _contraction_modes(modes, x_shape, sizes, name)
    bx, bw = ([], []) if no_batch else _contraction_modes(batched, x_shape, sizes, name)
    if set(mx) & set(bx) or set(mw) & set(bw):
        raise ShapeError(
            _MSG_MODES.format(name=name, modes=modes, why=f"overlaps batched_modes={batched!r}")
        )
    if mx and not bx:
        free = [d for d in range(len(x_shape)) if d not in mx]
        return contract_input(x.permute(*free, *mx), weight, tuple(mw), len(mx))
    equation, shapes = weight_shapes(weight)
    lhs, out = equation.split("->")
    fresh = iter(c for c in string.ascii_letters if c not in equation)
    shared = {**dict(zip(mx, mw, strict=False)), **dict(zip(bx, bw, strict=False))}
    x_terms = "".join(out[shared[d]] if d in shared else next(fresh) for d in range(len(x_shape)))
    kept = "".join(x_terms[d] for d in range(len(x_shape)) if d not in shared)
    rest = "".join(c for m, c in enumerate(out) if m not in mw)
    plan = plan_einsum(f"{x_terms},{lhs}->{kept}{rest}", x_shape, *shapes, memory_limit=None)
    return plan(x, *weight.contraction()[1])  # type: ignore[attr-defined]


def tensor_dot_tucker(
    tensor: torch.Tensor, tucker: TuckerTensor, modes: Modes, batched_modes: Modes = ()
) -> torch.Tensor:
    """Contract ``tensor`` with a Tucker tensor on ``modes``, through its factors.

    As tltorch's ``tensor_dot_tucker``.

    Args:
        tensor: a dense tensor.
        tucker: a Tucker tensor (a tensorized one contracts on its ``tensor_shape`` modes).
        modes: as tensorly's tensordot: ``n`` (``tensor``'s last ``n`` dims with
            the weight's first ``n``), ``(tensor_modes, tucker_modes)``, or one list for both.
        batched_modes: dims shared by both and kept (an elementwise batch), read like ``modes``.

    Returns:
        ``tensor``'s free dims, then the Tucker modes not contracted (batched ones included).

    Example:
        >>> import torch, tfx
        >>> w = tfx.FactorizedTensor.new((3, 4, 5), rank=0.5, factorization="tucker")
        >>> tfx.functional.tensor_dot_tucker(torch.randn(2, 3, 4), w, 2).shape
        torch.Size([2, 5])
        >>> x = torch.randn(5, 2, 3)
        >>> tfx.functional.tensor_dot_tucker(x, w, ([2], [0]), batched_modes=([0], [2])).shape
        torch.Size([2, 4, 5])
    """
    if not isinstance(tucker, TuckerTensor):
        raise OptionError(
            "tensor_dot_tucker needs a TuckerTensor, got "
            f"{type(tucker).__name__}; use factorized_tensordot."
        )
    return _tensor_dot(tensor, tucker, modes, batched_modes, "tensor_dot_tucker")


def tensor_dot_cp(tensor: torch.Tensor, cp: CPTensor, modes: Modes) -> torch.Tensor:
    """Contract ``tensor`` with a CP tensor on ``modes``, through its factors.

    As tltorch's ``tensor_dot_cp``.

    Args:
        tensor: a dense tensor.
        cp: a CP tensor (a tensorized one contracts on its ``tensor_shape`` modes).
        modes: as in :func:`tensor_dot_tucker`. Each dim of ``tensor`` meets the
            CP mode in the same position (tltorch pairs them in CP-mode order
            instead, which differs for unsorted CP modes).

    Returns:
        ``tensor``'s free dims, then the CP modes not contracted.

    Example:
        >>> import torch, tfx
        >>> w = tfx.FactorizedTensor.new((3, 4, 5), rank=4, factorization="cp")
        >>> tfx.functional.tensor_dot_cp(torch.randn(5, 2, 3), w, ([0, 2], [2, 0])).shape
        torch.Size([2, 4])
    """
    if not isinstance(cp, CPTensor):
        raise OptionError(
            f"tensor_dot_cp needs a CPTensor, got {type(cp).__name__}; use factorized_tensordot."
        )
    return _tensor_dot(tensor, cp, modes, (), "tensor_dot_cp")


def tensor_regression(
    x: torch.Tensor, weight: FactorizedTensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Tensor regression: ``y[b, o...] = sum_i x[b, i...] W[i..., o...] + bias``.

    ``x`` is ``(batch, *input_shape)``; ``W`` has shape ``(*input_shape, *output_shape)``.

    Example:
        >>> import torch, tfx
        >>> w = tfx.FactorizedTensor.new((3, 4, 5), rank=4, factorization="cp")
        >>> tensor_regression(torch.randn(2, 3, 4), w).shape
        torch.Size([2, 5])
    """
    y = factorized_tensordot(x, weight, x.dim() - 1)
    return y if bias is None else y + bias


def tucker_trl(
    x: torch.Tensor,
    weight: FactorizedTensor,
    project_input: bool = False,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Tensor regression (:func:`tensor_regression`) with the arguments of tltorch's ``tucker_trl``.

    ``project_input`` is accepted and has no effect on the result: tltorch uses
    it to project the input onto the factors first; tfx always contracts
    through the factors, in the cheapest planned order.

    Example:
        >>> import torch, tfx
        >>> w = tfx.FactorizedTensor.new((3, 4, 5), rank=0.5, factorization="tucker")
        >>> tucker_trl(torch.randn(2, 3, 4), w, project_input=True).shape
        torch.Size([2, 5])
    """
    del project_input  # same value either way; the plan picks the order
    return tensor_regression(x, weight, bias)


def trl(
    x: torch.Tensor, weight: FactorizedTensor, bias: torch.Tensor | None = None, **kwargs: Any
) -> torch.Tensor:
    """Tensor regression (:func:`tensor_regression`) with the arguments of tltorch's ``trl``.

    ``project_input=`` is accepted (tltorch passes it on for Tucker weights) and has no effect.

    Example:
        >>> import torch, tfx
        >>> w = tfx.FactorizedTensor.new((3, 4, 5), rank=4, factorization="cp")
        >>> trl(torch.randn(2, 3, 4), w).shape
        torch.Size([2, 5])
    """
    unknown = sorted(set(kwargs) - {"project_input"})
    if unknown:
        raise OptionError(
            f"trl got unexpected keyword arguments {unknown}.\n"
            "Fix: trl(x, weight, bias=None, project_input=False)."
        )
    return tensor_regression(x, weight, bias)


def tcl(
    x: torch.Tensor, factors: Sequence[torch.Tensor], bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Tensor contraction of ``x`` with one factor per mode.

    ``x`` (batch, *in) times one (rank_k, in_k) factor per mode -> (batch, *rank).

    Example:
        >>> import torch
        >>> tcl(torch.randn(2, 3, 4), [torch.randn(5, 3), torch.randn(6, 4)]).shape
        torch.Size([2, 5, 6])
    """
    n = len(factors)
    modes, ranks = "ABCDEFGHIJKL"[:n], "abcdefghijkl"[:n]
    equation = (
        "z"
        + modes
        + ","
        + ",".join(f"{r}{m}" for r, m in zip(ranks, modes, strict=False))
        + "->z"
        + ranks
    )
    if any(isinstance(f, torch.fx.Proxy) for f in factors):
        # Shapes unknown while tracing the functional form; layers pass planned contractions
        # instead.
        y = torch.einsum(equation, x, *factors)
    else:
        shapes = [tuple(f.shape) for f in factors]
        batch = traced_batch() if is_tracing(x) else batch_bucket(x.shape[0])
        y = plan_einsum(equation, (batch, *(s[1] for s in shapes)), *shapes)(x, *factors)
    return y if bias is None else y + bias
