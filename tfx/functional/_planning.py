"""Plans for contracting an input with a factorized weight, cached per batch bucket.

A layer's contraction is one einsum over the input and the weight's factors.
Its best pairwise order depends on the batch size, so plans are made per
bucket of batch sizes (powers of 4) and cached; a forward only looks its plan
up. Under ``torch.fx`` tracing or ``torch.compile`` the batch size is not
known (or should not be specialised on), so the plan of a default bucket is
used and baked into the graph.
"""

from __future__ import annotations

import math
import string
from typing import Any

import torch

from ..tensors import FactorizedTensor, TensorizedTensor
from ..tensors._contract import ContractionPlan, plan_einsum

__all__ = ["DEFAULT_BATCH", "batch_bucket", "input_plan", "is_tracing", "planned_batch", "traced_batch", "weight_shapes"]

#: Batch size planned for when it cannot be read (fx tracing, torch.compile).
DEFAULT_BATCH = 128
_TRACE_BATCH: list[int] = []


class planned_batch:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Plan traced contractions for ``batch`` rows instead of :data:`DEFAULT_BATCH`.

    The compiler traces each site's layer inside this context with the batch
    size the site sees in the example inputs, so the contraction order baked
    into the graph is the one that is best for it.
    """

    def __init__(self, batch: int) -> None:
        self.batch = batch_bucket(max(1, int(batch)))

    def __enter__(self) -> None:
        _TRACE_BATCH.append(self.batch)

    def __exit__(self, *exc: object) -> None:
        _TRACE_BATCH.pop()


def traced_batch() -> int:
    """The batch size to plan for while tracing."""
    return _TRACE_BATCH[-1] if _TRACE_BATCH else DEFAULT_BATCH


def is_tracing(x: Any) -> bool:
    """Whether shapes must not be read: an fx Proxy, or inside torch.compile."""
    return isinstance(x, torch.fx.Proxy) or torch.compiler.is_compiling()


def batch_bucket(n: int) -> int:
    """Round a batch size up to a power of 4 (1, 4, 16, 64, ...)."""
    bucket = 1
    while bucket < n:
        bucket *= 4
    return bucket


def weight_shapes(weight: FactorizedTensor) -> tuple[str, tuple[tuple[int, ...], ...]]:
    """The weight's reconstruction equation and operand shapes, from static metadata."""
    plan: ContractionPlan = weight._plan
    return plan.equation, plan.shapes


def _free_letter(used: str) -> str:
    for letter in string.ascii_letters:
        if letter not in used:
            return letter
    raise RuntimeError("no free einsum letter left")  # pragma: no cover - > 52 modes


def input_plan(
    weight: FactorizedTensor, in_modes: tuple[int, ...], batch: int
) -> tuple[ContractionPlan, tuple[int, ...], tuple[int, ...]]:
    """Plan ``y[b, rest] = sum_in x[b, in] * W[...]`` over the weight's factors.

    Args:
        weight: a factorized tensor whose reconstruction has modes ``tensor_shape``
            (``shape`` for plain tensors).
        in_modes: positions of the modes contracted with the input, in the
            input's order.
        batch: the batch size to plan for.

    Returns:
        ``(plan, input sizes, output sizes)``; the plan takes ``(x, *operands)``
        with ``x`` of shape ``(batch, *input sizes)`` and returns
        ``(batch, *output sizes)``.
    """
    equation, shapes = weight_shapes(weight)
    sizes = weight.tensor_shape if isinstance(weight, TensorizedTensor) else weight.shape
    full, in_sizes, out_sizes = _input_equation(equation, tuple(sizes), tuple(in_modes))
    # No intermediate-size limit: activations may be larger than any input, and the
    # cheapest order (possibly rebuilding the weight first) is what the FLOP count says.
    return plan_einsum(full, (batch, *in_sizes), *shapes, memory_limit=None), in_sizes, out_sizes


@torch._dynamo.assume_constant_result
def _input_equation(
    equation: str, sizes: tuple[int, ...], in_modes: tuple[int, ...]
) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    lhs, out = equation.split("->")
    b = _free_letter(equation)
    x_letters = "".join(out[m] for m in in_modes)
    rest = "".join(c for i, c in enumerate(out) if i not in in_modes)
    in_sizes = tuple(sizes[m] for m in in_modes)
    out_sizes = tuple(s for i, s in enumerate(sizes) if i not in in_modes)
    return f"{b}{x_letters},{lhs}->{b}{rest}", in_sizes, out_sizes


def contract_input(
    x: torch.Tensor,
    weight: FactorizedTensor,
    in_modes: tuple[int, ...],
    n_in_dims: int,
    out_shape: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Contract the last ``n_in_dims`` dims of ``x`` with the weight modes ``in_modes``.

    Leading dims of ``x`` are batch dims and are kept; the result's trailing
    dims are the weight's remaining modes (or ``out_shape``, their merged sizes).
    """
    sizes = weight.tensor_shape if isinstance(weight, TensorizedTensor) else weight.shape
    in_features = math.prod([sizes[m] for m in in_modes])
    if is_tracing(x):
        batch = traced_batch()
    else:
        batch = batch_bucket(x.numel() // max(in_features, 1))
    if is_tracing(x):
        plan, in_sizes, out_sizes = input_plan(weight, in_modes, batch)
    else:  # eager: a per-weight cache skips even the (cached) planning calls
        cache = weight.__dict__.setdefault("_input_plans", {})
        key = (weight._plan, in_modes, batch)
        entry = cache.get(key)
        if entry is None:
            entry = cache[key] = input_plan(weight, in_modes, batch)
        plan, in_sizes, out_sizes = entry
    lead = x.shape[:-n_in_dims]
    y = plan(x.reshape((-1,) + in_sizes), *weight.contraction()[1])
    return y.reshape(lead + (out_sizes if out_shape is None else out_shape))
