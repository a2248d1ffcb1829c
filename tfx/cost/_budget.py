"""Budgets: what the user asks the factorized model to fit in."""

from __future__ import annotations

import dataclasses
import math

from .._errors import BudgetError

__all__ = ["Budget", "BudgetSpec", "normalise_budget"]


@dataclasses.dataclass(frozen=True)
class Budget:
    """Explicit targets: ``params`` and ``flops``, each a fraction in (0, 1] or an absolute int.

    Example:
        >>> Budget(params=0.5)
        Budget(params=0.5, flops=None)
    """

    params: float | int | None = None
    flops: float | int | None = None


BudgetSpec = float | int | Budget


def _count_hint(value: float, total: float) -> str:
    """An int count to suggest for a float above 1.

    The value itself when it is whole (``500.0`` meant 500), else half the model (``1.5`` is
    not a count of one parameter).
    """
    if value.is_integer():
        return str(int(value))
    return f"{int(total) // 2} (half of the model's {int(total)})"


def _absolute(value: float | int, total: float, what: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise BudgetError(
            f"{what}={value!r} is not a positive number.\n"
            "Fix: a fraction in (0, 1] of the model (budget=0.5) "
            "or an absolute count (budget=5_000_000)."
        )
    if isinstance(value, float):
        if value > 1:
            raise BudgetError(
                f"{what}={value} is a float above 1, but fractions of the model are in (0, 1].\n"
                f"Fix: {what}=1.0 (keep everything), a smaller fraction such as {what}=0.5, "
                f"or an int count of parameters such as {what}={_count_hint(value, total)}."
            )
        return value * total
    return float(value)


def normalise_budget(
    budget: BudgetSpec | None, total_params: int, total_flops: int | None
) -> tuple[float, float | None]:
    """``(parameter budget, FLOP budget or None)`` in absolute units.

    FLOP fractions are of the sites' FLOPs (linear, convolution and embedding layers
    at the example inputs' shapes); ``total_flops`` is None when no shapes are known.
    """
    if budget is None:
        raise BudgetError("no budget given.\nFix: tfx.factorize(model, budget=0.5) or pass plan=.")
    if isinstance(budget, Budget):
        params = (
            _absolute(budget.params, total_params, "params")
            if budget.params is not None
            else float(total_params)
        )
        flops = None
        if budget.flops is not None:
            if total_flops is None:
                raise BudgetError(
                    "a FLOP budget needs the layers' input shapes.\n"
                    "Fix: pass example_inputs= to tfx.factorize."
                )
            flops = _absolute(budget.flops, total_flops, "flops")
        return params, flops
    return _absolute(budget, total_params, "budget"), None
