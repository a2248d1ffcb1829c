"""tfx.functional tensor regression, TCL and factorized_tensordot against dense contractions."""

from __future__ import annotations

import pytest
import torch

import tfx
from tests.nn._helpers import PLAIN_FORMS, TENSORIZED_FORMS, randn
from tfx.functional import factorized_tensordot, tcl, tensor_regression, trl

F64 = torch.float64


def _weight(form: str, shape: tuple = (3, 4, 5)) -> tfx.FactorizedTensor:
    return tfx.FactorizedTensor.new(shape, rank=0.6, factorization=form, dtype=F64)


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_tensor_regression_matches_tensordot(form: str) -> None:
    weight = _weight(form)
    x, bias = randn(6, 3, 4, form=form), torch.randn(5, dtype=F64)
    expected = torch.tensordot(x, weight.to_tensor(), dims=2) + bias
    torch.testing.assert_close(tensor_regression(x, weight, bias), expected)
    torch.testing.assert_close(trl(x, weight), expected - bias)


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_factorized_tensordot_with_explicit_modes_matches_tensordot(form: str) -> None:
    weight = _weight(form)
    x = randn(2, 7, 5, 3, form=form)  # its last dims meet weight modes 2 and 0, in that order
    expected = torch.tensordot(x, weight.to_tensor(), dims=([2, 3], [2, 0]))
    torch.testing.assert_close(factorized_tensordot(x, weight, (2, 0)), expected)


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_factorized_tensordot_with_a_tensorized_weight_uses_its_full_modes(form: str) -> None:
    weight = tfx.TensorizedTensor.new(((2, 3), (3, 2)), rank=0.6, factorization=form, dtype=F64)
    x = randn(4, 2, 3, form=form)
    expected = torch.tensordot(x, weight.to_tensor(), dims=2)
    torch.testing.assert_close(factorized_tensordot(x, weight, 2), expected)


@pytest.mark.parametrize("batch", [1, 9, 300])
def test_tcl_matches_einsum(batch: int) -> None:
    x = randn(batch, 3, 4)
    factors, bias = (
        [torch.randn(5, 3, dtype=F64), torch.randn(2, 4, dtype=F64)],
        torch.randn(5, 2, dtype=F64),
    )
    expected = torch.einsum("zab,ia,jb->zij", x, *factors) + bias
    torch.testing.assert_close(tcl(x, factors, bias), expected)


def test_tcl_traced_with_symbolic_factors_matches_eager() -> None:
    def model(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return tcl(x, [a, b])

    traced = torch.fx.symbolic_trace(model)
    args = (randn(2, 3, 4), torch.randn(5, 3, dtype=F64), torch.randn(2, 4, dtype=F64))
    torch.testing.assert_close(traced(*args), model(*args))
    assert any(getattr(n.target, "__name__", "") == "einsum" for n in traced.graph.nodes)


# ------------------------------------------------------------------ tltorch's tensor_dot_*, trl
@pytest.mark.parametrize(
    ("modes", "x_shape", "dims"),
    [
        pytest.param(2, (2, 5, 4), ([1, 2], [0, 1]), id="int"),
        pytest.param(([0, 2], [2, 0]), (5, 3, 5), ([0, 2], [2, 0]), id="unsorted-pair"),
        pytest.param((2, 1), (5, 3, 4), ([2], [1]), id="pair-of-ints"),
        pytest.param(([-1], [-2]), (5, 3, 4), ([2], [1]), id="negative"),
    ],
)
@pytest.mark.parametrize(("fn", "form"), [("tensor_dot_cp", "CP"), ("tensor_dot_tucker", "Tucker")])
def test_tensor_dot_matches_tensordot(
    fn: str, form: str, modes: object, x_shape: tuple, dims: tuple
) -> None:
    weight = _weight(form, (5, 4, 5))
    x = randn(*x_shape)
    expected = torch.tensordot(x, weight.to_tensor(), dims=dims)
    torch.testing.assert_close(getattr(tfx.functional, fn)(x, weight, modes), expected)


def test_tensor_dot_tucker_with_batched_modes_keeps_them_in_weight_order() -> None:
    weight = _weight("Tucker", (3, 4, 5))
    x = randn(5, 2, 3)  # dim 2 meets weight mode 0; dim 0 is shared with weight mode 2
    expected = torch.einsum("kba,ajk->bjk", x, weight.to_tensor())
    out = tfx.functional.tensor_dot_tucker(x, weight, ([2], [0]), batched_modes=([0], [2]))
    torch.testing.assert_close(out, expected)


def test_tensor_dot_cp_on_a_tensorized_weight_uses_its_tensor_modes() -> None:
    weight = tfx.TensorizedTensor.new(((2, 3), (3, 2)), rank=0.6, factorization="cp", dtype=F64)
    x = randn(4, 3, 2)
    expected = torch.tensordot(x, weight.to_tensor(), dims=([1, 2], [2, 3]))
    torch.testing.assert_close(tfx.functional.tensor_dot_cp(x, weight, ([1, 2], [2, 3])), expected)


@pytest.mark.parametrize("project_input", [False, True])
def test_tucker_trl_and_trl_take_tltorch_arguments(project_input: bool) -> None:
    weight = _weight("Tucker")
    x, bias = randn(6, 3, 4), torch.randn(5, dtype=F64)
    expected = torch.tensordot(x, weight.to_tensor(), dims=2) + bias
    torch.testing.assert_close(tfx.functional.tucker_trl(x, weight, project_input, bias), expected)
    torch.testing.assert_close(trl(x, weight, bias, project_input=project_input), expected)
