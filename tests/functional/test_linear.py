"""tfx.functional linear contractions against F.linear on the reconstructed matrix."""

from __future__ import annotations

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


@pytest.mark.parametrize(
    ("fn", "form"),
    [
        (linear_cp, "CP"),
        (linear_tucker, "Tucker"),
        (linear_tt, "TT"),
        (linear_blocktt, "BlockTT"),
        (linear_cp, "ComplexCP"),
        (linear_blocktt, "ComplexBlockTT"),
    ],
)
def test_linear_form_functions_match_dense(fn: object, form: str) -> None:
    weight = _tensorized(form)
    x, bias = randn(4, 6, form=form), randn(6, form=form)
    torch.testing.assert_close(fn(x, weight, bias), _reference(x, weight, bias))  # type: ignore[operator]
    torch.testing.assert_close(fn(x, weight), _reference(x, weight, None))  # type: ignore[operator]


@pytest.mark.parametrize(
    ("fn", "form"), [(linear_cp, "CP"), (linear_tucker, "Tucker"), (linear_tt, "TT")]
)
def test_linear_form_functions_accept_plain_matrices(fn: object, form: str) -> None:
    weight = _matrix(form)
    x = randn(4, 6)
    torch.testing.assert_close(fn(x, weight), _reference(x, weight, None))  # type: ignore[operator]


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
