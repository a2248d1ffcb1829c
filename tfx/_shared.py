"""Sibling layers that read one input share an input basis.

Linear sites that read the same tensor (one fx node: Q/K/V, gate/up, parallel branches)
get, beside their separate options, joint options: one truncated SVD of the stacked matrix
``[W_1; W_2; ...] ~ [U_1; U_2; ...] diag(w) V^T`` (whitened by the input's statistics when
calibrated: the siblings' input moment is literally one), ``V`` and ``w`` stored once. The
planner picks, per group, between the joint options and the frontier of separate ones (a
multiple-choice knapsack over group options). In a graph result ``x V`` is computed once
(the siblings' identical first steps are merged); in a result made of the model's own
modules each sibling holds the same ``V`` and ``w`` parameters.

Joins passes (sites) and cost (options), like ``_api``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .cost import Choice, Option
from .cost._choose import penalty
from .cost._options import RANK_ALIGN, rank_alignment, rank_grid
from .cost._whiten import gram_of_rows, small_eig
from .passes import Site

__all__ = [
    "SiblingGroup",
    "sibling_groups",
    "group_options",
    "member_energies",
    "expand",
]

#: The form of a joint option in the plan's rows.
FORM = "svd"


@dataclasses.dataclass
class SiblingGroup:
    """Linear sites reading one input; ``members[0]`` carries the group's options in the planner.

    Attributes:
        members: indices into the site list, in graph order.
        name: the basis's name in the plan (``'<first member>+<k-1>'``).
        energies: per member, the cumulative energy of its rows in the stacked SVD's
            components (for the per-member error at each rank).
        norms: per member, its (whitened) squared norm.
        joint: the group's joint options (filled by :func:`group_options`).
        separate: for each separate option of the group, the member picks it stands for.
    """

    members: list[int]
    name: str
    energies: list[torch.Tensor] = dataclasses.field(default_factory=list)
    norms: list[float] = dataclasses.field(default_factory=list)
    separate: dict[int, list[Option]] = dataclasses.field(default_factory=dict)


def sibling_groups(
    sites: Sequence[Site], exclude: set[int], root: nn.Module | None = None
) -> list[SiblingGroup]:
    """Groups of two or more factorizable linear sites that read one graph node."""
    from .passes._swap import module_of

    by_input: dict[Any, list[int]] = {}
    for i, site in enumerate(sites):
        if i in exclude or site.node is None or site.held_params is not None:
            continue
        if site.info.kind != "linear" or not site.info.factorizable:
            continue
        if root is not None and module_of(root, site.name, site.weight_target) is None:
            continue
        by_input.setdefault((site.input, site.info.weight_shape[1], site.weight.dtype), []).append(
            i
        )
    return [
        SiblingGroup(members, f"{sites[members[0]].name}+{len(members) - 1}")
        for members in by_input.values()
        if len(members) > 1
    ]


def member_energies(group: SiblingGroup, sites: Sequence[Site], stats: Any) -> list[torch.Tensor]:
    """Each member's energy in the stacked (whitened) weight's leading directions, cumulated.

    ``energies[k][r-1] = |A_k V_r|^2`` for ``A = [W_1; W_2; ...] L`` and ``V_r`` its leading
    ``r`` right singular vectors: what member ``k`` keeps at joint rank ``r``. From the
    members' ``n x n`` Grams ``L^T W_k^T W_k L`` (their sum is ``A^T A``): no stacked copy and
    no SVD of it (an ``eigh`` of ``n x n``).
    """
    whitening = stats.whitening() if stats is not None else None
    grams = []
    for i in group.members:
        gram = gram_of_rows(sites[i].weight.detach())
        grams.append(whitening.sandwich(gram) if whitening is not None else gram)
    total = grams[0].clone()
    for gram in grams[1:]:
        total += gram
    k = min(sum(sites[i].info.weight_shape[0] for i in group.members), total.shape[0])
    v = small_eig(torch.linalg.eigh, total).eigenvectors[:, -k:].flip(-1)
    return [((gram @ v) * v).sum(0).clamp_min(0).cumsum(0) for gram in grams]


def _effective_error(errors: Sequence[float], weights: Sequence[float]) -> float:
    """One error whose penalty, at the summed weight, is the members' summed penalty."""
    total = sum(weights)
    loss = sum(
        w * -math.log(max(1.0 - e * e, 1e-6)) for e, w in zip(errors, weights, strict=False)
    ) / max(total, 1e-30)
    return math.sqrt(max(0.0, 1.0 - math.exp(-loss)))


def group_options(
    group: SiblingGroup,
    sites: Sequence[Site],
    member_options: Sequence[Sequence[Option]],
    stats: Any,
    weights: Sequence[float],
    graph_result: bool,
    energies: list[torch.Tensor] | None = None,
) -> list[Option]:
    """The group's options: joint ranks of the stacked SVD, and the frontier of separate picks.

    ``member_options[k]`` are member ``k``'s own options; ``weights`` their planner weights.
    FLOPs of a joint option: ``x V`` once in a graph result (``graph_result``), once per
    member in a result made of modules. ``energies``: :func:`member_energies` of the group,
    when made elsewhere (by another process); computed here otherwise.
    """
    outs = [sites[i].info.weight_shape[0] for i in group.members]
    n_in = sites[group.members[0]].info.weight_shape[1]
    tokens = sites[group.members[0]].info.tokens
    group.energies = member_energies(group, sites, stats) if energies is None else energies
    group.norms = [float(e[-1]) for e in group.energies]
    token = RANK_ALIGN.set(rank_alignment(sites[group.members[0]].weight))
    try:
        ranks = [
            r
            for r in rank_grid(min(sum(outs), n_in))
            if r * (1 + sum(outs) + n_in) < sum(outs) * n_in
        ]
    finally:
        RANK_ALIGN.reset(token)
    options = []
    for r in ranks:
        errors = member_errors(group, r)
        basis = (1 if graph_result else len(outs)) * n_in
        flops = 2 * tokens * r * (basis + sum(outs))
        nbytes = r * (1 + sum(outs) + n_in) + tokens * (n_in + r + sum(outs))
        options.append(
            Option(
                FORM,
                ((sum(outs),), (n_in,)),
                r,
                r * (1 + sum(outs) + n_in),
                flops,
                _effective_error(errors, weights),
                nbytes,
                "factors",
            )
        )
    group.separate = {}
    for picks in _frontier(member_options, weights):
        option = Option(
            "separate",
            None,
            None,
            sum(o.params for o in picks),
            sum(o.flops for o in picks),
            _effective_error([o.error for o in picks], weights),
            sum(o.bytes for o in picks),
            "factors",
            sum(o.steps for o in picks),
            sum(o.seconds for o in picks),
        )
        group.separate[id(option)] = list(picks)
        options.append(option)
    return sorted(options, key=lambda o: (o.params, o.error))


def member_errors(group: SiblingGroup, rank: int) -> list[float]:
    """Each member's relative error at ``rank`` of the joint basis."""
    return [
        math.sqrt(max(0.0, 1.0 - float(e[rank - 1]) / n)) if n > 0 else 0.0
        for e, n in zip(group.energies, group.norms, strict=False)
    ]


def _frontier(
    member_options: Sequence[Sequence[Option]], weights: Sequence[float]
) -> list[tuple[Option, ...]]:
    """Separate picks on the members' joint error/params frontier.

    For a sweep of multipliers, each member's best option alone (the Lagrangian of the group's
    own knapsack).
    """
    seen: dict[tuple[int, ...], tuple[Option, ...]] = {}
    for lam in [0.0, *(10.0 ** (k / 4) for k in range(-40, 9))]:
        idx = tuple(
            min(
                range(len(opts)),
                key=lambda j, opts=opts, w=w: (
                    penalty(opts[j], w) + lam * opts[j].params,
                    opts[j].params,
                ),
            )
            for opts, w in zip(member_options, weights, strict=False)
        )
        seen.setdefault(idx, tuple(opts[j] for opts, j in zip(member_options, idx, strict=False)))
    cheapest = tuple(
        min(range(len(opts)), key=lambda j, opts=opts: opts[j].params) for opts in member_options
    )
    seen.setdefault(
        cheapest, tuple(opts[j] for opts, j in zip(member_options, cheapest, strict=False))
    )
    return list(seen.values())


def expand(
    group: SiblingGroup,
    sites: Sequence[Site],
    chosen: Option,
    make_choice: Callable[[Site, Option], Choice],
) -> tuple[dict[int, Choice], dict[int, Option]]:
    """The group's pick as one plan row per member (and, if separate, each member's option)."""
    if chosen.form == "separate":
        picks = dict(zip(group.members, group.separate[id(chosen)], strict=False))
        return {i: make_choice(sites[i], picks[i]) for i in group.members}, picks
    r = int(chosen.rank)
    n_in = sites[group.members[0]].info.weight_shape[1]
    errors = member_errors(group, r)
    rows: dict[int, Choice] = {}
    names = ", ".join(sites[i].name for i in group.members)
    for k, i in enumerate(group.members):
        out = sites[i].info.weight_shape[0]
        share = dataclasses.replace(
            chosen,
            tensorized_shape=((out,), (n_in,)),
            rank=r,
            params=r * out + (r * (1 + n_in) if k == 0 else 0),
            error=errors[k],
            flops=chosen.flops if k == 0 else 0,
            bytes=chosen.bytes if k == 0 else 0,
        )
        choice = make_choice(sites[i], share)
        choice.group = group.name
        choice.reason = f"shared input basis with {names} (rank {r})"
        rows[i] = choice
    return rows, {}
