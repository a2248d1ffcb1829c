"""FLOPs and bytes of a candidate: the steps its emitted layer runs, priced one by one.

Two contraction orders are priced for every candidate, and the cheaper (by FLOPs,
then bytes) is kept and recorded in ``Option.order``:

* ``'factors'``: the input contracted with the factors. For linear layers this is
  the einsum over the input and every factor, split into pairwise steps by the
  same opt_einsum search the emitted layer runs (``tfx.tensors._contract``; no
  memory limit), planned for the site's batch bucket (``tokens`` rounded up to a
  power of 4, as ``tfx.functional`` plans and bakes into the traced graph) and
  priced at ``tokens`` rows. Embeddings gather the factor slices of the looked-up
  rows, then contract them (``tfx.functional.gather_rows``); convolutions run the
  fixed sequence of ``tfx.functional.convolve`` (pointwise / core / pointwise
  convolutions, kernels built from their cores first).
* ``'reconstruct'``: rebuild the weight (its own planned einsum, intermediates no
  larger than its largest operand or output), then the dense layer.

Conventions (those of ``torch.utils.flop_counter.FlopCounterMode`` for the
matmul-like part, so a test can hold the emitted module to them):

* A pairwise step that sums letters shared by both operands (of total size > 1)
  runs as a (batched) matmul: ``2 * (output size) * (summed size)`` FLOPs. A convolution:
  ``2 * (output elements) * (input channels) * (kernel size)``.
* A step that sums nothing (a broadcast scaling, e.g. by CP weights, or an outer
  product; also a "sum" over a size-1 bond, which torch.einsum squeezes) is elementwise: one
  FLOP per output element. FlopCounterMode does not count these; they are here because the
  module runs them.
* Not counted: bias additions (as for the dense layer), index arithmetic and
  gathers (zero FLOPs, but their bytes are), zero padding, and the padding-index
  mask of an embedding.
* Bytes: every step reads its operands and writes its result, so the input and
  weights are read once per use, every intermediate is written once and read
  once, the output is written once; times the weight's ``itemsize``. Layout copies
  (a permute before a matmul) and caches are not modelled: a memory-traffic
  estimate, not a measurement.
* Convolutions, im2col-free: a step reads its input activation and its kernel and
  writes its output; positions are ``SiteInfo.tokens`` (batch x output positions)
  and ``SiteInfo.in_tokens`` (batch x input positions, for the pointwise step CP
  and Tucker run before striding). CP's separable depthwise steps are counted at
  the output positions: the padding halo they also visit is left out.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import string
from collections.abc import Sequence
from typing import Any

import opt_einsum

from ..tensors import form_spec, plan_einsum
from ._device import DeviceProfile
from ._records import Option, SiteInfo

__all__ = ["Cost", "order_costs", "price", "dense_cost", "batch_bucket"]

Shapes = tuple[tuple[int, ...], ...]


@dataclasses.dataclass(frozen=True)
class Cost:
    """What one contraction order costs: ``flops`` and ``elements`` moved (bytes / itemsize)."""

    flops: int
    elements: int
    steps: int = 1  # kernels: each priced step is one

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.flops + other.flops, self.elements + other.elements, self.steps + other.steps
        )


_ZERO = Cost(0, 0, 0)


def batch_bucket(n: int) -> int:
    """``n`` rounded up to a power of 4: the batch size ``tfx.functional`` plans for."""
    bucket = 1
    while bucket < n:
        bucket *= 4
    return bucket


# ------------------------------------------------------------------ einsum steps
def _step_cost(step: str, sizes: dict[str, int]) -> Cost:
    inputs, out = step.split("->")
    terms = inputs.split(",")
    out_size = math.prod(sizes[c] for c in out)
    moved = sum(math.prod(sizes[c] for c in t) for t in terms) + out_size
    if len(terms) < 2:
        return Cost(0, moved)
    summed = math.prod(
        sizes[c] for c in terms[0] if c not in out and any(c in t for t in terms[1:])
    )
    if summed > 1:
        return Cost(2 * out_size * summed, moved)
    # Nothing (or only size-1 letters) summed: torch.einsum runs a broadcast multiply.
    return Cost(out_size, moved)


@functools.lru_cache(maxsize=1 << 16)
def _path_cost(
    equation: str, shapes: Shapes, memory_limit: Any, letter: str | None, rows: int
) -> Cost:
    """Cost of the path planned for ``shapes``, with letter ``letter`` resized to ``rows``."""
    steps = plan_einsum(equation, *shapes, memory_limit=memory_limit).steps
    sizes: dict[str, int] = {}
    for term, shape in zip(equation.split("->")[0].split(","), shapes, strict=False):
        sizes.update(zip(term, shape, strict=False))
    if letter is not None:
        sizes[letter] = rows
    total = _ZERO
    for _, step in steps:
        total += _step_cost(step, sizes) if step.count(",") < 2 else _many(step, sizes)
    return total


def _many(step: str, sizes: dict[str, int]) -> Cost:
    """A step over three or more operands (the planner's fallback under a memory limit).

    ``torch.einsum`` splits it with opt_einsum's ``'auto'`` strategy, as priced here.
    """
    shapes = [tuple(sizes[c] for c in term) for term in step.split("->")[0].split(",")]
    _, info = opt_einsum.contract_path(step, *shapes, shapes=True, optimize="auto")
    total = _ZERO
    for contraction in info.contraction_list:
        total += _step_cost(contraction[2], sizes)
    return total


def _einsum(equation: str, *shapes: tuple[int, ...]) -> Cost:
    """One fixed pairwise einsum step (no planning)."""
    sizes: dict[str, int] = {}
    for term, shape in zip(equation.split("->")[0].split(","), shapes, strict=False):
        sizes.update(zip(term, shape, strict=False))
    return _step_cost(equation, sizes)


def _gemm(equation: str, *shapes: tuple[int, ...]) -> Cost:
    """One pairwise step run as a (batched) GEMM: ``2 m n k`` FLOPs even when ``k`` is 1."""
    sizes: dict[str, int] = {}
    for term, shape in zip(equation.split("->")[0].split(","), shapes, strict=False):
        sizes.update(zip(term, shape, strict=False))
    cost = _step_cost(equation, sizes)
    inputs, out = equation.split("->")
    a, b = inputs.split(",")
    summed = math.prod(sizes[c] for c in a if c in b and c not in out)
    return (
        Cost(2 * math.prod(sizes[c] for c in out) * summed, cost.elements, cost.steps)
        if summed == 1
        else cost
    )


# --------------------------------------------------------------- weight structure
def _weight(option: Option, tensor_shape: tuple[int, ...]) -> tuple[str, Shapes]:
    """The weight's reconstruction equation and operand shapes: its form's public spec.

    TT (and the conv ``'svd'``, a TT with full kernel bonds) has its boundary cores squeezed.
    """
    form, rank = option.form, option.rank
    if form in ("svd", "cp") and isinstance(rank, int):
        spec = form_spec("cp", tensor_shape, rank)
    elif form == "tucker":
        spec = form_spec("tucker", tensor_shape, rank)
    elif form == "blocktt":
        spec = form_spec("blocktt", option.tensorized_shape, rank)
    else:
        spec = form_spec("tt", tensor_shape, rank)
    return spec.equation, spec.operand_shapes


def _tensor_shape(site: SiteInfo, option: Option) -> tuple[int, ...]:
    if site.kind == "conv":
        return tuple(site.weight_shape)
    rows, cols = option.tensorized_shape
    return tuple(rows) + tuple(cols)


def _rebuild(site: SiteInfo, option: Option) -> Cost:
    equation, shapes = _weight(option, _tensor_shape(site, option))
    return _path_cost(equation, shapes, "max_io", None, 0)


# ------------------------------------------------------------------------ linear
def _linear_factors(site: SiteInfo, option: Option) -> Cost:
    equation, shapes = _weight(option, _tensor_shape(site, option))
    cols = tuple(option.tensorized_shape[1])
    lhs, out = equation.split("->")
    b = next(c for c in string.ascii_letters if c not in equation)
    full = f"{b}{out[-len(cols):]},{lhs}->{b}{out[: -len(cols)]}"
    return _path_cost(full, ((batch_bucket(site.tokens), *cols), *shapes), None, b, site.tokens)


def _linear_reconstruct(site: SiteInfo, option: Option) -> Cost:
    rows, cols = (math.prod(s) for s in option.tensorized_shape)
    t = site.tokens
    return _rebuild(site, option) + Cost(2 * t * rows * cols, t * cols + rows * cols + t * rows)


# --------------------------------------------------------------------- embedding
def _embedding_factors(site: SiteInfo, option: Option) -> Cost:
    rows, cols = (tuple(s) for s in option.tensorized_shape)
    t, rank, bucket = site.tokens, option.rank, batch_bucket(site.tokens)
    if option.form in (
        "svd",
        "cp",
    ):  # scale the weights by each gathered row slice, then the columns
        # per row mode: a gather (read, write t x rank) and a multiply (read two, write one)
        cost = Cost(t * rank * len(rows), 5 * t * rank * len(rows))
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXY"[: len(cols)]
        equation = "nz," + ",".join(f"{c}z" for c in letters) + "->n" + letters
        shapes = ((bucket, rank), *((s, rank) for s in cols))
        return cost + _path_cost(equation, shapes, "max_io", "n", t)
    if (
        option.form == "tucker"
    ):  # Kronecker product of the gathered row slices, core, column factors
        d, cost, width = len(rows), _ZERO, 1
        for k in range(d):
            cost += Cost(0, 2 * t * rank[k])  # gather
            if k:
                cost += Cost(t * width * rank[k], t * (width + rank[k] + width * rank[k]))
            width *= rank[k]
        ranks, letters = "abcdefghijkl"[: len(cols)], "ABCDEFGHIJKL"[: len(cols)]
        equation = (
            "nz,z"
            + ranks
            + ","
            + ",".join(f"{c}{r}" for c, r in zip(letters, ranks, strict=False))
            + "->n"
            + letters
        )
        shapes = ((bucket, width), (width, *rank[d:]), *zip(cols, rank[d:], strict=False))
        return cost + _path_cost(equation, shapes, "max_io", "n", t)
    if option.form == "blocktt":  # chain the gathered cores, one output mode at a time
        cost, width = _ZERO, cols[0]
        for k in range(len(rows)):
            cost += Cost(0, 2 * t * rank[k] * cols[k] * rank[k + 1])  # gather
            if k:
                cost += _gemm(
                    "nar,nrbs->nabs", (t, width, rank[k]), (t, rank[k], cols[k], rank[k + 1])
                )
                width *= cols[k]
        return cost
    # TT: chain the gathered row cores, then expand the column cores.
    d, cost = len(rows), _ZERO
    for k in range(d):
        cost += Cost(0, 2 * t * rank[k] * rank[k + 1])  # gather
        if k:
            cost += _gemm("nr,nrs->ns", (t, rank[k]), (t, rank[k], rank[k + 1]))
    width = 1
    for k, size in enumerate(cols):
        cost += _gemm(
            "nar,rbs->nabs", (t, width, rank[d + k]), (rank[d + k], size, rank[d + k + 1])
        )
        width *= size
    return cost


def _embedding_reconstruct(site: SiteInfo, option: Option) -> Cost:
    dim = math.prod(option.tensorized_shape[1])
    return _rebuild(site, option) + Cost(0, 2 * site.tokens * dim)


# -------------------------------------------------------------------------- conv
def _conv(positions: int, c_in: int, c_out: int, kernel: int, groups: int = 1) -> Cost:
    """``2 * output elements * (c_in / groups) * kernel`` FLOPs.

    Reads input and kernel, writes output.
    """
    weight = c_out * (c_in // groups) * kernel
    return Cost(
        2 * positions * c_out * (c_in // groups) * kernel, positions * (c_in + c_out) + weight
    )


def _conv_factors(site: SiteInfo, option: Option) -> Cost:
    out_c, in_c, *kernel = site.weight_shape
    k, t = math.prod(kernel), site.tokens
    t_in = site.in_tokens or t
    rank = option.rank
    if option.form in (
        "svd",
        "tt",
    ):  # build the kernel (rank[1], in, *kernel) from cores 1.., conv, pointwise
        # the spatial cores chained first (GEMMs), then one GEMM with the channel core
        cost, rows = _ZERO, rank[2] * kernel[0]
        for j, size in enumerate(kernel[1:], start=3):
            cost += Cost(
                2 * rows * rank[j] * size * rank[j + 1],
                rows * rank[j] + rank[j] * size * rank[j + 1] + rows * size * rank[j + 1],
            )
            rows *= size
        cost += Cost(
            2 * rank[1] * in_c * rank[2] * k,
            rank[1] * in_c * rank[2] + rank[2] * k + rank[1] * in_c * k,
        )
        return cost + _conv(t, in_c, rank[1], k) + _conv(t, rank[1], out_c, 1)
    if (
        option.form == "tucker"
    ):  # expand the core's spatial modes, pointwise in, core conv, pointwise out
        ro, ri, r_space = rank[0], rank[1], rank[2:]
        cost, rows, cols = _ZERO, kernel[0], r_space[0]
        for size, r in zip(
            kernel[1:], r_space[1:], strict=False
        ):  # the Kronecker product of the spatial factors
            cost += Cost(rows * size * cols * r, rows * cols + size * r + rows * size * cols * r)
            rows, cols = rows * size, cols * r
        cost += Cost(
            2 * ro * ri * cols * rows, ro * ri * cols + rows * cols + ro * ri * rows
        )  # one GEMM
        return cost + _conv(t_in, in_c, ri, 1) + _conv(t, ri, ro, k) + _conv(t, ro, out_c, 1)
    # CP, separable: pointwise in, one depthwise 1-D conv per axis, weights into the out factor,
    # pointwise out.
    cost = _conv(t_in, in_c, rank, 1) + Cost(out_c * rank, 2 * out_c * rank + rank)
    for size in kernel:
        cost += _conv(t, rank, rank, size, groups=rank)
    return cost + _conv(t, rank, out_c, 1)


def _conv_reconstruct(site: SiteInfo, option: Option) -> Cost:
    out_c, in_c, *kernel = site.weight_shape
    t = site.tokens
    dense = _conv(t, in_c, out_c, math.prod(kernel))
    if site.in_tokens:  # the input is read at its own resolution
        dense = Cost(dense.flops, dense.elements - t * in_c + site.in_tokens * in_c)
    return _rebuild(site, option) + dense


# ---------------------------------------------------------------------- entry points
_ORDERS = {
    "linear": (_linear_factors, _linear_reconstruct),
    "embedding": (_embedding_factors, _embedding_reconstruct),
    "conv": (_conv_factors, _conv_reconstruct),
}


def order_costs(site: SiteInfo, option: Option) -> dict[str, Cost]:
    """The cost of each contraction order of a (non-dense) candidate.

    Returns ``{'factors': ..., 'reconstruct': ...}``.
    """
    factors, reconstruct = _ORDERS[site.kind]
    return {"factors": factors(site, option), "reconstruct": reconstruct(site, option)}


def dense_cost(site: SiteInfo) -> Cost:
    """The dense layer: a matmul, a convolution, or a gather of ``tokens`` rows (no FLOPs)."""
    t = site.tokens
    if site.kind == "embedding":
        return Cost(0, 2 * t * site.weight_shape[1])
    out_c, in_c = site.weight_shape[:2]  # a grouped conv's input: channels per group (an estimate)
    t_in = site.in_tokens or t
    return Cost(2 * t * site.dense_params, t_in * in_c + site.dense_params + t * out_c)


def _reconstruct_floor(site: SiteInfo, option: Option) -> int:
    """A lower bound on the ``'reconstruct'`` FLOPs.

    The dense layer, plus one FLOP per rebuilt entry.
    """
    rebuilt = math.prod(_tensor_shape(site, option))  # the rebuild's last step writes each entry
    return rebuilt if site.kind == "embedding" else rebuilt * (1 + 2 * site.tokens)


def _priced(
    option: Option, cost: Cost, itemsize: int, order: str, profile: DeviceProfile | None
) -> Option:
    nbytes = cost.elements * itemsize
    seconds = (
        profile.seconds(cost.flops, nbytes, cost.steps, dense=order == "dense")
        if profile is not None
        else 0.0
    )
    return dataclasses.replace(
        option, flops=cost.flops, bytes=nbytes, order=order, steps=cost.steps, seconds=seconds
    )


def price(
    site: SiteInfo, option: Option, itemsize: int = 4, profile: DeviceProfile | None = None
) -> Option:
    """``option`` with the FLOPs, bytes and kernel count of its cheaper order, and that order.

    Cheaper means fewer FLOPs (then fewer bytes; ties: ``'factors'``), or with a ``profile``
    less estimated time, which also counts the bytes and the kernels.
    """
    if option.form == "dense":
        return _priced(option, dense_cost(site), itemsize, "dense", profile)
    factors, reconstruct = _ORDERS[site.kind]
    order, cost = "factors", factors(site, option)

    def key(c: Cost) -> tuple[float, ...]:
        if profile is not None:
            return (profile.seconds(c.flops, c.elements * itemsize, c.steps),)
        return (c.flops, c.elements)

    # The rebuild's path search is skipped where it cannot win on FLOPs (the usual case):
    # exact, and it halves the searches. With a profile, both are always priced.
    if profile is not None or cost.flops >= _reconstruct_floor(site, option):
        rebuilt = reconstruct(site, option)
        if key(rebuilt) < key(cost):
            order, cost = "reconstruct", rebuilt
    return _priced(option, cost, itemsize, order, profile)


def price_all(
    site: SiteInfo, options: Sequence[Option], itemsize: int, profile: DeviceProfile | None = None
) -> list[Option]:
    """:func:`price` for each option of one site."""
    return [price(site, o, itemsize, profile) for o in options]
