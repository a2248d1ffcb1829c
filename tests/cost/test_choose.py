"""Allocation strategies: within budget, BudgetError exactly below the minimum, dp vs brute."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tfx
from tfx import BudgetError, OptionError
from tfx.cost import Option, _choose, available_strategies, choose, register_strategy
from tfx.cost._choose import choose_two

STRATEGIES = available_strategies()


def opt(params: int, error: float) -> Option:
    return Option("svd", None, None, params, 0, error)


def total(options, picks) -> int:
    return sum(opts[i].params for opts, i in zip(options, picks, strict=True))


def penalty(options, picks, weights=None) -> float:
    weights = weights or [1.0] * len(options)
    # The strategies' objective: -log of the product of per-site fidelities (1 - error^2).
    return sum(
        w * -math.log(max(1.0 - opts[i].error ** 2, 1e-6))
        for opts, i, w in zip(options, picks, weights, strict=True)
    )


def floor(options) -> int:
    return sum(min(o.params for o in opts) for opts in options)


def brute_force(options, budget) -> float:
    """The least total squared error within ``budget``, by enumeration."""
    best = float("inf")
    for picks in itertools.product(*(range(len(opts)) for opts in options)):
        if total(options, picks) <= budget:
            best = min(best, penalty(options, picks))
    return best


_options = st.lists(
    st.lists(st.builds(opt, st.integers(0, 60), st.floats(0.0, 1.0)), min_size=1, max_size=4),
    min_size=1,
    max_size=4,
)


_SLACK = st.integers(0, 200)


@st.composite
def instances(draw: st.DrawFn, slack: st.SearchStrategy[int] = _SLACK):
    options = draw(_options)
    return options, floor(options) + draw(slack)


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the strategy registry, restored after the test."""
    monkeypatch.setattr(_choose, "_STRATEGIES", dict(_choose._STRATEGIES))


# ------------------------------------------------------------------ budget
def test_available_strategies_lists_the_four_builtins() -> None:
    assert {"auto", "greedy", "dp", "uniform"} <= set(STRATEGIES)


@pytest.mark.parametrize("strategy", STRATEGIES)
@given(instance=instances())
def test_choose_total_within_budget(strategy, instance) -> None:
    options, budget = instance
    picks = choose(options, budget, strategy=strategy)
    assert len(picks) == len(options)
    assert all(0 <= i < len(opts) for opts, i in zip(options, picks, strict=True))
    assert total(options, picks) <= budget


@pytest.mark.parametrize("strategy", STRATEGIES)
@given(options=_options, offset=st.integers(-30, 30))
def test_choose_raises_exactly_when_minimum_exceeds_budget(strategy, options, offset) -> None:
    budget = floor(options) + offset
    if offset < 0:
        with pytest.raises(BudgetError, match="need at least"):
            choose(options, budget, strategy=strategy)
    else:
        assert total(options, choose(options, budget, strategy=strategy)) <= budget


_BOUNDARY = [
    [opt(100, 0.5), opt(40, 0.9), opt(300, 0.0)],
    [opt(7, 0.2), opt(3, 0.6)],
    [opt(50, 0.0)],
]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_choose_accepts_budget_at_exact_minimum(strategy) -> None:
    picks = choose(_BOUNDARY, 40 + 3 + 50, strategy=strategy)
    assert picks == [1, 1, 0]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_choose_raises_one_below_minimum(strategy) -> None:
    with pytest.raises(BudgetError, match=r"at least 93 parameters, above their budget of 92"):
        choose(_BOUNDARY, 40 + 3 + 50 - 1, strategy=strategy)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_choose_takes_every_best_option_when_budget_allows(strategy) -> None:
    options = [[opt(10, 0.5), opt(20, 0.0)], [opt(5, 0.3), opt(9, 0.0)]]
    assert choose(options, 29, strategy=strategy) == [1, 1]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_choose_breaks_equal_cost_ties_by_error(strategy) -> None:
    assert choose([[opt(5, 0.9), opt(5, 0.1)]], 5, strategy=strategy) == [1]


# ------------------------------------------------------------------- dp
@given(instance=instances(slack=st.just(2000)), scale=st.integers(1, 3))
def test_choose_dp_matches_brute_force_on_its_cost_grid(instance, scale) -> None:
    """With budget - minimum equal to dp's 2000 bins (times an integer), quantisation is exact."""
    options, _ = instance
    options = [[opt(o.params * scale, o.error) for o in opts] for opts in options]
    budget = floor(options) + 2000 * scale
    picks = choose(options, budget, strategy="dp")
    assert total(options, picks) <= budget
    assert penalty(options, picks) == pytest.approx(brute_force(options, budget), abs=1e-12)


@given(instance=instances(slack=st.just(2000)))
def test_choose_dp_at_least_as_good_as_greedy_on_its_cost_grid(instance) -> None:
    options, budget = instance
    dp = penalty(options, choose(options, budget, strategy="dp"))
    greedy = penalty(options, choose(options, budget, strategy="greedy"))
    assert dp <= greedy + 1e-12


def test_choose_dp_at_least_as_good_as_greedy_off_its_cost_grid() -> None:
    options = [[opt(0, 1.0), opt(1, 0.0)], [opt(0, 1.0), opt(2, 0.0)]]
    dp = penalty(options, choose(options, 3, strategy="dp"))
    greedy = penalty(options, choose(options, 3, strategy="greedy"))
    assert greedy == brute_force(options, 3) == 0.0
    assert dp <= greedy


@pytest.mark.parametrize("strategy", ["auto", "greedy"])
@given(instance=instances())
def test_choose_is_no_better_than_brute_force(strategy, instance) -> None:
    options, budget = instance
    assert (
        penalty(options, choose(options, budget, strategy=strategy))
        >= brute_force(options, budget) - 1e-12
    )


def test_choose_auto_prefers_the_heavier_weighted_site() -> None:
    options = [[opt(0, 1.0), opt(10, 0.0)], [opt(0, 1.0), opt(10, 0.0)]]
    assert choose(options, 10, strategy="auto", weights=[1.0, 5.0]) == [0, 1]
    assert choose(options, 10, strategy="auto", weights=[5.0, 1.0]) == [1, 0]


def test_choose_leaves_a_site_dense_when_that_is_best() -> None:
    dense, low = opt(100, 0.0), opt(20, 0.8)
    options = [[low, dense], [opt(5, 0.1), opt(50, 0.0)]]
    assert choose(options, 105, strategy="auto") == [1, 0]


# -------------------------------------------------------------- registry
def test_choose_unknown_strategy_suggests_close_name() -> None:
    with pytest.raises(
        OptionError, match=r"strategy='gredy' is not registered\. Did you mean 'greedy'\?"
    ):
        choose([[opt(1, 0.0)]], 10, strategy="gredy")


def test_choose_unknown_strategy_lists_available_and_how_to_register() -> None:
    with pytest.raises(
        OptionError,
        match=r"Available: 'auto', 'dp', 'greedy', 'sensitivity', 'uniform'.*register_strategy",
    ):
        choose([[opt(1, 0.0)]], 10, strategy="nonesuch")


def test_register_strategy_makes_name_available(registry) -> None:
    def cheapest(options, budget, weights):
        return [min(range(len(o)), key=lambda i: o[i].params) for o in options]

    register_strategy("cheapest", cheapest)
    assert "cheapest" in available_strategies()
    assert choose([[opt(5, 0.0), opt(2, 0.5)]], 10, strategy="cheapest") == [1]


def test_register_strategy_refuses_a_taken_name_unless_replacing(registry) -> None:
    with pytest.raises(tfx.OptionError, match="strategy 'auto' is already registered"):
        register_strategy("auto", lambda options, budget, weights: [0] * len(options))
    register_strategy("auto", lambda options, budget, weights: [0] * len(options), replace=True)
    assert choose([[opt(5, 0.0), opt(2, 0.5)]], 10, strategy="auto") == [0]


def test_register_strategy_receives_options_budget_and_weights(registry) -> None:
    seen = {}

    def spy(options, budget, weights):
        seen.update(options=options, budget=budget, weights=list(weights))
        return [0] * len(options)

    register_strategy("spy", spy)
    options = [[opt(1, 0.0)], [opt(2, 0.0)]]
    choose(options, 10, strategy="spy", weights=[2.0, 3.0])
    assert seen == {"options": options, "budget": 10, "weights": [2.0, 3.0]}


def test_choose_raises_when_strategy_overspends(registry) -> None:
    register_strategy("overspend", lambda options, budget, weights: [len(o) - 1 for o in options])
    options = [[opt(1, 0.5), opt(50, 0.0)]]
    with pytest.raises(
        BudgetError, match=r"strategy 'overspend' chose 50 parameters, above the budget 10"
    ):
        choose(options, 10, strategy="overspend")


def test_register_strategy_is_usable_from_factorize(registry) -> None:
    import torch

    register_strategy("cheapest", lambda options, budget, weights: [0] * len(options))
    model = torch.nn.Sequential(torch.nn.Linear(32, 32))
    plan = tfx.plan(model, 1.0, strategy="cheapest", progress=False)
    assert plan.strategy == "cheapest"
    assert plan.choices[0].form != "dense"
    assert plan.choices[0].params_after < 32 * 32


# ------------------------------------------------------- two budgets
def opt2(params: int, flops: int, error: float) -> Option:
    return Option("svd", None, None, params, flops, error)


_options2 = st.lists(
    st.lists(
        st.builds(opt2, st.integers(0, 60), st.integers(0, 60), st.floats(0.0, 1.0)),
        min_size=1,
        max_size=4,
    ),
    min_size=1,
    max_size=4,
)


@given(options=_options2, params_slack=st.integers(0, 100), flops_slack=st.integers(0, 100))
def test_choose_two_within_both_budgets(options, params_slack, flops_slack) -> None:
    # Budgets above the largest option everywhere minus the slack-free start: always feasible.
    params_budget = sum(max(o.params for o in opts) for opts in options) + params_slack
    flops_budget = sum(max(o.flops for o in opts) for opts in options) + flops_slack
    picks = choose_two(options, params_budget, flops_budget)
    assert sum(o[i].params for o, i in zip(options, picks, strict=True)) <= params_budget
    assert sum(o[i].flops for o, i in zip(options, picks, strict=True)) <= flops_budget


@given(options=_options2, params_budget=st.integers(1, 150), flops_budget=st.integers(1, 150))
def test_choose_two_never_exceeds_either_budget(options, params_budget, flops_budget) -> None:
    try:
        picks = choose_two(options, params_budget, flops_budget)
    except BudgetError:
        return
    assert sum(o[i].params for o, i in zip(options, picks, strict=True)) <= params_budget
    assert sum(o[i].flops for o, i in zip(options, picks, strict=True)) <= flops_budget


def test_choose_two_takes_best_options_when_both_budgets_allow() -> None:
    options = [[opt2(10, 50, 0.5), opt2(20, 100, 0.0)], [opt2(5, 5, 0.3), opt2(9, 9, 0.0)]]
    assert choose_two(options, 29, 109) == [1, 1]


def test_choose_two_flop_budget_binds() -> None:
    options = [[opt2(10, 50, 0.5), opt2(20, 100, 0.0)], [opt2(5, 5, 0.3), opt2(9, 9, 0.0)]]
    assert choose_two(options, 29, 60) == [0, 1]


def test_choose_two_raises_when_no_start_fits() -> None:
    with pytest.raises(BudgetError, match=r"(?s)at least 10 parameters and 50 FLOPs.*Fix: loosen"):
        choose_two([[opt2(10, 50, 0.5)]], 29, 49)
