"""The planner runs on hand-made graphs: SiteInfos, options and groups, no fx, no modules."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tfx
from tfx.cost import Group, Option, SiteInfo, build_graph, candidates, plan_graph
from tfx.cost._planner import make_choice


def _graph(budget_sizes: tuple[int, ...] = (64, 48, 32), groups: tuple[Group, ...] = ()) -> tuple:
    torch.manual_seed(0)
    infos = [SiteInfo(f"fc{i}", "linear", (n, 64), tokens=16) for i, n in enumerate(budget_sizes)]
    options = [candidates(info, torch.randn(info.weight_shape), forms=("svd",)) for info in infos]
    return infos, build_graph(infos, options, edges=[("fc0", "fc1")], groups=groups)


def test_planner_plans_a_hand_made_graph_within_budget() -> None:
    infos, graph = _graph()
    total = sum(i.dense_params for i in infos) + 100
    plan = plan_graph(graph, 0.5, total=total)
    assert [c.site for c in plan.choices] == ["fc0", "fc1", "fc2"]
    assert plan.total_params_after <= 0.5 * total
    assert any(c.form == "svd" for c in plan.choices)
    assert graph.edges["fc0", "fc1"]["relation"] == "data"


def test_planner_reads_a_group_node_and_its_rows() -> None:
    """A group of fc1 and fc2 whose only option is cheap: the planner takes it and the rows come
    from the group, not from the members' own options."""
    cheap = Option("svd", ((80,), (64,)), 2, 2 * (1 + 80 + 64), 100, 0.3)

    def rows(option: Option, make) -> dict:  # noqa: ANN001
        made = {name: make(name, option) for name in ("fc1", "fc2")}
        for row in made.values():
            row.group = "fc1+1"
        made["fc2"].params_after = 0
        return made

    group = Group("basis:fc1", ["fc1", "fc2"], [cheap], counted_once=False, rows=rows)
    infos, graph = _graph(groups=(group,))
    assert graph.nodes["basis:fc1"]["kind"] == "group"
    assert graph.edges["fc1", "basis:fc1"]["relation"] == "member"
    plan = plan_graph(graph, 0.6, total=sum(i.dense_params for i in infos))
    assert plan.choice("fc1").group == plan.choice("fc2").group == "fc1+1"
    assert plan.choice("fc1").params_after == cheap.params and plan.choice("fc2").params_after == 0


def test_planner_counts_a_tied_table_once() -> None:
    info = SiteInfo("emb", "embedding", (64, 64), tokens=16)
    head = SiteInfo("head", "linear", (64, 64), tokens=16)
    table = candidates(
        dataclasses.replace(head, factorizable=True), torch.randn(64, 64), forms=("svd",)
    )

    def rows(option: Option, make) -> dict:  # noqa: ANN001
        made = {name: make(name, option) for name in ("emb", "head")}
        made["head"].params_after = made["head"].params_before = 0
        return made

    group = Group("tied:emb", ["emb", "head"], table, counted_once=True, rows=rows)
    tied_info = dataclasses.replace(
        info, factorizable=False, reason="tied weight (shared with head)"
    )
    tied_head = dataclasses.replace(
        head, factorizable=False, reason="tied weight (shared with emb)"
    )
    graph = build_graph([tied_info, tied_head], [[table[0]], [table[0]]], groups=[group])
    total = 64 * 64 + 10  # one table and a few other parameters
    plan = plan_graph(graph, 0.5, total=total)
    assert plan.fixed_params == 10
    assert plan.total_params_after <= 0.5 * total
    assert plan.choice("emb").form == "svd" and plan.choice("head").params_after == 0


@given(st.floats(min_value=0.2, max_value=1.0), st.sampled_from(["auto", "greedy", "dp"]))
def test_planner_never_exceeds_the_budget_with_groups(fraction: float, strategy: str) -> None:
    cheap = [
        Option("svd", ((80,), (64,)), r, r * 145, r * 2000, 1.0 / (1 + r)) for r in (1, 2, 4, 8)
    ]

    def rows(option: Option, make) -> dict:  # noqa: ANN001
        made = {name: make(name, option) for name in ("fc1", "fc2")}
        made["fc2"].params_after = 0
        return made

    group = Group("basis:fc1", ["fc1", "fc2"], cheap, counted_once=False, rows=rows)
    infos, graph = _graph(groups=(group,))
    total = sum(i.dense_params for i in infos)
    floor = min(o.params for o in graph.nodes["fc0"]["options"]) + min(o.params for o in cheap)
    if floor > fraction * total:
        with pytest.raises(tfx.BudgetError):
            plan_graph(graph, fraction, total=total, strategy=strategy)
        return
    plan = plan_graph(graph, fraction, total=total, strategy=strategy)
    assert plan.total_params_after <= fraction * total


def test_make_choice_reports_held_parameters() -> None:
    info = SiteInfo("fc", "linear", (32, 32), tokens=4)
    node = {"info": info, "itemsize": 4, "held": 100}
    choice = make_choice(node, Option("dense", None, None, 1024, 0, 0.0))
    assert choice.params_before == 100


def test_planner_budget_error_names_the_floor() -> None:
    infos, graph = _graph()
    with pytest.raises(tfx.BudgetError, match="below the smallest reachable size"):
        plan_graph(graph, 0.001, total=sum(i.dense_params for i in infos))
