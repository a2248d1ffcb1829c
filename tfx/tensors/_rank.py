"""Rank normalisation: one place turns what the user passed into the rank.

A rank spec is what tltorch accepts: an int, a tuple, ``'same'`` (as many
parameters as the dense tensor) or a float (that fraction of the dense
parameter count). It is normalised once, at construction, with the same
integer results as tltorch 0.5 / tensorly for the same inputs. Two policies:

* ``overcomplete=True`` (a new, trainable tensor, e.g. ``TuckerTensor.new``,
  and every Tucker decomposition): tltorch's ranks exactly, even where they
  exceed what the shape can hold. A Tucker int is that rank on every mode, a
  TT int is every inner bond, a tuple is taken as given, a fraction is
  tltorch's solution, unbounded. Over-complete factors are legitimate for
  training from scratch; decompositions pad the components the tensor cannot
  fill (see ``TuckerTensor.from_tensor``), so the shape is tltorch's and the
  reconstruction exact.
* ``overcomplete=False`` (the default; TT decompositions and BlockTT): a rank
  the shape cannot hold is never returned.

  - one int for a TT is the largest bond rank: each bond takes
    ``min(rank, its bound)`` (as tensorly's ``tensor_train`` reads it);
  - an explicit tuple (or a Tucker int) above the largest valid rank raises
    :class:`~tfx.RankError` naming that largest rank;
  - a fraction is solved for first, with tltorch's formulas (whose rounding
    can land a little above or below the fraction), then bounded by the
    largest valid rank: a fraction asks for a size, not for particular ranks,
    so a bounded rank is the faithful answer, never an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .._errors import RankError

__all__ = [
    "RankSpec",
    "cp_rank",
    "tucker_rank",
    "tt_rank",
    "tt_rank_bounds",
    "is_fraction",
]

RankSpec = int | float | str | Sequence[int]


def is_fraction(rank: object) -> bool:
    """Whether ``rank`` asks for a fraction of the dense parameters."""
    return rank == "same" or (isinstance(rank, float) and not isinstance(rank, bool))


def _fraction(rank: RankSpec, what: str) -> float:
    value = 1.0 if rank == "same" else float(rank)  # type: ignore[arg-type]
    if not (value > 0 and math.isfinite(value)):
        raise RankError(
            f"rank={rank!r} for a {what} is not a positive fraction of the dense parameters.\n"
            "Fix: pass a float in (0, 1] such as rank=0.5, 'same', or explicit integer ranks."
        )
    return value


def _check_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RankError(
            f"rank {value!r} for a {what} is not a positive integer.\n"
            "Fix: ranks are ints >= 1, 'same', or a float fraction of the dense parameters."
        )
    return value


def _as_int_tuple(rank: object, what: str) -> tuple[int, ...]:
    if isinstance(rank, str):
        raise RankError(
            f"rank={rank!r} for a {what} is not understood.\n"
            "Fix: pass an int, a tuple of ints, 'same', or a float fraction such as 0.5."
        )
    try:
        items = tuple(rank)  # type: ignore[arg-type]
    except TypeError:
        raise RankError(
            f"rank={rank!r} for a {what} is not an int, a tuple of ints, 'same' or a float."
        ) from None
    return tuple(
        _check_int(r if isinstance(r, bool) or not hasattr(r, "__index__") else int(r), what)
        for r in items
    )


def cp_rank(shape: Sequence[int], rank: RankSpec) -> int:
    """Normalise a CP rank spec for a tensor of ``shape``.

    A CP rank has no upper bound (a CP decomposition can always be
    overparametrised), so only malformed specs are errors.

    Example:
        >>> cp_rank((32, 32), 0.5)
        8
    """
    what = f"CP tensor of shape {tuple(shape)}"
    if is_fraction(rank):
        fraction = _fraction(rank, what)
        return max(1, int(round(math.prod(shape) * fraction / sum(shape))))
    if isinstance(rank, tuple | list) and len(rank) == 1:
        rank = rank[0]
    return _check_int(rank, what)


def _solve_tucker_fraction(shape: Sequence[int], fixed: Sequence[int], fraction: float) -> float:
    """Bisection for c in ``n * c**k + linear * c = fraction * n``.

    ``linear`` is the sum of the squared free dims and of the squared fixed dims.
    """
    n = math.prod(shape)
    free = [s for i, s in enumerate(shape) if i not in fixed]
    k = len(free)
    linear = sum(s * s for s in free) + sum(shape[i] ** 2 for i in fixed)

    def excess(c: float) -> float:
        return n * c**k + linear * c - fraction * n

    lo, hi = 0.0, max(fraction, 1.0)
    for _ in range(200):
        mid = (lo + hi) / 2
        if excess(mid) > 0:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def tucker_rank(
    shape: Sequence[int],
    rank: RankSpec,
    *,
    fixed_modes: Sequence[int] | None = None,
    overcomplete: bool = False,
) -> tuple[int, ...]:
    """Normalise a Tucker rank spec: one rank per mode.

    Args:
        shape: the tensor's shape.
        rank: int (the same rank on every mode), tuple, ``'same'`` or a float.
        fixed_modes: modes kept at full rank (their size) for an int or a fraction.
        overcomplete: allow ranks above the mode sizes, as tltorch does (for new,
            trainable tensors and padded decompositions); a fraction is then
            tltorch's solution, unbounded. Otherwise each rank is at most its
            mode's size: a fraction is bounded and an explicit rank above raises.

    Returns:
        The rank tuple.

    Raises:
        RankError: for malformed specs, or (unless ``overcomplete``) ranks above
            the mode sizes.

    Example:
        >>> tucker_rank((5, 4, 3, 3), 0.5)
        (4, 3, 2, 2)
        >>> tucker_rank((6, 2, 4, 5), 3, overcomplete=True)
        (3, 3, 3, 3)
    """
    shape = tuple(shape)
    what = f"Tucker tensor of shape {shape}"
    fixed = sorted({m % len(shape) for m in (fixed_modes or ())})
    if is_fraction(rank):
        c = _solve_tucker_fraction(shape, fixed, _fraction(rank, what))
        solved = (max(1, int(round(s * c))) for s in shape)
        return tuple(
            s if i in fixed else (r if overcomplete else min(s, r))
            for i, (s, r) in enumerate(zip(shape, solved, strict=False))
        )
    if isinstance(rank, int) and not isinstance(rank, bool):
        _check_int(rank, what)
        ranks = tuple(s if i in fixed else rank for i, s in enumerate(shape))
    else:
        ranks = _as_int_tuple(rank, what)
        if len(ranks) != len(shape):
            raise RankError(
                f"rank={tuple(ranks)} has {len(ranks)} entries but the {what} has "
                f"{len(shape)} modes.\nFix: pass one rank per mode, e.g. rank={shape}."
            )
    if not overcomplete and any(r > s for r, s in zip(ranks, shape, strict=False)):
        largest = tuple(min(r, s) for r, s in zip(ranks, shape, strict=False))
        raise RankError(
            f"rank={rank!r} is too large for a {what}: the rank of each mode is at most its "
            f"size, so the largest valid rank is {shape}.\n"
            f"Fix: rank={largest}, or a fraction of the parameters such as rank=0.5."
        )
    return ranks


def tt_rank_bounds(shape: Sequence[int]) -> tuple[int, ...]:
    """The largest TT rank of each bond: min(prod(left), prod(right)), boundaries 1."""
    shape = tuple(shape)
    inner = tuple(min(math.prod(shape[:k]), math.prod(shape[k:])) for k in range(1, len(shape)))
    return (1, *inner, 1)


def _tt_fraction(shape: Sequence[int], fraction: float) -> tuple[int, ...]:
    order = len(shape)
    if order == 1:
        return (1, 1)
    avg = [(shape[i] + shape[i + 1]) / 2 for i in range(order - 1)]
    if len(avg) > 1:
        a = sum(avg[i - 1] * shape[i] * avg[i] for i in range(1, order - 1))
    else:
        a = avg[0] ** 2 * shape[0]
    b = shape[0] * avg[0] + shape[-1] * avg[-1]
    c = -math.prod(shape) * fraction
    solution = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    return (1, *(max(int(round(d * solution)), 1) for d in avg), 1)


def tt_rank(
    shape: Sequence[int], rank: RankSpec, *, what: str | None = None, overcomplete: bool = False
) -> tuple[int, ...]:
    """Normalise a TT rank spec: a tuple of ``len(shape) + 1`` ranks with boundary 1s.

    Args:
        shape: the tensor's shape (for a BlockTT, the merged sizes of its cores).
        rank: int, tuple (boundary 1s included), ``'same'`` or a float.
        what: how errors name the tensor.
        overcomplete: tltorch's ranks for a new, trainable tensor (tensorly's
            ``validate_tt_rank``): an int is every inner bond and a fraction is
            tltorch's solution, both unbounded, and a tuple is taken as given.
            Otherwise an int is the largest bond rank (each bond takes
            ``min(rank, its bound)``), a fraction is bounded, and a tuple above
            the bounds raises.

    Returns:
        The rank tuple.

    Raises:
        RankError: for malformed specs, boundary ranks other than 1, or (unless
            ``overcomplete``) a tuple above the bounds.

    Example:
        >>> tt_rank((4, 4, 4), 2)
        (1, 2, 2, 1)
        >>> tt_rank((2, 3, 4), 5), tt_rank((2, 3, 4), 5, overcomplete=True)
        ((1, 2, 4, 1), (1, 5, 5, 1))
    """
    shape = tuple(shape)
    what = what or f"TT tensor of shape {shape}"
    bounds = tt_rank_bounds(shape)
    if is_fraction(rank):
        ranks = _tt_fraction(shape, _fraction(rank, what))
        return (
            ranks if overcomplete else tuple(min(r, b) for r, b in zip(ranks, bounds, strict=False))
        )
    if isinstance(rank, int) and not isinstance(rank, bool):
        # One int is the largest bond rank (tensorly's tensor_train reads it so): bonds
        # that cannot hold it (near the ends) take their own largest rank. No bond exceeds
        # what the shape allows, and the tensor is the one asked for. A new tensor takes it
        # on every bond, as tltorch's TTTensor.new does.
        _check_int(rank, what)
        if overcomplete:
            return (1, *([rank] * (len(shape) - 1)), 1)
        return tuple(min(rank, b) for b in bounds)
    else:
        ranks = _as_int_tuple(rank, what)
        if len(ranks) != len(shape) + 1:
            raise RankError(
                f"rank={tuple(ranks)} has {len(ranks)} entries; a {what} needs "
                f"len(shape) + 1 = {len(shape) + 1}, boundary ones included.\n"
                f"Fix: e.g. rank={bounds}."
            )
        if ranks[0] != 1 or ranks[-1] != 1:
            raise RankError(
                f"rank={tuple(ranks)} for a {what} must start and end with 1 (boundary ranks).\n"
                f"Fix: rank=(1, {', '.join(map(str, ranks[1:-1]))}, 1)."
            )
    if not overcomplete and any(r > b for r, b in zip(ranks, bounds, strict=False)):
        largest = tuple(min(r, b) for r, b in zip(ranks, bounds, strict=False))
        raise RankError(
            f"rank={rank!r} is too large for a {what}: bond k cannot exceed "
            f"min(prod(shape[:k]), prod(shape[k:])), so the largest valid rank is {bounds}.\n"
            f"Fix: rank={largest}, or a fraction of the parameters such as rank=0.5."
        )
    return ranks
