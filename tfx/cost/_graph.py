"""The networkx graph of a model's sites: nodes carry their candidates, edges the data flow."""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx

from ._records import Option, SiteInfo

__all__ = ["build_graph"]


def build_graph(
    sites: Sequence[SiteInfo], options: Sequence[Sequence[Option]], edges: Sequence[tuple[str, str]] = ()
) -> nx.DiGraph:
    """A ``DiGraph`` with one node per site (attributes ``info`` and ``options``) and data-flow edges.

    An edge ``a -> b`` means site ``b`` consumes (transitively) what site ``a`` computes.
    """
    graph = nx.DiGraph()
    for info, opts in zip(sites, options):
        graph.add_node(info.name, info=info, options=list(opts))
    graph.add_edges_from((a, b) for a, b in edges if a in graph and b in graph)
    return graph
