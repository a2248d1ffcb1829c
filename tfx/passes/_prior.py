"""Data-free input moments: what the graph says about a layer's input when no data is given.

Without calibration a layer's weight is decomposed for the weight (``|W - W'|_F``), as if its
input were white noise. The graph often knows better. A linear layer fed by a normalization
reads rows whose coordinates are, by construction, of zero mean and unit second moment
before the norm's affine parameters scale and shift them: LayerNorm's output has the moment
``diag(gamma^2) + beta beta^T`` under that assumption, RMSNorm's ``diag(gamma^2)``. A layer
behind one more linear layer and an elementwise activation (a transformer's feed-forward
output projection, ``W2 act(W1 norm(x) + b1)``) gets the Gaussian propagation of that
moment through them: ``W1 norm(x) + b1`` has mean ``W1 beta + b1`` and covariance
``W1 diag(gamma^2) W1^T``; the activation's mean and second moment per coordinate are
Gauss-Hermite integrals of the activation itself, coordinates taken as independent.

These moments whiten the decompositions as calibration statistics do
(:class:`~tfx.cost.InputStats`): a rank-``r`` factorization is the best one for the layer's
output under the moment, not for the weight. The planner still chooses ranks by weight
error: relative output errors under a guessed moment are not comparable with the weight
errors of the sites the walk does not explain, and on all-MiniLM-L6-v2 (encoder linears at
half their parameters, no data) allocating by them kept 0.54 of mean embedding cosine on
held-out sentences against 0.58 allocating by weight error (0.47 with weight SVD factors).

Sites whose input the walk does not recognise (attention outputs, gated MLPs, anything
after an op it cannot follow) keep the weight error.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..cost._whiten import InputStats
from ._match import Site

__all__ = ["input_priors", "prior_note", "PRIOR_NOTE", "Gaussian", "activation_moments"]

aten = torch.ops.aten

#: Ops that pass rows on unchanged (reshapes only where the last dimension stays).
_PASS_FNS: set[Any] = {
    aten.dropout.default,
    aten.clone.default,
    aten.alias.default,
    aten.detach.default,
    aten.contiguous.default,
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.to.dtype,
    aten.to.dtype_layout,
    aten._to_copy.default,
    aten.lift_fresh_copy.default,
    F.dropout,
    torch.reshape,
    torch.clone,
}
#: Of the ops above, those that can change the shape (followed when the last dim stays).
_RESHAPE_FNS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, torch.reshape}
_RESHAPE_METHODS = {"view", "reshape"}
#: Indexing ops: rows pass when the last dimension is untouched (:func:`_selects_rows`).
_SELECT_FNS = {aten.select.int, aten.slice.Tensor}
_INDEX_FNS = {*_SELECT_FNS, operator.getitem}
_PASS_METHODS = {"view", "reshape", "contiguous", "clone", "to", "float", "type_as", "detach"}
_PASS_MODULES = (nn.Dropout, nn.Identity)

_LAYER_NORM_FNS = {aten.layer_norm.default, F.layer_norm, torch.layer_norm}
_LINEAR_FNS = {aten.linear.default, F.linear}
_MUL_FNS = {aten.mul.Tensor, operator.mul, torch.mul}
_RSQRT_FNS = {aten.rsqrt.default, torch.rsqrt}

#: Elementwise activations, applied to quadrature points with the node's own other arguments.
_ACTIVATION_FNS = {
    aten.gelu.default,
    aten.relu.default,
    aten.silu.default,
    aten.tanh.default,
    aten.sigmoid.default,
    aten.leaky_relu.default,
    aten.elu.default,
    aten.mish.default,
    F.gelu,
    F.relu,
    F.silu,
    F.leaky_relu,
    F.elu,
    F.mish,
    torch.relu,
    torch.tanh,
    torch.sigmoid,
}
_ACTIVATION_MODULES = (
    nn.GELU,
    nn.ReLU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
)

#: The activations' moments are integrals over ``z ~ N(0, 1)`` on this grid (trapezoid rule on
#: ``[-10, 10]``, step 0.01): exact to rounding for smooth activations (the Gaussian weight
#: makes the rule spectrally accurate), to about 3e-6 of the scale where one has a kink (ReLU at
#: 0). 3072 features take 0.1 s on one thread.
_GRID = 2001
_REACH = 10.0
#: Rows integrated at once (the grid's values of a chunk are ``rows x _GRID`` float64).
_ROWS = 512


@dataclasses.dataclass
class Gaussian:
    """A row distribution's first two moments as the walk knows them (float64).

    ``mean`` and ``var`` (``d`` each): coordinates independent, so the covariance is diagonal.
    """

    mean: torch.Tensor
    var: torch.Tensor

    def moment(self, full: bool) -> torch.Tensor:
        """``E[x x^T] = diag(var) + mean mean^T`` (its diagonal when not ``full``)."""
        if not full:
            return self.var + self.mean * self.mean
        return torch.diag(self.var).add_(torch.outer(self.mean, self.mean))


def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    """Points and trapezoid weights of ``N(0, 1)`` on the grid, the weights summing to 1."""
    points = torch.linspace(-_REACH, _REACH, _GRID, dtype=torch.float64)
    weights = torch.exp(-0.5 * points * points)
    weights[0] *= 0.5
    weights[-1] *= 0.5
    return points, weights / weights.sum()


def activation_moments(
    fn: Callable[[torch.Tensor], torch.Tensor], mean: torch.Tensor, var: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``E[fn(z)]`` and ``Var[fn(z)]`` for ``z ~ N(mean, var)``, per coordinate (float64).

    Example:
        >>> zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
        >>> m, v = activation_moments(torch.relu, zero, one)
        >>> round(float(m), 5), round(float(v + m * m), 5)  # 1/sqrt(2 pi) and 1/2
        (0.39894, 0.5)
    """
    points, weights = _grid()
    first = torch.empty_like(mean)
    second = torch.empty_like(mean)
    spread = var.clamp_min(0).sqrt()
    for start in range(0, mean.shape[0], _ROWS):
        rows = slice(start, start + _ROWS)
        values = fn(mean[rows, None] + spread[rows, None] * points[None, :])
        first[rows] = values @ weights
        second[rows] = (values * values) @ weights
    return first, (second - first * first).clamp_min(0)


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    try:
        return gm.get_submodule(str(node.target))
    except AttributeError:
        return None


def _tensor(gm: fx.GraphModule, arg: Any) -> torch.Tensor | None:
    """A ``get_attr`` argument's tensor (a parameter or buffer), else None."""
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        obj: Any = gm
        for part in str(arg.target).split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.Tensor):
            return obj
    return None


def _last_dim(node: Any) -> int | None:
    value = (
        node.meta.get("val", node.meta.get("tensor_meta")) if isinstance(node, fx.Node) else None
    )
    shape = getattr(value, "shape", None)
    if not shape:
        return None
    try:
        return int(shape[-1])
    except (TypeError, ValueError):  # symbolic
        return None


def _rank(node: Any) -> int | None:
    value = node.meta.get("val", node.meta.get("tensor_meta"))
    shape = getattr(value, "shape", None)
    return None if shape is None else len(shape)


def _selects_rows(node: fx.Node) -> bool:
    """Indexing that leaves the last dimension whole: a subset of the rows (``h[:, 0]``)."""
    source = node.args[0] if node.args else None
    if not isinstance(source, fx.Node) or len(node.args) < 2:
        return False
    ndim = _rank(source)
    if ndim is None:
        return False
    if node.target in _SELECT_FNS:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        return isinstance(dim, int) and dim % ndim != ndim - 1
    index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    return all(isinstance(i, int | slice) for i in index) and len(index) < ndim


def _elementwise(gm: fx.GraphModule, node: fx.Node) -> bool:
    """An op that keeps its input's shape whatever it is (no shapes needed to follow it)."""
    if node.op == "call_function":
        return node.target not in _RESHAPE_FNS
    if node.op == "call_method":
        return node.target not in _RESHAPE_METHODS
    return True  # the pass-through modules


def _passes_through(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The input of a row-preserving op (same last dimension), else None."""
    if node.op == "call_function" and node.target in _PASS_FNS:
        source = node.args[0] if node.args else None
    elif node.op == "call_function" and node.target in _INDEX_FNS:
        source = node.args[0] if _selects_rows(node) else None
    elif node.op == "call_method" and node.target in _PASS_METHODS:
        source = node.args[0] if node.args else None
    elif isinstance(_module(gm, node), _PASS_MODULES):
        source = node.args[0] if node.args else None
    else:
        return None
    if not isinstance(source, fx.Node):
        return None
    if _elementwise(gm, node):
        return source
    width = _last_dim(node)
    return source if width is not None and width == _last_dim(source) else None


def _through(gm: fx.GraphModule, node: Any) -> Any:
    while isinstance(node, fx.Node):
        source = _passes_through(gm, node)
        if source is None:
            return node
        node = source
    return node


def _affine(
    weight: torch.Tensor | None, bias: torch.Tensor | None, width: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(gamma, beta)`` in float64 for a norm of ``width`` features; None without a weight."""
    if weight is None or tuple(weight.shape) != (width,):
        return None
    gamma = weight.detach().double().cpu()
    if bias is not None and tuple(bias.shape) != (width,):
        return None
    beta = torch.zeros(width, dtype=torch.float64) if bias is None else bias.detach().double().cpu()
    return gamma, beta


def _layer_norm(gm: fx.GraphModule, node: fx.Node, width: int) -> Gaussian | None:
    weight = bias = None
    module = _module(gm, node)
    if isinstance(module, nn.LayerNorm):
        if tuple(module.normalized_shape) != (width,):
            return None
        weight, bias = module.weight, module.bias
    elif module is not None and type(module).__name__.endswith("RMSNorm"):
        found = _affine(getattr(module, "weight", None), None, width)
        if found is None:
            return None
        return Gaussian(torch.zeros(width, dtype=torch.float64), found[0] ** 2)
    elif node.op == "call_function" and node.target in _LAYER_NORM_FNS:
        args = list(node.args) + [None] * 4
        shape = node.kwargs.get("normalized_shape", args[1])
        if list(shape or ()) != [width]:
            return None
        weight = _tensor(gm, node.kwargs.get("weight", args[2]))
        bias = _tensor(gm, node.kwargs.get("bias", args[3]))
    else:
        return None
    found = _affine(weight, bias, width)
    if found is None:
        return None
    gamma, beta = found
    return Gaussian(beta, gamma**2)


def _rms_normed(gm: fx.GraphModule, node: Any) -> bool:
    """``x * rsqrt(...)`` (an RMSNorm's normalization, as Llama-style code writes it)."""
    node = _through(gm, node)
    if not (isinstance(node, fx.Node) and node.op == "call_function" and node.target in _MUL_FNS):
        return False
    return any(
        isinstance(a, fx.Node) and a.op == "call_function" and a.target in _RSQRT_FNS
        for a in (_through(gm, x) for x in node.args)
    )


def _rms_norm(gm: fx.GraphModule, node: fx.Node, width: int) -> Gaussian | None:
    """``gamma * x * rsqrt(mean(x^2) + eps)`` traced into its ops: moment ``diag(gamma^2)``."""
    if not (node.op == "call_function" and node.target in _MUL_FNS and len(node.args) == 2):
        return None
    for scale, other in (node.args, node.args[::-1]):
        gamma = _tensor(gm, scale)
        if gamma is not None and tuple(gamma.shape) == (width,) and _rms_normed(gm, other):
            var = gamma.detach().double().cpu() ** 2
            return Gaussian(torch.zeros(width, dtype=torch.float64), var)
    return None


def _linear(gm: fx.GraphModule, node: fx.Node) -> tuple[Any, torch.Tensor, Any] | None:
    """``(input node, weight, bias)`` of a linear layer's node, else None."""
    module = _module(gm, node)
    if isinstance(module, nn.Linear):
        return node.args[0], module.weight, module.bias
    if node.op == "call_function" and node.target in _LINEAR_FNS:
        args = list(node.args) + [None] * 3
        weight = _tensor(gm, node.kwargs.get("weight", args[1]))
        bias = _tensor(gm, node.kwargs.get("bias", args[2]))
        if weight is None or (bias is None and node.kwargs.get("bias", args[2]) is not None):
            return None
        return args[0], weight, bias
    return None


def _activation(gm: fx.GraphModule, node: fx.Node) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The activation of an elementwise node, as a function of its input, else None."""
    module = _module(gm, node)
    if isinstance(module, _ACTIVATION_MODULES):
        return lambda x: module(x)
    if node.op == "call_function" and node.target in _ACTIVATION_FNS:
        target, rest, kwargs = node.target, node.args[1:], dict(node.kwargs)
        kwargs.pop("inplace", None)
        if any(isinstance(a, fx.Node) for a in (*rest, *kwargs.values())):
            return None
        return lambda x: target(x, *rest, **kwargs)
    return None


def _norm(gm: fx.GraphModule, node: Any, width: int) -> Gaussian | None:
    node = _through(gm, node)
    if not isinstance(node, fx.Node):
        return None
    return _layer_norm(gm, node, width) or _rms_norm(gm, node, width)


def _walk(gm: fx.GraphModule, node: Any, width: int) -> Gaussian | None:
    """The input moment of a layer reading ``node`` (rows of ``width``), or None."""
    found = _norm(gm, node, width)
    if found is not None:
        return found
    node = _through(gm, node)
    if not isinstance(node, fx.Node):
        return None
    act = _activation(gm, node)
    if act is None or not node.args:
        return None
    inner = _through(gm, node.args[0])
    if not isinstance(inner, fx.Node):
        return None
    linear = _linear(gm, inner)
    if linear is None:
        return None
    source, weight, bias = linear
    if tuple(weight.shape) != (width, weight.shape[-1]) or weight.dim() != 2:
        return None
    before = _norm(gm, source, int(weight.shape[1]))
    if before is None:
        return None
    w = weight.detach().double().cpu()
    mean = w @ before.mean
    if bias is not None:
        mean = mean + bias.detach().double().cpu()
    var = (w * w) @ before.var  # diag(W diag(var) W^T)
    first, spread = activation_moments(act, mean, var)
    return Gaussian(first, spread)


def input_priors(gm: fx.GraphModule, sites: Sequence[Site]) -> dict[str, InputStats]:
    """Per linear site whose input the graph explains: a data-free input moment.

    Sites reading one input node share one :class:`~tfx.cost.InputStats` (as calibration
    statistics do). The moment is kept as its diagonal, ``var + mean^2`` per coordinate: exact
    for an RMSNorm, and for a LayerNorm or a propagated feed-forward input it drops the
    rank-one ``mean mean^T``. A full moment would cost ``d^2`` floats per input (8.6 GB of them
    for a 7B Llama's norms) for no measured gain: on all-MiniLM-L6-v2 (encoder linears at half,
    no data) the full moments kept 0.581 of mean embedding cosine, the diagonals 0.578.

    Example:
        >>> import torch.nn as nn
        >>> from tfx.passes import capture, find_sites, input_priors
        >>> model = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 64))
        >>> _ = model[0].weight.data.fill_(2.0)[0].fill_(1.0)  # gamma = (1, 2, 2, ...)
        >>> captured = capture(model, (torch.randn(2, 64),))
        >>> sites = find_sites(captured.gm, path=captured.path)
        >>> input_priors(captured.gm, sites)["1"].covariance()[:3].tolist()  # its diagonal
        [1.0, 4.0, 4.0]
    """
    found: dict[str, InputStats] = {}
    by_input: dict[Any, InputStats | None] = {}
    for site in sites:
        if site.info.kind != "linear" or not site.info.factorizable or site.node is None:
            continue
        width = int(site.info.weight_shape[1])
        if site.input not in by_input:
            gauss = _walk(gm, site.input, width)
            by_input[site.input] = None if gauss is None else prior_stats(gauss)
        stats = by_input[site.input]
        if stats is not None:
            found[site.name] = stats
    return found


def prior_stats(gauss: Gaussian) -> InputStats | None:
    """:class:`~tfx.cost.InputStats` holding ``gauss``'s diagonal moment as one row's (or None).

    Unusable: not finite, no energy (a norm whose scale is all zero), or a multiple of the
    identity (a norm at its initialisation, ``gamma`` constant and ``beta`` zero): whitening by
    it is the plain decomposition, which is then made without the detour.
    """
    if not (bool(torch.isfinite(gauss.mean).all()) and bool(torch.isfinite(gauss.var).all())):
        return None
    if float(gauss.var.sum() + gauss.mean.square().sum()) <= 0:
        return None
    if not bool(gauss.mean.any()) and bool((gauss.var == gauss.var[0]).all()):
        return None
    return InputStats.of_moment(gauss.moment(full=False), 1)


#: How the plan's line for data-free moments begins: a given plan is applied with them only if
#: it was made with them (plans of the torch.compile backend, and older plans, were not).
PRIOR_NOTE = "no calibration data:"


def prior_note(priors: dict[str, InputStats], sites: Sequence[Site]) -> str:
    """The plan's line for data-free moments."""
    linear = sum(s.info.kind == "linear" and s.info.factorizable for s in sites)
    return (
        f"{PRIOR_NOTE} {len(priors)} of {linear} linear sites are decomposed for their "
        "output under the input moment their normalization gives (data-free whitening); "
        "ranks are chosen by weight error"
    )
