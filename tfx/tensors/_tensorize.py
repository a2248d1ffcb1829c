"""Tensorized shapes: split layer sizes into products of small integers.

A dense ``in_features x out_features`` weight is tensorized by writing each size
as a product of ``order`` factors, e.g. ``768 -> (4, 12, 16)``. This module holds

- :func:`get_tensorized_shape`, tltorch 0.5's ``tltorch.utils.get_tensorized_shape``
  with the same results wherever tltorch tensorizes, and a :class:`~tfx._errors.TfxWarning`
  (instead of a silent lower order) where a size cannot be split;
- :func:`tensorizations` and :func:`balanced_tensorization`, the full search space
  the cost model picks from;
- tltorch's integer helpers :func:`factorize` and :func:`merge_ints`.

Their public path is :mod:`tfx.utils` (tltorch's). The functions are pure integer
arithmetic: no torch, no global state.
"""

from __future__ import annotations

import bisect
import logging
import math
import operator
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Final

from .._errors import ShapeError, TfxWarning

__all__ = [
    "get_tensorized_shape",
    "tensorizations",
    "balanced_tensorization",
    "factorize",
    "merge_ints",
]

# tltorch users find get_tensorized_shape(verbose=True) on the logger of its public path.
logger = logging.getLogger("tfx.utils")

_MSG_NOT_INT: Final = """{name}={value!r} is not a valid {what}.
  It must be an integer >= {minimum}, got {kind}.
Fix: {fix}"""

_MSG_TOO_SMALL: Final = """{name}={value!r} is not a valid {what}.
  It must be an integer >= {minimum}.
Fix: {fix}"""

_MSG_CANNOT_SPLIT: Final = """Could not tensorize (in_features, out_features)=({in_features}, \
{out_features}) at order={order} with factors >= {min_dim}:
{reasons}
  Used {used} instead: in_shape={in_shape}, out_shape={out_shape}{tltorch}.
Fix one of:
{fixes}
  - pass the tensorized shapes explicitly, e.g. FactorizedLinear.from_linear(layer, \
auto_tensorize=False, in_tensorized_features=..., out_tensorized_features=...)"""

# Pasteable fixes for invalid arguments.
_FIX_FEATURES: Final = "pass the layer's size, e.g. get_tensorized_shape(768, 3072, order=3)"
_FIX_ORDER: Final = "pass order=None (tltorch's automatic order) or an order >= 1, e.g. order=3"
_FIX_MIN_DIM: Final = "pass min_dim >= 1; the default is min_dim=2"

# How many sizes above an unsplittable one to try before suggesting a round one.
_PAD_WINDOW: Final = 4096


def _as_int(name: str, value: object, what: str, minimum: int, fix: str) -> int:
    """Return ``value`` as an ``int`` >= ``minimum`` or raise :class:`ShapeError`."""
    # operator.index accepts numpy/torch integer scalars but rejects floats;
    # bool is an int subclass, yet order=True is always a mistake.
    if isinstance(value, bool):
        as_int = None
    else:
        try:
            as_int = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            as_int = None
    if as_int is None:
        raise ShapeError(
            _MSG_NOT_INT.format(
                name=name,
                value=value,
                what=what,
                minimum=minimum,
                kind=type(value).__name__,
                fix=fix,
            )
        )
    if as_int < minimum:
        raise ShapeError(
            _MSG_TOO_SMALL.format(name=name, value=value, what=what, minimum=minimum, fix=fix)
        )
    return as_int


# --------------------------------------------------------------------------- #
# tltorch's algorithm, re-derived: greedy smallest divisors, then merging.
# --------------------------------------------------------------------------- #


def _smallest_divisor(n: int, lo: int) -> int | None:
    """Smallest divisor ``d`` of ``n`` with ``lo <= d <= isqrt(n)``, or None."""
    for d in range(lo, math.isqrt(n) + 1):
        if n % d == 0:
            return d
    return None


def _greedy_split(n: int, min_dim: int, max_parts: int | None = None) -> list[int]:
    """Peel off the smallest divisor >= ``min_dim`` until none is left.

    The result is non-decreasing and has at most ``max_parts`` entries; the last
    entry is whatever remains (tltorch's ``factorize`` with ``remaining``).
    """
    # A divisor of 1 would never shrink n (tltorch recurses forever there).
    lo = max(min_dim, 2)
    parts: list[int] = []
    rest = n
    while rest > min_dim and (max_parts is None or len(parts) < max_parts - 1):
        d = _smallest_divisor(rest, lo)
        if d is None:
            break
        parts.append(d)
        rest //= d
    parts.append(rest)
    return parts


def _merge_smallest(parts: list[int], size: int) -> tuple[int, ...]:
    """Multiply the two smallest entries together until ``size`` are left."""
    merged = sorted(parts)
    while len(merged) > size:
        a, b = merged[0], merged[1]
        del merged[:2]
        bisect.insort(merged, a * b)
    return tuple(merged)


def _tltorch_shape(
    in_features: int, out_features: int, order: int | None, min_dim: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """What tltorch 0.5 returns (tltorch itself never terminates for min_dim=1)."""
    in_parts = _greedy_split(in_features, min_dim)
    # tltorch stops splitting out_features after len(in_parts) divisors.
    out_parts = _greedy_split(out_features, min_dim, max_parts=len(in_parts) + 1)
    size = min(len(in_parts), len(out_parts))
    if order is not None:
        size = min(size, order)
    return _merge_smallest(in_parts, size), _merge_smallest(out_parts, size)


# --------------------------------------------------------------------------- #
# Exhaustive search over tensorizations.
# --------------------------------------------------------------------------- #


def _divisors(n: int) -> list[int]:
    """All divisors of ``n``, sorted."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    large = [n // d for d in reversed(small) if d * d != n]
    return small + large


@lru_cache(maxsize=4096)
def _splits(n: int, order: int, lo: int, hi: int) -> bool:
    """Whether ``n`` is a product of exactly ``order`` integers in ``[lo, hi]``."""
    if order == 1:
        return lo <= n <= hi
    if lo == 1:
        # Factors of 1 pad any split: look for at most `order` factors >= 2.
        most = min(order, n.bit_length())
        return n == 1 or any(_splits(n, k, 2, hi) for k in range(1, most + 1))
    if order > n.bit_length():
        return False  # order factors >= 2 need n >= 2**order
    d = lo
    while d <= hi and d**order <= n:
        if n % d == 0 and _splits(n // d, order - 1, d, hi):
            return True
        d += 1
    return False


def _splittable(n: int, order: int, min_dim: int) -> bool:
    """Whether ``n`` is a product of exactly ``order`` integers >= ``min_dim``."""
    return _splits(n, order, min_dim, n)


def _max_order(n: int, limit: int, min_dim: int) -> int:
    """Largest order <= ``limit`` at which ``n`` splits (0 if ``n < min_dim``)."""
    # Splittable at order k implies order k-1 (merge two factors), so scan down.
    if min_dim > 1:
        limit = min(limit, n.bit_length())  # k factors >= 2 need n >= 2**k
    for k in range(limit, 0, -1):
        if _splittable(n, k, min_dim):
            return k
    return 0


@lru_cache(maxsize=256)
def _tensorizations(n: int, order: int, min_dim: int) -> tuple[tuple[int, ...], ...]:
    """Cached, immutable body of :func:`tensorizations`."""
    if min_dim == 1:
        # Pad each split into k <= order factors >= 2 with order - k ones; this
        # also keeps the recursion shallow for large orders.
        most = min(order, n.bit_length())
        padded = [
            t + (1,) * (order - k) for k in range(1, most + 1) for t in _tensorizations(n, k, 2)
        ]
        return ((1,) * order,) if n == 1 else tuple(sorted(padded))
    if order > n.bit_length():
        return ()  # order factors >= 2 need n >= 2**order
    divs = _divisors(n)
    memo: dict[tuple[int, int, int], list[tuple[int, ...]]] = {}

    def ascending(m: int, k: int, lo: int) -> list[tuple[int, ...]]:
        # Non-decreasing k-tuples >= lo whose product is m; m always divides n.
        if k == 1:
            return [(m,)] if m >= lo else []
        key = (m, k, lo)
        if key not in memo:
            found: list[tuple[int, ...]] = []
            for d in divs[bisect.bisect_left(divs, lo) :]:
                if d**k > m:
                    break
                if m % d == 0:
                    found.extend((d, *rest) for rest in ascending(m // d, k - 1, d))
            memo[key] = found
        return memo[key]

    return tuple(sorted(t[::-1] for t in ascending(n, order, min_dim)))


def tensorizations(n: int, order: int, *, min_dim: int = 2) -> list[tuple[int, ...]]:
    """List every way to write ``n`` as a product of ``order`` factors >= ``min_dim``.

    Each tensorization is a non-increasing tuple, listed once. The list is sorted
    most balanced first: by largest factor, then lexicographically, so the
    leftover factors are as even as possible. Results are cached; each call
    returns a fresh list, which the caller may modify.

    Args:
        n: the size to split, >= 1.
        order: the number of factors, >= 1.
        min_dim: the smallest allowed factor, >= 1.

    Returns:
        The tensorizations, empty if there is none (e.g. ``n`` prime and ``order >= 2``).

    Raises:
        ShapeError: if ``n``, ``order`` or ``min_dim`` is not a positive integer.

    Example:
        >>> tensorizations(24, 3)
        [(4, 3, 2), (6, 2, 2)]
        >>> tensorizations(24, 3, min_dim=3)
        []
    """
    n = _as_int("n", n, "size to tensorize", 1, "tensorizations(768, 3)")
    order = _as_int("order", order, "tensorization order", 1, "tensorizations(768, 3)")
    min_dim = _as_int("min_dim", min_dim, "smallest factor", 1, _FIX_MIN_DIM)
    return list(_tensorizations(n, order, min_dim))


def balanced_tensorization(n: int, order: int, *, min_dim: int = 2) -> tuple[int, ...] | None:
    """Return the most balanced tensorization of ``n``, or None if there is none.

    This is the first entry of :func:`tensorizations`: the one whose largest
    factor is smallest, i.e. whose factors stay nearest ``n ** (1 / order)``.

    Args:
        n: the size to split, >= 1.
        order: the number of factors, >= 1.
        min_dim: the smallest allowed factor, >= 1.

    Returns:
        A non-increasing tuple of ``order`` factors whose product is ``n``, or
        None if ``n`` cannot be split that way.

    Raises:
        ShapeError: if ``n``, ``order`` or ``min_dim`` is not a positive integer.

    Example:
        >>> balanced_tensorization(4096, 3)
        (16, 16, 16)
        >>> balanced_tensorization(3072, 3)
        (16, 16, 12)
        >>> balanced_tensorization(11, 2) is None
        True
    """
    found = tensorizations(n, order, min_dim=min_dim)
    return found[0] if found else None


# --------------------------------------------------------------------------- #
# get_tensorized_shape
# --------------------------------------------------------------------------- #


def _split_like_tltorch(n: int, order: int, min_dim: int) -> tuple[int, ...]:
    """``n`` split into ``order`` factors the way tltorch would, where it can.

    tltorch's greedy merge when its greedy split has enough factors, else the
    balanced split (non-decreasing, as tltorch orders shapes), else ``(n,)``.
    """
    parts = _greedy_split(n, min_dim)
    if len(parts) >= order:
        return _merge_smallest(parts, order)
    found = _tensorizations(n, order, min_dim)
    return found[0][::-1] if found else (n,)


def _why_not(name: str, n: int, order: int, min_dim: int) -> str:
    """One line saying why ``n`` does not split into ``order`` factors."""
    if n < min_dim:
        return f"  - {name}={n} is smaller than min_dim={min_dim}"
    best = _max_order(n, order, min_dim)
    if best == 1 and min_dim <= 2:
        return f"  - {name}={n} is prime"
    return f"  - {name}={n} splits into at most {best} factor(s) >= {min_dim}"


def _pad_size(n: int, order: int, min_dim: int) -> int:
    """A size above ``n`` that splits into ``order`` balanced factors >= ``min_dim``.

    The smallest one, within a bounded window, whose factors all stay within
    twice ``m ** (1 / order)``; else ``b x ... x b x q`` with ``b`` the rounded-up
    balanced factor, which is in that window's criterion by construction.
    """
    target: int = max(n + 1, min_dim**order)  # nothing below min_dim**order splits
    b = max(min_dim, round(math.pow(target, 1 / order)))
    while b**order < target:  # float roots can be off by one either way
        b += 1
    while b > min_dim and (b - 1) ** order >= target:
        b -= 1
    base: int = b ** (order - 1)
    fallback = base * max(min_dim, -(-target // base))
    for m in range(target, min(fallback, target + _PAD_WINDOW)):
        hi = int(2 * math.pow(m, 1 / order))
        # Cheap filter first: m needs every prime factor <= hi.
        if _is_smooth(m, hi) and _splits(m, order, min_dim, hi):
            return m
    return fallback


def _is_smooth(n: int, bound: int) -> bool:
    """Whether every prime factor of ``n`` is at most ``bound``."""
    for p in range(2, bound + 1):
        if p * p > n:
            return n <= bound  # what is left is 1 or a prime
        while n % p == 0:
            n //= p
    return n == 1


def _warn_cannot_split(
    sizes: dict[str, int],
    order: int | None,
    min_dim: int,
    shape: tuple[tuple[int, ...], tuple[int, ...]],
    *,
    as_tltorch: bool,
) -> None:
    """Emit the :class:`TfxWarning` for sizes that do not split at ``order``."""
    # order=None asks for tltorch's automatic order: anything from 2 factors >= 2 up.
    target, lo = (2, max(min_dim, 2)) if order is None else (order, min_dim)
    bad = {name: n for name, n in sizes.items() if not _splittable(n, target, lo)}
    fixes = []
    for name, n in bad.items():
        if lo**target > 4 * n:
            continue  # padding would more than quadruple the layer
        m = _pad_size(n, target, lo)
        factors = " x ".join(map(str, _split_like_tltorch(m, target, lo)))
        fixes.append(f"  - pad the layer to a size that splits, e.g. {name}={m} (= {factors})")
    used_order = len(shape[0])
    if order is not None and used_order > 1:
        fixes.append(f"  - ask for the order that fits: order={used_order}")
    message = _MSG_CANNOT_SPLIT.format(
        in_features=sizes["in_features"],
        out_features=sizes["out_features"],
        order=order if order is not None else "None (automatic, at least 2)",
        min_dim=lo,
        reasons="\n".join(_why_not(name, n, target, lo) for name, n in bad.items()),
        used=f"order {used_order}" + (" (no tensorization)" if used_order == 1 else ""),
        in_shape=shape[0],
        out_shape=shape[1],
        tltorch=" (as tltorch does)" if as_tltorch else "",
        fixes="\n".join(fixes),
    )
    # stacklevel 3: _warn_cannot_split -> get_tensorized_shape -> its caller.
    warnings.warn(message, TfxWarning, stacklevel=3)


def get_tensorized_shape(
    in_features: int,
    out_features: int,
    order: int | None = None,
    min_dim: int = 2,
    verbose: bool = False,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Split ``in_features`` and ``out_features`` into the same number of factors.

    Same results as ``tltorch.utils.get_tensorized_shape`` (tltorch 0.5)
    wherever tltorch tensorizes: each size is split greedily into its smallest
    divisors >= ``min_dim``, then the two smallest factors are multiplied
    together until both shapes have ``order`` entries (or, for ``order=None``,
    as many as the shorter split). Shapes are non-decreasing.

    Where a size cannot be split into ``order`` factors >= ``min_dim`` (a prime,
    say), tltorch silently lowers the order; tfx returns the same shapes but
    warns. Where tltorch's greedy split misses a valid split (rare: with
    ``min_dim=6`` it splits 1000 as ``(8, 125)``, missing ``(10, 10, 10)``), tfx
    returns a split at the highest order both sizes allow (tltorch's merge of
    its greedy split where that is long enough, else the most balanced one).
    With ``min_dim=1``, where tltorch never returns, missing factors are 1.

    Args:
        in_features: size of the layer's input, >= 1.
        out_features: size of the layer's output, >= 1.
        order: number of factors per size, >= 1, or None for as many as the
            greedy split gives both sizes.
        min_dim: smallest acceptable factor, >= 1.
        verbose: log the result at INFO level on the ``tfx.utils`` logger.
            Unlike tltorch this defaults to False and never prints.

    Returns:
        ``(in_shape, out_shape)``: tuples of equal length whose products are
        ``in_features`` and ``out_features``.

    Raises:
        ShapeError: if a size is not an integer >= 1, ``order`` is not None or
            an integer >= 1, or ``min_dim`` is not an integer >= 1.

    Warns:
        TfxWarning: if a size cannot be split into ``order`` factors >=
            ``min_dim`` (or, for ``order=None``, into 2), naming the size, the
            shapes used instead and how to fix it.

    Example:
        >>> get_tensorized_shape(768, 3072, order=3)
        ((4, 12, 16), (8, 16, 24))
        >>> get_tensorized_shape(4096, 4096)
        ((2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2), (2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2))
    """
    in_features = _as_int("in_features", in_features, "feature count", 1, _FIX_FEATURES)
    out_features = _as_int("out_features", out_features, "feature count", 1, _FIX_FEATURES)
    if order is not None:
        order = _as_int("order", order, "tensorization order", 1, _FIX_ORDER)
    min_dim = _as_int("min_dim", min_dim, "smallest factor", 1, _FIX_MIN_DIM)

    shape = _tltorch_shape(in_features, out_features, order, min_dim)
    sizes = {"in_features": in_features, "out_features": out_features}
    if order is None:
        if len(shape[0]) == 1:
            _warn_cannot_split(sizes, None, min_dim, shape, as_tltorch=True)
    elif len(shape[0]) != order or min(shape[0] + shape[1]) < min_dim:
        # The highest order both sizes allow. tltorch's greedy split reaches it
        # except in rare cases (min_dim=6 splits 1000 as 8 x 125, not 10 x 10 x 10)
        # and for min_dim=1, where tltorch recurses forever.
        reachable = max(1, min(_max_order(n, order, min_dim) for n in sizes.values()))
        as_tltorch = len(shape[0]) == reachable
        if not as_tltorch:
            shape = (
                _split_like_tltorch(in_features, reachable, min_dim),
                _split_like_tltorch(out_features, reachable, min_dim),
            )
        if reachable < order or min(shape[0] + shape[1]) < min_dim:
            _warn_cannot_split(sizes, order, min_dim, shape, as_tltorch=as_tltorch)

    if verbose:
        logger.info("Tensorizing (in, out)=(%d, %d) -> (%s, %s)", in_features, out_features, *shape)
    return shape


# --------------------------------------------------------------------------- #
# tltorch's integer helpers (tltorch.utils.tensorize_shape)
# --------------------------------------------------------------------------- #


def factorize(value: int, min_value: int = 2, remaining: int = -1) -> tuple[int, ...]:
    """Split an integer into its smallest divisors >= ``min_value`` (tltorch's helper).

    This is the integer factorization ``tltorch.utils.tensorize_shape.factorize``
    that :func:`get_tensorized_shape` builds on, not the model compiler
    :func:`tfx.factorize`. Divisors are peeled off smallest first while what is
    left exceeds ``min_value``; the last entry is the remainder.

    Args:
        value: the integer to split, >= 1.
        min_value: the smallest divisor to use, >= 1 (1 behaves as 2; tltorch
            recurses forever there).
        remaining: the most divisors to peel off before stopping; -1 for no limit.

    Returns:
        Integers whose product is ``value``, non-decreasing except for the remainder.

    Raises:
        ShapeError: if ``value`` or ``min_value`` is not a positive integer.

    Example:
        >>> factorize(12)
        (2, 2, 3)
        >>> factorize(64, remaining=2)
        (2, 2, 16)
    """
    value = _as_int("value", value, "integer to factorize", 1, "factorize(768)")
    min_value = _as_int(
        "min_value", min_value, "smallest divisor", 1, "factorize(768, min_value=2)"
    )
    remaining = operator.index(remaining)
    max_parts = None if remaining < 0 else remaining + 1
    return tuple(_greedy_split(value, min_value, max_parts))


def merge_ints(values: Sequence[int], size: int) -> Sequence[int]:
    """Multiply the two smallest values together until ``size`` are left (tltorch's helper).

    Args:
        values: positive integers, e.g. from :func:`factorize`.
        size: the length to stop at.

    Returns:
        The merged values as a sorted tuple; ``values`` itself when it has at most one entry.

    Example:
        >>> merge_ints((2, 2, 3, 5), 2)
        (5, 12)
    """
    if len(values) <= 1:
        return values
    return _merge_smallest(list(values), size)
