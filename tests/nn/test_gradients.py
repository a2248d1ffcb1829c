"""Analytic gradients of every layer and form match finite differences (gradcheck, float64).

Each layer is called through ``torch.func.functional_call`` so gradcheck
perturbs its parameters (the factors; real storage for complex forms) and its
floating input directly.
"""

from __future__ import annotations

import pytest
import torch

import tfx
from tests.helpers import family
from tests.nn._helpers import PLAIN_FORMS, TENSORIZED_FORMS, gradcheck_module, randn

F64 = torch.float64


@pytest.mark.parametrize("implementation", ["factorized", "reconstructed"])
@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_linear_gradients_match_finite_differences(form: str, implementation: str) -> None:
    layer = tfx.FactorizedLinear(
        (2, 2),
        (2, 3),
        factorization=form,
        rank=0.9,
        implementation=implementation,
        dtype=F64,
    )
    assert gradcheck_module(layer, randn(3, 4, form=form))


def test_linear_stacked_gradients_match_finite_differences() -> None:
    layer = tfx.FactorizedLinear((2, 2), (2, 3), factorization="tt", rank=3, n_layers=2, dtype=F64)
    assert gradcheck_module(layer[1], randn(3, 4))


def _conv_implementations(form: str) -> list[str]:
    return ["factorized", "mobilenet"] if family(form) == "cp" else ["factorized"]


@pytest.mark.parametrize(
    ("form", "implementation"),
    [pytest.param(f, i, id=f"{f}-{i}") for f in PLAIN_FORMS for i in _conv_implementations(f)],
)
def test_conv_gradients_match_finite_differences(form: str, implementation: str) -> None:
    layer = tfx.FactorizedConv(
        2,
        3,
        (2, 2),
        factorization=form,
        rank=0.9,
        implementation=implementation,
        padding=1,
        stride=(1, 2),
        bias=True,
        dtype=F64,
    )
    assert gradcheck_module(layer, randn(1, 2, 4, 4, form=form))


@pytest.mark.parametrize("order", [1, 3])
def test_conv_gradients_match_finite_differences_in_1d_and_3d(order: int) -> None:
    layer = tfx.FactorizedConv(
        2,
        2,
        (2,) * order,
        factorization="tucker",
        rank=0.9,
        padding=1,
        padding_mode="reflect",
        bias=True,
        dtype=F64,
    )
    assert gradcheck_module(layer, randn(1, 2, *(3,) * order))


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_embedding_gradients_wrt_factors_match_finite_differences(form: str) -> None:
    layer = tfx.FactorizedEmbedding(
        12,
        6,
        tensorized_num_embeddings=(3, 4),
        tensorized_embedding_dim=(2, 3),
        factorization=form,
        rank=0.9 if family(form) == "tucker" else 3,
        padding_idx=2,
        dtype=F64,
    )
    assert gradcheck_module(layer, torch.tensor([[0, 5], [11, 2], [5, 7]]), wrt_inputs=False)


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_trl_gradients_match_finite_differences(form: str) -> None:
    layer = tfx.TRL((2, 3), (2,), factorization=form, rank=0.9, bias=True, dtype=F64)
    assert gradcheck_module(layer, randn(3, 2, 3, form=form))


def test_tcl_gradients_match_finite_differences() -> None:
    layer = tfx.TCL((2, 3), (3, 2), bias=True, dtype=F64)
    assert gradcheck_module(layer, randn(2, 2, 3))
