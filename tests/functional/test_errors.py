"""Every error raised in tfx/functional: the right class, and a message with what, why, a fix."""

from __future__ import annotations

import string

import pytest
import torch

import tfx
from tfx.functional import (
    convolve,
    factorized_embedding,
    factorized_linear,
    factorized_tensordot,
    gather_rows,
    linear_blocktt,
    linear_cp,
    linear_tt,
    linear_tucker,
)
from tfx.functional._planning import _free_letter

F64 = torch.float64


def _kernel(shape: tuple = (4, 3, 3, 3), form: str = "cp") -> tfx.FactorizedTensor:
    return tfx.FactorizedTensor.new(shape, rank=0.5, factorization=form, dtype=F64)


def _tensorized(shape: tuple = ((2, 3), (3, 2)), form: str = "cp") -> tfx.TensorizedTensor:
    return tfx.TensorizedTensor.new(shape, rank=0.5, factorization=form, dtype=F64)


# ------------------------------------------------------------------ implementation names
def test_factorized_linear_unknown_implementation_suggests_the_closest() -> None:
    with pytest.raises(
        tfx.OptionError,
        match=r"implementation='reconstruct' is not registered. Did you mean 'reconstructed'\?\n"
        r"Available: 'auto', 'factorized', 'reconstructed'.",
    ):
        factorized_linear(torch.randn(2, 6, dtype=F64), _tensorized(), implementation="reconstruct")


def test_convolve_unknown_implementation_suggests_the_closest() -> None:
    with pytest.raises(
        tfx.OptionError,
        match=r"implementation='mobilnet' is not registered. Did you mean 'mobilenet'\?\n"
        r"Available: 'auto', 'factorized', 'mobilenet', 'reconstructed'.",
    ):
        convolve(torch.randn(1, 3, 5, 5, dtype=F64), _kernel(), implementation="mobilnet")


def test_convolve_unknown_padding_mode_suggests_the_closest() -> None:
    with pytest.raises(
        tfx.OptionError,
        match=r"padding_mode='reflection' is not registered. Did you mean 'reflect'\?",
    ):
        convolve(torch.randn(1, 3, 5, 5, dtype=F64), _kernel(), padding_mode="reflection")


def test_convolve_unknown_padding_string_suggests_the_closest() -> None:
    with pytest.raises(
        tfx.OptionError,
        match=r"(?s)padding='sme' is not registered. Did you mean 'same'\?.*Or pass ints",
    ):
        convolve(torch.randn(1, 3, 5, 5, dtype=F64), _kernel(), padding="sme")


# ------------------------------------------------------------------ convolve
def test_convolve_same_padding_with_stride_raises() -> None:
    with pytest.raises(
        tfx.ShapeError,
        match=r"padding='same' is not supported for strided convolutions \(as in torch\)",
    ):
        convolve(torch.randn(1, 3, 5, 5, dtype=F64), _kernel(), padding="same", stride=2)


def test_convolve_per_dimension_option_of_the_wrong_length_raises() -> None:
    with pytest.raises(
        tfx.ShapeError, match=r"dilation=\(1, 1, 1\) has 3 entries for a 2-d convolution"
    ):
        convolve(torch.randn(1, 3, 5, 5, dtype=F64), _kernel(), dilation=(1, 1, 1))


def test_convolve_with_four_spatial_dims_raises() -> None:
    with pytest.raises(
        tfx.ShapeError,
        match=r"convolutions with 4 spatial dimensions are not supported.*\n"
        r"Fix: use a 1, 2 or 3-d kernel",
    ):
        convolve(torch.randn(1, 3, 3, 3, 3, 3, dtype=F64), _kernel((4, 3, 1, 1, 1, 1)))


@pytest.mark.parametrize("implementation", ["factorized", "mobilenet", "auto"])
def test_convolve_grouped_factorized_kernel_needs_reconstructed(implementation: str) -> None:
    with pytest.raises(
        tfx.UnsupportedSiteError,
        match=r"groups=2: .* has no grouped form.\nFix: implementation='reconstructed'",
    ):
        convolve(
            torch.randn(1, 4, 5, 5, dtype=F64),
            _kernel((4, 2, 3, 3)),
            groups=2,
            implementation=implementation,
        )


@pytest.mark.parametrize("form", ["tucker", "tt"])
def test_convolve_mobilenet_needs_a_cp_kernel(form: str) -> None:
    with pytest.raises(
        tfx.UnsupportedSiteError,
        match=r"implementation='mobilenet' needs a CP kernel.*\nFix: factorization='cp'",
    ):
        convolve(torch.randn(1, 3, 5, 5, dtype=F64), _kernel(form=form), implementation="mobilenet")


# ------------------------------------------------------------------ linear
def test_factorized_linear_with_a_stacked_tensorized_weight_raises() -> None:
    with pytest.raises(
        tfx.ShapeError,
        match=r"must be one tensorized matrix.*\nFix: index the layer first \(weight\[i\]\)",
    ):
        factorized_linear(torch.randn(2, 6, dtype=F64), _tensorized((3, (2, 3), (3, 2))))


def test_factorized_linear_with_a_non_matrix_weight_raises() -> None:
    with pytest.raises(
        tfx.ShapeError,
        match=r"must be a matrix \(out_features, in_features\), got shape \(4, 3, 3, 3\)",
    ):
        factorized_linear(torch.randn(2, 3, dtype=F64), _kernel())


def test_factorized_linear_with_a_foreign_weight_raises() -> None:
    with pytest.raises(
        tfx.OptionError, match=r"weight must be a tfx factorized tensor or a tensor, got list"
    ):
        factorized_linear(torch.randn(2, 6, dtype=F64), [[1.0] * 6])  # type: ignore[arg-type]


def test_factorized_linear_in_features_mismatch_raises() -> None:
    with pytest.raises(
        tfx.ShapeError, match=r"in_features=5 does not match the weight's 6 columns"
    ):
        factorized_linear(torch.randn(2, 6, dtype=F64), _tensorized(), in_features=5)


@pytest.mark.parametrize(
    ("fn", "form", "needed"),
    [
        (linear_cp, "tucker", "CPTensor"),
        (linear_tucker, "cp", "TuckerTensor"),
        (linear_tt, "blocktt", "TTTensor"),
        (linear_blocktt, "tt", "BlockTT"),
    ],
)
def test_linear_form_function_given_another_form_raises(fn: object, form: str, needed: str) -> None:
    weight = _tensorized(form=form)
    with pytest.raises(tfx.OptionError, match=rf"needs a {needed}, got .*; use factorized_linear"):
        fn(torch.randn(2, 6, dtype=F64), weight)  # type: ignore[operator]


# ------------------------------------------------------------------ embedding, tensordot
def test_gather_rows_of_a_stacked_table_raises() -> None:
    with pytest.raises(
        tfx.ShapeError,
        match=r"gather_rows needs a tensorized matrix \(rows, cols\).*\n"
        r"Fix: index stacked tables first",
    ):
        gather_rows(_tensorized((2, (2, 3), (3, 2))), torch.tensor([0, 1]))


def test_factorized_embedding_of_a_stacked_table_raises() -> None:
    with pytest.raises(tfx.ShapeError, match=r"gather_rows needs a tensorized matrix"):
        factorized_embedding(torch.tensor([0, 1]), _tensorized((2, (2, 3), (3, 2))))


def test_factorized_tensordot_with_mismatched_input_dims_raises() -> None:
    with pytest.raises(
        tfx.ShapeError,
        match=r"the last dims of x \(2, 4, 3\) must be \(3, 4\) "
        r"\(weight modes \(0, 1\) of shape \(3, 4, 5\)\)",
    ):
        factorized_tensordot(torch.randn(2, 4, 3, dtype=F64), _kernel((3, 4, 5)), 2)


def test_planner_without_a_free_einsum_letter_raises() -> None:
    with pytest.raises(RuntimeError, match=r"no free einsum letter left"):
        _free_letter(string.ascii_letters)
