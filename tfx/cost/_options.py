"""Candidates per site: forms x tensorized shapes x ranks, with params, FLOPs and error.

Errors come from spectra computed once per site (closed form, no trial
decompositions): the singular values of the weight's matricization for
``'svd'`` (exact: Eckart-Young), and of the tensor's unfoldings for Tucker
(the HOSVD bound), TT and BlockTT (the TT-SVD bound): for any rank, the
squared error is at most the sum over unfoldings of the discarded squared
singular values. CP is fitted (a short, time-boxed ALS at a few ranks) and only
offered for small weights, so iterative decompositions never dominate.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from ..tensors import form_spec
from ..tensors._decompose import cp_als
from ..tensors._rank import tt_rank_bounds
from ..utils import balanced_tensorization, get_tensorized_shape
from ._device import DeviceProfile
from ._flops import price, price_all
from ._records import Option, SiteInfo
from ._whiten import CHUNK_ROWS, InputStats, gram_of_rows, small_eig

__all__ = [
    "FORMS",
    "candidates",
    "dense_option",
    "padded_size",
    "Spectra",
    "map_sites",
    "rank_grid",
    "RANK_ALIGN",
]

FORMS = ("svd", "cp", "tucker", "tt", "blocktt")
CP_MAX_NUMEL = 1 << 12
_SPECTRA_F64_NUMEL = 1 << 14  # spectra of larger weights are computed in float32
#: Sites with more weight entries get their candidates on a thread of their own (map_sites).
PARALLEL_MIN_NUMEL = 1 << 16
_GRID = 20
_T = TypeVar("_T")
_R = TypeVar("_R")


#: The rank multiple of the weight being priced (set by :func:`candidates`).
RANK_ALIGN: contextvars.ContextVar[int] = contextvars.ContextVar("tfx_rank_align", default=8)


def rank_alignment(weight: torch.Tensor) -> int:
    """The multiple ranks are rounded to for ``weight``'s hardware.

    64 for half precision on CUDA (tensor-core tiles: a misaligned rank runs up to 4x slower
    there), else 8 (SIMD widths, fp32 tensor cores).
    """
    return 64 if weight.is_cuda and weight.dtype in (torch.float16, torch.bfloat16) else 8


def rank_grid(full: int, n: int = _GRID) -> list[int]:
    """Geometric ranks in [1, full].

    Multiples of 8 from 32, and of the weight's alignment (:func:`rank_alignment`) from twice
    that, where rounding costs a few percent of the rank.
    """
    align = RANK_ALIGN.get()
    out = set()
    for i in range(n):
        r = max(1, round(full ** ((i + 1) / n)))
        if r >= 2 * align and align > 8:
            r = (r // align) * align
        elif r >= 32:
            r = max(8, (r // 8) * 8)
        out.add(min(r, full))
    return sorted(out)


def _bond_ranks(sizes: tuple[int, ...]) -> Iterable[tuple[int, ...]]:
    """Distinct TT ranks over the grid: one largest bond rank, each bond capped at its bound."""
    bounds = tt_rank_bounds(sizes)
    seen: set[tuple[int, ...]] = set()
    for big in rank_grid(max(bounds)):
        rank = tuple(min(big, b) for b in bounds)
        if rank not in seen:
            seen.add(rank)
            yield rank


class Spectra:
    """Squared singular values of unfoldings, cached per (tensor shape, permutation, split)."""

    def __init__(self, weight: torch.Tensor) -> None:
        # Energies for rank selection need no float64: the Gram products run in float32
        # (small weights in float64, where it costs nothing).
        self._weight: torch.Tensor | None = weight.detach().to(
            torch.float32 if weight.numel() > _SPECTRA_F64_NUMEL else torch.float64
        )
        # The squared norm in float64, a chunk of rows at a time: vector_norm(dtype=float64)
        # converts its whole input first (a vocabulary table's float64 copy, 0.5 GB at 32k x 2k).
        rows = self._weight.reshape(self._weight.shape[0], -1) if self._weight.dim() else None
        self.norm2 = (
            float(self._weight.double()) ** 2
            if rows is None
            else sum(
                float(torch.linalg.vector_norm(rows[i : i + CHUNK_ROWS], dtype=torch.float64)) ** 2
                for i in range(0, rows.shape[0], CHUNK_ROWS)
            )
            + 0.0
        )
        self._cache: dict[Any, list[float]] = {}
        self._sides: dict[bool, torch.Tensor] = {}  # whole-side Grams, by "is the row side"

    @classmethod
    def from_gram(cls, gram: torch.Tensor, rows: int) -> Spectra:
        """The spectrum of a ``rows``-row matrix known by the Gram matrix of one of its sides.

        Only its low-rank unfolding (``tails(shape, None, 1)`` for ``rows`` rows) is
        available: what the ``"svd"`` candidates of a whitened or row-weighted weight need,
        without a weight-sized whitened copy.
        """
        self = cls.__new__(cls)
        self._weight, self._sides = None, {}
        self.norm2 = float(gram.diagonal().double().sum())
        self._cache = {("flat", rows): _energies(gram)}
        return self

    @property
    def weight(self) -> torch.Tensor:
        """The tensor whose unfoldings are measured (gone after :meth:`release`)."""
        if self._weight is None:
            raise RuntimeError(
                "these spectra keep energies only (made from a Gram matrix, or released): "
                "an unfolding that was not measured before cannot be measured now"
            )
        return self._weight

    def release(self) -> None:
        """Drop the weight and whole-side Grams; the energies measured so far stay.

        Called on the spectra kept for rank refinement, so that a plan does not hold a
        (whitened) copy of every weight.
        """
        self._weight = None
        self._sides = {}

    def tails(
        self, shape: tuple[int, ...], perm: tuple[int, ...] | None, split: int
    ) -> list[float]:
        """``tails[r]`` = discarded energy when keeping ``r`` singular values of the unfolding."""
        # Without a permutation, the unfolding is the flat weight reshaped to (rows, -1):
        # it depends on the row count only, so forms and tensorizations share it.
        key = ("flat", math.prod(shape[:split])) if perm is None else (shape, perm, split)
        if key not in self._cache:
            # Only energies are needed: the eigenvalues of the Gram matrix of the smaller
            # side are the squared singular values (one GEMM and a small eigvalsh).
            gram = self._partial_gram(shape, perm, split)
            if gram is None:
                tensor = self.weight.reshape(shape)
                if perm is not None:
                    tensor = tensor.permute(perm)
                rows = math.prod(tensor.shape[:split])
                matrix = tensor.reshape(rows, -1)
                if matrix.shape[0] > matrix.shape[1]:
                    matrix = matrix.T
                gram = matrix @ matrix.T
            self._cache[key] = _energies(gram)
        return self._cache[key]

    def _partial_gram(
        self, shape: tuple[int, ...], perm: tuple[int, ...] | None, split: int
    ) -> torch.Tensor | None:
        """The unfolding's small-side Gram as a partial trace of a whole-side Gram, or None.

        An unfolding whose small side is a prefix of the row modes (or a suffix of the
        column modes), or one mode of them (Tucker), has as Gram the partial trace of
        ``W W^T`` (``W^T W``) over the side's other modes: a sum over a matrix of that
        side's size instead of a GEMM over the whole weight (and a permuted copy of it).
        Used for the weight's smaller side up to 1024 (its Gram is the SVD spectrum's).
        """
        rows = self.weight.shape[0]
        cols = self.weight.numel() // max(rows, 1)
        d = next((k for k in range(len(shape) + 1) if math.prod(shape[:k]) == rows), None)
        if d is None:
            return None
        if perm is None:  # at the row/column boundary: the smaller side
            on_rows = split < d or (split == d and rows <= cols)
            kept = range(split) if on_rows else range(split - d, len(shape) - d)
        elif split == 1 and list(perm[1:]) == [j for j in range(len(shape)) if j != perm[0]]:
            on_rows = perm[0] < d
            kept = range(perm[0], perm[0] + 1) if on_rows else range(perm[0] - d, perm[0] - d + 1)
        else:
            return None
        size, other = (rows, cols) if on_rows else (cols, rows)
        if size > 1024 or size > other:
            return None
        if on_rows not in self._sides:
            flat = self.weight.reshape(rows, cols)
            self._sides[on_rows] = flat @ flat.T if on_rows else flat.T @ flat
        modes = shape[:d] if on_rows else shape[d:]
        return _partial_trace(self._sides[on_rows], tuple(modes), tuple(kept))

    def discarded(
        self, shape: tuple[int, ...], perm: tuple[int, ...] | None, split: int, rank: int
    ) -> float:
        """Energy discarded by keeping ``rank`` singular values of the unfolding."""
        tails = self.tails(shape, perm, split)
        return tails[min(rank, len(tails) - 1)]


def _energies(gram: torch.Tensor) -> list[float]:
    """``energy[i]``: the sum of the Gram's eigenvalues from the ``i``-th largest on, then 0."""
    gram = gram.double() if gram.shape[0] <= 256 else gram.float()  # energies need no more
    s2 = small_eig(torch.linalg.eigvalsh, gram, limit=4096).double().flip(0).clamp(min=0)
    energy = s2.flip(0).cumsum(0).flip(0).tolist()  # energy[i] = sum_{j>=i} s_j^2
    return [*energy, 0.0]


def _partial_trace(
    gram: torch.Tensor, modes: tuple[int, ...], kept: tuple[int, ...]
) -> torch.Tensor:
    """``gram`` (row-major over ``modes``) traced over the modes not in ``kept``.

    That is the Gram of the unfolding of the ``kept`` modes, ``prod(kept)`` square.
    """
    n = len(modes)
    if len(kept) == n:
        return gram
    left = list(range(n))
    right = [n + k if k in kept else k for k in range(n)]
    out = [*kept, *(n + k for k in kept)]
    size = math.prod(modes[k] for k in kept)
    return torch.einsum(gram.reshape(*modes, *modes), [*left, *right], out).reshape(size, size)


def dense_option(site: SiteInfo, itemsize: int = 4, profile: DeviceProfile | None = None) -> Option:
    """Leaving the site dense (FLOPs and bytes from :mod:`tfx.cost._flops`)."""
    return price(site, Option("dense", None, None, site.dense_params, 0, 0.0), itemsize, profile)


def _rel(site_norm2: float, energy: float) -> float:
    # The HOSVD / TT-SVD bounds sum over unfoldings and can pass 1; the truncations are
    # orthogonal projections, so the true relative error never does.
    return min(1.0, math.sqrt(max(energy, 0.0) / site_norm2)) if site_norm2 > 0 else 0.0


# ---------------------------------------------------------------- linear / embedding
def _matrix_sizes(site: SiteInfo) -> tuple[int, int]:
    """(rows, cols) of the weight matrix: (out, in) or (num_embeddings, dim)."""
    return site.weight_shape[0], site.weight_shape[1]


def padded_size(n: int) -> int:
    """``n``, or the nearest larger size (at most ~3% more) with a balanced order-3 split.

    Awkward sizes (a large prime factor, e.g. BERT's vocabulary 30522 = 2 x 3 x 5087) have no
    useful tensorization; padding the weight with zero rows or columns to such a size (30522
    -> 30720) is exact and gives the tensorized forms something to work with.
    """
    if n < 64 or _balanced_enough(n):
        return n
    for m in range(n + 1, n + max(16, n // 32) + 1):
        if _balanced_enough(m):
            return m
    return n


def _balanced_enough(n: int) -> bool:
    split = balanced_tensorization(n, 3)
    return split is not None and max(split) <= 2 * n ** (1 / 3) + 1


def _tensorizations(
    site: SiteInfo, rows: int | None = None, cols: int | None = None
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(row shape, column shape) pairs.

    ``get_tensorized_shape`` at orders 2-4, and the most balanced factorizations of each
    size (factors near n ** (1 / order)), paired largest with largest; awkward splits (a large
    prime factor) are left out.
    """
    import warnings

    if rows is None or cols is None:
        rows, cols = _matrix_sizes(site)
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    for order in (2, 3, 4):
        pairs = []
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if site.kind == "embedding":
                    pairs.append(get_tensorized_shape(rows, cols, order=order))
                else:
                    col_shape, row_shape = get_tensorized_shape(cols, rows, order=order)
                    pairs.append((row_shape, col_shape))
        except ValueError:
            pass
        row_b, col_b = balanced_tensorization(rows, order), balanced_tensorization(cols, order)
        if row_b is not None and col_b is not None and order < 4:  # order 4: spectra cost > benefit
            pairs.append((tuple(sorted(row_b)), tuple(sorted(col_b))))
        for row_shape, col_shape in pairs:
            if len(row_shape) != order or len(col_shape) != order or min(row_shape + col_shape) < 2:
                continue
            if (
                max(row_shape) > 4 * rows ** (1 / order) + 1
                or max(col_shape) > 4 * cols ** (1 / order) + 1
            ):
                continue  # an awkward split: its unfoldings are not worth their cost
            pair = (tuple(row_shape), tuple(col_shape))
            if pair not in seen:
                seen.append(pair)
    return seen


def _svd_options(site: SiteInfo, spectra: Spectra, rows: int, cols: int) -> Iterable[Option]:
    for r in rank_grid(min(rows, cols)):
        err = _rel(spectra.norm2, spectra.discarded((rows, cols), None, 1, r))
        params = form_spec("cp", (rows, cols), r).n_params
        yield Option("svd", ((rows,), (cols,)), r, params, 0, err)  # FLOPs: priced in candidates()


def _tucker_options(
    site: SiteInfo, spectra: Spectra, row: tuple[int, ...], col: tuple[int, ...]
) -> Iterable[Option]:
    shape = row + col
    seen = set()
    for i in range(1, 17):
        c = i / 16
        rank = tuple(max(1, min(s, round(s * c))) for s in shape)
        if rank in seen:
            continue
        seen.add(rank)
        energy = sum(
            spectra.discarded(shape, None, 1, r)
            if k == 0
            else spectra.discarded(shape, (k, *[j for j in range(len(shape)) if j != k]), 1, r)
            for k, r in enumerate(rank)
        )
        params = form_spec("tucker", shape, rank).n_params
        yield Option("tucker", (row, col), rank, params, 0, _rel(spectra.norm2, energy))


def _tt_options(
    site: SiteInfo, spectra: Spectra, row: tuple[int, ...], col: tuple[int, ...]
) -> Iterable[Option]:
    shape = row + col
    for rank in _bond_ranks(shape):
        energy = sum(spectra.discarded(shape, None, k, rank[k]) for k in range(1, len(shape)))
        params = form_spec("tt", shape, rank).n_params
        yield Option("tt", (row, col), rank, params, 0, _rel(spectra.norm2, energy))


def _blocktt_options(
    site: SiteInfo, spectra: Spectra, row: tuple[int, ...], col: tuple[int, ...]
) -> Iterable[Option]:
    d = len(row)
    merged = tuple(o * i for o, i in zip(row, col, strict=False))
    perm = tuple(j for k in range(d) for j in (k, d + k))
    shape = row + col
    for rank in _bond_ranks(merged):
        energy = sum(spectra.discarded(shape, perm, 2 * k, rank[k]) for k in range(1, d))
        params = form_spec("blocktt", (row, col), rank).n_params
        yield Option("blocktt", (row, col), rank, params, 0, _rel(spectra.norm2, energy))


#: Wall-clock limit of each CP fit in :func:`_cp_options` (seconds): its error then depends on
#: the machine's load, so tests that compare plans lift it (10 ALS iterations cap the work).
CP_SECONDS = 0.05


def _cp_options(
    site: SiteInfo, weight: torch.Tensor, shape: tuple[int, ...], tshape: Any, norm2: float
) -> Iterable[Option]:
    """A few CP ranks, each fitted by a short time-boxed ALS (small weights only)."""
    tensor = weight.detach().double().reshape(shape)
    for frac in (0.15, 0.5):
        r = max(1, round(frac * math.prod(shape) / (1 + sum(shape))))
        _, _, fit = cp_als(tensor, r, n_iter_max=10, time_limit=CP_SECONDS)
        err = min(1.0, max(0.0, 1.0 - fit))
        params = form_spec("cp", shape, r).n_params
        yield Option("cp", tshape, r, params, 0, err)


# ------------------------------------------------------------------------ conv
def _conv_options(
    site: SiteInfo,
    weight: torch.Tensor,
    spectra: Spectra,
    forms: Sequence[str],
    svd_spectra: Spectra | None = None,
) -> Iterable[Option]:
    svd_spectra = spectra if svd_spectra is None else svd_spectra
    out_c, in_c, *kernel = site.weight_shape
    shape = tuple(site.weight_shape)
    k = math.prod(kernel)
    if "svd" in forms:  # low rank over (out, in * kernel): a conv into r channels, then 1x1
        bounds = tt_rank_bounds(shape)
        for r in rank_grid(min(out_c, in_c * k)):
            rank = (1, r, *bounds[2:])
            params = form_spec("tt", shape, rank).n_params
            err = _rel(svd_spectra.norm2, svd_spectra.discarded(shape, None, 1, r))
            yield Option("svd", None, rank, params, 0, err)
    if "tucker" in forms:  # Tucker-2: ranks on the channel modes, kernel modes full
        seen = set()
        for i in range(1, 17):
            c = i / 16
            ro, ri = max(1, round(out_c * c)), max(1, round(in_c * c))
            if (ro, ri) in seen:
                continue
            seen.add((ro, ri))
            rank = (ro, ri, *kernel)
            energy = spectra.discarded(shape, None, 1, ro) + spectra.discarded(
                shape, (1, 0, *range(2, len(shape))), 1, ri
            )
            params = form_spec("tucker", shape, rank).n_params
            yield Option("tucker", None, rank, params, 0, _rel(spectra.norm2, energy))
    if "tt" in forms:
        for rank in _bond_ranks(shape):
            energy = sum(spectra.discarded(shape, None, j, rank[j]) for j in range(1, len(shape)))
            params = form_spec("tt", shape, rank).n_params
            yield Option("tt", None, rank, params, 0, _rel(spectra.norm2, energy))
    if "cp" in forms and weight.numel() <= CP_MAX_NUMEL:
        yield from _cp_options(site, weight, shape, None, spectra.norm2)


def _tensorized_options(
    site: SiteInfo,
    spectra: Spectra,
    matrix: torch.Tensor,
    pairs: Sequence[tuple[tuple[int, ...], tuple[int, ...]]],
    forms: Sequence[str],
) -> Iterable[Option]:
    for row, col in pairs:
        if "tucker" in forms and len(row) <= 3:
            # Order-4 Tucker (a 10-operand contraction) costs most of the pricing time (about
            # 1.4 s of opt_einsum search on a BERT-base) and is all but never chosen over order 3.
            yield from _tucker_options(site, spectra, row, col)
        if "tt" in forms:
            yield from _tt_options(site, spectra, row, col)
        if "blocktt" in forms and len(row) >= 3:
            # An order-2 BlockTT's one unfolding is a reshuffled matrix as large as the
            # weight: its spectrum costs as much as the SVD's, for a rarely chosen form.
            yield from _blocktt_options(site, spectra, row, col)
        if "cp" in forms and matrix.numel() <= CP_MAX_NUMEL and len(row) == 3:
            yield from _cp_options(site, matrix, row + col, (row, col), spectra.norm2)


def map_sites(
    fn: Callable[[_T], _R],
    items: Sequence[_T],
    sizes: Sequence[int] | None = None,
    workers: int | None = None,
) -> list[_R]:
    """``[fn(item) for item in items]``, the large items one per core.

    ``workers`` Python threads (default ``torch.get_num_threads()``) run torch on one thread
    each. A large site's spectra are eigensolvers and GEMMs on matrices of a few hundred rows:
    they gain little from a second thread each (the eigensolvers lose), so sites side by side
    use the cores better (torch releases the GIL in its kernels). Items whose ``sizes``
    (weight entries) are at most :data:`PARALLEL_MIN_NUMEL` run first, in the calling thread:
    their work is Python-bound, and their CP fits are time-boxed (sharing the GIL would cut
    their sweeps). Results are the loop's, in the order of ``items``, up to float rounding of
    one thread against several; the first exception propagates.
    """
    workers = torch.get_num_threads() if workers is None else workers
    sizes = [PARALLEL_MIN_NUMEL + 1] * len(items) if sizes is None else sizes
    large = [i for i, size in enumerate(sizes) if size > PARALLEL_MIN_NUMEL]
    if workers <= 1 or len(large) <= 1:
        return [fn(item) for item in items]
    out: dict[int, _R] = {
        i: fn(items[i]) for i in range(len(items)) if sizes[i] <= PARALLEL_MIN_NUMEL
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(min(workers, len(large)), thread_name_prefix="tfx-spectra") as pool:
            out.update(zip(large, pool.map(fn, [items[i] for i in large]), strict=True))
    finally:
        torch.set_num_threads(threads)
    return [out[i] for i in range(len(items))]


# --------------------------------------------------------------------- entry point
def _whitened(whitening: Any, matrix: torch.Tensor) -> torch.Tensor:
    """``W L`` for its spectra, in float32 where :class:`Spectra` works in float32 anyway.

    A float64 product there costs 2-4x as much and changes the energies by float32 noise only.
    """
    if matrix.numel() > _SPECTRA_F64_NUMEL and matrix.dtype != torch.float64:
        return whitening.apply(matrix, dtype=torch.float32)
    return whitening.apply(matrix)


def _whitened_spectra(stats: InputStats, matrix: torch.Tensor) -> Spectra:
    """Spectra of ``W L`` from a Gram matrix of its smaller side: no whitened copy of ``W``.

    Tall: ``L^T (W^T W) L``; wide: ``W C W^T`` from the moment (no ``L`` made at all).
    Inputs too wide for a full moment (a diagonal whitening) whiten a copy.
    """
    if matrix.shape[0] > matrix.shape[1] and stats.full:
        whitening = stats.whitening()
        gram = gram_of_rows(matrix)
        return Spectra.from_gram(whitening.sandwich(gram), matrix.shape[0])
    if stats.full:
        return Spectra.from_gram(stats.whitened_gram(matrix), matrix.shape[0])
    return Spectra(_whitened(stats.whitening(), matrix))


def _row_weighted_spectra(counts: Any, matrix: torch.Tensor) -> Spectra:
    """Spectra of ``D W`` (rows weighted by lookup frequency): from ``W^T D^2 W`` when tall."""
    if matrix.shape[0] > matrix.shape[1]:
        return Spectra.from_gram(gram_of_rows(matrix, counts.scales()), matrix.shape[0])
    return Spectra(counts.apply(matrix.double()))


def candidates(
    site: SiteInfo,
    weight: torch.Tensor,
    forms: Sequence[str] = FORMS,
    stats: InputStats | None = None,
    profile: DeviceProfile | None = None,
    keep: dict[str, Any] | None = None,
) -> list[Option]:
    """Every candidate for ``site`` (the dense option included), cheapest first.

    Args:
        site: the site's shapes and numbers.
        weight: its dense weight (``(out, in)``, ``(num, dim)`` or a conv kernel).
        forms: which forms to consider, from :data:`FORMS`.
        stats: the site's input statistics (``calibration=``): errors are then relative
            *output* errors on the calibration data, from the spectra of the whitened weight
            (see :mod:`tfx.cost._whiten`); CP and padded options keep weight errors.
        profile: a :class:`~tfx.cost.DeviceProfile`: each option's order is then chosen by
            estimated time, and ``Option.seconds`` holds it.
        keep: a dict that receives what later stages reuse: ``keep["svd"]``, the spectra of
            the low-rank candidates (for rank refinement, see ``tfx.cost._refine``).

    Returns:
        Options sorted by parameter count; options that are not smaller than
        the dense weight are dropped. Each has the FLOPs, bytes and order of its
        cheaper contraction order (:mod:`tfx.cost._flops`).
    """
    align = RANK_ALIGN.set(rank_alignment(weight))
    try:
        return _candidates(site, weight, forms, stats, profile, keep)
    finally:
        RANK_ALIGN.reset(align)


def _candidates(
    site: SiteInfo,
    weight: torch.Tensor,
    forms: Sequence[str],
    stats: InputStats | None,
    profile: DeviceProfile | None,
    keep: dict[str, Any] | None = None,
) -> list[Option]:
    options = [dense_option(site, weight.element_size(), profile)]
    if site.factorizable:
        spectra = Spectra(weight)
        if site.kind == "conv":
            if stats is None:
                options += list(_conv_options(site, weight, spectra, forms))
            else:  # svd: the whole im2col input whitened; Tucker/TT: Kronecker over (in, *kernel)
                flat = weight.reshape(weight.shape[0], -1)
                svd_spectra = Spectra(stats.whitening().apply(flat).reshape(weight.shape))
                kron = spectra
                if stats.full and any(f in forms for f in ("tucker", "tt")):
                    kron = Spectra(
                        stats.whitening(weight.shape[1:]).apply(flat).reshape(weight.shape)
                    )
                options += list(_conv_options(site, weight, kron, forms, svd_spectra=svd_spectra))
        else:
            rows, cols = _matrix_sizes(site)
            matrix = weight.reshape(rows, cols)
            if "svd" in forms:
                if stats is None:
                    svd_spectra = spectra
                elif site.kind == "embedding":  # rows weighted by how often the data looks them up
                    svd_spectra = _row_weighted_spectra(stats, matrix)
                else:
                    svd_spectra = _whitened_spectra(stats, matrix)
                options += list(_svd_options(site, svd_spectra, rows, cols))
                if keep is not None:
                    keep["svd"] = (svd_spectra, rows, cols, RANK_ALIGN.get())
            pairs = _tensorizations(site)
            tensorized = any(f in forms for f in ("tucker", "tt", "blocktt"))
            if (
                stats is not None and stats.full and tensorized
            ):  # one Kronecker whitening per column tensorization
                by_cols: dict[tuple[int, ...], Spectra] = {}  # pairs with one column shape
                for pair in pairs:
                    if pair[1] not in by_cols:
                        by_cols[pair[1]] = Spectra(_whitened(stats.whitening(pair[1]), matrix))
                    whitened = by_cols[pair[1]]
                    options += list(_tensorized_options(site, whitened, matrix, [pair], forms))
            else:
                options += list(_tensorized_options(site, spectra, matrix, pairs, forms))
            p_rows, p_cols = padded_size(rows), padded_size(cols)
            # TT and BlockTT only: the forms that compress a vocabulary-sized table best;
            # Tucker's mode unfoldings of such a matrix cost seconds for a rarely chosen form.
            chain_forms = [f for f in forms if f in ("tt", "blocktt")]
            if (p_rows, p_cols) != (rows, cols) and chain_forms:
                # Zero rows/columns: the same matrix, with shapes that tensorize (exact).
                padded = torch.nn.functional.pad(matrix, (0, p_cols - cols, 0, p_rows - rows))
                # Order 3 only: these matrices are the large ones (vocabularies), whose spectra
                # cost.
                extra = [
                    p
                    for p in _tensorizations(site, p_rows, p_cols)
                    if p not in pairs and len(p[0]) == 3
                ]
                p_spectra = Spectra(padded)
                if p_cols == cols:  # zero rows leave the row-split spectrum unchanged: reuse it
                    p_spectra._cache[("flat", p_rows)] = spectra.tails((rows, cols), None, 1)
                    if False in spectra._sides:  # and W^T W
                        p_spectra._sides[False] = spectra._sides[False]
                options += list(_tensorized_options(site, p_spectra, padded, extra, chain_forms))
    if keep is not None and "svd" in keep:
        keep["svd"][0].release()  # the energies stay; no weight-sized tensor outlives the plan
    dense = options[0].params
    kept = [options[0]] + price_all(
        site, [o for o in options[1:] if o.params < dense], weight.element_size(), profile
    )
    return sorted(kept, key=lambda o: (o.params, o.error))
