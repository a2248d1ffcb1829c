"""Reconstructions are traceable: torch.fx.symbolic_trace and torch.compile(fullgraph=True).

tltorch 0.5 fails this (einsum strings rebuilt per call, numpy in forward
paths). Each case wraps a factorized tensor in a small module whose forward
reconstructs it, and compares the traced or compiled module with eager, in float64.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import tfx
from tests.helpers import dense
from tests.strategies import PLAIN_FORMS, TENSORIZED_FORMS

SHAPE = (3, 4, 5)
TSHAPE = (2, (2, 3), (3, 2))
MATRIX_TSHAPE = ((2, 3), (3, 2))


class ToTensor(nn.Module):
    def __init__(self, w: tfx.FactorizedTensor) -> None:
        super().__init__()
        self.w = w

    def forward(self) -> torch.Tensor:
        return self.w.to_tensor()


class ToMatrix(ToTensor):
    def forward(self) -> torch.Tensor:
        return self.w.to_matrix()


class Indexed(ToTensor):
    """Static indexing, then the dense value of the result."""

    def __init__(self, w: tfx.FactorizedTensor, index: Any) -> None:
        super().__init__(w)
        self.index = index

    def forward(self) -> torch.Tensor:
        return dense(self.w[self.index])


class MatMul(ToTensor):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.to_matrix()


def _plain(form: str) -> tfx.FactorizedTensor:
    return tfx.FactorizedTensor.new(SHAPE, rank=0.5, factorization=form, dtype=torch.float64)


def _tensorized(form: str, tshape: Any = TSHAPE) -> tfx.TensorizedTensor:
    return tfx.TensorizedTensor.new(tshape, rank=0.5, factorization=form, dtype=torch.float64)


def _fx_matches_eager(module: nn.Module, *args: torch.Tensor) -> None:
    traced = torch.fx.symbolic_trace(module)
    traced.graph.lint()
    torch.testing.assert_close(traced(*args), module(*args))


# ------------------------------------------------------------------ torch.fx
@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_fx_trace_of_to_tensor_matches_eager(form: str) -> None:
    _fx_matches_eager(ToTensor(_plain(form)))


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_fx_trace_of_tensorized_to_tensor_matches_eager(form: str) -> None:
    _fx_matches_eager(ToTensor(_tensorized(form)))


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_fx_trace_of_to_matrix_matches_eager(form: str) -> None:
    _fx_matches_eager(ToMatrix(_tensorized(form)))


PLAIN_INDICES = [1, (slice(None), 2), (0, slice(1, 4), -1), (Ellipsis, slice(None, None, 2))]
TENSORIZED_INDICES = [1, (0, 2), (slice(None), slice(1, 4)), (1, slice(None), 3)]


def _marked(forms: list[str], indices: list[Any], tensorized: bool) -> list[Any]:
    """(form, index) params."""
    return [pytest.param(form, index, id=f"{form}-{index}") for form in forms for index in indices]


@pytest.mark.parametrize(("form", "index"), _marked(PLAIN_FORMS, PLAIN_INDICES, tensorized=False))
def test_fx_trace_of_static_indexing_matches_eager(form: str, index: Any) -> None:
    _fx_matches_eager(Indexed(_plain(form), index))


@pytest.mark.parametrize(
    ("form", "index"), _marked(TENSORIZED_FORMS, TENSORIZED_INDICES, tensorized=True)
)
def test_fx_trace_of_tensorized_static_indexing_matches_eager(form: str, index: Any) -> None:
    _fx_matches_eager(Indexed(_tensorized(form), index))


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_fx_trace_of_matmul_matches_eager(form: str) -> None:
    x = torch.randn(7, 6, dtype=torch.float64)
    if form.startswith("Complex"):
        x = x.to(torch.complex128)
    _fx_matches_eager(MatMul(_tensorized(form, MATRIX_TSHAPE)), x)


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_fx_trace_records_no_constant_reconstruction(form: str) -> None:
    # The parameters are read in the graph (get_attr), not baked in as a constant.
    traced = torch.fx.symbolic_trace(ToTensor(_plain(form)))
    assert any(node.op == "get_attr" for node in traced.graph.nodes)


# ------------------------------------------------------------------ torch.compile
@pytest.fixture
def fresh_dynamo() -> Any:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compile_matches_eager(module: nn.Module, *args: torch.Tensor) -> None:
    compiled = torch.compile(module, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(*args), module(*args))


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("form", ["CP", "Tucker", "TT"])
def test_compile_of_to_tensor_matches_eager(form: str) -> None:
    _compile_matches_eager(ToTensor(_plain(form)))


@pytest.mark.usefixtures("fresh_dynamo")
def test_compile_of_complex_to_tensor_matches_eager() -> None:
    _compile_matches_eager(ToTensor(_plain("ComplexTucker")))


@pytest.mark.usefixtures("fresh_dynamo")
def test_compile_of_tucker_static_indexing_matches_eager() -> None:
    _compile_matches_eager(Indexed(_plain("Tucker"), (1, slice(None), slice(0, 4, 2))))


@pytest.mark.usefixtures("fresh_dynamo")
def test_compile_of_blocktt_matmul_matches_eager() -> None:
    _compile_matches_eager(
        MatMul(_tensorized("BlockTT", MATRIX_TSHAPE)), torch.randn(7, 6, dtype=torch.float64)
    )


@pytest.mark.usefixtures("fresh_dynamo")
def test_compile_of_tensorized_tucker_to_matrix_matches_eager() -> None:
    _compile_matches_eager(ToMatrix(_tensorized("Tucker")))
