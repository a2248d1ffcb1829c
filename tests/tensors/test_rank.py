"""Rank normalisation (tfx/tensors/_rank.py): idempotent, bounded, tensorly's integers.

Two policies: the default bounds every rank by what the shape can hold;
``overcomplete=True`` (new tensors, Tucker decompositions) returns tltorch's
ranks exactly, above the bounds too.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import pytest
import tensorly.cp_tensor
import tensorly.tt_tensor
import tensorly.tucker_tensor
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import tfx
from tests.strategies import fractions, rank_specs, shapes, tt_bounds
from tfx.tensors import _rank


def _tensorly(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a tensorly rank validator, silencing the warnings it emits for ints and matrices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ------------------------------------------------------------------ idempotence
@given(data=st.data(), shape=shapes())
def test_cp_rank_is_idempotent(data: st.DataObject, shape: tuple[int, ...]) -> None:
    rank = _rank.cp_rank(shape, data.draw(rank_specs(shape, "cp")))
    assert _rank.cp_rank(shape, rank) == rank


@given(data=st.data(), shape=shapes())
def test_tucker_rank_is_idempotent(data: st.DataObject, shape: tuple[int, ...]) -> None:
    rank = _rank.tucker_rank(shape, data.draw(rank_specs(shape, "tucker")))
    assert _rank.tucker_rank(shape, rank) == rank


@given(data=st.data(), shape=shapes())
def test_tt_rank_is_idempotent(data: st.DataObject, shape: tuple[int, ...]) -> None:
    rank = _rank.tt_rank(shape, data.draw(rank_specs(shape, "tt")))
    assert _rank.tt_rank(shape, rank) == rank


# ------------------------------------------------------------------ bounds
@given(spec=fractions(), shape=shapes())
def test_tucker_rank_of_a_fraction_never_exceeds_mode_sizes(
    spec: Any, shape: tuple[int, ...]
) -> None:
    rank = _rank.tucker_rank(shape, spec)
    assert len(rank) == len(shape) and all(1 <= r <= s for r, s in zip(rank, shape, strict=True))


@given(spec=fractions(), shape=shapes())
def test_tt_rank_of_a_fraction_never_exceeds_unfolding_bounds(
    spec: Any, shape: tuple[int, ...]
) -> None:
    rank = _rank.tt_rank(shape, spec)
    bounds = tt_bounds(shape)
    assert len(rank) == len(shape) + 1 and all(
        1 <= r <= b for r, b in zip(rank, bounds, strict=True)
    )


@given(spec=fractions(), shape=shapes())
def test_cp_rank_of_a_fraction_is_positive(spec: Any, shape: tuple[int, ...]) -> None:
    assert _rank.cp_rank(shape, spec) >= 1


@given(shape=shapes())
def test_tt_rank_bounds_match_unfolding_ranks(shape: tuple[int, ...]) -> None:
    assert _rank.tt_rank_bounds(shape) == tt_bounds(shape)


@given(data=st.data(), shape=shapes())
def test_tucker_rank_with_fixed_modes_keeps_them_full(
    data: st.DataObject, shape: tuple[int, ...]
) -> None:
    fixed = data.draw(st.lists(st.integers(0, len(shape) - 1), unique=True, max_size=len(shape)))
    rank = _rank.tucker_rank(shape, data.draw(fractions()), fixed_modes=fixed)
    assert [rank[m] for m in fixed] == [shape[m] for m in fixed]


# ------------------------------------------------------------------ same integers as tensorly
@given(spec=fractions(), shape=shapes())
def test_cp_rank_of_a_fraction_matches_tensorly(spec: Any, shape: tuple[int, ...]) -> None:
    expected = int(_tensorly(tensorly.cp_tensor.validate_cp_rank, shape, rank=spec))
    assume(expected >= 1)  # tensorly returns 0 for tiny fractions; tfx uses 1 there
    assert _rank.cp_rank(shape, spec) == expected


@given(rank=st.integers(1, 50), shape=shapes())
def test_cp_rank_of_an_int_matches_tensorly(rank: int, shape: tuple[int, ...]) -> None:
    assert _rank.cp_rank(shape, rank) == tensorly.cp_tensor.validate_cp_rank(shape, rank=rank)


@given(spec=fractions(), shape=shapes())
def test_tucker_rank_of_a_fraction_matches_tensorly(spec: Any, shape: tuple[int, ...]) -> None:
    expected = tuple(
        int(r) for r in _tensorly(tensorly.tucker_tensor.validate_tucker_rank, shape, rank=spec)
    )
    assume(
        all(r <= s for r, s in zip(expected, shape, strict=True))
    )  # tensorly does not bound ranks
    assert _rank.tucker_rank(shape, spec) == expected


@given(data=st.data(), spec=fractions(), shape=shapes(min_order=2))
def test_tucker_rank_with_fixed_modes_matches_tensorly(
    data: st.DataObject, spec: Any, shape: tuple[int, ...]
) -> None:
    fixed = data.draw(
        st.lists(st.integers(0, len(shape) - 1), unique=True, max_size=len(shape) - 1)
    )
    expected = tuple(
        int(r)
        for r in _tensorly(
            tensorly.tucker_tensor.validate_tucker_rank, shape, rank=spec, fixed_modes=fixed
        )
    )
    assume(all(r <= s for r, s in zip(expected, shape, strict=True)))
    assert _rank.tucker_rank(shape, spec, fixed_modes=fixed) == expected


@given(data=st.data(), shape=shapes())
def test_tucker_rank_of_an_int_matches_tensorly(
    data: st.DataObject, shape: tuple[int, ...]
) -> None:
    rank = data.draw(st.integers(1, min(shape)))
    with pytest.warns(RuntimeWarning, match="Using this rank for all modes"):
        expected = tuple(tensorly.tucker_tensor.validate_tucker_rank(shape, rank=rank))
    assert _rank.tucker_rank(shape, rank) == expected


@given(spec=fractions(), shape=shapes(min_order=2))
def test_tt_rank_of_a_fraction_matches_tensorly(spec: Any, shape: tuple[int, ...]) -> None:
    expected = tuple(
        int(r) for r in _tensorly(tensorly.tt_tensor.validate_tt_rank, shape, rank=spec)
    )
    assume(all(r <= b for r, b in zip(expected, tt_bounds(shape), strict=True)))
    assert _rank.tt_rank(shape, spec) == expected


@given(data=st.data(), shape=shapes(min_order=2))
def test_tt_rank_of_an_int_matches_tensorly(data: st.DataObject, shape: tuple[int, ...]) -> None:
    rank = data.draw(st.integers(1, min(tt_bounds(shape)[1:-1])))
    expected = tuple(tensorly.tt_tensor.validate_tt_rank(shape, rank=rank))
    assert _rank.tt_rank(shape, rank) == expected


def test_tucker_rank_of_same_matches_tensorly_on_a_conv_kernel() -> None:
    expected = tuple(
        int(r)
        for r in _tensorly(tensorly.tucker_tensor.validate_tucker_rank, (64, 32, 3, 3), rank="same")
    )
    assert _rank.tucker_rank((64, 32, 3, 3), "same") == expected


# ------------------------------------------------------------------ through the public constructors
def test_cp_tensor_new_uses_the_normalised_rank() -> None:
    assert tfx.FactorizedTensor.new((32, 32), rank=0.5, factorization="cp").rank == 8


def test_tucker_tensor_new_uses_the_normalised_rank() -> None:
    assert tfx.FactorizedTensor.new((5, 4, 3, 3), rank=0.5, factorization="tucker").rank == (
        _rank.tucker_rank((5, 4, 3, 3), 0.5)
    )


def test_tt_tensor_new_expands_an_int_rank_with_boundary_ones() -> None:
    assert tfx.FactorizedTensor.new((4, 4, 4), rank=2, factorization="tt").rank == (1, 2, 2, 1)


def test_blocktt_new_bounds_ranks_by_the_core_sizes() -> None:
    # core sizes are 4*5, 3*3, 2*2 = (20, 9, 4): bounds (1, min(20, 36), min(180, 4), 1)
    t = tfx.TensorizedTensor.new(
        ((4, 3, 2), (5, 3, 2)), rank=(1, 20, 4, 1), factorization="blocktt"
    )
    assert t.rank == (1, 20, 4, 1)


def test_blocktt_new_rejects_a_rank_above_the_core_bounds() -> None:
    with pytest.raises(tfx.RankError, match=r"largest valid rank is \(1, 20, 4, 1\)"):
        tfx.TensorizedTensor.new(
            ((4, 3, 2), (5, 3, 2)), rank=(1, 20, 5, 1), factorization="blocktt"
        )


@pytest.mark.parametrize("rank", [30, (30, 30, 30, 30), (5, 4, 3, 4)])
def test_tucker_rank_rejects_a_rank_above_the_mode_sizes(rank: Any) -> None:
    with pytest.raises(tfx.RankError, match=r"largest valid rank is \(5, 4, 3, 3\)"):
        _rank.tucker_rank((5, 4, 3, 3), rank)


def test_tucker_new_takes_an_int_above_a_mode_size_on_every_mode() -> None:
    t = tfx.TuckerTensor.new((6, 2, 4, 5), rank=3)
    assert t.rank == (3, 3, 3, 3)
    assert [tuple(f.shape) for f in t.factors] == [(6, 3), (2, 3), (4, 3), (5, 3)]


def test_tucker_new_over_complete_keeps_fixed_rank_modes_full() -> None:
    assert tfx.TuckerTensor.new((6, 2, 4, 5), rank=3, fixed_rank_modes=(1,)).rank == (3, 2, 3, 3)


def test_tensorized_tucker_new_takes_an_int_above_the_mode_sizes() -> None:
    t = tfx.TensorizedTensor.new(((5, 8, 25), (2, 4, 4)), rank=8, factorization="tucker")
    assert t.rank == (8,) * 6


def test_tt_new_takes_an_int_on_every_bond_as_tltorch_does() -> None:
    assert tfx.TTTensor.new((2, 3, 4), rank=5).rank == (1, 5, 5, 1)


def test_tt_from_tensor_takes_an_int_as_the_largest_bond_rank() -> None:
    assert tfx.TTTensor.from_tensor(torch.randn(2, 3, 4), rank=5).rank == (1, 2, 4, 1)


def test_tt_new_takes_a_tuple_above_the_bounds() -> None:
    assert tfx.TTTensor.new((2, 3, 4), rank=(1, 5, 5, 1)).rank == (1, 5, 5, 1)


@given(data=st.data(), shape=shapes())
def test_tucker_rank_over_complete_matches_tensorly(
    data: st.DataObject, shape: tuple[int, ...]
) -> None:
    spec = data.draw(st.one_of(fractions(), st.integers(1, 8)))
    expected = tuple(
        int(r) for r in _tensorly(tensorly.tucker_tensor.validate_tucker_rank, shape, rank=spec)
    )
    assert _rank.tucker_rank(shape, spec, overcomplete=True) == expected


@given(data=st.data(), shape=shapes(min_order=2))
def test_tt_rank_over_complete_matches_tensorly(
    data: st.DataObject, shape: tuple[int, ...]
) -> None:
    spec = data.draw(st.one_of(fractions(), st.integers(1, 8)))
    expected = tuple(
        int(r) for r in _tensorly(tensorly.tt_tensor.validate_tt_rank, shape, rank=spec)
    )
    assert _rank.tt_rank(shape, spec, overcomplete=True) == expected


@given(data=st.data(), shape=shapes())
def test_over_complete_tucker_rank_is_idempotent(
    data: st.DataObject, shape: tuple[int, ...]
) -> None:
    rank = _rank.tucker_rank(shape, data.draw(st.integers(1, 8)), overcomplete=True)
    assert _rank.tucker_rank(shape, rank, overcomplete=True) == rank


def test_over_complete_tt_rank_still_checks_the_boundary_ranks() -> None:
    with pytest.raises(tfx.RankError, match="must start and end with 1"):
        _rank.tt_rank((2, 3, 4), (2, 5, 5, 1), overcomplete=True)


def test_tucker_rank_error_suggests_the_clipped_rank() -> None:
    with pytest.raises(tfx.RankError, match=r"Fix: rank=\(5, 4, 3, 3\)"):
        _rank.tucker_rank((5, 4, 3, 3), 30)


@given(shape=shapes(), excess=st.integers(1, 5), data=st.data())
def test_tucker_rank_above_a_mode_size_raises(
    shape: tuple[int, ...], excess: int, data: st.DataObject
) -> None:
    mode = data.draw(st.integers(0, len(shape) - 1))
    rank = tuple(s + excess if k == mode else s for k, s in enumerate(shape))
    with pytest.raises(tfx.RankError, match="largest valid rank"):
        _rank.tucker_rank(shape, rank)


@given(shape=shapes(min_order=2), excess=st.integers(1, 5), data=st.data())
def test_tt_rank_above_an_unfolding_bound_raises(
    shape: tuple[int, ...], excess: int, data: st.DataObject
) -> None:
    bounds = tt_bounds(shape)
    bond = data.draw(st.integers(1, len(shape) - 1))
    rank = tuple(b + excess if k == bond else b for k, b in enumerate(bounds))
    with pytest.raises(tfx.RankError, match=r"largest valid rank is " + _escaped(bounds)):
        _rank.tt_rank(shape, rank)


def _escaped(value: tuple[int, ...]) -> str:
    return re.escape(str(value))


def test_tt_rank_error_names_the_bounds_on_a_conv_kernel() -> None:
    with pytest.raises(tfx.RankError, match=r"largest valid rank is \(1, 5, 9, 3, 1\)"):
        tfx.FactorizedTensor.from_tensor(
            torch.randn(5, 4, 3, 3), rank=(1, 10, 10, 10, 1), factorization="tt"
        )


def test_tt_rank_of_one_int_caps_each_bond_at_its_bound() -> None:
    # one int is the largest bond rank, as tensorly's tensor_train reads it
    assert _rank.tt_rank((5, 4, 3, 3), 10) == (1, 5, 9, 3, 1)


def test_cp_rank_has_no_upper_bound() -> None:
    assert _rank.cp_rank((2, 2), 100) == 100
