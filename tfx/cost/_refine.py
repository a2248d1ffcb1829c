"""Rank refinement: spend what the rank grid leaves of the budget on in-between SVD ranks.

Candidates offer ranks on a geometric grid (about 20 per site, each ~1.4x the last), which
keeps the choice fast but can leave a quarter of a single layer's budget unused: at half of a
768 x 768 layer the grid offers rank 144 or 200, and 200 does not fit. After the strategy has
picked, this step raises low-rank ("svd") picks one aligned rank step at a time (multiples of
8 from rank 32, of the hardware alignment from twice it, as the grid rounds), always taking
the step with the largest drop of the strategy's objective per parameter, while the budget
(and a FLOP budget, and the speed rule) allows. Errors of the new ranks are exact: they come
from the same spectra as the grid's.

Stage: candidates -> choose -> **refine** -> rewrite. Pure numbers, no decomposition.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from typing import Any

from ._choose import penalty
from ._records import Option, SiteInfo

__all__ = ["refine_svd_ranks", "svd_option", "SvdSpectrum"]

#: What refinement needs of a site's SVD candidates: the spectra object, rows, cols and the
#: rank alignment (see ``tfx.cost._options``); filled in by ``candidates(..., keep=...)``.
SvdSpectrum = tuple[Any, int, int, int]


def _step(rank: int, align: int) -> int:
    if align > 8 and rank >= 2 * align:
        return align
    return 8 if rank >= 32 else 1


def _next_rank(rank: int, align: int) -> int:
    step = _step(rank, align)
    return (rank // step + 1) * step


def svd_option(spectrum: SvdSpectrum, rank: int) -> Option:
    """The (unpriced) rank-``rank`` ``"svd"`` option of the site ``spectrum`` belongs to.

    Its error is exact (from the spectra), whether or not ``rank`` is on the grid.
    """
    s, rows, cols, _ = spectrum
    energy = s.discarded((rows, cols), None, 1, rank)
    error = min(1.0, math.sqrt(max(energy, 0.0) / s.norm2)) if s.norm2 > 0 else 0.0
    return Option("svd", ((rows,), (cols,)), rank, rank * (1 + rows + cols), 0, error)


def refine_svd_ranks(
    infos: Sequence[SiteInfo],
    chosen: Sequence[Option],
    spectra: Sequence[SvdSpectrum | None],
    budget: float,
    weights: Sequence[float],
    price: Callable[[int, Option], Option],
    allowed: Callable[[int, Option], bool],
    flop_budget: float | None = None,
) -> list[Option]:
    """``chosen`` with low-rank picks raised to in-between ranks while ``budget`` allows.

    Args:
        infos: the sites.
        chosen: the strategy's pick for each site.
        spectra: each site's :data:`SvdSpectrum` (None: not refined).
        budget: parameters available to the sites (the picks' total fits in it).
        weights: the strategy's per-site error weights.
        price: ``price(site index, option)``: the option with its FLOPs, bytes and order.
        allowed: ``allowed(site index, priced option)``: whether the speed rule keeps it.
        flop_budget: a FLOP budget the picks' total must stay within, if any.

    Returns:
        The picks, some replaced by a higher-rank ``"svd"`` option of the same site.
    """
    out = list(chosen)
    left = budget - sum(o.params for o in out)
    flops_left = None if flop_budget is None else flop_budget - sum(o.flops for o in out)
    heap: list[tuple[float, int, int]] = []
    upgrades: dict[int, Option] = {}

    def push(i: int) -> None:
        current, spec = out[i], spectra[i]
        if spec is None or current.form != "svd" or not isinstance(current.rank, int):
            return
        _, rows, cols, align = spec
        if current.tensorized_shape != ((rows,), (cols,)):
            return
        rank = _next_rank(current.rank, align)
        params = rank * (1 + rows + cols)
        if (
            rank > min(rows, cols)
            or params >= infos[i].dense_params
            or params - current.params > left
        ):
            return
        candidate = svd_option(spec, rank)
        drop = penalty(current, weights[i]) - penalty(candidate, weights[i])
        if drop <= 0:
            return
        upgrades[i] = candidate
        # Gains rounded to 6 digits, ties to the earlier site: float32 spectra of the same weight
        # can differ in the last bits between runs, which must not reorder the upgrades.
        heapq.heappush(heap, (-float(f"{drop / (params - current.params):.6g}"), i, rank))

    for i in range(len(out)):
        push(i)
    while heap:
        _, i, rank = heapq.heappop(heap)
        candidate = upgrades.get(i)
        if candidate is None or candidate.rank != rank:
            continue
        extra = candidate.params - out[i].params
        if extra > left:
            continue  # every later step of this site costs as much: it is done
        priced = price(i, candidate)
        if not allowed(i, priced) or (
            flops_left is not None and priced.flops - out[i].flops > flops_left
        ):
            continue
        left -= extra
        if flops_left is not None:
            flops_left -= priced.flops - out[i].flops
        out[i] = priced
        push(i)
    return out
