"""Tied weights: one factorized table read by every reader.

A weight read by several sites (GPT-2's token embedding and LM head, BART's shared table,
a functional ``F.embedding(ids, E)`` with ``h @ E.T``) is one node of the planner: its
options are priced once in the budget (the table is stored once) and their FLOPs are the
readers' together. When a factorized option is chosen, one ``tfx`` tensor is decomposed
and every reader's layer holds that same tensor module, so the result is still tied: the
gradients of all readers reach the same factors. The embedding gathers rows of the row
factors; the head contracts its input with the column factors first (``(h Bᵀ) Aᵀ`` for a
low-rank ``A·B``).

Joins passes (sites) and cost (options), like ``_api``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

from torch import fx, nn

from .cost import Choice, Option, candidates, dense_option
from .cost._device import DeviceProfile
from .cost._flops import price
from .passes import Site
from .passes._swap import swap_kind

__all__ = ["TiedGroup", "tied_groups", "joint_options", "member_choices"]

#: The forms a shared table can take: each is one tensorized matrix both an embedding and a
#: linear layer hold (CP is left out: fitted by ALS, too slow for vocabulary-sized tables).
_FORMS = ("svd", "tucker", "tt", "blocktt")


@dataclasses.dataclass
class TiedGroup:
    """Sites that read one weight, planned as one table.

    Attributes:
        members: indices into the site list, in graph order; ``members[0]`` holds the count.
        owner: the member whose options are generated (a linear reader when there is one).
    """

    members: list[int]
    owner: int


def _storage(site: Site) -> int:
    return site.weight.untyped_storage().data_ptr()


def _only_members(site: Site, nodes: set[fx.Node]) -> bool:
    """The weight's graph reads feed the group's sites and nothing else."""
    if site.node is None:
        return True
    for arg in site.node.all_input_nodes:
        if arg.op == "get_attr" and str(arg.target) == site.weight_target:
            return all(user in nodes for user in arg.users)
    return True


def tied_groups(
    sites: Sequence[Site],
    kinds: Sequence[str],
    skip: Sequence[str],
    root: nn.Module | None = None,
) -> list[TiedGroup]:
    """The groups of sites that can share one factorized table.

    Every member is a linear or embedding site of the same ``(rows, features)`` matrix
    (an embedding ``(num, dim)`` and a head ``(out=num, in=dim)``), allowed by ``kinds`` and
    not skipped; the weight feeds nothing but the members; and where the result is the
    model itself (``root``), each member is a module tfx can replace.
    """
    by_weight: dict[int, list[int]] = {}
    for i, site in enumerate(sites):
        if site.weight.numel() and site.held_params is None:
            by_weight.setdefault(_storage(site), []).append(i)
    groups = []
    for members in by_weight.values():
        group = [sites[i] for i in members]
        if len(group) < 2 or not all(s.info.reason.startswith("tied weight") for s in group):
            continue
        shapes = {tuple(s.weight.shape) for s in group}
        if len(shapes) != 1 or any(
            s.info.kind not in ("linear", "embedding") or s.info.kind not in kinds for s in group
        ):
            continue
        if any(s.name in skip or any(s.name.startswith(k + ".") for k in skip) for s in group):
            continue
        if any(s.info.kind == "embedding" and s.info.dense_params < 256 for s in group):
            continue
        nodes = {s.node for s in group if s.node is not None}
        if not all(_only_members(s, nodes) for s in group):
            continue
        if root is not None and not (
            all(_swappable(root, s) for s in group) and _held_only_by(root, group)
        ):
            continue
        owner = next((i for i in members if sites[i].info.kind == "linear"), members[0])
        groups.append(TiedGroup(members, owner))
    return groups


def _swappable(root: nn.Module, site: Site) -> bool:
    try:
        module = root.get_submodule(site.name.split(":")[0])  # "<module>:k": the module's k-th call
    except AttributeError:
        return False
    return swap_kind(module) is not None and getattr(module, "weight", None) is not None


def _held_only_by(root: nn.Module, group: Sequence[Site]) -> bool:
    """Every module of ``root`` holding the group's weight is one of its members.

    BART's ``shared`` table, never called, would otherwise keep a dense copy of a factorized
    table.
    """
    weight = root.get_submodule(group[0].name.split(":")[0]).weight
    members = {id(root.get_submodule(s.name.split(":")[0])) for s in group}
    return all(id(m) in members for m in root.modules() if getattr(m, "weight", None) is weight)


def joint_options(
    group: TiedGroup,
    sites: Sequence[Site],
    forms: Sequence[str],
    profile: DeviceProfile | None,
) -> list[Option]:
    """The table's options: params counted once, FLOPs / bytes / time summed over the readers.

    Options that need zero-padded sizes are left out (each reader would slice differently).
    """
    owner = sites[group.owner]
    info = dataclasses.replace(owner.info, factorizable=True, reason="")
    table = [
        o
        for o in candidates(info, owner.weight, [f for f in forms if f in _FORMS], None, profile)
        if _exact(o, owner)
    ]
    itemsize = owner.weight.element_size()
    joint = []
    for option in table:
        priced = [_priced(sites[i], option, itemsize, profile) for i in group.members]
        joint.append(
            dataclasses.replace(
                option,
                flops=sum(p.flops for p in priced),
                bytes=sum(p.bytes for p in priced),
                seconds=sum(p.seconds for p in priced),
                steps=sum(p.steps for p in priced),
            )
        )
    return joint


def _exact(option: Option, site: Site) -> bool:
    if option.form == "dense":
        return True
    rows, cols = option.tensorized_shape
    return (math.prod(rows), math.prod(cols)) == tuple(site.weight.shape)


def _priced(site: Site, option: Option, itemsize: int, profile: DeviceProfile | None) -> Option:
    if option.form == "dense":
        return dense_option(site.info, itemsize, profile)
    return price(site.info, option, itemsize, profile)


def member_choices(
    group: TiedGroup,
    sites: Sequence[Site],
    option: Option,
    profile: DeviceProfile | None,
    make_choice: Callable[[Site, Option], Choice],
) -> dict[int, Choice]:
    """One plan row per member: the first holds the table's parameters, the others 0."""
    first = sites[group.members[0]]
    itemsize = first.weight.element_size()
    rows = {}
    for k, i in enumerate(group.members):
        site = sites[i]
        choice = make_choice(site, _priced(site, option, itemsize, profile))
        if option.form != "dense":
            choice.reason = "one factorized table for " + ", ".join(
                sites[j].name for j in group.members
            )
        if k:
            choice.params_before = choice.params_after = (
                0  # the table is counted at the first reader
            )
        rows[i] = choice
    return rows
