"""tfx.functional convolutions against F.conv on the reconstructed kernel."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import tfx
from tests.helpers import family
from tests.nn._helpers import PLAIN_FORMS, randn
from tfx.functional import (
    conv_flops,
    convNd,
    convolve,
    cp_conv,
    cp_conv_mobilenet,
    general_conv1d,
    tt_conv,
    tucker_conv,
)
from tfx.functional.convolution import general_conv1d_

F64 = torch.float64
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
KERNEL, SPATIAL = (3, 2, 2), (7, 8, 6)


def _kernel(form: str, order: int) -> tfx.FactorizedTensor:
    return tfx.FactorizedTensor.new(
        (4, 3, *KERNEL[:order]), rank=0.6, factorization=form, dtype=F64
    )


def _reference(x: torch.Tensor, kernel: Any, bias: Any = None, **options: Any) -> torch.Tensor:
    weight = kernel if isinstance(kernel, torch.Tensor) else kernel.to_tensor()
    bias = None if bias is None else bias.to(weight.dtype)
    return CONV[weight.ndim - 2](x, weight, bias, **options)


def _implementations(form: str) -> list[str]:
    return ["factorized", "reconstructed", "auto"] + (["mobilenet"] if family(form) == "cp" else [])


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize(
    ("form", "implementation"),
    [pytest.param(f, i, id=f"{f}-{i}") for f in PLAIN_FORMS for i in _implementations(f)],
)
def test_convolve_matches_dense_conv(form: str, implementation: str, order: int) -> None:
    kernel = _kernel(form, order)
    x = randn(2, 3, *SPATIAL[:order], form=form)
    bias = randn(4, form=form)
    options = {
        "stride": (2, 1, 1)[:order],
        "padding": (1, 2, 0)[:order],
        "dilation": (1, 2, 1)[:order],
    }
    out = convolve(x, kernel, bias, implementation=implementation, **options)
    torch.testing.assert_close(out, _reference(x, kernel, bias, **options))


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("form", ["CP", "Tucker", "TT", "Dense"])
def test_convolve_padding_modes_match_padding_then_conv(form: str, padding_mode: str) -> None:
    kernel = _kernel(form, 2)
    x = randn(2, 3, 7, 8)
    out = convolve(x, kernel, padding=(1, 2), padding_mode=padding_mode)
    expected = _reference(F.pad(x, (2, 2, 1, 1), mode=padding_mode), kernel)
    torch.testing.assert_close(out, expected)


def test_convolve_same_padding_matches_torch() -> None:
    kernel = _kernel("Tucker", 2)
    x = randn(2, 3, 7, 8)
    out = convolve(x, kernel, padding="same", dilation=(1, 3))
    assert out.shape == (2, 4, 7, 8)
    # total padding d * (k - 1) = (2, 3), split as torch does: (1, 1) and (1, 2)
    torch.testing.assert_close(out, _reference(F.pad(x, (1, 2, 1, 1)), kernel, dilation=(1, 3)))


def test_convolve_with_a_tensor_kernel_and_groups_is_f_conv() -> None:
    weight, bias = torch.randn(6, 2, 3, 3, dtype=F64), torch.randn(6, dtype=F64)
    x = randn(2, 4, 6, 6)
    out = convolve(x, weight, bias, padding=1, groups=2)
    torch.testing.assert_close(out, F.conv2d(x, weight, bias, padding=1, groups=2))


@pytest.mark.parametrize("form", ["CP", "Tucker", "TT"])
def test_convolve_grouped_reconstructed_matches_dense(form: str) -> None:
    kernel = tfx.FactorizedTensor.new((6, 2, 3, 3), rank=0.6, factorization=form, dtype=F64)
    x = randn(2, 4, 6, 6)
    out = convolve(x, kernel, padding=1, groups=2, implementation="reconstructed")
    torch.testing.assert_close(out, F.conv2d(x, kernel.to_tensor(), padding=1, groups=2))


@pytest.mark.parametrize(
    ("fn", "form"),
    [
        (cp_conv, "CP"),
        (cp_conv_mobilenet, "CP"),
        (tucker_conv, "Tucker"),
        (tt_conv, "TT"),
        (cp_conv, "ComplexCP"),
    ],
)
def test_form_convolutions_with_tltorch_signature_match_dense_conv(fn: Any, form: str) -> None:
    kernel = _kernel(form, 2)
    x, bias = randn(2, 3, 7, 8, form=form), randn(4, form=form)
    stride, dilation = (1, 2), (2, 1)
    # tltorch's positional order: (x, weight, bias, stride, padding, dilation)
    out = fn(x, kernel, bias, stride, (1, 0), dilation)
    torch.testing.assert_close(
        out, _reference(x, kernel, bias, stride=stride, padding=(1, 0), dilation=dilation)
    )


@pytest.mark.parametrize(
    ("fn", "form"), [(cp_conv, "Tucker"), (tucker_conv, "CP"), (tt_conv, "CP")]
)
def test_form_convolution_given_another_form_raises(fn: Any, form: str) -> None:
    with pytest.raises(
        tfx.UnsupportedSiteError, match=r"needs a \w+ kernel, got .*\nFix: convolve"
    ):
        fn(randn(1, 3, 5, 5), _kernel(form, 2))


@pytest.mark.parametrize("implementation", ["factorized", "reconstructed"])
def test_convnd_is_convolve_with_tltorch_argument_order(implementation: str) -> None:
    kernel = _kernel("Tucker", 3)
    x, bias = randn(2, 3, 7, 8, 6), randn(4)
    out = convNd(x, kernel, bias, 1, 1, 1, implementation)
    torch.testing.assert_close(out, _reference(x, kernel, bias, padding=1))


@pytest.mark.parametrize(
    ("fn", "mode"), [(general_conv1d, 2), (general_conv1d, 3), (general_conv1d_, -1)]
)
def test_general_conv1d_convolves_along_one_mode(fn: Any, mode: int) -> None:
    x, kernel, bias = randn(2, 4, 7, 6), torch.randn(6, 2, 3, dtype=F64), randn(6)
    out = fn(x, kernel, mode, bias, stride=2, padding=1, groups=2, dilation=1)
    shape = [1, 1]
    shape[mode % 4 - 2] = 3
    step, pad = [1, 1], [0, 0]
    step[mode % 4 - 2], pad[mode % 4 - 2] = 2, 1
    expected = F.conv2d(x, kernel.reshape(6, 2, *shape), bias, tuple(step), tuple(pad), 1, 2)
    torch.testing.assert_close(out, expected)


def test_general_conv1d_on_a_non_spatial_mode_raises() -> None:
    with pytest.raises(
        tfx.ShapeError, match=r"mode=1 is not a spatial dim .*\nFix: mode in \[2, 3\]"
    ):
        general_conv1d(randn(2, 4, 7, 6), torch.randn(6, 4, 3, dtype=F64), 1)


@pytest.mark.parametrize("form", ["CP", "Tucker", "TT"])
def test_conv_flops_lists_each_implementation(form: str) -> None:
    flops = conv_flops(_kernel(form, 2), spatial_out=64, batch=8)
    expected = {"reconstructed", "factorized"} | ({"mobilenet"} if form == "CP" else set())
    assert set(flops) == expected
    assert all(isinstance(v, int) and v > 0 for v in flops.values())


def test_convolve_auto_picks_the_cheapest_by_flops() -> None:
    # A rank-1 CP kernel on a big image: the separable path is far cheaper than a dense conv.
    kernel = tfx.FactorizedTensor.new((32, 32, 3, 3), rank=1, factorization="cp", dtype=F64)
    flops = conv_flops(kernel, spatial_out=16 * 16, batch=2)
    assert min(flops, key=flops.__getitem__) != "reconstructed"
    x = randn(2, 32, 16, 16)
    torch.testing.assert_close(
        convolve(x, kernel, padding=1, implementation="auto"), _reference(x, kernel, padding=1)
    )
