"""Decompose: the layer each chosen site becomes, built from the plan.

Stage: choose -> **decompose** -> rewrite (a graph) or swap (the model's own modules).

One place turns a plan's choice into a layer, for every caller: ``tfx.factorize`` (graph and
modules results), sequential mode (block by block) and the ``torch.compile`` backend (one
decomposition per live Parameter). :func:`build_layer` decomposes one weight as its
``Choice`` says and wraps it in the matching ``tfx.nn`` layer; :func:`decompose` first makes
the weight output-aware when input statistics are given
(:func:`~tfx.passes._calibrate.whitened_site`); :class:`Decomposer` is the chain for a whole
plan: a tied table's readers get layers over one tensor, siblings over one input get layers
over one shared basis, every other site :func:`decompose`. Each build runs in
:func:`~tfx.passes._pass.site_context`: an error names the site and its choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..cost._records import Choice
from ..nn import FactorizedConv, FactorizedEmbedding, FactorizedLinear
from ..nn._common import set_bias
from ..tensors import CPTensorized, FactorizedTensor, TensorizedTensor
from ._match import Site
from ._pass import site_context

__all__ = [
    "Padded",
    "build_layer",
    "decompose",
    "Decomposer",
    "table_tensor",
    "tied_layer",
    "shared_basis_layer",
]

_TENSORIZED_FORM = {"svd": "cp", "cp": "cp", "tucker": "tucker", "tt": "tt", "blocktt": "blocktt"}
_CONV_FORM = {"svd": "tt", "cp": "cp", "tucker": "tucker", "tt": "tt"}
# The contraction order the cost model priced (Choice.order); 'auto' for plans saved without one.
_IMPLEMENTATION = {"factors": "factorized", "reconstruct": "reconstructed"}


def _tensorized(site: Site, choice: Choice, **kwargs: Any) -> TensorizedTensor:
    rows, cols = choice.tensorized_shape
    weight = site.weight
    n_rows, n_cols = math.prod(rows), math.prod(cols)
    if site.svd is not None and choice.form == "svd" and (n_rows, n_cols) == tuple(weight.shape):
        # The calibrated decomposition's SVD (a CP of the matrix): used as it is.
        u, s, vh = site.svd
        return CPTensorized(
            nn.Parameter(s.detach().contiguous()),
            [nn.Parameter(u.detach().contiguous()), nn.Parameter(vh.detach().mT.contiguous())],
            (rows, cols),
            s.shape[0],
        )
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
    from ..tensors._decompose import truncated_svd
    from ._calibrate import _tall_low_rank

    first = members[0].weight
    whitening = stats.whitening() if stats is not None else None
    stacked = torch.cat([m.weight.detach() for m in members])
    if stacked.shape[0] > stacked.shape[1]:  # from the n x n Gram: nothing stacked-sized more
        u, s, vh = _tall_low_rank(stacked, rank, whitening=whitening)
    else:
        stacked = stacked.double()
        if whitening is not None:
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


def decompose(site: Site, choice: Choice, stats: Any = None) -> nn.Module:
    """``site``'s layer for ``choice``: for its output on the calibration data when ``stats``.

    With input statistics the weight is first replaced by the chosen form's best
    approximation for the layer's output (:func:`~tfx.passes._calibrate.whitened_site`), then
    :func:`build_layer` decomposes that. Without, :func:`build_layer` on the weight itself.
    """
    if stats is None:
        return build_layer(site, choice)
    from ._calibrate import whitened_site

    return build_layer(whitened_site(site, choice, stats), choice)


class Decomposer:
    """The layer builder for a whole plan: ``decomposer(site, choice) -> nn.Module``.

    The one chain every caller uses (``tfx.factorize``, sequential mode, and through
    :func:`decompose` the ``torch.compile`` backend):

    1. a reader of a tied table planned factorized: a layer over the table's one tensor,
       decomposed once at the group's owner (:func:`table_tensor`, :func:`tied_layer`);
    2. a member of a shared input basis (``choice.group``): its layer of the group's
       :func:`shared_basis_layer`, made once for all members;
    3. any other site: :func:`decompose` with its input statistics.

    Args:
        sites: the sites of the plan (the groups' members are indices into it).
        plan: the plan (``plan.choice(name)``).
        stats_of: a site's input statistics, or None (read when the site is built, so
            sequential mode can change them between blocks).
        groups: tied groups (``tfx._tied.TiedGroup``: ``members`` and ``owner`` indices).
    """

    def __init__(
        self,
        sites: Sequence[Site],
        plan: Any,
        stats_of: Callable[[Site], Any] | None = None,
        groups: Sequence[Any] = (),
    ) -> None:
        self.sites = sites
        self.plan = plan
        self.stats_of = stats_of if stats_of is not None else (lambda site: None)
        self._owner = {sites[i].name: sites[g.owner] for g in groups for i in g.members}
        self._tables: dict[str, Any] = {}
        self._members: dict[str, list[Site]] = {}
        for site in sites:
            group = getattr(plan.choice(site.name), "group", None) if plan is not None else None
            if group:
                self._members.setdefault(group, []).append(site)
        self._bases: dict[str, dict[str, nn.Module]] = {}

    def __call__(self, site: Site, choice: Choice) -> nn.Module:
        """The layer for ``site``; an error names the site and its choice."""
        with site_context(site, choice):
            owner = self._owner.get(site.name)
            if owner is not None and choice.form != "dense":
                return tied_layer(site, choice, self._table(owner))
            if getattr(choice, "group", None):
                return self._basis(choice)[site.name]
            return decompose(site, choice, self.stats_of(site))

    def _table(self, owner: Site) -> Any:
        if owner.name not in self._tables:
            self._tables[owner.name] = table_tensor(owner, self.plan.choice(owner.name))
        return self._tables[owner.name]

    def _basis(self, choice: Choice) -> dict[str, nn.Module]:
        name = str(choice.group)
        if name not in self._bases:
            members = self._members[name]
            stats = self.stats_of(members[0])
            self._bases[name] = shared_basis_layer(members, int(choice.rank), stats)
        return self._bases[name]
