"""Contractions planned once, replayed many times.

An einsum over several operands is split by opt_einsum into pairwise steps
once, when a factorized tensor is built (like einops caches its recipes).
Replaying the plan is a straight sequence of ``torch.einsum`` calls on two
operands each: no path search at call time, and every step is an ordinary
torch call that ``torch.fx`` records and ``torch.compile`` traces.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import opt_einsum
import torch

__all__ = ["ContractionPlan", "plan_einsum"]

Step = tuple[tuple[int, ...], str]


class ContractionPlan:
    """A fixed, picklable sequence of pairwise einsum steps.

    Attributes:
        equation: the full einsum equation the plan computes.
        steps: ``(positions, equation)`` pairs; each step pops the operands at
            ``positions`` (in that order) and appends the result.
        flops: opt_einsum's estimate of the floating point operations.
    """

    __slots__ = ("equation", "shapes", "steps", "flops")

    def __init__(
        self, equation: str, shapes: tuple[tuple[int, ...], ...], steps: tuple[Step, ...], flops: int
    ) -> None:
        self.equation = equation
        self.shapes = shapes
        self.steps = steps
        self.flops = flops

    def __call__(self, *operands: torch.Tensor) -> torch.Tensor:
        """Contract ``operands`` following the plan."""
        stack = list(operands)
        for positions, equation in self.steps:
            picked = [stack.pop(p) for p in positions]
            stack.append(torch.einsum(equation, *picked))
        return stack[0]

    def __getstate__(self) -> tuple[object, ...]:
        return self.equation, self.shapes, self.steps, self.flops

    def __setstate__(self, state: tuple[object, ...]) -> None:
        self.equation, self.shapes, self.steps, self.flops = state  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ContractionPlan({self.equation!r}, steps={len(self.steps)}, flops={self.flops})"


@functools.lru_cache(maxsize=4096)
def _search(
    equation: str, shapes: tuple[tuple[int, ...], ...], memory_limit: int | None
) -> tuple[tuple[Step, ...], int]:
    if len(shapes) == 1:
        return (((0,), equation),), math.prod(shapes[0])
    optimize = "optimal" if len(shapes) <= 5 else "dp" if len(shapes) <= 12 else "greedy"
    try:
        _, info = opt_einsum.contract_path(
            equation, *shapes, shapes=True, optimize=optimize, memory_limit=memory_limit
        )
    except RuntimeError:
        # dp finds no path under the memory limit: greedy always returns one
        # (falling back to a single einsum of what is left).
        _, info = opt_einsum.contract_path(
            equation, *shapes, shapes=True, optimize="greedy", memory_limit=memory_limit
        )
    steps = tuple((tuple(c[0]), c[2]) for c in info.contraction_list)
    return steps, int(info.opt_cost)


def plan_einsum(
    equation: str, *shapes: Sequence[int], memory_limit: int | str | None = "max_io"
) -> ContractionPlan:
    """Plan ``equation`` over operands of the given shapes, once.

    Args:
        equation: an explicit einsum equation (with ``->``).
        *shapes: the operands' shapes.
        memory_limit: the largest intermediate allowed, in elements.
            ``"max_io"`` (default) bounds every intermediate by the largest
            input or output, so that e.g. a CP reconstruction never builds a
            Khatri-Rao product larger than the tensor it reconstructs.

    Returns:
        A :class:`ContractionPlan`, cached per (equation, shapes).

    Example:
        >>> plan = plan_einsum("r,ar,br->ab", (4,), (8, 4), (6, 4))
        >>> plan(torch.ones(4), torch.ones(8, 4), torch.ones(6, 4)).shape
        torch.Size([8, 6])
    """
    shapes_t, steps, flops = _constant_plan(equation, shapes, memory_limit)
    return ContractionPlan(equation, shapes_t, steps, flops)


@torch._dynamo.assume_constant_result
def _constant_plan(
    equation: str, shapes: Sequence[Sequence[int]], memory_limit: int | str | None
) -> tuple[tuple[tuple[int, ...], ...], tuple[Step, ...], int]:
    # Pure in its (constant, shape-only) arguments: torch.compile runs it at trace
    # time and bakes the result into the graph instead of tracing opt_einsum.
    shapes_t = tuple(tuple(int(s) for s in shape) for shape in shapes)
    if memory_limit == "max_io":
        inputs, output = equation.split("->")
        sizes: dict[str, int] = {}
        for term, shape in zip(inputs.split(","), shapes_t):
            sizes.update(zip(term, shape))
        out_size = math.prod(sizes[c] for c in output)
        limit: int | None = max([out_size, *(math.prod(s) for s in shapes_t)])
    else:
        limit = memory_limit  # type: ignore[assignment]
    steps, flops = _search(equation, shapes_t, limit)
    return shapes_t, steps, flops
