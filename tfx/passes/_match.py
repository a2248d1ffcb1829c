"""Match: find the linear, convolution and embedding sites of a captured graph.

A site is a ``call_module`` of ``nn.Linear`` / ``nn.Conv{1,2,3}d`` /
``nn.Embedding``, or a functional call whose weight is a parameter of the
model (``F.linear``, ``F.conv*``, ``F.embedding``, their ATen forms from
``torch.export``, and ``addmm``/``mm``/``matmul`` with a parameter as the
right operand, which is how GPT-2's ``Conv1D`` computes ``x @ W + b``).
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..cost._records import SiteInfo

__all__ = ["Site", "find_sites", "MIN_PARAMS"]

#: Sites with fewer weight parameters stay dense (factorizing them saves little).
MIN_PARAMS = 256

aten = torch.ops.aten
_LINEAR_FNS = {F.linear, torch._C._nn.linear, aten.linear.default}
_CONV_FNS = {
    F.conv1d: 1,
    F.conv2d: 2,
    F.conv3d: 3,
    aten.conv1d.default: 1,
    aten.conv2d.default: 2,
    aten.conv3d.default: 3,
    # padding="same" / "valid" lower to these overloads (same arguments, a string padding)
    aten.conv1d.padding: 1,
    aten.conv2d.padding: 2,
    aten.conv3d.padding: 3,
}
_EMBEDDING_FNS = {F.embedding, aten.embedding.default}
_ADDMM_FNS = {torch.addmm, aten.addmm.default}
_MATMUL_FNS = {torch.matmul, operator.matmul, aten.matmul.default, aten.mm.default, torch.mm}


@dataclasses.dataclass
class Site:
    """One site in the graph.

    Attributes:
        info: the shapes and numbers the cost model sees.
        node: the graph node computing the layer.
        input: the node of the layer's input (indices for embeddings).
        weight: the dense weight, in the layer's orientation ((out, in) for linear).
        bias: the bias tensor, or None.
        weight_target: the attribute path of the weight (``get_attr`` target or module name +
            ``".weight"``).
        conv: for convolutions: stride, padding, dilation, groups, padding_mode.
        padding_idx: for embeddings.
        held_params: for a layer that is already factorized (a ``tfx.nn`` layer, re-planned
            from its reconstruction ``weight``): the parameters its factors hold now; None
            for a dense layer (it holds ``info.dense_params``).
        svd: ``(u, s, vh)``, the low-rank weight to build instead of decomposing ``weight``
            (set by the calibrated decomposition: no dense ``out x in`` target is formed).
    """

    info: SiteInfo
    node: fx.Node
    input: fx.Node
    weight: torch.Tensor
    bias: torch.Tensor | None
    weight_target: str
    conv: dict[str, Any] = dataclasses.field(default_factory=dict)
    padding_idx: int | None = None
    held_params: int | None = None
    svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def name(self) -> str:
        """The original module's qualified name."""
        return self.info.name


def _attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _param(gm: fx.GraphModule, node: Any) -> tuple[str, torch.Tensor] | None:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        value = _attr(gm, str(node.target))
        if isinstance(value, torch.Tensor):
            return str(node.target), value
    return None


def _weight(gm: fx.GraphModule, node: Any) -> tuple[str, torch.Tensor] | None:
    """Like :func:`_param`, for a layer's weight: only an ``nn.Parameter`` makes a site.

    A buffer used as a weight, e.g. a fixed projection, is not a parameter of the budget.
    """
    found = _param(gm, node)
    return found if found is not None and isinstance(found[1], nn.Parameter) else None


def _shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    if meta is not None and hasattr(meta, "shape"):
        return tuple(int(s) for s in meta.shape)
    val = node.meta.get("val", node.meta.get("example_value"))  # example_value: dynamo's graphs
    if isinstance(val, torch.Tensor):
        try:
            return tuple(_size(s) for s in val.shape)
        except Exception:  # noqa: BLE001 - unbacked symbolic sizes
            return None
    return None


def _size(size: Any) -> int:
    """A size, or a symbolic size's example value, read without adding a guard.

    ``int()`` on a ``SymInt`` would specialize it: in the torch.compile backend that
    turns dynamo's dynamic batch dimension static and recompiles per batch size.
    """
    if isinstance(size, int):
        return size
    hint = getattr(size.node, "hint", None)
    if hint is None:
        from torch.fx.experimental.symbolic_shapes import optimization_hint

        hint = optimization_hint(size)
    return int(hint)


def _module_name(target: str, node: fx.Node | None = None) -> str:
    """The layer's qualified name: the exporter's module stack if any, else the weight's path."""
    stack = node.meta.get("nn_module_stack") if node is not None else None
    if stack:
        path = list(stack.values())[-1][0]
        if isinstance(path, str) and path:
            return path
    return target.rsplit(".", 1)[0] if "." in target else target


def _positions(node: Any) -> int:
    """Batch x spatial positions of a conv's input or output (0 when unknown)."""
    shape = _shape(node)
    return math.prod((shape[0], *shape[2:])) if shape else 0


def _tokens(node: Any, features: int) -> int:
    shape = _shape(node)
    if not shape:
        return 1
    return max(1, math.prod(shape) // max(features, 1))


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _module_site(gm: fx.GraphModule, node: fx.Node, path: str) -> Site | None:
    module = gm.get_submodule(str(node.target))
    return _site_of_module(module, str(node.target), node, path)


def _factorized_site(module: nn.Module, name: str, node: Any, path: str) -> Site | None:
    """A ``tfx.nn`` layer as a site.

    Its weight is the reconstruction, its held parameters the factors' (a result of
    ``tfx.factorize`` can be factorized again, with exact counts).
    """
    from ..nn import FactorizedConv, FactorizedEmbedding, FactorizedLinear

    if getattr(module, "n_layers", 1) != 1:
        return None
    x = node.args[0] if node is not None and node.args else None
    held = sum(p.numel() for n, p in module.named_parameters() if n != "bias")
    bias = _detached(getattr(module, "bias", None))
    with torch.no_grad():
        if isinstance(module, FactorizedLinear):
            weight = module.weight.to_matrix().detach()
            info = SiteInfo(
                name,
                "linear",
                tuple(weight.shape),
                _tokens(x, weight.shape[1]),
                bias is not None,
                path=path,
            )
            return Site(info, node, x, weight, bias, name + ".weight", held_params=held)
        if isinstance(module, FactorizedEmbedding):
            weight = module.weight.to_matrix().detach()
            shape = _shape(x)
            info = SiteInfo(
                name,
                "embedding",
                tuple(weight.shape),
                math.prod(shape) if shape else 1,
                False,
                path=path,
            )
            return Site(
                info,
                node,
                x,
                weight,
                None,
                name + ".weight",
                padding_idx=module.padding_idx,
                held_params=held,
            )
        if isinstance(module, FactorizedConv) and module.groups == 1:
            weight = module.weight.to_tensor().detach()
            out = _shape(node)
            tokens = math.prod((out[0], *out[2:])) if out else 1
            info = SiteInfo(
                name,
                "conv",
                tuple(weight.shape),
                tokens,
                bias is not None,
                path=path,
                in_tokens=_positions(x),
            )
            conv = {
                "stride": tuple(module.stride),
                "padding": module.padding,
                "dilation": tuple(module.dilation),
                "groups": 1,
                "padding_mode": module.padding_mode,
            }
            return Site(info, node, x, weight, bias, name + ".weight", conv, held_params=held)
    return None


def _site_of_module(module: nn.Module, name: str, node: Any, path: str) -> Site | None:
    from ..nn import FactorizedConv, FactorizedEmbedding, FactorizedLinear

    if isinstance(module, FactorizedLinear | FactorizedConv | FactorizedEmbedding):
        return _factorized_site(module, name, node, path)
    x = node.args[0] if node is not None and node.args else None
    if isinstance(module, nn.Linear):
        info = SiteInfo(
            name,
            "linear",
            tuple(module.weight.shape),
            _tokens(x, module.in_features),
            module.bias is not None,
            path=path,
        )
        return Site(info, node, x, module.weight.detach(), _detached(module.bias), name + ".weight")
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        out = _shape(node)
        tokens = math.prod((out[0], *out[2:])) if out else 1
        info = SiteInfo(
            name,
            "conv",
            tuple(module.weight.shape),
            tokens,
            module.bias is not None,
            path=path,
            in_tokens=_positions(x),
        )
        conv = {
            "stride": tuple(module.stride),
            "padding": module.padding if isinstance(module.padding, str) else tuple(module.padding),
            "dilation": tuple(module.dilation),
            "groups": module.groups,
            "padding_mode": module.padding_mode,
        }
        return Site(
            info, node, x, module.weight.detach(), _detached(module.bias), name + ".weight", conv
        )
    if (
        type(module).__name__ == "Conv1D"
        and getattr(module, "weight", None) is not None
        and module.weight.dim() == 2
    ):
        # transformers' Conv1D (GPT-2): x @ W + b with W stored (in, out); a module on the
        # module-swap path (the graph paths see its addmm).
        matrix = module.weight.detach().t()
        info = SiteInfo(
            name,
            "linear",
            tuple(matrix.shape),
            _tokens(x, matrix.shape[1]),
            module.bias is not None,
            path=path,
        )
        return Site(info, node, x, matrix, _detached(module.bias), name + ".weight")
    if isinstance(module, nn.Embedding):
        shape = _shape(x)
        info = SiteInfo(
            name,
            "embedding",
            tuple(module.weight.shape),
            math.prod(shape) if shape else 1,
            False,
            path=path,
        )
        site = Site(
            info,
            node,
            x,
            module.weight.detach(),
            None,
            name + ".weight",
            padding_idx=module.padding_idx,
        )
        if module.max_norm is not None or module.scale_grad_by_freq or module.sparse:
            site.info = dataclasses.replace(
                info, factorizable=False, reason="max_norm/scale_grad_by_freq/sparse embedding"
            )
        return site
    return None


def _detached(value: torch.Tensor | None) -> torch.Tensor | None:
    return None if value is None else value.detach()


def _function_site(gm: fx.GraphModule, node: fx.Node, path: str) -> Site | None:
    target = node.target
    if target in _LINEAR_FNS:
        weight, bias = _weight(gm, _arg(node, 1, "weight")), _param(gm, _arg(node, 2, "bias"))
        if weight is None or weight[1].dim() != 2:
            return None
        x = node.args[0]
        info = SiteInfo(
            _module_name(weight[0], node),
            "linear",
            tuple(weight[1].shape),
            _tokens(x, weight[1].shape[1]),
            bias is not None,
            path=path,
        )
        return Site(
            info, node, x, weight[1].detach(), _detached(bias[1]) if bias else None, weight[0]
        )
    if target in _ADDMM_FNS or target in _MATMUL_FNS:
        addmm = target in _ADDMM_FNS
        x, w = (node.args[1], node.args[2]) if addmm else (node.args[0], node.args[1])
        weight = _weight(gm, w)
        bias = _param(gm, node.args[0]) if addmm else None
        if weight is None or weight[1].dim() != 2 or (addmm and bias is None):
            return None
        matrix = weight[1].detach().t()  # x @ W: the linear weight is W^T, (out, in)
        info = SiteInfo(
            _module_name(weight[0], node),
            "linear",
            tuple(matrix.shape),
            _tokens(x, matrix.shape[1]),
            addmm,
            path=path,
        )
        return Site(info, node, x, matrix, _detached(bias[1]) if bias else None, weight[0])
    if target in _CONV_FNS:
        weight, bias = _weight(gm, _arg(node, 1, "weight")), _param(gm, _arg(node, 2, "bias"))
        if weight is None:
            return None
        order = _CONV_FNS[target]
        conv = {
            "stride": _per_dim(_arg(node, 3, "stride", 1), order),
            "padding": _padding(_arg(node, 4, "padding", 0), order),
            "dilation": _per_dim(_arg(node, 5, "dilation", 1), order),
            "groups": int(_arg(node, 6, "groups", 1)),
            "padding_mode": "zeros",
        }
        out = _shape(node)
        tokens = math.prod((out[0], *out[2:])) if out else 1
        info = SiteInfo(
            _module_name(weight[0], node),
            "conv",
            tuple(weight[1].shape),
            tokens,
            bias is not None,
            path=path,
            in_tokens=_positions(node.args[0]),
        )
        return Site(
            info,
            node,
            node.args[0],
            weight[1].detach(),
            _detached(bias[1]) if bias else None,
            weight[0],
            conv,
        )
    if target in _EMBEDDING_FNS:
        aten_form = target is aten.embedding.default
        w_node, x = (node.args[0], node.args[1]) if aten_form else (node.args[1], node.args[0])
        weight = _weight(gm, w_node)
        if weight is None:
            return None
        padding_idx = _arg(node, 2, "padding_idx", -1 if aten_form else None)
        padding_idx = (
            None if padding_idx is None or (aten_form and padding_idx == -1) else int(padding_idx)
        )
        shape = _shape(x)
        info = SiteInfo(
            _module_name(weight[0], node),
            "embedding",
            tuple(weight[1].shape),
            math.prod(shape) if shape else 1,
            False,
            path=path,
        )
        return Site(info, node, x, weight[1].detach(), None, weight[0], padding_idx=padding_idx)
    return None


def _per_dim(value: Any, order: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * order
    value = tuple(int(v) for v in value)
    return value * order if len(value) == 1 else value


def _padding(value: Any, order: int) -> Any:
    return value if isinstance(value, str) else _per_dim(value, order)


def _storage(site: Site) -> int:
    return site.weight.untyped_storage().data_ptr() if site.weight.numel() else id(site)


def _used_elsewhere(site: Site) -> bool:
    """Whether the weight's graph node feeds anything besides the layer (then it must stay)."""
    if site.node is None:
        return False
    for arg in site.node.all_input_nodes:
        if arg.op == "get_attr" and str(arg.target) == site.weight_target:
            return any(user is not site.node for user in arg.users)
    return False


def _dense_reason(site: Site, kinds: set[str], skip: set[str]) -> str:
    info, w = site.info, site.weight
    if site.name in skip or any(site.name.startswith(s + ".") for s in skip):
        return "skipped (skip=)"
    if info.kind not in kinds:
        return f"kind {info.kind!r} not in kinds="
    if not w.is_floating_point():
        return f"non-floating weight ({w.dtype})"
    if info.kind == "conv" and site.conv.get("groups", 1) != 1:
        return f"grouped conv (groups={site.conv['groups']})"
    if info.dense_params < MIN_PARAMS or min(info.weight_shape[:2]) < 2:
        return f"tiny (< {MIN_PARAMS} params)"
    if _used_elsewhere(site):
        return "weight also read outside the layer"
    return ""


def find_sites(
    gm: fx.GraphModule, *, path: str, kinds: Sequence[str] | None = None, skip: Sequence[str] = ()
) -> list[Site]:
    """Every site of ``gm`` in graph order.

    ``info.factorizable`` is False (with a reason) for those that stay dense.

    Weights used by more than one site (tied, e.g. an LM head sharing the token
    embedding) stay dense with the reason in the plan: they are never silently untied.
    """
    kinds_set = set(kinds) if kinds is not None else {"linear", "conv", "embedding"}
    sites: list[Site] = []
    for node in gm.graph.nodes:
        site = None
        if node.op == "call_module":
            site = _module_site(gm, node, path)
        elif node.op == "call_function":
            site = _function_site(gm, node, path)
        if site is not None:
            sites.append(site)
    _unique_names(sites)
    for site in sites:
        reason = _dense_reason(site, kinds_set, set(skip))
        if reason and site.info.factorizable:
            site.info = dataclasses.replace(site.info, factorizable=False, reason=reason)
        elif reason:
            site.info = dataclasses.replace(site.info, reason=reason)
    _mark_tied(sites, set(skip))
    return sites


def _unique_names(sites: Sequence[Site]) -> None:
    """Name each call of a weight called at several places as its own site.

    A weight called at several places (a functional table read by an embedding and a head,
    a layer module called twice) is one site per call: the second and later are named
    ``<name>:1``, ``<name>:2``, ... in graph order, so that every site has its own row.
    """
    seen: dict[str, int] = {}
    for site in sites:
        count = seen.get(site.name, 0)
        seen[site.name] = count + 1
        if count:
            site.info = dataclasses.replace(site.info, name=f"{site.info.name}:{count}")


def find_module_sites(
    root: nn.Module, *, kinds: Sequence[str] | None = None, skip: Sequence[str] = ()
) -> list[Site]:
    """Sites as modules of ``root`` (the module-swap path: no graph, so no shapes and no node).

    Subclasses of the layer types are sites. One whose ``forward`` is its own and does not go
    through ``super().forward`` stays dense (tfx cannot see what it computes with its weight),
    and so do the projections ``nn.MultiheadAttention`` reads directly; each says why.
    """
    from ._swap import swap_kind

    kinds_set = set(kinds) if kinds is not None else {"linear", "conv", "embedding"}
    read_by_parent = {
        id(m.out_proj) for m in root.modules() if isinstance(m, nn.MultiheadAttention)
    }
    sites = []
    for name, module in root.named_modules(remove_duplicate=False):
        site = _site_of_module(module, name, None, "module_swap")
        if site is None:
            continue
        reason = _dense_reason(site, kinds_set, set(skip))
        if not reason and id(module) in read_by_parent:
            reason = "weight read by its nn.MultiheadAttention, not through its forward"
        if not reason and swap_kind(module) is None:
            reason = (
                f"{type(module).__name__} overrides forward without calling super().forward; pass "
                "example_inputs so torch.export can see what it computes"
            )
        if reason:
            site.info = dataclasses.replace(site.info, factorizable=False, reason=reason)
        sites.append(site)
    _mark_tied(sites, set(skip))
    return sites


def _mark_tied(sites: Sequence[Site], skip: set[str]) -> None:
    """Keep sites whose weights share storage dense.

    Tied weights (e.g. an LM head and the token embedding) stay dense, with the reason in the
    plan: never silently untied.
    """
    users: dict[int, list[str]] = {}
    for site in sites:
        users.setdefault(_storage(site), []).append(site.name)
    for site in sites:
        shared = users.get(_storage(site), [])
        if len(shared) > 1 and site.name not in skip:
            others = sorted({n for n in shared if n != site.name})
            reason = (
                ("tied weight (shared with " + ", ".join(others) + ")")
                if others
                else "weight used by several call sites"
            )
            site.info = dataclasses.replace(site.info, factorizable=False, reason=reason)
