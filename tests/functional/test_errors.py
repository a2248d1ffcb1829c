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
    tensor_dot_cp,
    tensor_dot_tucker,
    trl,
)
from tfx.functional._linear import linear_in_modes
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


def test_factorized_linear_with_a_weight_that_in_features_does_not_divide_raises() -> None:
    with pytest.raises(
        tfx.ShapeError,
        match=r"cannot read a \(4, 3, 3, 3\) weight as a matrix with in_features=5 columns "
        r"\(108 entries\).\nFix: pass in_features=",
    ):
        factorized_linear(torch.randn(2, 5, dtype=F64), _kernel())


def test_factorized_linear_with_a_non_matrix_weight_while_fx_tracing_needs_in_features() -> None:
    weight = _kernel()

    def fn(x: torch.Tensor) -> torch.Tensor:
        return factorized_linear(x, weight)

    with pytest.raises(
        tfx.ShapeError,
        match=r"a \(4, 3, 3, 3\) weight of order 4 needs in_features= under torch.fx tracing.*\n"
        r"Fix: factorized_linear\(x, weight, in_features=...\)",
    ):
        torch.fx.symbolic_trace(fn)


def test_linear_in_modes_of_a_matrix_with_other_in_features_raises() -> None:
    with pytest.raises(
        tfx.ShapeError,
        match=r"must be a matrix \(out_features, in_features\), got shape \(4, 3, 3, 3\) for "
        r"in_features=7.\nFix: pass a 2-d weight",
    ):
        linear_in_modes(_kernel(), 7)


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


@pytest.mark.parametrize("fn", [linear_cp, linear_blocktt])
def test_linear_form_function_with_a_positional_bias_raises(fn: object) -> None:
    form = "blocktt" if fn is linear_blocktt else "cp"
    with pytest.raises(
        tfx.OptionError,
        match=r"transpose=<a tensor of shape \(6,\)> must be True or False "
        r"\(tltorch's third argument is `transpose`; tfx takes `bias` by keyword only\).\n"
        r"Fix: linear_\w+\(x, weight, bias=bias\)",
    ):
        fn(torch.randn(2, 6, dtype=F64), _tensorized(form=form), torch.randn(6, dtype=F64))  # type: ignore[operator]


@pytest.mark.parametrize(
    ("transpose", "side", "modes"), [(True, "input", "3, 2"), (False, "output", "2, 3")]
)
def test_linear_form_function_with_an_input_of_other_size_raises(
    transpose: bool, side: str, modes: str
) -> None:
    with pytest.raises(
        tfx.ShapeError,
        match=rf"linear_cp\(transpose={transpose}\): x must end in the weight's 6 {side} features, "
        rf"as \(..., 6\) or \(..., {modes}\); got x of shape \(2, 5\).\nFix: pass the input",
    ):
        linear_cp(torch.randn(2, 5, dtype=F64), _tensorized(), transpose)


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


# ------------------------------------------------------------------ tltorch's tensor_dot_*, trl
@pytest.mark.parametrize(
    ("modes", "why"),
    [
        (([0, 1], [0]), r"pairs 2 dims of x with 1 weight modes"),
        (([0], [5]), r"names a dim outside x \(3, 4\) or the weight \(3, 4, 5\)"),
        (([0, 0], [0, 1]), r"repeats a mode"),
        (([1], [0]), r"pairs dim 1 of x \(size 4\) with weight mode 0 \(size 3\)"),
        ("ab", r"is not an int or lists of ints"),
    ],
)
def test_tensor_dot_with_bad_modes_raises(modes: object, why: str) -> None:
    with pytest.raises(tfx.ShapeError, match=rf"tensor_dot_cp: modes=.* {why}.\nFix: modes=n"):
        tensor_dot_cp(torch.randn(3, 4, dtype=F64), _kernel((3, 4, 5)), modes)  # type: ignore[arg-type]


def test_tensor_dot_with_modes_overlapping_batched_modes_raises() -> None:
    weight = _kernel((3, 4, 5), form="tucker")
    with pytest.raises(tfx.ShapeError, match=r"overlaps batched_modes=\(\[0\], \[0\]\)"):
        tensor_dot_tucker(
            torch.randn(3, 4, dtype=F64), weight, ([0], [0]), batched_modes=([0], [0])
        )


@pytest.mark.parametrize(
    ("fn", "form", "needed"),
    [(tensor_dot_cp, "tucker", "CPTensor"), (tensor_dot_tucker, "cp", "TuckerTensor")],
)
def test_tensor_dot_given_another_form_raises(fn: object, form: str, needed: str) -> None:
    with pytest.raises(
        tfx.OptionError, match=rf"needs a {needed}, got .*; use factorized_tensordot"
    ):
        fn(torch.randn(2, 3, dtype=F64), _kernel((3, 4, 5), form=form), 1)  # type: ignore[operator]


def test_tensor_dot_with_explicit_modes_under_fx_raises() -> None:
    weight = _kernel((3, 4, 5), form="tucker")

    def fn(x: torch.Tensor) -> torch.Tensor:
        return tensor_dot_tucker(x, weight, ([1], [0]))

    with pytest.raises(
        tfx.TraceError,
        match=r"tensor_dot_tucker: modes=\(\[1\], \[0\]\) needs x's number of dims.*\n"
        r"Fix: move the contracted dims",
    ):
        torch.fx.symbolic_trace(fn)


def test_trl_with_an_unknown_keyword_raises() -> None:
    with pytest.raises(
        tfx.OptionError, match=r"trl got unexpected keyword arguments \['projection'\]"
    ):
        trl(torch.randn(2, 3, 4, dtype=F64), _kernel((3, 4, 5)), projection=True)
