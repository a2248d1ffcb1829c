"""tltorch 0.5 user code for the functional API, TRL and TCL, on tfx (``import tfx as tltorch``).

Each test is written as a tltorch user writes it (tltorch's argument order and
defaults, its shape conventions; factorized tensors initialised explicitly, since
tltorch's ``new`` leaves them empty) and checked against dense PyTorch in float64.
Where tltorch keeps a function in a module tfx does not mirror
(``tltorch.functional.factorized_linear.linear_cp``, ``...tensor_regression.trl``,
``...factorized_tensordot.tensor_dot_cp``), the test reaches it in
``tltorch.functional``, where tfx keeps it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import tfx as tltorch

F64 = torch.float64


def _tensorized(factorization: str) -> tltorch.TensorizedTensor:
    weight = tltorch.TensorizedTensor.new(
        ((2, 3), (4, 2)), rank=0.5, factorization=factorization, dtype=F64
    )
    weight.normal_(0, 1)
    return weight


def test_factorized_linear_as_tltorch_calls_it() -> None:
    weight, x, bias = _tensorized("CP"), torch.randn(5, 8, dtype=F64), torch.randn(6, dtype=F64)
    expected = F.linear(x, weight.to_matrix(), bias)
    for implementation in ("factorized", "reconstructed"):
        out = tltorch.functional.factorized_linear(x, weight, bias, None, implementation)
        torch.testing.assert_close(out, expected)
    torch.testing.assert_close(
        tltorch.functional.linear.factorized_linear(x, weight, bias=bias), expected
    )


def test_factorized_linear_reads_a_plain_weight_as_reshape_minus_one_in_features() -> None:
    weight = tltorch.FactorizedTensor.new((2, 3, 4, 2), rank=0.5, factorization="tucker", dtype=F64)
    weight.normal_(0, 1)
    x = torch.randn(5, 8, dtype=F64)
    expected = x @ weight.to_tensor().reshape(-1, 8).T
    torch.testing.assert_close(tltorch.functional.factorized_linear(x, weight), expected)


def test_linear_cp_and_linear_tucker_return_the_output_modes() -> None:
    x = torch.randn(5, 8, dtype=F64)
    for fn, factorization in (
        (tltorch.functional.linear_cp, "CP"),
        (tltorch.functional.linear_tucker, "Tucker"),
    ):
        weight = _tensorized(factorization)
        y = fn(x, weight)  # transpose=True: a linear layer, (rows, *out_shape)
        torch.testing.assert_close(y, (x @ weight.to_matrix().T).reshape(5, 2, 3))


def test_linear_blocktt_returns_flat_features() -> None:
    weight, x = _tensorized("BlockTT"), torch.randn(5, 8, dtype=F64)
    torch.testing.assert_close(
        tltorch.functional.linear_blocktt(x, weight), x @ weight.to_matrix().T
    )


def test_linear_functions_with_transpose_false_multiply_by_the_matrix() -> None:
    x = torch.randn(5, 6, dtype=F64)
    cp, tt = _tensorized("CP"), _tensorized("BlockTT")
    torch.testing.assert_close(
        tltorch.functional.linear_cp(x, cp, False), (x @ cp.to_matrix()).reshape(5, 4, 2)
    )
    torch.testing.assert_close(
        tltorch.functional.linear_blocktt(x, tt, transpose=False), x @ tt.to_matrix()
    )


def test_tucker_conv_and_convolution_module_functions() -> None:
    weight = tltorch.FactorizedTensor.new((6, 3, 3, 3), rank=0.5, factorization="tucker", dtype=F64)
    weight.normal_(0, 1)
    x, bias = torch.randn(2, 3, 9, 8, dtype=F64), torch.randn(6, dtype=F64)
    expected = F.conv2d(x, weight.to_tensor(), bias, stride=2, padding=1)
    torch.testing.assert_close(tltorch.functional.tucker_conv(x, weight, bias, 2, 1), expected)
    torch.testing.assert_close(
        tltorch.functional.convolve(x, weight, bias, stride=2, padding=1), expected
    )
    convolution = tltorch.functional.convolution
    torch.testing.assert_close(
        convolution.convNd(x, weight, bias, 2, 1, 1, "reconstructed"), expected
    )


def test_cp_conv_from_the_convolution_module() -> None:
    weight = tltorch.CPTensor.new((6, 3, 3, 3), rank=4, dtype=F64)
    weight.normal_(0, 1)
    x = torch.randn(2, 3, 9, 8, dtype=F64)
    expected = F.conv2d(x, weight.to_tensor(), padding=1)
    torch.testing.assert_close(
        tltorch.functional.convolution.cp_conv(x, weight, None, 1, 1), expected
    )
    torch.testing.assert_close(
        tltorch.functional.convolution.cp_conv_mobilenet(x, weight, padding=1), expected
    )


def test_tensor_dot_tucker_and_trl() -> None:
    weight = tltorch.TuckerTensor.new((3, 4, 5), rank=(2, 3, 4), dtype=F64)
    weight.normal_(0, 1)
    x = torch.randn(6, 3, 4, dtype=F64)
    expected = torch.tensordot(x, weight.to_tensor(), dims=2)
    torch.testing.assert_close(tltorch.functional.tensor_dot_tucker(x, weight, 2), expected)
    torch.testing.assert_close(tltorch.functional.trl(x, weight), expected)
    torch.testing.assert_close(
        tltorch.functional.tucker_trl(x, weight, project_input=True), expected
    )


def test_trl_shapes_exclude_the_batch() -> None:
    trl = tltorch.TRL((3, 4, 5), (2, 3), bias=True, factorization="cp", rank="same", dtype=F64)
    assert trl.weight_shape == (3, 4, 5, 2, 3) and trl.bias.shape == (2, 3)
    x = torch.randn(7, 3, 4, 5, dtype=F64)
    expected = torch.tensordot(x, trl.weight.to_tensor(), dims=3) + trl.bias
    torch.testing.assert_close(trl(x), expected)
    assert tltorch.TRL((10,), (12,))(torch.randn(4, 10)).shape == (4, 12)


def test_trl_init_from_linear_replaces_pooling_and_a_linear_head() -> None:
    # tltorch's recipe: learn the average pooling of a CNN's (10, 4, 4) feature maps.
    linear = nn.Linear(10, 12, dtype=F64)
    trl = tltorch.TRL(
        (10, 4, 4), (12,), bias=True, factorization="tucker", rank=(10, 1, 1, 12), dtype=F64
    )
    trl.init_from_linear(linear, unsqueezed_modes=[1, 2])
    x = torch.randn(3, 10, 4, 4, dtype=F64)
    torch.testing.assert_close(trl(x), linear(x.mean(dim=(2, 3))))


def test_trl_init_from_linear_at_full_rank_is_the_linear_on_flattened_inputs() -> None:
    linear = nn.Linear(12, 5, dtype=F64)
    trl = tltorch.TRL((3, 4), (5,), bias=True, factorization="tucker", rank=(3, 4, 5), dtype=F64)
    trl.init_from_linear(linear)
    x = torch.randn(6, 3, 4, dtype=F64)
    torch.testing.assert_close(trl(x), linear(x.reshape(6, -1)))


def test_tcl_with_one_int_rank() -> None:
    tcl = tltorch.TCL((3, 4, 5), 2, dtype=F64)
    x = torch.randn(6, 3, 4, 5, dtype=F64)
    expected = torch.einsum("bijk,ai,cj,dk->bacd", x, *tcl.factors)
    torch.testing.assert_close(tcl(x), expected)
