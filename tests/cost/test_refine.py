"""Rank refinement: low-rank picks raised to the in-between ranks the budget still pays for."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import tfx
from tfx.cost import Budget, Option, SiteInfo
from tfx.cost._choose import penalty
from tfx.cost._options import Spectra
from tfx.cost._refine import refine_svd_ranks


def _exact_error(weight: torch.Tensor, rank: int) -> float:
    s = torch.linalg.svdvals(weight.detach().double())
    return float(s[rank:].square().sum().sqrt() / s.square().sum().sqrt())


def test_single_layer_gets_the_largest_aligned_rank_that_fits_with_its_exact_error() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(768, 768)
    plan = tfx.plan(
        layer, 0.5, example_inputs=(torch.randn(1, 768),), forms=("svd",), progress=False
    )
    (choice,) = plan.choices
    budget = plan.budget_params - 768  # the bias stays
    assert choice.rank % 8 == 0
    assert choice.rank * 1537 <= budget < (choice.rank + 8) * 1537
    assert plan.total_params_after <= plan.budget_params
    assert choice.error == pytest.approx(_exact_error(layer.weight, choice.rank), rel=1e-4)
    gm = tfx.factorize(
        layer,
        0.5,
        example_inputs=(torch.randn(1, 768),),
        forms=("svd",),
        progress=False,
        verify=False,
    )
    assert sum(p.numel() for p in gm.parameters()) == plan.total_params_after


def test_uniform_strategy_keeps_grid_ranks() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(768, 768)
    auto = tfx.plan(
        layer, 0.5, example_inputs=(torch.randn(1, 768),), forms=("svd",), progress=False
    )
    uniform = tfx.plan(
        layer,
        0.5,
        example_inputs=(torch.randn(1, 768),),
        forms=("svd",),
        strategy="uniform",
        progress=False,
    )
    assert uniform.choices[0].rank < auto.choices[0].rank
    assert uniform.total_params_after < auto.total_params_after <= auto.budget_params


def _sites(n: int) -> tuple[list[SiteInfo], list[Option], list, list[torch.Tensor]]:
    torch.manual_seed(1)
    infos, chosen, spectra, weights = [], [], [], []
    for i in range(n):
        rows, cols = 48 + 16 * i, 64
        w = torch.randn(rows, cols, dtype=torch.float64) @ torch.diag(
            torch.linspace(2, 0.1, cols, dtype=torch.float64)
        )
        s = Spectra(w)
        rank = 8
        err = math.sqrt(s.discarded((rows, cols), None, 1, rank) / s.norm2)
        infos.append(SiteInfo(f"s{i}", "linear", (rows, cols), tokens=4))
        chosen.append(Option("svd", ((rows,), (cols,)), rank, rank * (1 + rows + cols), 0, err))
        spectra.append((s, rows, cols, 8))
        weights.append(w)
    return infos, chosen, spectra, weights


def _objective(options: list[Option]) -> float:
    return sum(penalty(o, 1.0) for o in options)


def test_refinement_spends_the_budget_greedily_and_never_exceeds_it() -> None:
    infos, chosen, spectra, weights = _sites(3)
    budget = sum(o.params for o in chosen) + 2500
    out = refine_svd_ranks(
        infos, chosen, spectra, budget, [1.0] * 3, lambda i, o: o, lambda i, o: True
    )
    assert sum(o.params for o in out) <= budget
    assert _objective(out) < _objective(chosen)
    for o, w in zip(out, weights, strict=False):
        assert o.error == pytest.approx(_exact_error(w, o.rank), rel=1e-9)
    # nothing left that one more step would still pay for
    left = budget - sum(o.params for o in out)
    assert all(1 + rows + cols > left for (rows, cols) in (i.weight_shape for i in infos))


def test_refinement_respects_the_speed_rule_and_a_flop_budget() -> None:
    infos, chosen, spectra, _ = _sites(2)
    budget = sum(o.params for o in chosen) + 5000
    frozen = refine_svd_ranks(
        infos, chosen, spectra, budget, [1.0, 1.0], lambda i, o: o, lambda i, o: False
    )
    assert frozen == chosen

    def priced(i: int, o: Option) -> Option:
        return Option(o.form, o.tensorized_shape, o.rank, o.params, o.rank * 100, o.error)

    chosen = [priced(i, o) for i, o in enumerate(chosen)]
    flops = sum(o.flops for o in chosen) + 250  # two more ranks in all
    out = refine_svd_ranks(
        infos, chosen, spectra, budget, [1.0, 1.0], priced, lambda i, o: True, flop_budget=flops
    )
    assert sum(o.flops for o in out) <= flops
    assert sum(o.rank for o in out) == sum(o.rank for o in chosen) + 2


def test_refinement_only_touches_low_rank_picks() -> None:
    infos, chosen, spectra, _ = _sites(2)
    tt = Option("tt", ((6, 8), (8, 8)), (1, 4, 1), 100, 0, 0.5)
    out = refine_svd_ranks(
        infos, [tt, chosen[1]], spectra, 10**6, [1.0, 1.0], lambda i, o: o, lambda i, o: True
    )
    assert out[0] is tt and out[1].rank > chosen[1].rank


def test_refined_plan_fits_a_flop_budget_end_to_end() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256)).eval()
    x = torch.randn(32, 256)
    plan = tfx.plan(
        model, Budget(params=0.6, flops=0.5), example_inputs=(x,), forms=("svd",), progress=False
    )
    assert plan.total_flops_after <= 0.5 * plan.total_flops_before
    assert plan.total_params_after <= plan.budget_params
