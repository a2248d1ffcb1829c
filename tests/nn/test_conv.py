"""FactorizedConv: outputs against nn.Conv on the reconstructed kernel, from_conv, init."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn
from torch.func import functional_call

import tfx
from tests.helpers import is_complex_form
from tests.nn._helpers import (
    PLAIN_FORMS,
    REAL_PLAIN_FORMS,
    bias_of,
    conv_reference,
    full_rank,
    make_conv,
    randn,
)

F64 = torch.float64
CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
TRANSPOSED = [nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d]
# Per-dimension settings, sliced to the number of spatial dims.
STRIDE, PADDING, DILATION, SPATIAL = (2, 1, 1), (1, 2, 0), (1, 2, 1), (7, 8, 6)


def _implementations(form: str) -> list[str]:
    return ["factorized", "reconstructed", "auto"] + (["mobilenet"] if "CP" in form else [])


def _cases() -> list:
    return [
        pytest.param(form, impl, id=f"{form}-{impl}")
        for form in PLAIN_FORMS
        for impl in _implementations(form)
    ]


def _layer(form: str, implementation: str, order: int, **kwargs: Any) -> tfx.FactorizedConv:
    kwargs.setdefault("bias", True)
    return make_conv(
        form,
        order,
        stride=STRIDE[:order],
        padding=PADDING[:order],
        dilation=DILATION[:order],
        implementation=implementation,
        **kwargs,
    )


# ------------------------------------------------------------------ outputs
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize(("form", "implementation"), _cases())
def test_conv_matches_dense_conv_on_reconstructed_kernel(
    form: str, implementation: str, order: int
) -> None:
    layer = _layer(form, implementation, order)
    x = randn(2, 3, *SPATIAL[:order], form=form)
    torch.testing.assert_close(layer(x), conv_reference(layer, x))


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize(("form", "implementation"), _cases())
def test_conv_stacked_layers_match_each_dense_conv(
    form: str, implementation: str, order: int
) -> None:
    layer = _layer(form, implementation, order, n_layers=3)
    x = randn(2, 3, *SPATIAL[:order], form=form)
    for i in range(3):
        expected = conv_reference(layer, x, indices=i)
        torch.testing.assert_close(layer(x, indices=i), expected)
        torch.testing.assert_close(layer[i](x), expected)
        torch.testing.assert_close(layer.get_conv(i)(x), expected)


@pytest.mark.parametrize("padding", ["same", "valid", (1, 2), 2])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize(
    ("form", "implementation"),
    [
        ("CP", "factorized"),
        ("CP", "mobilenet"),
        ("Tucker", "factorized"),
        ("TT", "factorized"),
        ("Dense", "factorized"),
    ],
)
def test_conv_padding_and_padding_mode_match_dense_conv(
    form: str, implementation: str, padding: Any, padding_mode: str
) -> None:
    layer = make_conv(
        form,
        2,
        padding=padding,
        padding_mode=padding_mode,
        dilation=(2, 1),
        bias=True,
        implementation=implementation,
    )
    x = randn(2, 3, 7, 6)
    torch.testing.assert_close(layer(x), conv_reference(layer, x))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_conv_grouped_reconstructed_matches_dense_conv(order: int) -> None:
    layer = tfx.FactorizedConv(
        4,
        6,
        (3, 2, 2)[:order],
        factorization="tucker",
        rank=0.5,
        implementation="reconstructed",
        groups=2,
        padding=1,
        bias=True,
        dtype=F64,
    )
    assert layer.weight.shape == (6, 2, *(3, 2, 2)[:order])
    x = randn(2, 4, *SPATIAL[:order])
    torch.testing.assert_close(layer(x), conv_reference(layer, x))


def test_conv_from_factorization_uses_the_kernel_and_bias() -> None:
    kernel = tfx.FactorizedTensor.new((4, 3, 3, 3), rank=5, factorization="cp", dtype=F64)
    bias = torch.randn(4, dtype=F64)
    layer = tfx.FactorizedConv.from_factorization(kernel, stride=2, padding=1, bias=bias, dtype=F64)
    assert layer.weight is kernel
    assert torch.equal(layer.bias, bias)
    x = randn(2, 3, 7, 7)
    expected = nn.functional.conv2d(x, kernel.to_tensor(), bias, stride=2, padding=1)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("form", ["Tucker", "ComplexTucker"])
def test_conv_from_factorization_bias_takes_the_kernel_dtype(form: str) -> None:
    kernel = tfx.FactorizedTensor.new((4, 3, 3, 3), rank=0.5, factorization=form, dtype=F64)
    bias = randn(4, form=form)
    layer = tfx.FactorizedConv.from_factorization(kernel, padding=1, bias=bias)
    assert torch.equal(bias_of(layer), bias)
    x = randn(2, 3, 5, 5, form=form)
    torch.testing.assert_close(layer(x), conv_reference(layer, x))


@pytest.mark.parametrize("form", [f for f in PLAIN_FORMS if is_complex_form(f)])
def test_conv_complex_layer_has_real_parameters_and_a_complex_bias(form: str) -> None:
    layer = make_conv(form, bias=True, n_layers=2)
    assert all(not p.is_complex() for p in layer.parameters())
    assert bias_of(layer).dtype == torch.complex128
    assert bias_of(layer).shape == (2, 4)


def test_conv_int_kernel_size_with_order_gives_that_many_dims() -> None:
    layer = tfx.FactorizedConv(3, 4, 3, order=3, factorization="cp", rank=4, dtype=F64)
    assert layer.kernel_size == (3, 3, 3)
    assert layer(randn(1, 3, 5, 5, 5)).shape == (1, 4, 3, 3, 3)


def test_conv_tucker_fixed_rank_modes_keep_full_rank() -> None:
    layer = tfx.FactorizedConv(
        6, 8, 3, order=2, factorization="tucker", rank=0.2, fixed_rank_modes=(0,)
    )
    assert layer.rank[0] == 8
    assert layer.rank[1] < 6


def test_conv_accepts_an_over_complete_tucker_rank_as_tltorch_does() -> None:
    # a kernel trained from scratch may be over-complete (in_channels=3 < rank 4)
    layer = tfx.FactorizedConv(3, 4, 3, order=2, factorization="tucker", rank=(4, 4, 3, 3))
    assert layer.rank == (4, 4, 3, 3)
    assert tuple(layer.weight.factors[1].shape) == (3, 4)


def test_conv_rank_is_validated_against_the_kernel_order() -> None:
    with pytest.raises(tfx.RankError, match=r"has 3 entries but the Tucker .* has 4 modes"):
        tfx.FactorizedConv(3, 4, 3, order=2, factorization="tucker", rank=(4, 4, 3))


def test_conv_has_bias_is_an_alias_of_bias() -> None:
    assert tfx.FactorizedConv(3, 4, 3, order=2, has_bias=True).has_bias
    assert tfx.FactorizedConv(3, 4, 3, order=2, bias=True).bias is not None
    assert not tfx.FactorizedConv(3, 4, 3, order=2).has_bias


# ------------------------------------------------------------------ from_conv
_CONFIGS = {
    "ints": {"stride": 2, "padding": 1, "dilation": 1},
    "tuples": {"stride": (2, 1, 1), "padding": (1, 0, 2), "dilation": (1, 2, 1)},
    "same": {"padding": "same", "dilation": 2},
    "valid": {"padding": "valid", "stride": 2},
}


def _source_conv(
    order: int, config: str, padding_mode: str, bias: bool = True, **kwargs: Any
) -> nn.Module:
    options = {k: (v[:order] if isinstance(v, tuple) else v) for k, v in _CONFIGS[config].items()}
    return CONVS[order](
        3,
        4,
        (3, 2, 2)[:order],
        padding_mode=padding_mode,
        bias=bias,
        dtype=F64,
        **options,
        **kwargs,
    )


@pytest.mark.parametrize("form", ["Tucker", "TT", "Dense"])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("config", list(_CONFIGS))
@pytest.mark.parametrize("order", [1, 2, 3])
def test_from_conv_at_full_rank_reproduces_the_conv(
    order: int, config: str, padding_mode: str, form: str
) -> None:
    conv = _source_conv(order, config, padding_mode)
    x = randn(2, 3, *SPATIAL[:order])
    for implementation in ("factorized", "reconstructed"):
        layer = tfx.FactorizedConv.from_conv(
            conv,
            rank=full_rank(form, conv.weight.shape),
            factorization=form,
            implementation=implementation,
        )
        torch.testing.assert_close(layer(x), conv(x), msg=implementation)


@pytest.mark.parametrize(
    ("config", "padding_mode"),
    list(zip(_CONFIGS, ["reflect", "circular", "replicate", "zeros"], strict=True)),
)
@pytest.mark.parametrize("order", [1, 2, 3])
def test_from_conv_cp_computes_the_source_conv_with_its_kernel(
    order: int, config: str, padding_mode: str
) -> None:
    # CP of an order >= 3 kernel is not exact at any fixed rank: check the configuration
    # instead, by running the *source* conv with the CP kernel.
    conv = _source_conv(order, config, padding_mode)
    x = randn(2, 3, *SPATIAL[:order])
    for implementation in ("factorized", "mobilenet", "reconstructed"):
        layer = tfx.FactorizedConv.from_conv(
            conv,
            rank=4,
            factorization="cp",
            implementation=implementation,
            decomposition_kwargs={"n_iter_max": 5},
        )
        expected = functional_call(
            conv, {"weight": layer.weight.to_tensor(), "bias": conv.bias}, (x,)
        )
        torch.testing.assert_close(layer(x), expected, msg=implementation)


@pytest.mark.parametrize("config", list(_CONFIGS))
def test_from_conv_carries_the_configuration_over(config: str) -> None:
    conv = _source_conv(2, config, "reflect")
    layer = tfx.FactorizedConv.from_conv(conv, rank=0.5, factorization="tucker")
    expected_padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
    assert layer.padding == expected_padding
    assert layer.stride == tuple(conv.stride)
    assert layer.dilation == tuple(conv.dilation)
    assert (layer.padding_mode, layer.groups) == ("reflect", 1)
    assert (layer.in_channels, layer.out_channels, layer.kernel_size) == (3, 4, (3, 2))


def test_from_conv_copies_the_bias_and_drops_a_missing_one() -> None:
    conv = nn.Conv2d(3, 4, 3, dtype=F64)
    assert torch.equal(
        tfx.FactorizedConv.from_conv(conv, rank=0.5, factorization="tucker").bias, conv.bias
    )
    assert (
        tfx.FactorizedConv.from_conv(
            nn.Conv2d(3, 4, 3, bias=False), rank=0.5, factorization="tt"
        ).bias
        is None
    )


@pytest.mark.parametrize("order", [1, 2, 3])
def test_from_conv_grouped_reconstructed_reproduces_the_conv(order: int) -> None:
    conv = CONVS[order](
        4, 6, (3, 2, 2)[:order], groups=2, padding=1, padding_mode="circular", dtype=F64
    )
    layer = tfx.FactorizedConv.from_conv(
        conv, rank=tuple(conv.weight.shape), factorization="tucker", implementation="reconstructed"
    )
    assert layer.groups == 2
    x = randn(2, 4, *SPATIAL[:order])
    torch.testing.assert_close(layer(x), conv(x))


@pytest.mark.parametrize("implementation", ["factorized", "mobilenet", "auto"])
def test_from_conv_grouped_needs_reconstructed(implementation: str) -> None:
    conv = nn.Conv2d(4, 6, 3, groups=2)
    with pytest.raises(
        tfx.UnsupportedSiteError, match=r"groups=2.*\n.*implementation='reconstructed'"
    ):
        tfx.FactorizedConv.from_conv(
            conv, rank=0.5, factorization="cp", implementation=implementation
        )


@pytest.mark.parametrize("transposed", TRANSPOSED)
def test_from_conv_refuses_transposed_convolutions(transposed: type) -> None:
    conv = transposed(3, 4, 3)
    with pytest.raises(
        tfx.UnsupportedSiteError, match=rf"{transposed.__name__} is a transposed convolution"
    ):
        tfx.FactorizedConv.from_conv(conv, rank=0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_from_conv_keeps_dtype_and_device(dtype: torch.dtype) -> None:
    conv = nn.Conv2d(3, 4, 3, dtype=dtype)
    layer = tfx.FactorizedConv.from_conv(conv, rank=0.5, factorization="tucker")
    for name, p in layer.named_parameters():
        assert (p.dtype, p.device) == (dtype, conv.weight.device), name
    assert layer(torch.randn(1, 3, 5, 5, dtype=dtype)).dtype == dtype


def test_from_conv_list_at_full_rank_reproduces_each_conv() -> None:
    convs = [
        nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="replicate", dtype=F64)
        for _ in range(3)
    ]
    layer = tfx.FactorizedConv.from_conv_list(
        convs,
        rank=full_rank("TT", (3, *convs[0].weight.shape)),
        factorization="tt",
        implementation="factorized",
    )
    assert layer.n_layers == 3
    x = randn(2, 3, 7, 7)
    for i, conv in enumerate(convs):
        torch.testing.assert_close(layer(x, indices=i), conv(x))


def test_from_conv_without_decomposition_keeps_the_random_kernel() -> None:
    conv = nn.Conv2d(3, 4, 3, dtype=F64)
    layer = tfx.FactorizedConv.from_conv(
        conv, rank=0.5, factorization="cp", decompose_weights=False
    )
    assert not torch.allclose(layer.weight.to_tensor(), conv.weight)
    assert torch.equal(layer.bias, conv.bias)


# ------------------------------------------------------------------ initialisation
@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_conv_initial_kernel_std_matches_nn_conv(form: str) -> None:
    layer = tfx.FactorizedConv(64, 64, 3, order=2, factorization=form, rank=0.1)
    expected = 1 / math.sqrt(3 * 64 * 9)  # nn.Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    with torch.no_grad():
        std = float(layer.weight.to_tensor().std())
    assert abs(std - expected) < 0.1 * expected


def test_conv_initial_kernel_std_uses_the_grouped_fan_in() -> None:
    layer = tfx.FactorizedConv(
        64, 64, 3, order=2, factorization="dense", groups=4, implementation="reconstructed"
    )
    expected = 1 / math.sqrt(3 * 16 * 9)
    with torch.no_grad():
        std = float(layer.weight.to_tensor().std())
    assert abs(std - expected) < 0.1 * expected


@pytest.mark.parametrize("form", REAL_PLAIN_FORMS)
def test_conv_initial_bias_follows_nn_conv_bound(form: str) -> None:
    layer = tfx.FactorizedConv(64, 128, 3, order=2, factorization=form, rank=0.1, bias=True)
    bound = 1 / math.sqrt(64 * 9)
    largest = float(layer.bias.detach().abs().max())
    assert 0.9 * bound < largest <= bound
