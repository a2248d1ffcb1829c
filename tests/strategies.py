"""Hypothesis strategies shared by the test suite.

Everything here is small on purpose: shapes of order 1-4 with sizes 1-6,
tensorized shapes with entries of length 1-3 and sizes 1-4, so that a property
test builds and reconstructs a tensor in well under a millisecond.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from hypothesis import strategies as st

import tfx

__all__ = [
    "shapes",
    "matrix_shapes",
    "tensorized_shapes",
    "form_names",
    "fractions",
    "rank_specs",
    "tucker_ranks",
    "tt_ranks",
    "indices",
    "tt_bounds",
    "tensorized_entries",
    "PLAIN_FORMS",
    "TENSORIZED_FORMS",
]

PLAIN_FORMS: list[str] = tfx.tensors.available()
TENSORIZED_FORMS: list[str] = tfx.tensors.available(tensorized=True)


# ------------------------------------------------------------------ shapes
def shapes(
    *, min_order: int = 1, max_order: int = 4, min_size: int = 1, max_size: int = 6
) -> st.SearchStrategy[tuple[int, ...]]:
    """Plain tensor shapes: order ``min_order..max_order``, sizes ``min_size..max_size``."""
    return st.lists(st.integers(min_size, max_size), min_size=min_order, max_size=max_order).map(
        tuple
    )


def matrix_shapes(*, min_size: int = 1, max_size: int = 6) -> st.SearchStrategy[tuple[int, int]]:
    """Order-2 shapes."""
    return shapes(min_order=2, max_order=2, min_size=min_size, max_size=max_size)  # type: ignore[return-value]


@st.composite
def tensorized_shapes(
    draw: st.DrawFn,
    *,
    batch: bool | None = None,
    min_length: int = 1,
    max_length: int = 3,
    max_size: int = 4,
    max_batch: int = 3,
) -> tuple[Any, ...]:
    """``(rows, cols)`` or ``(batch, rows, cols)``: two tuples of equal length.

    Args:
        batch: True for a leading batch int, False for none, None for either.
        min_length, max_length: length of the row and column tuples.
        max_size: largest size of a tensorized factor.
        max_batch: largest batch size.
    """
    length = draw(st.integers(min_length, max_length))
    entry = st.lists(st.integers(1, max_size), min_size=length, max_size=length).map(tuple)
    rows, cols = draw(entry), draw(entry)
    with_batch = draw(st.booleans()) if batch is None else batch
    if with_batch:
        return (draw(st.integers(1, max_batch)), rows, cols)
    return (rows, cols)


def tensorized_entries(
    tensorized_shape: Sequence[Any],
) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """(batch sizes, tensorized tuples) of a flat tensorized shape."""
    batch = tuple(e for e in tensorized_shape if isinstance(e, int))
    entries = tuple(e for e in tensorized_shape if isinstance(e, tuple))
    return batch, entries


# ------------------------------------------------------------------ forms
def form_names(*, tensorized: bool = False) -> st.SearchStrategy[str]:
    """Registered form names, e.g. ``'CP'``, ``'ComplexTucker'``."""
    return st.sampled_from(tfx.tensors.available(tensorized=tensorized))


# ------------------------------------------------------------------ ranks
def fractions() -> st.SearchStrategy[float | str]:
    """Fractional rank specs: floats in (0.05, 1.5] or ``'same'``."""
    return st.one_of(
        st.floats(0.05, 1.5, exclude_min=True, allow_nan=False, allow_infinity=False),
        st.just("same"),
    )


def tt_bounds(shape: Sequence[int]) -> tuple[int, ...]:
    """Largest TT rank per bond, computed here independently of tfx."""
    inner = tuple(min(math.prod(shape[:k]), math.prod(shape[k:])) for k in range(1, len(shape)))
    return (1, *inner, 1)


@st.composite
def tucker_ranks(draw: st.DrawFn, shape: Sequence[int]) -> tuple[int, ...]:
    """Valid explicit Tucker ranks: one int per mode, at most the mode size."""
    return tuple(draw(st.integers(1, s)) for s in shape)


@st.composite
def tt_ranks(draw: st.DrawFn, shape: Sequence[int]) -> tuple[int, ...]:
    """Valid explicit TT ranks, boundary ones included, within the unfolding bounds."""
    bounds = tt_bounds(shape)
    return (1, *(draw(st.integers(1, b)) for b in bounds[1:-1]), 1)


@st.composite
def rank_specs(draw: st.DrawFn, shape: Sequence[int], form: str) -> Any:
    """Any valid rank spec for ``form`` on ``shape``: int, fraction, ``'same'`` or tuple.

    ``form`` is ``'cp'``, ``'tucker'`` or ``'tt'`` (BlockTT uses ``'tt'`` on its core sizes).
    """
    form = form.lower()
    options: list[st.SearchStrategy[Any]] = [fractions()]
    if form == "cp":
        options += [st.integers(1, 8), st.integers(1, 8).map(lambda r: (r,))]
    elif form == "tucker":
        options += [st.integers(1, min(shape)), tucker_ranks(shape)]
    elif form == "tt":
        options.append(tt_ranks(shape))
        if len(shape) > 1:
            options.append(st.integers(1, min(tt_bounds(shape)[1:-1])))
    else:
        raise ValueError(f"unknown rank family {form!r}")
    return draw(st.one_of(options))


# ------------------------------------------------------------------ indices
def _slices(size: int, allow_empty: bool) -> st.SearchStrategy[slice]:
    bound = st.one_of(st.none(), st.integers(-size - 1, size + 1))
    slices = st.builds(slice, bound, bound, st.one_of(st.none(), st.integers(1, 3)))
    if allow_empty:
        return slices
    return slices.filter(lambda s: len(range(*s.indices(size))) > 0)


def _ints(size: int) -> st.SearchStrategy[int]:
    return st.integers(-size, size - 1)


def _advanced(size: int, allow_empty: bool) -> st.SearchStrategy[Any]:
    """A list of ints, a 1-D long tensor, or a bool mask, for a mode of ``size``."""
    ints = st.lists(_ints(size), min_size=1, max_size=4)
    masks = st.lists(st.booleans(), min_size=size, max_size=size)
    if not allow_empty:
        masks = masks.filter(any)
    return st.one_of(
        ints,
        ints.map(lambda v: torch.tensor(v, dtype=torch.long)),
        masks.map(lambda v: torch.tensor(v)),
    )


@st.composite
def indices(
    draw: st.DrawFn, shape: Sequence[int], *, max_advanced: int = 1, allow_empty: bool = False
) -> Any:
    """An index into a tensor of ``shape``, as users write them.

    Mixes ints (negative too), slices with steps, at most ``max_advanced`` list /
    index-tensor / bool-mask indices, an optional Ellipsis, and may leave
    trailing modes out. A single entry is returned bare (``t[3]``), several as a tuple.
    Unless ``allow_empty``, every slice and mask selects at least one entry.
    """
    order = len(shape)
    n_explicit = draw(st.integers(1, order))
    use_ellipsis = draw(st.booleans()) and n_explicit < order
    if use_ellipsis:
        # explicit modes are the first `head` and the last `n_explicit - head`
        head = draw(st.integers(0, n_explicit))
        positions = list(range(head)) + list(range(order - (n_explicit - head), order))
    else:
        positions = list(range(n_explicit))
    advanced_at = set(
        draw(st.lists(st.sampled_from(positions), max_size=max_advanced, unique=True))
    )
    # Several advanced indices broadcast together: give them one common length.
    common = draw(st.integers(1, 4)) if len(advanced_at) > 1 else None
    items: list[Any] = []
    for p in positions:
        size = shape[p]
        if p in advanced_at and common is not None:
            ints = st.lists(_ints(size), min_size=common, max_size=common)
            items.append(
                draw(st.one_of(ints, ints.map(lambda v: torch.tensor(v, dtype=torch.long))))
            )
        elif p in advanced_at:
            items.append(draw(_advanced(size, allow_empty)))
        else:
            items.append(draw(st.one_of(_ints(size), _slices(size, allow_empty))))
    if use_ellipsis:
        items.insert(head, Ellipsis)
    if len(items) == 1:
        return items[0]
    return tuple(items)
