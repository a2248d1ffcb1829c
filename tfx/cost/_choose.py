"""Pick one Option per site so the total fits a budget, at the least total error.

The objective is ``sum_i w_i * -log(1 - error_i**2)``: minus the log of the product of the
sites' fidelities. Errors compound through a network, so one site at error 0.95 costs far
more than a sum of squared errors says (on all-MiniLM-L6-v2 at budget 0.5 this objective
keeps a mean embedding cosine of 0.36 where the sum of squared errors kept 0.23).

Stage: candidates -> build_graph -> **choose** -> rewrite. Pure: shapes and
numbers only. Strategies are registered by name with one signature,
``fn(options, budget, weights) -> list[int]`` (an option index per site):

* ``"auto"`` (default): Lagrangian relaxation. For a multiplier ``lam`` each
  site independently minimises ``penalty + lam * cost``; bisection on
  ``lam`` finds the cheapest selection within the budget, then a greedy fill
  spends what is left on the upgrades with the best error reduction per unit.
* ``"greedy"``: start from the cheapest option everywhere; repeatedly take the
  upgrade with the best error reduction per unit of cost that still fits.
* ``"dp"``: exact multiple-choice knapsack over costs quantised to 2000 bins.
* ``"uniform"``: the same fraction of each site's dense cost (the naive baseline).
* ``"sensitivity"``: ``"auto"`` with each site's error weighted by its measured effect on
  the model's output (``tfx.factorize(..., calibration=..., strategy="sensitivity")``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from .._errors import BudgetError, OptionError, unknown_option
from ._records import Option

__all__ = [
    "choose",
    "choose_two",
    "register_strategy",
    "available_strategies",
    "penalty",
    "Strategy",
]

Strategy = Callable[[Sequence[Sequence[Option]], float, Sequence[float]], list[int]]


def _cost(option: Option) -> float:
    return float(option.params)


def _total(options: Sequence[Sequence[Option]], picks: Sequence[int]) -> float:
    return sum(_cost(opts[i]) for opts, i in zip(options, picks, strict=False))


def penalty(option: Option, weight: float) -> float:
    """What the strategies minimise for a pick: ``-weight * log(1 - error**2)``.

    The weighted loss of output energy; additive over sites, so a plan's penalty is the sum.
    """
    return weight * -math.log(max(1.0 - option.error**2, 1e-6))


def _best_for(
    lam: float, options: Sequence[Sequence[Option]], weights: Sequence[float]
) -> list[int]:
    return [
        min(
            range(len(opts)),
            key=lambda i: (penalty(opts[i], w) + lam * _cost(opts[i]), _cost(opts[i])),
        )
        for opts, w in zip(options, weights, strict=False)
    ]


def _fill(
    options: Sequence[Sequence[Option]], picks: list[int], budget: float, weights: Sequence[float]
) -> list[int]:
    """Greedy upgrades by error reduction per unit of extra cost, while the budget allows."""
    spent = _total(options, picks)
    while True:
        best, best_gain = None, 0.0
        for s, (opts, w) in enumerate(zip(options, weights, strict=False)):
            here = opts[picks[s]]
            for i, opt in enumerate(opts):
                extra = _cost(opt) - _cost(here)
                drop = penalty(here, w) - penalty(opt, w)
                if extra < 0 or drop <= 0 or spent + extra > budget:
                    continue
                gain = drop / extra if extra > 0 else float("inf")  # equal cost, less error: free
                if gain > best_gain:
                    best, best_gain = (s, i, extra), gain
        if best is None:
            return picks
        s, i, extra = best
        picks[s] = i
        spent += extra


def _auto(
    options: Sequence[Sequence[Option]], budget: float, weights: Sequence[float]
) -> list[int]:
    top = max(
        (w * max(o.error for o in opts) ** 2 for opts, w in zip(options, weights, strict=False)),
        default=0.0,
    )
    lo, hi = 0.0, max(top, 1e-12) * 1e3 + 1.0
    if _total(options, _best_for(lo, options, weights)) <= budget:
        return _best_for(lo, options, weights)
    for _ in range(60):  # find a feasible multiplier
        if _total(options, _best_for(hi, options, weights)) <= budget:
            break
        hi *= 10
    for _ in range(80):
        mid = (lo + hi) / 2
        if _total(options, _best_for(mid, options, weights)) <= budget:
            hi = mid
        else:
            lo = mid
    return _fill(options, _best_for(hi, options, weights), budget, weights)


def _greedy(
    options: Sequence[Sequence[Option]], budget: float, weights: Sequence[float]
) -> list[int]:
    picks = [
        min(range(len(opts)), key=lambda i: (_cost(opts[i]), opts[i].error)) for opts in options
    ]
    return _fill(options, picks, budget, weights)


def _dp(
    options: Sequence[Sequence[Option]], budget: float, weights: Sequence[float], bins: int = 2000
) -> list[int]:
    floor = sum(min(_cost(o) for o in opts) for opts in options)
    unit = max((budget - floor) / bins, 1e-9)
    inf = math.inf
    # best[b] = least penalty using exactly b extra units above each site's cheapest
    best = [0.0] + [inf] * bins
    back: list[list[int]] = []
    for opts, w in zip(options, weights, strict=False):
        cheapest = min(_cost(o) for o in opts)
        new = [inf] * (bins + 1)
        arg = [-1] * (bins + 1)
        for b, value in enumerate(best):
            if value == inf:
                continue
            for i, opt in enumerate(opts):
                nb = b + math.ceil((_cost(opt) - cheapest) / unit - 1e-9)
                if nb <= bins and value + penalty(opt, w) < new[nb]:
                    new[nb], arg[nb] = value + penalty(opt, w), i
        back.append(arg)
        best = new
    b = min(range(bins + 1), key=lambda j: best[j])
    picks: list[int] = []
    for s in range(len(options) - 1, -1, -1):
        i = back[s][b]
        picks.append(i)
        cheapest = min(_cost(o) for o in options[s])
        b -= math.ceil((_cost(options[s][i]) - cheapest) / unit - 1e-9)
    picks = _fill(options, picks[::-1], budget, weights)
    # Rounding costs up to the grid can miss combinations that fit exactly: never return
    # less than the greedy answer.
    greedy = _greedy(options, budget, weights)

    def score(p: Sequence[int]) -> float:
        return sum(penalty(opts[i], w) for opts, i, w in zip(options, p, weights, strict=False))

    return picks if score(picks) <= score(greedy) else greedy


def _uniform(
    options: Sequence[Sequence[Option]], budget: float, weights: Sequence[float]
) -> list[int]:
    dense = sum(max(_cost(o) for o in opts) for opts in options)
    full = [_closest(opts, 1.0) for opts in options]
    if _total(options, full) <= budget:
        return full
    lo, hi = 0.0, 1.0
    for _ in range(50):  # the largest common fraction that fits
        mid = (lo + hi) / 2
        picks = [_closest(opts, mid) for opts in options]
        if _total(options, picks) <= budget:
            lo = mid
        else:
            hi = mid
    picks = [_closest(opts, lo) for opts in options]
    return (
        picks
        if _total(options, picks) <= budget or dense <= budget
        else _greedy(options, budget, weights)
    )


def _closest(opts: Sequence[Option], fraction: float) -> int:
    dense = max(_cost(o) for o in opts)
    fitting = [i for i, o in enumerate(opts) if _cost(o) <= fraction * dense]
    if not fitting:
        return min(range(len(opts)), key=lambda i: (_cost(opts[i]), opts[i].error))
    return min(fitting, key=lambda i: (opts[i].error, _cost(opts[i])))


# "sensitivity" allocates as "auto" does; what differs is its weights: tfx.factorize measures
# each site's sensitivity on the calibration data and passes it here (without weights the
# two agree).
_STRATEGIES: dict[str, Strategy] = {
    "auto": _auto,
    "greedy": _greedy,
    "dp": _dp,
    "uniform": _uniform,
    "sensitivity": _auto,
}


def register_strategy(name: str, fn: Strategy, *, replace: bool = False) -> None:
    """Register an allocation strategy ``fn(options, budget, weights) -> picks`` under ``name``.

    Raises:
        OptionError: ``name`` is taken and ``replace`` is False (as opt_einsum refuses a
            duplicate path name: a plugin silently replacing ``"auto"`` changes every plan).
    """
    if name in _STRATEGIES and not replace:
        raise OptionError(
            f"strategy {name!r} is already registered.\nFix: pick another name, or "
            f"tfx.cost.register_strategy({name!r}, fn, replace=True) to replace it."
        )
    _STRATEGIES[name] = fn


def available_strategies() -> list[str]:
    """Registered strategy names."""
    return sorted(_STRATEGIES)


def choose(
    options: Sequence[Sequence[Option]],
    budget: float,
    *,
    strategy: str = "auto",
    weights: Sequence[float] | None = None,
) -> list[int]:
    """An option index per site, total cost within ``budget``, least weighted squared error.

    Args:
        options: per site, its candidates (the dense option included).
        budget: the most total cost (parameters) the sites may use.
        strategy: a registered strategy name.
        weights: per-site error weights (sensitivities); 1 by default.

    Raises:
        BudgetError: when even the cheapest option everywhere exceeds ``budget``.
        OptionError: for an unknown strategy.
    """
    if strategy not in _STRATEGIES:
        raise unknown_option(
            "strategy",
            strategy,
            _STRATEGIES,
            hint="Add your own with tfx.cost.register_strategy(name, fn).",
        )
    weights = list(weights) if weights is not None else [1.0] * len(options)
    floor = sum(min(_cost(o) for o in opts) for opts in options)
    if floor > budget:
        raise BudgetError(
            f"the sites need at least {floor:,.0f} parameters, above their budget of {budget:,.0f}."
        )
    picks = _STRATEGIES[strategy](options, budget, weights)
    if _total(options, picks) > budget + 1e-6:  # a user strategy that overspends
        raise BudgetError(
            f"strategy {strategy!r} chose {_total(options, picks):,.0f} "
            f"parameters, above the budget {budget:,.0f}."
        )
    return picks


def choose_two(
    options: Sequence[Sequence[Option]],
    params_budget: float,
    flops_budget: float,
    *,
    weights: Sequence[float] | None = None,
) -> list[int]:
    """Like :func:`choose`, under a parameter budget and a FLOP budget at once (greedy).

    Starts from each site's option with the least normalised cost
    ``params / params_budget + flops / flops_budget``, then takes the upgrades
    with the best error reduction per unit of normalised cost that keep both
    totals within their budgets. Never exceeds either budget.

    Raises:
        BudgetError: when even the starting point exceeds a budget.
    """
    weights = list(weights) if weights is not None else [1.0] * len(options)

    def norm(o: Option) -> float:
        return o.params / max(params_budget, 1e-9) + o.flops / max(flops_budget, 1e-9)

    picks = [min(range(len(opts)), key=lambda i: norm(opts[i])) for opts in options]
    params = sum(opts[i].params for opts, i in zip(options, picks, strict=False))
    flops = sum(opts[i].flops for opts, i in zip(options, picks, strict=False))
    if params > params_budget or flops > flops_budget:
        raise BudgetError(
            f"the sites need at least {params:,.0f} parameters and {flops:,.0f} FLOPs together, "
            f"above the budgets of {params_budget:,.0f} parameters and {flops_budget:,.0f} FLOPs.\n"
            "Fix: loosen one of the two targets, or give only one."
        )
    while True:
        best, best_gain = None, 0.0
        for s, (opts, w) in enumerate(zip(options, weights, strict=False)):
            here = opts[picks[s]]
            for i, opt in enumerate(opts):
                dp, df = opt.params - here.params, opt.flops - here.flops
                drop = penalty(here, w) - penalty(opt, w)
                if drop <= 0 or params + dp > params_budget or flops + df > flops_budget:
                    continue
                extra = max(norm(opt) - norm(here), 1e-12)
                if drop / extra > best_gain:
                    best, best_gain = (s, i, dp, df), drop / extra
        if best is None:
            return picks
        s, i, dp, df = best
        picks[s], params, flops = i, params + dp, flops + df
