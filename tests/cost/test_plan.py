"""FactorizationPlan: the printed table and the JSON round trip."""

from __future__ import annotations

import json

import pytest
import torch

import tfx
from tfx.cost import Choice, FactorizationPlan, SiteInfo, build_graph, candidates


def _plan() -> FactorizationPlan:
    choices = [
        Choice(
            "enc.0",
            "linear",
            (64, 32),
            "tt",
            ((4, 4, 4), (2, 4, 4)),
            (1, 3, 5, 7, 4, 2, 1),
            2048,
            400,
            16384,
            4000,
            0.25,
        ),
        Choice("enc.1", "linear", (32, 64), "svd", ((32,), (64,)), 8, 2048, 776, 16384, 1536, 0.5),
        Choice(
            "conv",
            "conv",
            (16, 8, 3, 3),
            "tucker",
            None,
            (8, 4, 3, 3),
            1152,
            500,
            9000,
            3000,
            0.125,
            path="export",
        ),
        Choice(
            "emb",
            "embedding",
            (100, 16),
            "dense",
            None,
            None,
            1600,
            1600,
            40,
            40,
            0.0,
            reason="tied weight (shared with head)",
            sensitivity=0.75,
        ),
    ]
    return FactorizationPlan(
        choices,
        total_params_before=7000,
        fixed_params=152,
        budget_params=3500.0,
        strategy="dp",
        capture="export",
        output_error=0.0123,
    )


def test_plan_totals() -> None:
    plan = _plan()
    assert plan.total_params_after == 152 + 400 + 776 + 500 + 1600
    assert plan.total_flops_before == 16384 + 16384 + 9000 + 40
    assert plan.total_flops_after == 4000 + 1536 + 3000 + 40


def test_plan_table_has_a_row_per_site_and_totals() -> None:
    table = _plan().table()
    lines = table.splitlines()
    for site in ("enc.0", "enc.1", "conv", "emb"):
        assert any(line.startswith(site + " ") for line in lines), site
    total = next(line for line in lines if line.startswith("TOTAL"))
    assert "7.00k" in total and "3.43k" in total and "49.0% of params" in total


def test_plan_table_shows_forms_shapes_ranks_and_reasons() -> None:
    table = str(_plan())
    assert "(4,4,4)x(2,4,4)" in table
    assert "(1,3,5,7,4,2,1)" in table
    assert "tied weight (shared with head)" in table
    header = table.splitlines()[0]
    column = header.index("sens.")
    sensitive = next(c for c in _plan().choices if c.sensitivity is not None)
    row = next(line for line in table.splitlines() if line.startswith(sensitive.site + " "))
    assert row[column:].split()[0] == "0.75"
    assert "capture: export, emit: graph, strategy: dp" in table
    assert "verified max relative output error: 0.0123" in table


def test_sensitivity_column_only_with_sensitivities() -> None:
    plan = _plan()
    for choice in plan.choices:
        choice.sensitivity = None
    assert "sens." not in plan.table().splitlines()[0].split()


def test_plan_header_lists_the_columns() -> None:
    header = _plan().table().splitlines()[0].split()
    assert header[:6] == ["site", "kind", "weight", "form", "tensorized", "rank"]


def test_plan_json_round_trip_is_equal() -> None:
    plan = _plan()
    again = FactorizationPlan.from_json(plan.to_json())
    assert again == plan
    assert again.choices[0].tensorized_shape == ((4, 4, 4), (2, 4, 4))
    assert isinstance(again.choices[0].rank, tuple)
    assert again.choices[0].weight_shape == (64, 32)


def test_plan_json_is_plain_json() -> None:
    data = json.loads(_plan().to_json())
    assert data["version"] == 1
    assert [c["site"] for c in data["choices"]] == ["enc.0", "enc.1", "conv", "emb"]


def test_plan_choice_looks_up_by_site() -> None:
    plan = _plan()
    assert plan.choice("conv").form == "tucker"
    with pytest.raises(tfx.PlanMismatchError, match="no site 'nope'"):
        plan.choice("nope")
    with pytest.raises(tfx.PlanMismatchError, match="did you mean 'conv'"):
        plan.choice("conv2")


def test_plan_from_model_round_trips_and_lists_every_site() -> None:
    from tests.passes._models import MLP

    model = MLP()
    plan = tfx.plan(model, 0.5, example_inputs=(torch.randn(4, 32),), progress=False)
    assert [c.site for c in plan.choices] == ["encoder.0", "encoder.2", "out", "tiny"]
    assert FactorizationPlan.from_json(plan.to_json()) == plan
    assert plan.total_params_before == sum(p.numel() for p in model.parameters())
    assert plan.total_params_after <= 0.5 * plan.total_params_before
    table = plan.table()
    assert all(c.site in table for c in plan.choices)


def test_build_graph_nodes_carry_info_and_options() -> None:
    infos = [SiteInfo("a", "linear", (32, 32)), SiteInfo("b", "linear", (32, 32))]
    weights = [torch.randn(32, 32, dtype=torch.float64) for _ in infos]
    options = [candidates(i, w, forms=("svd",)) for i, w in zip(infos, weights, strict=True)]
    graph = build_graph(infos, options, [("a", "b"), ("a", "missing")])
    assert list(graph.nodes) == ["a", "b"]
    assert graph.nodes["a"]["info"] is infos[0]
    assert graph.nodes["b"]["options"] == options[1]
    assert list(graph.edges) == [("a", "b")]
