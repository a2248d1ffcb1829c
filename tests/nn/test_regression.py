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
    layer = tfx.TRL((3, 4), 6, factorization="tucker", rank=0.5, dtype=F64)
    x = randn(5, 3, 4)
    assert layer(x).shape == (5, 6)
    torch.testing.assert_close(layer(x), trl_reference(layer, x))


@pytest.mark.parametrize("form", ["Tucker", "TT", "Dense"])
def test_trl_init_from_linear_at_full_rank_reproduces_the_linear(form: str) -> None:
    linear = nn.Linear(12, 5, dtype=F64)
    layer = tfx.TRL(
        (3, 4), (5,), bias=True, factorization=form, rank=full_rank(form, (3, 4, 5)), dtype=F64
    )
    assert layer.init_from_linear(linear) is layer
    assert torch.equal(layer.bias, linear.bias)
    x = randn(7, 3, 4)
    torch.testing.assert_close(layer(x), linear(x.flatten(1)))


def test_trl_init_from_linear_with_unsqueezed_modes_pools_those_modes() -> None:
    linear = nn.Linear(12, 5, dtype=F64)
    layer = tfx.TRL(
        (3, 4, 6), (5,), bias=True, factorization="tucker", rank=(3, 4, 1, 5), dtype=F64
    )
    layer.init_from_linear(linear, unsqueezed_modes=[2])
    x = randn(7, 3, 4, 6)
    torch.testing.assert_close(layer(x), linear(x.mean(3).flatten(1)))


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_trl_init_from_random_scales_weight_and_zeroes_bias(form: str) -> None:
    layer = tfx.TRL((16, 16), (32,), bias=True, factorization=form, rank=0.2)
    assert torch.equal(layer.bias, torch.zeros(32))
    expected = 1 / math.sqrt(3 * 256)
    with torch.no_grad():
        std = float(layer.weight.to_tensor().std())
    assert abs(std - expected) < 0.1 * expected


def test_trl_init_from_random_can_decompose_a_full_weight() -> None:
    layer = tfx.TRL((6, 6), (6,), factorization="tucker", rank=0.5)
    before = layer.weight.to_tensor().detach().clone()
    layer.init_from_random(decompose_full_weight=True)
    after = layer.weight.to_tensor().detach()
    assert not torch.allclose(before, after)
    assert bool(torch.isfinite(after).all())


def test_trl_init_from_random_decomposition_keeps_the_dtype() -> None:
    layer = tfx.TRL((6, 6), (6,), factorization="tucker", rank=0.5, dtype=F64)
    layer.init_from_random(decompose_full_weight=True)
    assert {p.dtype for p in layer.parameters()} == {F64}
    x = randn(8, 6, 6)
    torch.testing.assert_close(layer(x), trl_reference(layer, x))


@pytest.mark.usefixtures("_uninitialised_memory_is_nan")
def test_trl_given_weight_has_a_zero_bias() -> None:
    weight = tfx.FactorizedTensor.new((3, 4, 5), rank=3, factorization="cp", dtype=F64)
    layer = tfx.TRL((3, 4), (5,), factorization=weight, bias=True, dtype=F64)
    assert layer.weight is weight
    assert torch.equal(layer.bias, torch.zeros(5, dtype=F64))


def test_trl_shapes_exclude_the_batch_as_in_tltorch() -> None:
    layer = tfx.TRL((10,), (12,), factorization="cp", rank=4, dtype=F64)
    assert layer.weight_shape == (10, 12) and layer.weight.shape == (10, 12)
    x = randn(3, 10)
    assert layer(x).shape == (3, 12)
    torch.testing.assert_close(layer(x), trl_reference(layer, x))


def test_trl_takes_any_number_of_leading_dims() -> None:
    layer = make_trl("Tucker")
    x = randn(2, 5, 3, 4)
    torch.testing.assert_close(layer(x), trl_reference(layer, x))


def test_trl_init_from_linear_replaces_average_pooling_and_a_linear_head() -> None:
    # tltorch's use: a (10, 4, 4) feature map, global average pooling, then Linear(10, 12).
    head = nn.Linear(10, 12, dtype=F64)
    layer = tfx.TRL(
        (10, 4, 4), (12,), rank=(10, 1, 1, 12), factorization="tucker", bias=True, dtype=F64
    )
    layer.init_from_linear(head, unsqueezed_modes=[1, 2])
    assert layer.weight.shape == (10, 4, 4, 12) and layer.rank == (10, 1, 1, 12)
    x = randn(3, 10, 4, 4)
    torch.testing.assert_close(layer(x), head(x.mean((2, 3))))


def test_trl_with_a_batch_in_input_shape_raises_explaining_the_convention() -> None:
    layer = tfx.TRL((8, 3, 4), (8, 5), rank=0.5)  # tfx 0.1's (batch, *in): now a 5-mode weight
    with pytest.raises(
        tfx.ShapeError,
        match=r"TRL\(input_shape=\(8, 3, 4\)\) got an input of shape \(8, 3, 4\); it must be "
        r"\(batch, \*input_shape\) = \(batch, 8, 3, 4\).\ninput_shape is the shape of one sample, "
        r"without the batch size \(tltorch's convention.*\n"
        r"Fix: TRL\(input_shape=\(3, 4\), output_shape=\(5,\), ...\)",
    ):
        layer(torch.randn(8, 3, 4))


def test_trl_with_an_input_of_other_modes_raises() -> None:
    layer = tfx.TRL((3, 4), (5,), rank=0.5)
    with pytest.raises(
        tfx.ShapeError,
        match=r"got an input of shape \(2, 4, 3\); it must be \(batch, \*input_shape\) = "
        r"\(batch, 3, 4\).\nFix: reshape x to \(batch, 3, 4\)",
    ):
        layer(torch.randn(2, 4, 3))


def test_trl_given_a_weight_of_another_shape_raises() -> None:
    weight = tfx.FactorizedTensor.new((3, 4, 5), rank=3, factorization="cp")
    with pytest.raises(
        tfx.ShapeError,
        match=r"needs a weight of shape \(2, 3, 4, 2, 5\) \(input_shape \+ output_shape\); the "
        r"factorization given has shape \(3, 4, 5\).\nFix: input_shape and output_shape "
        r"without the batch size: TRL\(\(3, 4\), \(5,\), factorization=weight\)",
    ):
        tfx.TRL((2, 3, 4), (2, 5), factorization=weight)


def test_trl_given_a_weight_of_other_input_modes_suggests_them() -> None:
    weight = tfx.FactorizedTensor.new((4, 5), rank=3, factorization="cp")
    with pytest.raises(
        tfx.ShapeError, match=r"Fix: TRL\(\(4,\), \(5,\), factorization=weight\), or"
    ):
        tfx.TRL((3, 4), (5,), factorization=weight)


def test_trl_init_from_linear_of_the_wrong_size_raises() -> None:
    layer = tfx.TRL((10, 4, 4), (12,), rank=(10, 1, 1, 12), factorization="tucker")
    with pytest.raises(
        tfx.ShapeError,
        match=r"a TRL from \(10,\) to \(12,\) \(modes \[1, 2\] pooled\) needs a Linear\(10, 12\); "
        r"got Linear\(in_features=160.*\nFix: nn.Linear\(10, 12\)",
    ):
        layer.init_from_linear(nn.Linear(160, 12), unsqueezed_modes=(1, 2))


@pytest.mark.parametrize("modes", [(3,), (-1,)])
def test_trl_init_from_linear_with_an_output_mode_unsqueezed_raises(modes: tuple) -> None:
    layer = tfx.TRL((10, 4, 4), (12,), rank=(10, 1, 1, 12), factorization="tucker")
    with pytest.raises(
        tfx.ShapeError, match=r"must be input modes, 0 to 2 \(input_shape=\(10, 4, 4\)\)"
    ):
        layer.init_from_linear(nn.Linear(10, 12), unsqueezed_modes=modes)


def test_trl_init_from_linear_unsqueezed_modes_need_tucker() -> None:
    layer = tfx.TRL((10, 4, 4), (12,), rank=4, factorization="cp")
    with pytest.raises(tfx.OptionError, match=r"needs a Tucker weight; this TRL's is 'CP'"):
        layer.init_from_linear(nn.Linear(10, 12), unsqueezed_modes=(1, 2))


def test_trl_init_from_linear_on_a_stack_raises() -> None:
    layer = tfx.TRL((3, 4), (5,), rank=0.5, n_layers=2)
    with pytest.raises(tfx.OptionError, match=r"init_from_linear on a stack of 2 regressions"):
        layer.init_from_linear(nn.Linear(12, 5))


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


def test_tcl_int_rank_is_the_rank_of_every_mode_as_in_tltorch() -> None:
    layer = tfx.TCL((3, 4, 5), 2, dtype=F64)
    assert layer.rank == (2, 2, 2)
    x = randn(6, 3, 4, 5)
    torch.testing.assert_close(layer(x), tcl_reference(layer, x))
