"""The networkx graph of a model's sites: nodes carry their candidates, edges the data flow."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import networkx as nx

from ._records import Option, SiteInfo

__all__ = ["build_graph"]


def build_graph(
    sites: Sequence[SiteInfo],
    options: Sequence[Sequence[Option]],
    edges: Sequence[tuple[str, str]] = (),
    *,
    extra: Sequence[dict[str, Any]] | None = None,
    groups: Sequence[Any] = (),
) -> nx.DiGraph:
    """The planner's input: a ``DiGraph`` of the sites, their data flow and their groups.

    One node per site (``kind="site"``; attributes ``info``, ``options`` and, from ``extra``,
    ``itemsize``, ``held`` -- the parameters an already factorized site holds --, ``kept`` --
    spectra for rank refinement -- and ``weight`` -- the planner's weight of its error); an edge
    ``a -> b`` (``relation="data"``) when site ``b`` consumes (transitively) what site ``a``
    computes. One node per group (``kind="group"``, attribute ``group``: a
    :class:`~tfx.cost._planner.Group`, and its ``options``), with an edge
    (``relation="member"``) from each member.
    """
    graph = nx.DiGraph()
    for k, (info, opts) in enumerate(zip(sites, options, strict=False)):
        more = {
            "itemsize": 4,
            "held": None,
            "kept": {},
            "weight": 1.0,
            **(extra[k] if extra else {}),
        }
        graph.add_node(info.name, kind="site", info=info, options=list(opts), **more)
    graph.add_edges_from(
        (a, b, {"relation": "data"}) for a, b in edges if a in graph and b in graph
    )
    for group in groups:
        graph.add_node(group.name, kind="group", group=group, options=list(group.options))
        graph.add_edges_from((m, group.name, {"relation": "member"}) for m in group.members)
    return graph
