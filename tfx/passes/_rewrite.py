"""Rewrite: replace each chosen site by an explicit contraction subgraph.

Stage: decompose -> **rewrite** -> emit.

For a site and its chosen option, the decompose stage (:mod:`tfx.passes._decompose`) makes
the matching ``tfx.nn`` layer, which is registered on the graph module under the original
layer's qualified name (``state_dict`` keys read ``<layer>.weight.factors.factor_0``,
``<layer>.bias``). The layer's forward is traced by ``torch.fx`` (planned for the site's
batch size) and its nodes -- reshape, the planned einsum or convolution steps, bias -- are
spliced into the graph in place of the original node.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence, Set
from typing import Any

import torch
from torch import fx, nn

from ..cost._records import Choice
from ..functional._planning import planned_batch
from ._decompose import build_layer
from ._match import Site
from ._pass import Compilation, ContractError, Pass, site_context
from ._swap import module_of, swap_modules

__all__ = ["Rewrite", "splice", "rewrite", "merge_shared_steps", "swap_sites", "module_conv"]

#: From the ``(site, choice)`` calls a result will make, the builder to use for them
#: (distributed: the layers made beforehand, spread over the ranks).
Spread = Callable[[list[tuple[Site, Choice]]], Callable[[Site, Choice], nn.Module]]


def splice(
    gm: fx.GraphModule, node: fx.Node, layer: nn.Module, prefix: str, inputs: fx.Node, batch: int
) -> Any:
    """Register ``layer`` at ``prefix`` and replace ``node`` by the ops of its traced forward."""
    with planned_batch(batch):
        sub = fx.symbolic_trace(layer)
    owner_path, _, attr = prefix.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    if (
        attr in owner._parameters or attr in owner._buffers
    ):  # a bare weight (e.g. F.linear(x, self.proj))
        delattr(owner, attr)
    gm.add_submodule(prefix, layer)
    env: dict[fx.Node, Any] = {}
    first = True
    result: Any = None
    with gm.graph.inserting_before(node):
        for n in sub.graph.nodes:
            if n.op == "placeholder":
                env[n] = inputs if first else (n.args[0] if n.args else None)
                first = False
            elif n.op == "output":
                result = fx.map_arg(n.args[0], lambda a: env[a])
            else:
                new = gm.graph.node_copy(n, lambda a: env[a])
                if n.op in ("get_attr", "call_module"):
                    new.target = f"{prefix}.{n.target}"
                # which layer these ops compute: capture folds them back into one call of the
                # layer when the result is factorized again
                new.meta["tfx"] = {"layer": prefix}
                env[n] = new
    reads = node.all_input_nodes
    node.replace_all_uses_with(result)
    gm.graph.erase_node(node)
    for read in reads:  # the old weight / bias reads: their attributes may be gone with the layer
        if read.op == "get_attr" and not read.users:
            gm.graph.erase_node(read)
            _drop_unread(gm, read.target)
    return result


def _drop_unread(gm: fx.GraphModule, target: str) -> None:
    """Delete parameter/buffer ``target`` when no node of the graph reads it any more.

    E.g. the bias of a bare ``F.linear`` weight, now held by the spliced layer: the module's
    parameters are then the plan's. Attributes of modules the graph calls are left to those
    modules.
    """
    if any(n.op == "get_attr" and n.target == target for n in gm.graph.nodes):
        return
    owner_path, _, attr = target.rpartition(".")
    try:
        owner = gm.get_submodule(owner_path) if owner_path else gm
    except AttributeError:
        return
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    if any(owner_path == c or owner_path.startswith(f"{c}.") for c in called):
        return  # a module the graph still calls may read it itself
    if attr in owner._parameters or attr in owner._buffers:
        delattr(owner, attr)


def _bias_parameter(gm: fx.GraphModule, site: Site) -> nn.Parameter | None:
    """The bias Parameter the site's node reads, if any."""
    node = site.node
    if node is None:
        return None
    if node.op == "call_module":
        bias = getattr(gm.get_submodule(str(node.target)), "bias", None)
    else:
        from ._match import _ADDMM_FNS, _arg

        arg = node.args[0] if node.target in _ADDMM_FNS else _arg(node, 2, "bias")
        bias = None
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            bias = gm
            for part in str(arg.target).split("."):
                bias = getattr(bias, part)
    return bias if isinstance(bias, nn.Parameter) else None


def _keep_bias(layer: nn.Module, bias: nn.Parameter | None) -> None:
    """Give ``layer`` the site's own bias Parameter (same values).

    So a bias tied elsewhere (RoBERTa's ``lm_head.bias``) or read by several calls (ALBERT's
    shared layers) stays one.
    """
    new = layer._parameters.get("bias")
    if bias is not None and isinstance(new, nn.Parameter) and new.shape == bias.shape:
        if bool((new.detach() == bias.detach()).all()):
            layer.bias = bias


def rewrite(
    gm: fx.GraphModule,
    sites: list[Site],
    choices: list[Choice],
    progress: Any = None,
    *,
    build: Callable[[Site, Choice], nn.Module] = build_layer,
    keep_bias: bool = True,
) -> None:
    """Replace every site whose choice is not dense; ``progress`` is an optional tqdm-like bar.

    ``build`` makes each site's layer (:func:`~tfx.passes.build_layer` by default;
    ``tfx.factorize`` passes its :class:`~tfx.passes.Decomposer`, the torch.compile backend one
    that caches the decompositions). ``keep_bias``: the layer takes the site's own bias
    Parameter (a tied bias stays tied); the backend, whose parameters are graph inputs, passes
    False. An error raised for a site names it (:func:`~tfx.passes._pass.site_context`).
    """
    replaced: dict[fx.Node, Any] = {}  # a site's input may be an earlier site, already spliced away
    for site, choice in zip(sites, choices, strict=False):
        if choice.form != "dense" or site.held_params is not None:
            with site_context(site, choice):
                layer = build(site, choice)
                if keep_bias:
                    _keep_bias(layer, _bias_parameter(gm, site))
                inputs = replaced.get(site.input, site.input)
                replaced[site.node] = splice(
                    gm, site.node, layer, site.name, inputs, choice.tokens or site.info.tokens
                )
        if progress is not None:
            progress.update(1)


def merge_shared_steps(gm: fx.GraphModule, layers: set[str]) -> int:
    """Merge the identical steps of spliced ``layers`` reading the same parameters and input.

    Such steps are the ``x V`` of siblings sharing a basis: common-subexpression elimination
    over their ops, with parameters compared by identity. Returns the nodes removed.
    """
    canon: dict[Any, fx.Node] = {}
    removed = 0
    for node in list(gm.graph.nodes):
        if node.meta.get("tfx", {}).get("layer") not in layers or node.op not in (
            "get_attr",
            "call_function",
            "call_method",
        ):
            continue
        if node.op == "get_attr":
            key: Any = ("get_attr", id(_resolve(gm, str(node.target))))
        else:
            key = (node.op, node.target, _hashable(node.args), _hashable(node.kwargs))
        if key in canon:
            node.replace_all_uses_with(canon[key])
            gm.graph.erase_node(node)
            removed += 1
        else:
            canon[key] = node
    return removed


def _resolve(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _hashable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(_hashable(v) for v in value))
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, fx.Node):
        return ("node", id(value))
    if isinstance(value, torch.Tensor):
        return ("tensor", id(value))
    try:
        hash(value)
    except TypeError:
        return ("object", id(value))
    return value


def module_conv(site: Site, module: nn.Module) -> Site:
    """``site`` with the convolution settings and padding index of its module.

    A graph shows a reflect-padded conv as a pad and a conv with no padding; the module keeps
    its own.
    """
    if isinstance(module, nn.modules.conv._ConvNd):
        conv = {
            "stride": tuple(module.stride),
            "padding": module.padding if isinstance(module.padding, str) else tuple(module.padding),
            "dilation": tuple(module.dilation),
            "groups": module.groups,
            "padding_mode": module.padding_mode,
        }
        return dataclasses.replace(site, conv=conv)
    if isinstance(module, nn.Embedding):
        return dataclasses.replace(site, padding_idx=module.padding_idx)
    return site


def swap_sites(
    root: nn.Module,
    path: str,
    sites: Sequence[Site],
    plan: Any,
    build: Callable[[Site, Choice], nn.Module],
    progress: Any = None,
    *,
    tied: Set[str] = frozenset(),
    spread: Spread | None = None,
) -> nn.Module:
    """``root`` (the captured copy of the model) with its chosen layers replaced, in place.

    See :mod:`tfx.passes._swap`. ``tied``: the names of tied readers (replaced at their own
    module). ``spread`` (distributed): from the ``(site, choice)`` calls, the builder to use
    instead of ``build``.
    """
    targets: list[tuple[Any, tuple[Site, Choice]]] = []
    for site in sites:
        choice = plan.choice(site.name)
        if choice.form == "dense" and site.held_params is None:
            if progress is not None:
                progress.update(1)
            continue
        module: Any
        if path == "module_swap" or site.name in tied:  # a tied reader: the module at its name
            module = root.get_submodule(site.name.split(":")[0])  # "<module>:k": its k-th call
        else:
            module = module_of(root, site.name, site.weight_target)
        targets.append((module, (module_conv(site, module), choice)))
    if spread is not None:
        build = spread([item for _, item in targets])
    swap_modules(root, targets, lambda item: build(*item), progress)
    return root


class Rewrite(Pass):
    """Each chosen site replaced by the layer the decompose stage builds for it.

    A graph result: spliced into the captured graph as its contraction ops (:func:`rewrite`),
    the siblings' shared first steps merged. A modules result: the layer modules of the
    captured copy of the model swapped (:func:`swap_sites`). Reads the sites, the plan and
    the builder (:class:`~tfx.passes.Decomposer`); sets ``result``.

    Args:
        tied: the names of tied readers (one table).
        spread: distributed: from the ``(site, choice)`` calls, the builder to use instead.
        progress: a tqdm-like bar, updated once per site.
    """

    reads = ("captured", "sites", "emission", "plan", "build")

    def __init__(
        self,
        *,
        tied: Set[str] = frozenset(),
        spread: Spread | None = None,
        progress: Any = None,
    ) -> None:
        self.tied = tied
        self.spread = spread
        self.progress = progress

    def call(self, state: Compilation) -> None:
        """Rewrite the graph or swap the modules; the analysis graph is then let go."""
        captured, sites, plan, build = state.captured, state.sites, state.plan, state.build
        if state.emission == "modules":
            state.result = swap_sites(
                captured.model,
                captured.path,
                sites,
                plan,
                build,
                self.progress,
                tied=self.tied,
                spread=self.spread,
            )
        else:
            choices = [plan.choice(s.name) for s in sites]
            if self.spread is not None:
                build = self.spread(list(zip(sites, choices, strict=True)))
            rewrite(captured.gm, sites, choices, self.progress, build=build)
            groups = {c.site for c in plan.choices if c.group}
            merge_shared_steps(captured.gm, groups)  # siblings: x V once
            state.result = captured.gm
        state.captured = None  # the analysis graph of a modules result can go now

    def ensures(self, state: Compilation) -> None:
        """A graph result still lints, and no site it factorizes is left in it."""
        if state.emission != "graph":
            return
        state.result.graph.lint()
        plan = state.plan
        left = [
            s.name
            for s in state.sites
            if (plan.choice(s.name).form != "dense" or s.held_params is not None)
            and s.node is not None
            and not getattr(s.node, "_erased", False)  # fx marks the nodes it erased
        ]
        if left:
            raise ContractError(f"sites planned factorized but still in the graph: {left[:5]}")
