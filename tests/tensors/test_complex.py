"""Complex forms: real parameters (so DDP and optimisers work), complex reconstructions."""

from __future__ import annotations

import pytest
import torch

import tfx
from tests.helpers import dense, family, full_rank, tensor_shape
from tests.strategies import PLAIN_FORMS, TENSORIZED_FORMS

COMPLEX_PLAIN = [f for f in PLAIN_FORMS if f.startswith("Complex")]
COMPLEX_TENSORIZED = [f for f in TENSORIZED_FORMS if f.startswith("Complex")]
SHAPE = (3, 4, 5)
TSHAPE = (2, (2, 3), (3, 2))


def _plain(form: str, **kwargs: object) -> tfx.FactorizedTensor:
    return tfx.FactorizedTensor.new(SHAPE, rank=0.5, factorization=form, **kwargs)


def _tensorized(form: str, **kwargs: object) -> tfx.TensorizedTensor:
    return tfx.TensorizedTensor.new(TSHAPE, rank=0.5, factorization=form, **kwargs)


def test_every_real_form_has_a_complex_variant() -> None:
    real = {f for f in PLAIN_FORMS if not f.startswith("Complex")}
    assert {f.removeprefix("Complex") for f in COMPLEX_PLAIN} == real


def test_every_real_tensorized_form_has_a_complex_variant() -> None:
    real = {f for f in TENSORIZED_FORMS if not f.startswith("Complex")}
    assert {f.removeprefix("Complex") for f in COMPLEX_TENSORIZED} == real


@pytest.mark.parametrize("form", COMPLEX_PLAIN)
def test_complex_parameters_are_float32_pairs(form: str) -> None:
    t = _plain(form)
    assert {(p.dtype, p.shape[-1]) for p in t.parameters()} == {(torch.float32, 2)}


@pytest.mark.parametrize("form", COMPLEX_TENSORIZED)
def test_complex_tensorized_parameters_are_float32_pairs(form: str) -> None:
    t = _tensorized(form)
    assert {(p.dtype, p.shape[-1]) for p in t.parameters()} == {(torch.float32, 2)}


@pytest.mark.parametrize("form", COMPLEX_PLAIN)
def test_complex_reconstruction_is_complex64(form: str) -> None:
    assert _plain(form).to_tensor().dtype == torch.complex64


@pytest.mark.parametrize("form", COMPLEX_TENSORIZED)
def test_complex_tensorized_reconstruction_is_complex64(form: str) -> None:
    assert _tensorized(form).to_matrix().dtype == torch.complex64


@pytest.mark.parametrize("form", COMPLEX_PLAIN)
def test_complex_dtype_cfloat_stores_float32(form: str) -> None:
    t = _plain(form, dtype=torch.cfloat)
    assert ({p.dtype for p in t.parameters()}, t.to_tensor().dtype) == (
        {torch.float32},
        torch.complex64,
    )


@pytest.mark.parametrize("form", COMPLEX_PLAIN)
def test_complex_dtype_cdouble_stores_float64(form: str) -> None:
    t = _plain(form, dtype=torch.cdouble)
    assert ({p.dtype for p in t.parameters()}, t.to_tensor().dtype) == (
        {torch.float64},
        torch.complex128,
    )


@pytest.mark.parametrize("form", COMPLEX_PLAIN)
def test_complex_parameters_view_as_complex(form: str) -> None:
    t = _plain(form)
    views = [torch.view_as_complex(p) for p in t.parameters()]
    assert all(v.dtype == torch.complex64 for v in views) and len(views) == len(
        list(t.parameters())
    )


@pytest.mark.parametrize("form", COMPLEX_PLAIN)
def test_complex_decomposition_is_made_of_complex_views(form: str) -> None:
    t = _plain(form)
    leaves = [x for x in _flatten(t.decomposition) if isinstance(x, torch.Tensor)]
    assert {x.dtype for x in leaves} == {torch.complex64}


def _flatten(value: object) -> list[object]:
    if isinstance(value, list | tuple):
        return [y for x in value for y in _flatten(x)]
    return [value]


@pytest.mark.parametrize("form", COMPLEX_PLAIN)
def test_complex_from_real_tensor_gives_complex_reconstruction(form: str) -> None:
    shape = (4, 5) if family(form) == "cp" else SHAPE
    x = torch.randn(*shape, dtype=torch.float64)
    t = tfx.FactorizedTensor.from_tensor(
        x, rank=full_rank(form, shape) or "same", factorization=form
    )
    torch.testing.assert_close(t.to_tensor(), x.to(torch.complex128))


@pytest.mark.parametrize("form", COMPLEX_TENSORIZED)
def test_complex_tensorized_gradients_reach_the_real_parameters(form: str) -> None:
    t = _tensorized(form)
    dense(t).abs().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in t.parameters())


@pytest.mark.parametrize("form", COMPLEX_TENSORIZED)
def test_complex_tensorized_from_tensor_keeps_complex128(form: str) -> None:
    shape = ((4,), (5,)) if family(form) == "cp" else TSHAPE
    x = torch.randn(*tensor_shape(shape), dtype=torch.complex128)
    t = tfx.TensorizedTensor.from_tensor(
        x, shape, rank=full_rank(form, shape, tensorized=True) or "same", factorization=form
    )
    assert t.to_tensor().dtype == torch.complex128
