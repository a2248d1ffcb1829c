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

from collections.abc import Callable
from typing import Any

from torch import fx, nn

from ..cost._records import Choice
from ..functional._planning import planned_batch
from ._decompose import build_layer
from ._match import Site
from ._pass import site_context

__all__ = ["splice", "rewrite"]


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
