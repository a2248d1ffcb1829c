"""Rewrite: replace each chosen site by an explicit contraction subgraph.

For a site and its chosen option, the weight is decomposed into a ``tfx``
factorized tensor and wrapped in the matching ``tfx.nn`` layer, which is
registered on the graph module under the original layer's qualified name
(``state_dict`` keys read ``<layer>.weight.factors.factor_0``, ``<layer>.bias``).
The layer's forward is traced by ``torch.fx`` (planned for the site's batch
size) and its nodes -- reshape, the planned einsum or convolution steps, bias
-- are spliced into the graph in place of the original node.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..cost._records import Choice
from ..functional._planning import planned_batch
from ..nn import FactorizedConv, FactorizedEmbedding, FactorizedLinear
from ..nn._common import set_bias
from ..tensors import FactorizedTensor, TensorizedTensor
from ._match import Site

__all__ = ["build_layer", "splice", "rewrite"]

_TENSORIZED_FORM = {"svd": "cp", "cp": "cp", "tucker": "tucker", "tt": "tt", "blocktt": "blocktt"}
_CONV_FORM = {"svd": "tt", "cp": "cp", "tucker": "tucker", "tt": "tt"}
# The contraction order the cost model priced (Choice.order); 'auto' for plans saved without one.
_IMPLEMENTATION = {"factors": "factorized", "reconstruct": "reconstructed"}


def _tensorized(site: Site, choice: Choice, **kwargs: Any) -> TensorizedTensor:
    rows, cols = choice.tensorized_shape
    weight = site.weight
    n_rows, n_cols = math.prod(rows), math.prod(cols)
    if (n_rows, n_cols) != tuple(weight.shape):  # padded with zero rows/columns by the cost model
        weight = F.pad(weight, (0, n_cols - weight.shape[1], 0, n_rows - weight.shape[0]))
    return TensorizedTensor.from_matrix(
        weight, rows, cols, rank=choice.rank, factorization=_TENSORIZED_FORM[choice.form], **kwargs
    )


class Padded(nn.Module):
    """A layer computed on zero-padded sizes: pads the input's last dim, slices the output's.

    Used where the cost model padded an awkward size (a large prime factor) to one that
    tensorizes; zero rows and columns make it exact. The bias is added after slicing.
    """

    def __init__(
        self, inner: nn.Module, in_pad: int, out_features: int, bias: torch.Tensor | None
    ) -> None:
        super().__init__()
        self.inner = inner
        self.in_pad = in_pad
        self.out_features = out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad, run the inner layer, slice, add the bias."""
        if self.in_pad:
            x = F.pad(x, (0, self.in_pad))
        y = self.inner(x)[..., : self.out_features]
        return y if self.bias is None else y + self.bias


def _single_row_layout(layer: FactorizedLinear) -> None:
    """Store a low-rank layer's two factors column-major (same shapes, values and names).

    A plan for one row of input runs ``x @ V`` and ``(.) @ U.T`` as matrix-vector products,
    and MKL streams a weight fastest when the product walks its rows: ``U.T`` and ``V.T``
    contiguous. For an 11008 x 4096 layer at rank 296 the two products take 1.0 ms that way
    against 2.1 ms on the row-major factors (2 CPU cores, one thread); from 32 rows on, the
    row-major layout is as fast or faster, so only single-row plans get this one. The
    strides survive ``state_dict`` / ``load_state_dict`` (a copy into the parameter) and
    optimizers (``zeros_like`` keeps them).
    """
    factors = layer.weight.factors
    with torch.no_grad():
        for key in factors._keys:
            p = factors._parameters.get(key)
            if p is not None and p.ndim == 2:
                p.data = p.data.t().contiguous().t()


def _dense_layer(site: Site) -> nn.Module:
    """A dense torch layer holding ``site``'s weight (an already factorized site planned dense)."""
    weight, kind = site.weight.detach().clone(), site.info.kind
    if kind == "embedding":
        return nn.Embedding.from_pretrained(weight, freeze=False, padding_idx=site.padding_idx)
    if kind == "linear":
        layer: nn.Module = nn.Linear(
            weight.shape[1],
            weight.shape[0],
            bias=site.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
    else:
        conv = site.conv
        cls = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[weight.dim()]
        layer = cls(
            weight.shape[1],
            weight.shape[0],
            tuple(weight.shape[2:]),
            stride=conv["stride"],
            padding=conv["padding"],
            dilation=conv["dilation"],
            bias=site.bias is not None,
            padding_mode=conv["padding_mode"],
            device=weight.device,
            dtype=weight.dtype,
        )
    with torch.no_grad():
        layer.weight.copy_(weight)
        if site.bias is not None:
            layer.bias.copy_(site.bias)
    return layer


def table_tensor(site: Site, choice: Choice) -> TensorizedTensor:
    """``site``'s weight as the tensorized matrix ``choice`` says: one table for tied readers."""
    return _tensorized(site, choice, **({"time_limit": 10.0} if choice.form == "cp" else {}))


def tied_layer(site: Site, choice: Choice, tensor: TensorizedTensor) -> nn.Module:
    """A layer for ``site`` (linear or embedding) that holds ``tensor`` itself.

    Every reader of a tied weight holds the same tensor module, so the result stays tied.
    """
    rows, cols = choice.tensorized_shape
    implementation = _IMPLEMENTATION.get(choice.order, "auto")
    if site.info.kind == "embedding":
        return FactorizedEmbedding(
            math.prod(rows),
            math.prod(cols),
            auto_tensorize=False,
            tensorized_num_embeddings=rows,
            tensorized_embedding_dim=cols,
            factorization=tensor,
            padding_idx=site.padding_idx,
            implementation=implementation if choice.order in _IMPLEMENTATION else "factorized",
        )
    layer = FactorizedLinear(
        cols, rows, bias=site.bias is not None, factorization=tensor, implementation=implementation
    )
    if site.bias is not None:
        set_bias(layer.bias, layer.weight, site.bias)  # type: ignore[arg-type]
    return layer


def shared_basis_layer(members: list[Site], rank: int, stats: Any = None) -> dict[str, nn.Module]:
    """Layers for sibling linears over one input basis: ``W_k ~ U_k diag(w) V^T``.

    ``V`` and ``w`` are one pair of parameters held by every member (from one truncated SVD of
    the stacked weights, whitened by the shared input's statistics when given).
    """
    from ..tensors import CPTensorized
    from ..tensors._decompose import truncated_svd

    first = members[0].weight
    stacked = torch.cat([m.weight.double() for m in members])
    if stats is not None:
        whitening = stats.whitening()
        u, s, vh = truncated_svd(whitening.apply(stacked), rank)
        stacked = whitening.undo((u * s) @ vh)
    u, s, vh = truncated_svd(stacked, rank)
    left = (u * s).to(first.dtype)
    basis = nn.Parameter(vh.T.contiguous().to(first.dtype))
    weights = nn.Parameter(torch.ones(rank, dtype=first.dtype, device=first.device))
    n_in = first.shape[1]
    layers: dict[str, nn.Module] = {}
    offset = 0
    for member in members:
        out = member.weight.shape[0]
        factor = nn.Parameter(left[offset : offset + out].contiguous())
        offset += out
        tensor = CPTensorized(weights, [factor, basis], ((out,), (n_in,)), rank)
        layer = FactorizedLinear(
            (n_in,),
            (out,),
            bias=member.bias is not None,
            factorization=tensor,
            implementation="factorized",
        )
        if member.bias is not None:
            set_bias(layer.bias, layer.weight, member.bias)  # type: ignore[arg-type]
        layers[member.name] = layer
    return layers


def build_layer(site: Site, choice: Choice) -> nn.Module:
    """The ``tfx.nn`` layer holding ``site``'s weight decomposed as ``choice`` says.

    A dense torch layer for an already factorized site planned dense.
    """
    if choice.form == "dense":
        return _dense_layer(site)
    weight = site.weight
    extra = {"time_limit": 10.0} if choice.form == "cp" else {}
    implementation = _IMPLEMENTATION.get(choice.order, "auto")
    if site.info.kind == "linear":
        tensor = _tensorized(site, choice, **extra)
        rows, cols = choice.tensorized_shape
        out_features, in_features = site.info.weight_shape
        padded = (math.prod(rows), math.prod(cols)) != (out_features, in_features)
        has_bias = site.bias is not None and not padded
        layer = FactorizedLinear(
            cols,
            rows,
            bias=has_bias,
            factorization=tensor,
            implementation=implementation,
            device=weight.device,
            dtype=weight.dtype,
        )
        if has_bias:
            set_bias(layer.bias, layer.weight, site.bias)  # type: ignore[arg-type]
        if padded:
            return Padded(layer, math.prod(cols) - in_features, out_features, site.bias)
        if (
            len(rows) == len(cols) == 1
            and choice.order == "factors"
            and (choice.tokens or site.info.tokens) <= 1
        ):
            _single_row_layout(layer)
        return layer
    if site.info.kind == "embedding":
        tensor = _tensorized(site, choice, **extra)
        rows, cols = choice.tensorized_shape
        num, dim = site.info.weight_shape
        layer = FactorizedEmbedding(
            math.prod(rows),
            math.prod(cols),
            auto_tensorize=False,
            tensorized_num_embeddings=rows,
            tensorized_embedding_dim=cols,
            factorization=tensor,
            padding_idx=site.padding_idx,
            implementation=implementation if choice.order in _IMPLEMENTATION else "factorized",
        )
        # Padded rows are never looked up; padded columns are sliced off.
        return layer if math.prod(cols) == dim else Padded(layer, 0, dim, None)
    tensor = FactorizedTensor.from_tensor(
        weight, rank=choice.rank, factorization=_CONV_FORM[choice.form], **extra
    )
    conv = site.conv
    return FactorizedConv.from_factorization(
        tensor,
        implementation=implementation,
        stride=conv["stride"],
        padding=conv["padding"],
        dilation=conv["dilation"],
        bias=site.bias,
        padding_mode=conv["padding_mode"],
    )


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

    ``build`` makes each site's layer (:func:`build_layer` by default; the torch.compile
    backend passes one that caches the decompositions). ``keep_bias``: the layer takes the
    site's own bias Parameter (a tied bias stays tied); the backend, whose parameters are
    graph inputs, passes False.
    """
    replaced: dict[fx.Node, Any] = {}  # a site's input may be an earlier site, already spliced away
    for site, choice in zip(sites, choices, strict=False):
        if choice.form != "dense" or site.held_params is not None:
            layer = build(site, choice)
            if keep_bias:
                _keep_bias(layer, _bias_parameter(gm, site))
            inputs = replaced.get(site.input, site.input)
            replaced[site.node] = splice(
                gm, site.node, layer, site.name, inputs, choice.tokens or site.info.tokens
            )
        if progress is not None:
            progress.update(1)
