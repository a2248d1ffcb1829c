"""Every error path of tfx.tensors: the right class, and a message with what, why and a fix."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import tfx
from tests.strategies import PLAIN_FORMS, TENSORIZED_FORMS
from tfx.tensors import _rank

SHAPE = (3, 4, 5)
TSHAPE = ((2, 3), (3, 2))


# ------------------------------------------------------------------ factorization names
@pytest.mark.parametrize(
    ("typo", "suggestion"), [("tuker", "Tucker"), ("cpp", "CP"), ("complextuker", "ComplexTucker")]
)
def test_unknown_factorization_suggests_the_closest_name(typo: str, suggestion: str) -> None:
    with pytest.raises(
        tfx.OptionError,
        match=rf"factorization='{typo}' is not registered. Did you mean '{suggestion}'\?",
    ):
        tfx.FactorizedTensor.new(SHAPE, rank=0.5, factorization=typo)


def test_unknown_factorization_lists_every_registered_name() -> None:
    listing = ", ".join(repr(name) for name in sorted(PLAIN_FORMS))
    with pytest.raises(tfx.OptionError, match=rf"(?s)Available: {listing}\..*tfx.tensors.register"):
        tfx.FactorizedTensor.new(SHAPE, rank=0.5, factorization="tuker")


def test_unknown_tensorized_factorization_suggests_blocktt() -> None:
    with pytest.raises(tfx.OptionError, match=r"Did you mean 'BlockTT'\?"):
        tfx.TensorizedTensor.new(TSHAPE, rank=0.5, factorization="blocktensortrain")


def test_unknown_tensorized_factorization_lists_every_registered_name() -> None:
    listing = ", ".join(repr(name) for name in sorted(TENSORIZED_FORMS))
    with pytest.raises(tfx.OptionError, match=rf"Available: {listing}\."):
        tfx.TensorizedTensor.new(TSHAPE, rank=0.5, factorization="blok-tt")


def test_unknown_factorization_in_from_tensor_raises() -> None:
    with pytest.raises(tfx.OptionError, match=r"Did you mean 'TT'\?"):
        tfx.FactorizedTensor.from_tensor(torch.randn(3, 4), rank=0.5, factorization="ttt")


def test_unknown_factorization_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="is not registered"):
        tfx.FactorizedTensor.new(SHAPE, rank=0.5, factorization="tuker")


def test_non_string_factorization_raises() -> None:
    with pytest.raises(tfx.OptionError, match=r"factorization=3 must be a name such as 'cp'"):
        tfx.FactorizedTensor.new(SHAPE, rank=0.5, factorization=3)  # type: ignore[arg-type]


def test_register_rejects_a_non_factorized_class() -> None:
    with pytest.raises(
        tfx.OptionError, match=r"register\('mine', .*\): cls must subclass tfx.FactorizedTensor"
    ):
        tfx.tensors.register("mine", dict)


# ------------------------------------------------------------------ shapes
@pytest.mark.parametrize("shape", [(), (3, 0), (-1, 2)], ids=str)
def test_new_rejects_empty_or_non_positive_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(tfx.ShapeError, match=r"shape=.* must be non-empty with every size >= 1"):
        tfx.FactorizedTensor.new(shape, rank=0.5, factorization="cp")


def test_new_rejects_a_shape_that_is_not_a_sequence() -> None:
    with pytest.raises(tfx.ShapeError, match=r"shape=None is not a sequence of ints"):
        tfx.FactorizedTensor.new(None, rank=0.5, factorization="tucker")  # type: ignore[arg-type]


def test_new_rejects_a_shape_of_strings() -> None:
    with pytest.raises(tfx.ShapeError, match="is not a sequence of ints"):
        tfx.FactorizedTensor.new(("a", 3), rank=0.5, factorization="tt")


def test_new_rejects_fractional_sizes() -> None:
    with pytest.raises(tfx.ShapeError):
        tfx.FactorizedTensor.new((2.5, 3), rank=0.5, factorization="cp")


def test_tensorized_new_rejects_fractional_sizes() -> None:
    with pytest.raises(tfx.ShapeError):
        tfx.TensorizedTensor.new(((2.5, 3), (3, 2)), rank=0.5, factorization="cp")


@pytest.mark.parametrize("tshape", [((2, 3), "ab"), ((2, 3), ()), ((2, 3), None)], ids=str)
def test_tensorized_shape_rejects_entries_that_are_not_ints_or_tuples(tshape: Any) -> None:
    with pytest.raises(
        tfx.ShapeError, match=r"(?s)is neither an int .* nor a non-empty tuple.*Fix:"
    ):
        tfx.TensorizedTensor.new(tshape, rank=0.5, factorization="cp")


@pytest.mark.parametrize("tshape", [(), ((2, 0), (3, 2)), (0, (2, 3), (3, 2))], ids=str)
def test_tensorized_shape_rejects_empty_or_zero_sizes(tshape: Any) -> None:
    with pytest.raises(tfx.ShapeError, match=r"must be non-empty with sizes >= 1"):
        tfx.TensorizedTensor.new(tshape, rank=0.5, factorization="tucker")


def test_tensorized_shape_needs_a_tensorized_mode() -> None:
    with pytest.raises(
        tfx.ShapeError, match=r"(?s)has no tensorized mode.*Fix: use FactorizedTensor"
    ):
        tfx.TensorizedTensor.new((4, 6), rank=0.5, factorization="cp")


def test_blocktt_rejects_entries_of_mixed_lengths() -> None:
    with pytest.raises(tfx.ShapeError, match=r"(?s)same number of factors.*got \[2, 3\].*Fix: pad"):
        tfx.TensorizedTensor.new(((4, 6), (2, 3, 4)), rank=0.5, factorization="blocktt")


def test_blocktt_rejects_batch_modes_after_tensorized_modes() -> None:
    with pytest.raises(tfx.ShapeError, match=r"batch modes \(ints\) must come first"):
        tfx.TensorizedTensor.new(((2, 3), 4, (3, 2)), rank=0.5, factorization="blocktt")


@pytest.mark.parametrize("mode", [-1, 1])
def test_blocktt_transduct_rejects_a_non_leading_mode(mode: int) -> None:
    t = tfx.TensorizedTensor.new(TSHAPE, rank=0.5, factorization="blocktt")
    with pytest.raises(
        tfx.ShapeError, match=rf"transduct\(mode={mode}\).*mode must be in \[0, 0\]"
    ):
        t.transduct(3, mode)


def test_from_matrix_rejects_shapes_that_do_not_multiply_to_the_matrix() -> None:
    with pytest.raises(
        tfx.ShapeError, match=r"(?s)matrix of shape \(24, 30\).*describe 24 x 20 matrices.*Fix:"
    ):
        tfx.TensorizedTensor.from_matrix(
            torch.randn(24, 30), (4, 3, 2), (5, 2, 2), rank=0.5, factorization="cp"
        )


def test_from_matrix_rejects_a_vector() -> None:
    with pytest.raises(tfx.ShapeError, match=r"from_matrix got a matrix of shape \(6,\)"):
        tfx.TensorizedTensor.from_matrix(
            torch.randn(6), (2, 3), (1,), rank=0.5, factorization="dense"
        )


def test_tucker_init_from_tensor_rejects_unsqueezed_mode_of_rank_above_one() -> None:
    t = tfx.TuckerTensor.new((3, 4, 5), rank=(3, 2, 5))
    with pytest.raises(
        tfx.TfxError,
        match=r"(?s)needs a tensor of shape \(3, 5\) and rank 1 on the unsqueezed modes.*Fix:",
    ):
        t.init_from_tensor(torch.randn(3, 5), unsqueezed_modes=[1])


def test_tucker_init_from_tensor_rejects_a_tensor_of_the_wrong_shape() -> None:
    t = tfx.TuckerTensor.new((3, 4, 5), rank=(3, 1, 5))
    with pytest.raises(tfx.TfxError, match=r"got a tensor of shape \(3, 4\)"):
        t.init_from_tensor(torch.randn(3, 4), unsqueezed_modes=[1])


# ------------------------------------------------------------------ values to decompose
@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_from_tensor_rejects_integer_tensors(form: str) -> None:
    with pytest.raises(
        tfx.TfxError, match=r"(?s)tensor of dtype torch.int64.*Fix: tensor.float\(\)"
    ):
        tfx.FactorizedTensor.from_tensor(
            torch.ones(3, 4, dtype=torch.long), rank=1, factorization=form
        )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=str)
@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_from_tensor_rejects_non_finite_values(form: str, value: float) -> None:
    x = torch.randn(3, 4)
    x[1, 2] = value
    with pytest.raises(tfx.TfxError, match=r"(?s)containing NaN or Inf.*Fix:"):
        tfx.FactorizedTensor.from_tensor(x, rank=1, factorization=form)


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_tensorized_from_matrix_rejects_non_finite_values(form: str) -> None:
    x = torch.randn(6, 6)
    x[0, 0] = float("nan")
    with pytest.raises(tfx.TfxError, match="containing NaN or Inf"):
        tfx.TensorizedTensor.from_matrix(x, (2, 3), (3, 2), rank=0.5, factorization=form)


@pytest.mark.parametrize("form", [f for f in PLAIN_FORMS if not f.startswith("Complex")])
def test_from_tensor_rejects_complex_values_in_a_real_form(form: str) -> None:
    with pytest.raises(
        tfx.TfxError, match=r"(?s)complex tensor \(torch.complex64\) into a real form.*ComplexCP"
    ):
        tfx.FactorizedTensor.from_tensor(
            torch.randn(3, 4, dtype=torch.cfloat), rank=1, factorization=form
        )


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_init_from_tensor_rejects_integer_tensors(form: str) -> None:
    t = tfx.FactorizedTensor.new((3, 4), rank=1, factorization=form)
    with pytest.raises(tfx.TfxError, match="factorizations need floating point values"):
        t.init_from_tensor(torch.ones(3, 4, dtype=torch.int32))


# ------------------------------------------------------------------ ranks
@pytest.mark.parametrize("rank", [0.0, -0.5, float("nan"), float("inf")], ids=str)
@pytest.mark.parametrize(
    "fn", [_rank.cp_rank, _rank.tucker_rank, _rank.tt_rank], ids=lambda f: f.__name__
)
def test_rank_rejects_non_positive_fractions(fn: Any, rank: float) -> None:
    with pytest.raises(
        tfx.RankError, match=r"(?s)is not a positive fraction of the dense parameters.*Fix:"
    ):
        fn(SHAPE, rank)


@pytest.mark.parametrize("rank", [0, -3, (0,)], ids=str)
def test_cp_rank_rejects_non_positive_integers(rank: Any) -> None:
    with pytest.raises(tfx.RankError, match=r"is not a positive integer"):
        _rank.cp_rank(SHAPE, rank)


@pytest.mark.parametrize("rank", ["half", None, object()], ids=["str", "None", "object"])
def test_cp_rank_rejects_non_numeric_specs(rank: Any) -> None:
    with pytest.raises(tfx.RankError, match=r"is not a positive integer"):
        _rank.cp_rank(SHAPE, rank)


@pytest.mark.parametrize("fn", [_rank.tucker_rank, _rank.tt_rank], ids=lambda f: f.__name__)
def test_rank_rejects_an_unknown_string(fn: Any) -> None:
    with pytest.raises(tfx.RankError, match=r"(?s)rank='half' .* is not understood.*Fix:"):
        fn(SHAPE, "half")


@pytest.mark.parametrize("fn", [_rank.tucker_rank, _rank.tt_rank], ids=lambda f: f.__name__)
def test_rank_rejects_a_non_iterable(fn: Any) -> None:
    with pytest.raises(
        tfx.RankError, match=r"rank=None .* is not an int, a tuple of ints, 'same' or a float"
    ):
        fn(SHAPE, None)


@pytest.mark.parametrize("rank", [(3, 0, 2), (3, -1, 2), (3, 1.5, 2)], ids=str)
def test_tucker_rank_rejects_non_positive_or_non_integer_entries(rank: Any) -> None:
    with pytest.raises(tfx.RankError, match=r"is not a positive integer"):
        _rank.tucker_rank(SHAPE, rank)


def test_tucker_rank_rejects_a_bool_entry() -> None:
    with pytest.raises(tfx.RankError, match=r"rank True .* is not a positive integer"):
        _rank.tucker_rank(SHAPE, (3, True, 2))


@pytest.mark.parametrize("rank", [-2, 0])
def test_tucker_rank_rejects_a_non_positive_int(rank: int) -> None:
    with pytest.raises(tfx.RankError, match=rf"rank {rank} .* is not a positive integer"):
        _rank.tucker_rank(SHAPE, rank)


def test_tucker_rank_rejects_the_wrong_number_of_modes() -> None:
    with pytest.raises(
        tfx.RankError,
        match=r"(?s)rank=\(2, 2\) has 2 entries but the Tucker .* has 3 modes"
        r".*Fix: .*rank=\(3, 4, 5\)",
    ):
        _rank.tucker_rank(SHAPE, (2, 2))


def test_tucker_rank_rejects_rank_30_on_a_conv_kernel() -> None:
    with pytest.raises(
        tfx.RankError, match=r"(?s)rank=30 is too large.*largest valid rank is \(5, 4, 3, 3\)"
    ):
        _rank.tucker_rank((5, 4, 3, 3), 30)


def test_tt_rank_rejects_the_wrong_number_of_ranks() -> None:
    with pytest.raises(
        tfx.RankError,
        match=r"(?s)rank=\(1, 2, 1\) has 3 entries.*len\(shape\) \+ 1 = 4"
        r".*Fix: e.g. rank=\(1, 3, 5, 1\)",
    ):
        _rank.tt_rank(SHAPE, (1, 2, 1))


@pytest.mark.parametrize("rank", [(2, 2, 2, 1), (1, 2, 2, 3)], ids=str)
def test_tt_rank_rejects_boundary_ranks_other_than_one(rank: tuple[int, ...]) -> None:
    with pytest.raises(
        tfx.RankError, match=r"(?s)must start and end with 1.*Fix: rank=\(1, 2, 2, 1\)"
    ):
        _rank.tt_rank(SHAPE, rank)


def test_tt_rank_rejects_a_bond_above_its_unfolding_bound() -> None:
    with pytest.raises(
        tfx.RankError,
        match=r"(?s)too large.*largest valid rank is \(1, 3, 5, 1\).*Fix: rank=\(1, 3, 5, 1\)",
    ):
        _rank.tt_rank(SHAPE, (1, 4, 6, 1))


@pytest.mark.parametrize("form", ["tucker", "tt", "cp"])
def test_new_rejects_a_negative_rank(form: str) -> None:
    with pytest.raises(tfx.RankError):
        tfx.FactorizedTensor.new(SHAPE, rank=-1, factorization=form)


def test_rank_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="too large"):
        tfx.FactorizedTensor.from_tensor(
            torch.randn(5, 4, 3, 3), rank=(1, 6, 9, 3, 1), factorization="tt"
        )


# ------------------------------------------------------------------ indexing
@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_indexing_rejects_an_int_out_of_bounds(form: str) -> None:
    t = tfx.FactorizedTensor.new(SHAPE, rank=0.5, factorization=form)
    with pytest.raises(IndexError, match="index 4 is out of bounds for dimension with size 4"):
        t[:, 4]


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_indexing_rejects_a_negative_int_out_of_bounds(form: str) -> None:
    t = tfx.FactorizedTensor.new(SHAPE, rank=0.5, factorization=form)
    with pytest.raises(IndexError, match="index -4 is out of bounds"):
        t[-4]


@pytest.mark.parametrize("index", [[0, 5], torch.tensor([5]), [-6]], ids=str)
@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_indexing_rejects_a_list_entry_out_of_bounds(form: str, index: Any) -> None:
    t = tfx.FactorizedTensor.new(SHAPE, rank=0.5, factorization=form)
    with pytest.raises(IndexError, match=r"index -?\d is out of bounds for size 5"):
        t[..., index]


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_tensorized_indexing_rejects_an_int_out_of_bounds(form: str) -> None:
    t = tfx.TensorizedTensor.new(TSHAPE, rank=0.5, factorization=form)
    with pytest.raises(IndexError, match="index 6 is out of bounds"):
        t[6]


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_indexing_rejects_too_many_indices(form: str) -> None:
    t = tfx.FactorizedTensor.new(SHAPE, rank=0.5, factorization=form)
    with pytest.raises(IndexError, match=r"too many indices for tensor of dimension 3 \(got 4\)"):
        t[0, 0, 0, 0]


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_indexing_rejects_two_ellipses(form: str) -> None:
    t = tfx.FactorizedTensor.new(SHAPE, rank=0.5, factorization=form)
    with pytest.raises(IndexError, match="an index can only have a single ellipsis"):
        t[..., 0, ...]
