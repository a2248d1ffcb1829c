"""Budget normalisation: fractions, counts, Budget(params=, flops=), and malformed values."""

from __future__ import annotations

import math

import pytest

from tfx import Budget, BudgetError
from tfx.cost import normalise_budget


@pytest.mark.parametrize(
    ("budget", "expected"),
    [(0.5, 500.0), (1.0, 1000.0), (0.001, 1.0), (250, 250.0), (1, 1.0), (5000, 5000.0)],
)
def test_normalise_budget_fraction_or_count(budget, expected) -> None:
    params, flops = normalise_budget(budget, 1000, None)
    assert params == pytest.approx(expected)
    assert flops is None


def test_normalise_budget_count_is_a_float() -> None:
    params, _ = normalise_budget(300, 1000, None)
    assert isinstance(params, float)


@pytest.mark.parametrize(
    ("budget", "expected"), [(Budget(params=0.25), 250.0), (Budget(params=400), 400.0)]
)
def test_normalise_budget_explicit_params(budget, expected) -> None:
    assert normalise_budget(budget, 1000, None) == (pytest.approx(expected), None)


def test_normalise_budget_flops_only_keeps_every_parameter() -> None:
    assert normalise_budget(Budget(flops=0.5), 1000, 8000) == (1000.0, 4000.0)


def test_normalise_budget_flops_count() -> None:
    assert normalise_budget(Budget(params=0.5, flops=3000), 1000, 8000) == (500.0, 3000.0)


def test_normalise_budget_flops_need_example_inputs() -> None:
    with pytest.raises(
        BudgetError, match=r"(?s)FLOP budget needs the layers' input shapes.*example_inputs="
    ):
        normalise_budget(Budget(flops=0.5), 1000, None)


@pytest.mark.parametrize("bad", [-1, 0, 0.0, -0.5, math.nan, math.inf, "0.5", True, [0.5]])
def test_normalise_budget_rejects_non_positive_or_non_numbers(bad) -> None:
    with pytest.raises(BudgetError, match=r"is not a positive number"):
        normalise_budget(bad, 1000, None)


@pytest.mark.parametrize("bad", [1.5, 2.0, 1.0000001])
def test_normalise_budget_rejects_float_above_one(bad) -> None:
    with pytest.raises(
        BudgetError, match=r"is a float above 1, but fractions of the model are in \(0, 1\]"
    ):
        normalise_budget(bad, 1000, None)


def test_normalise_budget_float_above_one_suggests_fraction_and_count() -> None:
    with pytest.raises(
        BudgetError,
        match=r"(?s)budget=500\.0 is a float.*Fix: budget=1\.0 "
        r".*count of parameters such as budget=500\.",
    ):
        normalise_budget(500.0, 1000, None)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (Budget(params=-3), r"params=-3 is not a positive number"),
        (Budget(params=1.5), r"params=1\.5 is a float above 1"),
        (Budget(flops=0.0), r"flops=0\.0 is not a positive number"),
    ],
)
def test_normalise_budget_rejects_bad_fields(bad, match) -> None:
    with pytest.raises(BudgetError, match=match):
        normalise_budget(bad, 1000, 100)


def test_normalise_budget_none_asks_for_a_budget_or_plan() -> None:
    with pytest.raises(BudgetError, match=r"(?s)no budget given.*plan="):
        normalise_budget(None, 1000, None)


def test_budget_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        normalise_budget(-1, 1000, None)


def test_budget_repr() -> None:
    assert repr(Budget(params=0.5)) == "Budget(params=0.5, flops=None)"
