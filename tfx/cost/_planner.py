"""The planner: one option per node of the sites' graph, under one budget.

Stage: candidates -> build_graph -> **plan_graph** -> decompose -> rewrite (or swap). Pure:
SiteInfos, options, spectra and the networkx graph; no fx, no modules. ``tfx.factorize``,
``tfx.plan`` and the torch.compile backend all call :func:`plan_graph`.

The graph (:func:`~tfx.cost.build_graph`) has a node per site (``kind="site"``: ``info``,
``options``, ``itemsize``, ``held``, ``kept``, ``weight``) and a node per group
(``kind="group"``: a :class:`Group`), with an edge from each member to its group. The
strategies choose per *item*: a site outside every group, or a group, whose options are its
joint options (a tied table counted once, a shared input basis) and, for siblings, the
frontier of their separate picks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Final

import networkx as nx

from .._errors import BudgetError
from ._budget import normalise_budget
from ._choose import choose, choose_two
from ._device import DeviceProfile
from ._flops import price
from ._options import dense_option
from ._plan import FactorizationPlan, _human
from ._records import Choice, Option, SiteInfo
from ._refine import refine_svd_ranks

__all__ = ["Group", "MIN_SPEEDUP", "plan_graph", "make_choice"]

#: Options estimated slower than this fraction of the dense layer's speed (time with a device
#: profile, FLOPs without) are left out where the budget allows.
MIN_SPEEDUP: Final = 0.95

MakeChoice = Callable[[str, Option], Choice]


@dataclasses.dataclass
class Group:
    """Sites planned together: one item of the strategies.

    Attributes:
        name: the group node's name.
        members: its sites, in graph order; ``members[0]`` carries the group in the plan.
        options: the group's options.
        counted_once: the members read one weight (a tied table): its parameters count once.
        rows: the plan rows for a chosen option (``option, make_choice -> {site: Choice}``),
            or None when the option stands for separate picks.
        separate: the members' own options a chosen option stands for, or None.
    """

    name: str
    members: list[str]
    options: list[Option]
    counted_once: bool
    rows: Callable[[Option, MakeChoice], dict[str, Choice] | None]
    separate: Callable[[Option], dict[str, Option] | None] = lambda option: None


def make_choice(
    node: dict[str, Any], option: Option, profile: DeviceProfile | None = None
) -> Choice:
    """The plan row of a site node for ``option``, with notes on speed against dense."""
    info: SiteInfo = node["info"]
    dense = dense_option(info, node["itemsize"], profile)
    reason = info.reason
    if option.form != "dense" and option.flops > dense.flops:  # saves parameters, not FLOPs: say so
        reason = " ".join(filter(None, (reason, "more FLOPs than dense")))
    if profile is not None and option.form != "dense" and option.seconds > dense.seconds:
        reason = " ".join(
            filter(
                None, (reason, f"est. {option.seconds / max(dense.seconds, 1e-12):.2f}x dense time")
            )
        )
    return Choice(
        site=info.name,
        kind=info.kind,
        weight_shape=info.weight_shape,
        form=option.form,
        tensorized_shape=option.tensorized_shape,
        rank=option.rank,
        params_before=info.dense_params if node["held"] is None else node["held"],
        params_after=option.params,
        flops_before=dense.flops,
        flops_after=option.flops,
        error=option.error,
        path=info.path,
        reason=reason,
        tokens=info.tokens,
        bytes_before=dense.bytes,
        bytes_after=option.bytes,
        order=option.order,
        seconds_before=dense.seconds,
        seconds_after=option.seconds,
    )


def not_slower(
    options: list[list[Option]],
    budget: float,
    infos: Sequence[SiteInfo | None],
    profile: DeviceProfile | None,
) -> tuple[list[list[Option]], str]:
    """Each item's options without those estimated slower than dense (:data:`MIN_SPEEDUP`).

    That is when the budget can still be met that way; else all of them and a note saying so.

    With a device profile the estimate is its time; without one, FLOPs at the planned batch
    (embeddings, whose dense gather does no FLOPs, keep every option then). Items without a
    dense option (groups) keep theirs.
    """
    fast = []
    for info, opts in zip(infos, options, strict=False):
        dense = next((o for o in opts if o.form == "dense"), None)
        if dense is None or info is None or (profile is None and info.kind == "embedding"):
            fast.append(opts)
        elif profile is not None:
            fast.append(
                [o for o in opts if o.form == "dense" or o.seconds <= dense.seconds / MIN_SPEEDUP]
            )
        else:
            fast.append(
                [o for o in opts if o.form == "dense" or o.flops <= dense.flops / MIN_SPEEDUP]
            )
    if sum(min(o.params for o in opts) for opts in fast) <= budget:
        return fast, ""
    if profile is not None:
        return options, (
            "the parameter budget needs some options the device profile "
            "estimates slower than their dense layer at the planned batch "
            "(see 'x dense time' in the notes); a larger budget avoids them"
        )
    return options, (
        "the parameter budget needs some options with more FLOPs than their dense layer at the "
        "planned batch (see 'more FLOPs than dense' in the notes); a larger budget avoids them"
    )


def budget_message(
    budget: Any,
    budget_params: float,
    total: int,
    outside: int,
    floor: float,
    infos: Sequence[SiteInfo],
) -> str:
    """The :class:`~tfx.BudgetError` text: the smallest reachable size, and what holds it up."""
    dense = sorted((i for i in infos if not i.factorizable), key=lambda i: -i.dense_params)
    held = "; ".join(
        f"{i.name} ({i.kind} {'x'.join(map(str, i.weight_shape))}: {i.reason})" for i in dense[:3]
    )
    return (
        f"budget={budget!r} ({_human(budget_params)} of {_human(total)} params) is below "
        f"the smallest reachable size, {_human(floor)} ({100 * floor / total:.1f}%).\n"
        f"  {_human(outside)} params sit outside the "
        "linear/conv/embedding sites (norms, biases, other layers)"
        + (f"; the largest sites that stay dense: {held}" if held else "")
        + f".\nFix: budget >= {math.ceil(1000 * floor / total) / 1000:.3f}, "
        "or allow more sites (kinds=, skip=)."
    )


def _refine(
    nodes: Sequence[dict[str, Any]],
    chosen: list[Option],
    budget: float,
    budget_flops: float | None,
    profile: DeviceProfile | None,
) -> list[Option]:
    """Low-rank picks raised to the in-between ranks the budget still pays for (see ``_refine``)."""
    dense = [dense_option(n["info"], n["itemsize"], profile) for n in nodes]

    def price_one(i: int, option: Option) -> Option:
        return price(nodes[i]["info"], option, nodes[i]["itemsize"], profile)

    def allowed(
        i: int, option: Option
    ) -> bool:  # the speed rule of not_slower, kept by the upgrade
        current = chosen[i]
        if profile is not None:
            return option.seconds <= max(dense[i].seconds / MIN_SPEEDUP, current.seconds)
        if nodes[i]["info"].kind == "embedding":
            return True
        return option.flops <= max(dense[i].flops / MIN_SPEEDUP, current.flops)

    return refine_svd_ranks(
        [n["info"] for n in nodes],
        chosen,
        [n["kept"].get("svd") for n in nodes],
        budget,
        [n["weight"] for n in nodes],
        price_one,
        allowed,
        budget_flops,
    )


def plan_graph(
    graph: nx.DiGraph,
    budget: Any,
    *,
    total: int,
    strategy: str = "auto",
    profile: DeviceProfile | None = None,
    outside: int | None = None,
) -> FactorizationPlan:
    """Choose one option per item of ``graph`` (sites and groups) so the model fits ``budget``.

    Args:
        graph: from :func:`~tfx.cost.build_graph`, with site nodes in graph order.
        budget: the user's budget (a fraction, a count or a :class:`~tfx.cost.Budget`).
        total: the model's parameter count.
        strategy: a registered strategy name.
        profile: a device profile: options priced in time.
        outside: parameters outside every site, for the budget message (default: computed).

    Returns:
        The plan (``capture``, timings and notes are the caller's to fill in).

    Raises:
        BudgetError: the budget is malformed, or below the smallest reachable size.
    """
    names = [n for n, data in graph.nodes(data=True) if data.get("kind", "site") == "site"]
    nodes = [graph.nodes[n] for n in names]
    groups: list[Group] = [
        data["group"] for _, data in graph.nodes(data=True) if data.get("kind") == "group"
    ]
    index = {name: i for i, name in enumerate(names)}
    followers = {m for g in groups if g.counted_once for m in g.members[1:]}
    held = [n["info"].dense_params if n["held"] is None else n["held"] for n in nodes]
    fixed = total - sum(h for name, h in zip(names, held, strict=False) if name not in followers)
    grouped = {m: g for g in groups for m in g.members}
    # Items in graph order: a site outside every group, or a group at its first member.
    items: list[tuple[SiteInfo | None, list[Option], float, Group | None, str]] = []
    for name, node in zip(names, nodes, strict=False):
        group = grouped.get(name)
        if group is None:
            items.append((node["info"], list(node["options"]), node["weight"], None, name))
        elif group.members[0] == name:
            weight = sum(nodes[index[m]]["weight"] for m in group.members)
            items.append((None, list(group.options), weight, group, name))
    total_flops = sum(dense_option(n["info"]).flops for n in nodes)
    has_shapes = any(n["info"].tokens > 1 for n in nodes) or not nodes
    budget_params, budget_flops = normalise_budget(
        budget, total, total_flops if has_shapes else None
    )
    floor = fixed + sum(min(o.params for o in item[1]) for item in items)
    if floor > budget_params:
        raise BudgetError(
            budget_message(
                budget,
                budget_params,
                total,
                fixed if outside is None else outside,
                floor,
                [n["info"] for n in nodes],
            )
        )
    options, note = not_slower(
        [item[1] for item in items], budget_params - fixed, [item[0] for item in items], profile
    )
    weights = [item[2] for item in items]
    if budget_flops is None:
        picks = choose(options, budget_params - fixed, strategy=strategy, weights=weights)
    else:
        picks = choose_two(options, budget_params - fixed, budget_flops, weights=weights)
    zero = Option("dense", None, None, 0, 0, 0.0)
    chosen: dict[str, Option] = {}
    rows: dict[str, Choice] = {}
    frozen: set[str] = set()
    choose_row: MakeChoice = lambda name, option: make_choice(nodes[index[name]], option, profile)  # noqa: E731
    for (_, _, _, group, name), opts, pick in zip(items, options, picks, strict=False):
        option = opts[pick]
        if group is None:
            chosen[name] = option
            continue
        separate = group.separate(option)
        if separate is not None:  # each member on its own option, which refinement may still raise
            chosen.update(separate)
            continue
        rows.update(group.rows(option, choose_row) or {})
        chosen.update({m: (option if k == 0 else zero) for k, m in enumerate(group.members)})
        frozen.update(group.members)
    ordered = [chosen[name] for name in names]
    if strategy != "uniform":  # the uniform baseline keeps its grid ranks
        refinable = [
            dict(n, kept={}) if name in frozen else n for name, n in zip(names, nodes, strict=False)
        ]
        ordered = _refine(refinable, ordered, budget_params - fixed, budget_flops, profile)
    choices = [
        rows.get(name) or choose_row(name, option)
        for name, option in zip(names, ordered, strict=False)
    ]
    return FactorizationPlan(
        choices, total, fixed, budget_params, strategy=strategy, notes=[note] if note else []
    )
