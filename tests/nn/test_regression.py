"""TRL and TCL: outputs against tensordot / mode products on the reconstructed weights."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import tfx
from tests.nn._helpers import (
    PLAIN_FORMS,
    bug,
    full_rank,
    make_tcl,
    make_trl,
    randn,
    tcl_reference,
    trl_reference,
)

F64 = torch.float64


@pytest.fixture
def _uninitialised_memory_is_nan() -> Iterator[None]:
    """Make torch.empty deterministic (NaN-filled) so an unset tensor is caught every time."""
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


# ------------------------------------------------------------------ TRL
@pytest.mark.parametrize("n_layers", [1, 3])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_trl_matches_tensordot_with_reconstructed_weight(
    form: str, bias: bool, n_layers: int
) -> None:
    layer = make_trl(form, bias=bias, n_layers=n_layers)
    if bias:
        with torch.no_grad():
            layer.bias.normal_()  # initialised to zero; make it count
    x = randn(5, 3, 4, form=form)
    if n_layers == 1:
        torch.testing.assert_close(layer(x), trl_reference(layer, x))
    for i in range(n_layers if n_layers > 1 else 0):
        torch.testing.assert_close(layer(x, indices=i), trl_reference(layer, x, indices=i))


def test_trl_output_shape_may_be_an_int() -> None:
    layer = tfx.TRL((5, 3, 4), 6, factorization="tucker", rank=0.5, dtype=F64)
    x = randn(5, 3, 4)
    assert layer(x).shape == (5, 6)
    torch.testing.assert_close(layer(x), trl_reference(layer, x))


@pytest.mark.parametrize("form", ["Tucker", "TT", "Dense"])
def test_trl_init_from_linear_at_full_rank_reproduces_the_linear(form: str) -> None:
    linear = nn.Linear(12, 5, dtype=F64)
    layer = tfx.TRL(
        (7, 3, 4), (7, 5), bias=True, factorization=form, rank=full_rank(form, (3, 4, 5)), dtype=F64
    )
    assert layer.init_from_linear(linear) is layer
    assert torch.equal(layer.bias, linear.bias)
    x = randn(7, 3, 4)
    torch.testing.assert_close(layer(x), linear(x.flatten(1)))


def test_trl_init_from_linear_with_unsqueezed_modes_pools_those_modes() -> None:
    linear = nn.Linear(12, 5, dtype=F64)
    layer = tfx.TRL(
        (7, 3, 4, 6), (7, 5), bias=True, factorization="tucker", rank=(3, 4, 1, 5), dtype=F64
    )
    layer.init_from_linear(linear, unsqueezed_modes=[2])
    x = randn(7, 3, 4, 6)
    torch.testing.assert_close(layer(x), linear(x.mean(3).flatten(1)))


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_trl_init_from_random_scales_weight_and_zeroes_bias(form: str) -> None:
    layer = tfx.TRL((8, 16, 16), (8, 32), bias=True, factorization=form, rank=0.2)
    assert torch.equal(layer.bias, torch.zeros(32))
    expected = 1 / math.sqrt(3 * 256)
    with torch.no_grad():
        std = float(layer.weight.to_tensor().std())
    assert abs(std - expected) < 0.1 * expected


def test_trl_init_from_random_can_decompose_a_full_weight() -> None:
    layer = tfx.TRL((8, 6, 6), (8, 6), factorization="tucker", rank=0.5)
    before = layer.weight.to_tensor().detach().clone()
    layer.init_from_random(decompose_full_weight=True)
    after = layer.weight.to_tensor().detach()
    assert not torch.allclose(before, after)
    assert bool(torch.isfinite(after).all())


def test_trl_init_from_random_decomposition_keeps_the_dtype() -> None:
    layer = tfx.TRL((8, 6, 6), (8, 6), factorization="tucker", rank=0.5, dtype=F64)
    layer.init_from_random(decompose_full_weight=True)
    assert {p.dtype for p in layer.parameters()} == {F64}
    x = randn(8, 6, 6)
    torch.testing.assert_close(layer(x), trl_reference(layer, x))


@pytest.mark.usefixtures("_uninitialised_memory_is_nan")
def test_trl_given_weight_has_a_zero_bias() -> None:
    weight = tfx.FactorizedTensor.new((3, 4, 5), rank=3, factorization="cp", dtype=F64)
    layer = tfx.TRL((2, 3, 4), (2, 5), factorization=weight, bias=True, dtype=F64)
    assert layer.weight is weight
    assert torch.equal(layer.bias, torch.zeros(5, dtype=F64))


# ------------------------------------------------------------------ TCL
@pytest.mark.parametrize("n_layers", [1, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_tcl_matches_mode_products_with_each_factor(bias: bool, n_layers: int) -> None:
    layer = make_tcl(bias=bias, n_layers=n_layers)
    x = randn(6, 3, 4, 5)
    if n_layers == 1:
        torch.testing.assert_close(layer(x), tcl_reference(layer, x))
    for i in range(n_layers if n_layers > 1 else 0):
        torch.testing.assert_close(layer(x, indices=i), tcl_reference(layer, x, indices=i))


@pytest.mark.parametrize("batch", [1, 5, 300])
def test_tcl_matches_mode_products_for_any_batch_size(batch: int) -> None:
    layer = make_tcl(bias=True)
    x = randn(batch, 3, 4, 5)
    torch.testing.assert_close(layer(x), tcl_reference(layer, x))


def test_tcl_factors_are_initialised_like_nn_linear_weights() -> None:
    layer = tfx.TCL((64, 32), (16, 8), bias=True)
    for factor, size in zip(layer.factors, (64, 32), strict=True):
        bound = 1 / math.sqrt(size)
        largest = float(factor.detach().abs().max())
        assert 0.9 * bound < largest <= bound
    assert float(layer.bias.detach().abs().max()) <= 1 / math.sqrt(64)


def test_tcl_output_shape_is_the_rank() -> None:
    layer = tfx.TCL((3, 4), (2, 3))
    assert layer.output_shape == (2, 3)
    assert layer(torch.randn(5, 3, 4)).shape == (5, 2, 3)
