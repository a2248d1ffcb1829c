"""tfx.functional linear contractions against F.linear on the reconstructed matrix."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import tfx
from tests.helpers import dense, family, is_complex_form
from tests.nn._helpers import PLAIN_FORMS, TENSORIZED_FORMS, randn
from tfx.functional import (
    factorized_linear,
    linear_blocktt,
    linear_cp,
    linear_flops,
    linear_tt,
    linear_tucker,
)
from tfx.functional._planning import DEFAULT_BATCH, planned_batch, traced_batch

F64 = torch.float64
IMPLEMENTATIONS = ("factorized", "reconstructed", "auto")


def _tensorized(form: str) -> tfx.TensorizedTensor:
    return tfx.TensorizedTensor.new(((2, 3), (3, 2)), rank=0.6, factorization=form, dtype=F64)


def _matrix(form: str) -> tfx.FactorizedTensor:
    return tfx.FactorizedTensor.new((5, 6), rank=0.6, factorization=form, dtype=F64)


def _reference(
    x: torch.Tensor, weight: tfx.FactorizedTensor, bias: torch.Tensor | None
) -> torch.Tensor:
    matrix = dense(weight)
    return F.linear(x, matrix, None if bias is None else bias.to(matrix.dtype))


def _cases(forms: list[str]) -> list:
    return [
        pytest.param(form, impl, id=f"{form}-{impl}") for form in forms for impl in IMPLEMENTATIONS
    ]


@pytest.mark.parametrize(("form", "implementation"), _cases(TENSORIZED_FORMS))
def test_factorized_linear_with_tensorized_weight_matches_dense(
    form: str, implementation: str
) -> None:
    weight = _tensorized(form)
    x, bias = randn(2, 3, 6, form=form), randn(6, form=form)
    out = factorized_linear(x, weight, bias, implementation=implementation)
    torch.testing.assert_close(out, _reference(x, weight, bias))


@pytest.mark.parametrize(("form", "implementation"), _cases(PLAIN_FORMS))
def test_factorized_linear_with_plain_matrix_weight_matches_dense(
    form: str, implementation: str
) -> None:
    weight = _matrix(form)
    x, bias = randn(4, 6, form=form), randn(5, form=form)
    out = factorized_linear(x, weight, bias, in_features=6, implementation=implementation)
    torch.testing.assert_close(out, _reference(x, weight, bias))


@pytest.mark.parametrize("form", [f for f in TENSORIZED_FORMS if is_complex_form(f)])
def test_factorized_linear_complex_reconstructed_without_bias_matches_dense(form: str) -> None:
    weight = _tensorized(form)
    x = randn(4, 6, form=form)
    torch.testing.assert_close(
        factorized_linear(x, weight, implementation="reconstructed"), _reference(x, weight, None)
    )


def test_factorized_linear_with_a_tensor_weight_is_f_linear() -> None:
    x, weight, bias = randn(4, 6), torch.randn(5, 6, dtype=F64), torch.randn(5, dtype=F64)
    torch.testing.assert_close(factorized_linear(x, weight, bias), F.linear(x, weight, bias))


@pytest.mark.parametrize("batch", [1, 5, 100, 5000])
def test_factorized_linear_matches_dense_across_batch_buckets(batch: int) -> None:
    weight = _tensorized("BlockTT")
    x = randn(batch, 6)
    torch.testing.assert_close(factorized_linear(x, weight), _reference(x, weight, None))


LINEAR_FORMS = [
    pytest.param(linear_cp, "CP", False, id="cp"),
    pytest.param(linear_tucker, "Tucker", False, id="tucker"),
    pytest.param(linear_tt, "TT", False, id="tt"),
    pytest.param(linear_blocktt, "BlockTT", True, id="blocktt"),
    pytest.param(linear_cp, "ComplexCP", False, id="complex-cp"),
    pytest.param(linear_blocktt, "ComplexBlockTT", True, id="complex-blocktt"),
]


def _tltorch_shaped(y: torch.Tensor, modes: tuple[int, ...], flat: bool) -> torch.Tensor:
    """tltorch's output layout: (rows, *modes) for CP / Tucker / TT, flat for BlockTT."""
    return y if flat else y.reshape(y.shape[0], *modes)


@pytest.mark.parametrize(("fn", "form", "flat"), LINEAR_FORMS)
def test_linear_form_functions_match_dense_in_tltorch_layout(
    fn: Any, form: str, flat: bool
) -> None:
    weight = tfx.TensorizedTensor.new(((2, 3), (4, 2)), rank=0.6, factorization=form, dtype=F64)
    x, bias = randn(5, 8, form=form), randn(6, form=form)
    matrix = dense(weight)
    expected = _tltorch_shaped(x @ matrix.T, (2, 3), flat)
    torch.testing.assert_close(fn(x, weight), expected)
    torch.testing.assert_close(
        fn(x, weight, bias=bias), expected + _tltorch_shaped(bias[None], (2, 3), flat)
    )


@pytest.mark.parametrize(("fn", "form", "flat"), LINEAR_FORMS)
def test_linear_form_functions_without_transpose_multiply_by_the_matrix(
    fn: Any, form: str, flat: bool
) -> None:
    weight = tfx.TensorizedTensor.new(((2, 3), (4, 2)), rank=0.6, factorization=form, dtype=F64)
    x = randn(5, 6, form=form)
    expected = _tltorch_shaped(x @ dense(weight), (4, 2), flat)
    torch.testing.assert_close(fn(x, weight, False), expected)  # tltorch's third argument
    torch.testing.assert_close(fn(x.reshape(5, 2, 3), weight, transpose=False), expected)


@pytest.mark.parametrize(("fn", "form", "flat"), LINEAR_FORMS[:4])
def test_linear_form_functions_read_rows_of_the_input_modes(fn: Any, form: str, flat: bool) -> None:
    weight = tfx.TensorizedTensor.new(((2, 3), (4, 2)), rank=0.6, factorization=form, dtype=F64)
    x = randn(3, 5, 4, 2)  # (..., *in_shape): 15 rows, as tltorch's reshape(-1, *in_shape)
    expected = _tltorch_shaped(x.reshape(15, 8) @ dense(weight).T, (2, 3), flat)
    torch.testing.assert_close(fn(x, weight), expected)


@pytest.mark.parametrize(
    ("fn", "form"), [(linear_cp, "CP"), (linear_tucker, "Tucker"), (linear_tt, "TT")]
)
def test_linear_form_functions_accept_plain_matrices(fn: Any, form: str) -> None:
    weight = _matrix(form)
    x = randn(4, 6)
    torch.testing.assert_close(fn(x, weight), _reference(x, weight, None))


def test_linear_tucker_accepts_tltorch_channels_first() -> None:
    weight = _tensorized("Tucker")
    x = randn(4, 6)
    torch.testing.assert_close(linear_tucker(x, weight, True, False), linear_tucker(x, weight))


class _FormLinear(torch.nn.Module):
    def __init__(self, weight: tfx.TensorizedTensor) -> None:
        super().__init__()
        self.weight = weight
        self.bias = torch.nn.Parameter(torch.randn(6, dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_blocktt(x, self.weight(), bias=self.bias)


def test_linear_form_functions_trace_with_fx() -> None:
    model = _FormLinear(_tensorized("BlockTT"))
    traced = torch.fx.symbolic_trace(model)
    x = randn(7, 6)
    torch.testing.assert_close(traced(x), model(x))


# ------------------------------------------------------------ factorized_linear, tltorch's reshape
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_factorized_linear_reads_a_higher_order_plain_weight_as_a_matrix(
    implementation: str,
) -> None:
    weight = tfx.FactorizedTensor.new((2, 3, 4, 2), rank=0.6, factorization="tucker", dtype=F64)
    x, bias = randn(5, 8), randn(6)
    expected = F.linear(x, weight.to_tensor().reshape(-1, 8), bias)
    torch.testing.assert_close(
        factorized_linear(x, weight, bias, implementation=implementation), expected
    )


def test_factorized_linear_with_in_features_cutting_a_mode_uses_the_reshaped_weight() -> None:
    weight = tfx.FactorizedTensor.new((3, 4, 2), rank=0.6, factorization="cp", dtype=F64)
    x = randn(5, 4)  # (3, 4, 2) read as (6, 4): the columns cut mode 1
    expected = F.linear(x, weight.to_tensor().reshape(-1, 4))
    torch.testing.assert_close(factorized_linear(x, weight), expected)


def test_factorized_linear_reshapes_a_tensor_weight_to_in_features() -> None:
    weight, x = torch.randn(2, 3, 8, dtype=F64), randn(4, 8)
    torch.testing.assert_close(
        factorized_linear(x, weight, in_features=8), F.linear(x, weight.reshape(6, 8))
    )


def test_factorized_linear_is_differentiable_through_the_factors() -> None:
    weight = _tensorized("Tucker")
    x = randn(3, 6)
    factorized_linear(x, weight).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weight.parameters())


@pytest.mark.parametrize("form", [f for f in TENSORIZED_FORMS if family(f) != "dense"])
def test_linear_flops_of_factors_are_positive_ints(form: str) -> None:
    factorized, rebuild = linear_flops(_tensorized(form), 32)
    assert isinstance(factorized, int) and isinstance(rebuild, int)
    assert factorized > 0 and rebuild >= 2 * 32 * 36


def test_planned_batch_sets_the_traced_plan_and_restores_the_default() -> None:
    weight = _tensorized("TT")
    model = _Linear(weight)
    with planned_batch(3):
        assert traced_batch() == 4  # rounded up to its bucket
        traced = torch.fx.symbolic_trace(model)
    assert traced_batch() == DEFAULT_BATCH
    for batch in (1, 3, 500):
        x = randn(batch, 6)
        torch.testing.assert_close(traced(x), _reference(x, weight, None))


class _Linear(torch.nn.Module):
    def __init__(self, weight: tfx.TensorizedTensor) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return factorized_linear(x, self.weight)
