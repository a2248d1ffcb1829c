"""FactorizedLinear: outputs against F.linear on the reconstructed matrix, from_linear, init."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tfx
from tests.helpers import is_complex_form
from tests.nn._helpers import (
    TENSORIZED_FORMS,
    bias_of,
    full_rank_linear,
    linear_reference,
    make_linear,
    randn,
)
from tests.strategies import tensorized_shapes

IMPLEMENTATIONS = ("factorized", "reconstructed", "auto")
COMPLEX_FORMS = [f for f in TENSORIZED_FORMS if is_complex_form(f)]
REAL_FORMS = [f for f in TENSORIZED_FORMS if not is_complex_form(f)]


def _cases(implementations: tuple[str, ...] = IMPLEMENTATIONS) -> list:
    return [
        pytest.param(form, impl, id=f"{form}-{impl}")
        for form in TENSORIZED_FORMS
        for impl in implementations
    ]


# ------------------------------------------------------------------ outputs
@pytest.mark.parametrize(("form", "implementation"), _cases())
def test_linear_matches_dense_linear_on_reconstructed_matrix(
    form: str, implementation: str
) -> None:
    layer = make_linear(form, implementation=implementation)
    x = randn(2, 4, 6, form=form)  # two leading batch dims
    torch.testing.assert_close(layer(x), linear_reference(layer, x))


@pytest.mark.parametrize(("form", "implementation"), _cases())
def test_linear_stacked_layers_match_each_dense_layer(form: str, implementation: str) -> None:
    layer = make_linear(form, implementation=implementation, n_layers=3)
    x = randn(4, 6, form=form)
    for i in range(3):
        expected = linear_reference(layer, x, indices=i)
        torch.testing.assert_close(layer(x, indices=i), expected)
        torch.testing.assert_close(layer[i](x), expected)
        torch.testing.assert_close(layer.get_linear(i)(x), expected)


def test_linear_stacked_layers_differ_from_each_other() -> None:
    layer = make_linear("CP", n_layers=3)
    x = randn(4, 6)
    assert not torch.allclose(layer(x, indices=0), layer(x, indices=1))


def test_linear_sublayer_shares_the_stack_parameters() -> None:
    layer = make_linear("Tucker", n_layers=2)
    sub = layer[1]
    assert {id(p) for p in sub.parameters()} == {id(p) for p in layer.parameters()}
    sub(randn(3, 6)).sum().backward()
    assert layer.bias.grad[1].abs().sum() > 0
    assert torch.equal(layer.bias.grad[0], torch.zeros(6, dtype=torch.float64))


@pytest.mark.parametrize("form", COMPLEX_FORMS)
def test_linear_complex_reconstructed_without_bias_matches_dense(form: str) -> None:
    layer = make_linear(form, implementation="reconstructed", bias=False)
    x = randn(4, 6, form=form)
    torch.testing.assert_close(layer(x), linear_reference(layer, x))


@pytest.mark.parametrize("form", REAL_FORMS)
@pytest.mark.parametrize("batch", [1, 7, 3000])
def test_linear_auto_matches_dense_at_every_batch_size(form: str, batch: int) -> None:
    layer = make_linear(form, implementation="auto", rank="same")
    x = randn(batch, 6, form=form)
    torch.testing.assert_close(layer(x), linear_reference(layer, x))


def test_linear_auto_flops_favour_the_factors_for_one_row() -> None:
    weight = tfx.TensorizedTensor.new(
        ((16,), (16,)), rank=1, factorization="cp", dtype=torch.float64
    )
    factorized, rebuild = tfx.functional.linear_flops(weight, 1)
    assert factorized < rebuild


def test_linear_accepts_lists_for_tensorized_features() -> None:
    layer = tfx.FactorizedLinear(
        [2, 3], [3, 2], factorization="tucker", rank=0.5, dtype=torch.float64
    )
    assert layer.in_tensorized_features == (2, 3)
    assert layer.out_tensorized_features == (3, 2)
    x = randn(4, 6)
    torch.testing.assert_close(layer(x), linear_reference(layer, x))


def test_linear_accepts_ints_for_untensorized_features() -> None:
    layer = tfx.FactorizedLinear(12, 10, factorization="cp", rank=3, dtype=torch.float64)
    assert layer.weight.tensorized_shape == ((10,), (12,))
    x = randn(4, 12)
    torch.testing.assert_close(layer(x), linear_reference(layer, x))


def test_linear_without_bias_has_no_bias_parameter() -> None:
    layer = make_linear("CP", bias=False)
    assert layer.bias is None
    assert "bias" not in dict(layer.named_parameters())
    x = randn(4, 6)
    torch.testing.assert_close(layer(x), x @ layer.weight.to_matrix().T)


def test_linear_checkpointing_gives_same_output_and_gradients() -> None:
    plain = make_linear("TT")
    checkpointed = make_linear("TT", checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = randn(4, 6)
    y_plain, y_ckpt = plain(x), checkpointed(x)
    torch.testing.assert_close(y_ckpt, y_plain)
    y_plain.square().sum().backward()
    y_ckpt.square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_linear_uses_a_given_tensorized_weight() -> None:
    weight = tfx.TensorizedTensor.new(
        ((3, 2), (2, 3)), rank=4, factorization="cp", dtype=torch.float64
    )
    layer = tfx.FactorizedLinear((2, 3), (3, 2), factorization=weight, dtype=torch.float64)
    assert layer.weight is weight
    x = randn(4, 6)
    torch.testing.assert_close(layer(x), linear_reference(layer, x))


@pytest.mark.parametrize("form", ["Tucker", "ComplexTucker"])
def test_linear_given_weight_bias_takes_the_weight_dtype(form: str) -> None:
    weight = tfx.TensorizedTensor.new(
        ((3, 2), (2, 3)), rank=0.5, factorization=form, dtype=torch.float64
    )
    layer = tfx.FactorizedLinear((2, 3), (3, 2), factorization=weight)
    expected = torch.complex128 if is_complex_form(form) else torch.float64
    assert bias_of(layer).dtype == expected
    x = randn(4, 6, form=form)
    torch.testing.assert_close(layer(x), linear_reference(layer, x))


@given(
    shape=tensorized_shapes(batch=False, max_length=2, max_size=3),
    form=st.sampled_from(TENSORIZED_FORMS),
)
def test_linear_matches_dense_for_any_tensorization(shape: tuple, form: str) -> None:
    rows, cols = shape
    layer = tfx.FactorizedLinear(cols, rows, factorization=form, rank=0.5, dtype=torch.float64)
    x = randn(3, math.prod(cols), form=form)
    torch.testing.assert_close(layer(x), linear_reference(layer, x))


# ------------------------------------------------------------------ from_linear
@pytest.mark.parametrize(("form", "implementation"), _cases(("factorized", "reconstructed")))
def test_from_linear_at_full_rank_reproduces_the_linear(form: str, implementation: str) -> None:
    linear = nn.Linear(12, 10, dtype=torch.float64)
    layer = tfx.FactorizedLinear.from_linear(
        linear, factorization=form, implementation=implementation, **full_rank_linear(form)
    )
    x = randn(4, 12, form=form)
    if is_complex_form(form):
        expected = nn.functional.linear(x, linear.weight.to(x.dtype), linear.bias.to(x.dtype))
    else:
        expected = linear(x)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("form", ["ComplexCP", "ComplexBlockTT"])
def test_from_linear_complex_layer_copies_the_bias_and_has_real_parameters(form: str) -> None:
    # real (..., 2) storage: DistributedDataParallel and most optimisers need real parameters
    linear = nn.Linear(12, 10, dtype=torch.float64)
    layer = tfx.FactorizedLinear.from_linear(linear, factorization=form, **full_rank_linear(form))
    assert all(not p.is_complex() for p in layer.parameters())
    assert torch.equal(bias_of(layer), linear.bias.detach().to(torch.complex128))


def test_from_linear_of_a_bias_free_linear_is_bias_free() -> None:
    linear = nn.Linear(12, 10, bias=False, dtype=torch.float64)
    layer = tfx.FactorizedLinear.from_linear(
        linear, factorization="tucker", **full_rank_linear("tucker")
    )
    assert layer.bias is None
    x = randn(4, 12)
    torch.testing.assert_close(layer(x), linear(x))


def test_from_linear_copies_the_bias_exactly() -> None:
    linear = nn.Linear(12, 10, dtype=torch.float64)
    layer = tfx.FactorizedLinear.from_linear(
        linear, rank=0.3, factorization="tt", n_tensorized_modes=2
    )
    assert torch.equal(layer.bias, linear.bias)
    assert layer.bias is not linear.bias


def test_from_linear_bias_false_drops_the_bias() -> None:
    linear = nn.Linear(12, 10, dtype=torch.float64)
    layer = tfx.FactorizedLinear.from_linear(
        linear, bias=False, factorization="tucker", **full_rank_linear("tucker")
    )
    assert layer.bias is None
    x = randn(4, 12)
    torch.testing.assert_close(layer(x), x @ linear.weight.T)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("form", ["CP", "Tucker", "TT", "BlockTT", "Dense"])
def test_from_linear_keeps_dtype_and_device(form: str, dtype: torch.dtype) -> None:
    linear = nn.Linear(12, 10, dtype=dtype)
    layer = tfx.FactorizedLinear.from_linear(
        linear, rank=0.5, factorization=form, n_tensorized_modes=2
    )
    for name, p in layer.named_parameters():
        assert p.dtype == dtype, name
        assert p.device == linear.weight.device, name
    assert layer(torch.randn(3, 12, dtype=dtype)).dtype == dtype


def test_from_linear_auto_tensorizes_features() -> None:
    layer = tfx.FactorizedLinear.from_linear(nn.Linear(64, 32), rank=0.5, factorization="tucker")
    assert (layer.in_tensorized_features, layer.out_tensorized_features) == ((4, 4, 4), (2, 4, 4))
    assert (layer.in_features, layer.out_features) == (64, 32)


def test_from_linear_list_at_full_rank_reproduces_each_linear() -> None:
    linears = [nn.Linear(12, 10, dtype=torch.float64) for _ in range(3)]
    layer = tfx.FactorizedLinear.from_linear_list(
        linears, (3, 4), (2, 5), rank=(3, 2, 5, 3, 4), factorization="tucker"
    )
    assert layer.n_layers == 3
    x = randn(4, 12)
    for i, linear in enumerate(linears):
        torch.testing.assert_close(layer(x, indices=i), linear(x))
        torch.testing.assert_close(layer[i](x), linear(x))


def test_from_linear_list_of_bias_free_linears_is_bias_free() -> None:
    linears = [nn.Linear(12, 10, bias=False, dtype=torch.float64) for _ in range(2)]
    layer = tfx.FactorizedLinear.from_linear_list(
        linears, (3, 4), (2, 5), rank=(1, 2, 4, 12, 4, 1), factorization="tt"
    )  # the bounds of the chain (2, 2, 5, 3, 4)
    assert layer.bias is None
    x = randn(4, 12)
    torch.testing.assert_close(layer(x, indices=1), linears[1](x))


# ------------------------------------------------------------------ initialisation
@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_linear_initial_weight_std_matches_nn_linear(form: str) -> None:
    layer = tfx.FactorizedLinear((8, 8, 8), (8, 8, 8), factorization=form, rank=0.1)
    expected = 1 / math.sqrt(3 * 512)  # nn.Linear: U(-1/sqrt(in), 1/sqrt(in))
    with torch.no_grad():
        std = float(layer.weight.to_matrix().std())
    assert abs(std - expected) < 0.1 * expected


def test_linear_initial_bias_follows_nn_linear_bound() -> None:
    layer = tfx.FactorizedLinear((8, 8, 8), (8, 8, 8), factorization="cp", rank=0.1)
    bound = 1 / math.sqrt(512)
    largest = float(layer.bias.detach().abs().max())
    assert 0.9 * bound < largest <= bound  # uniform over the whole interval
