"""Every error raised in tfx/nn: the right class, and a message with what, why and a fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tfx
from tests.nn._helpers import make_conv, make_embedding, make_linear, randn


# ------------------------------------------------------------------ shared (_common.py)
@pytest.mark.parametrize("value", [None, 3.5])
def test_linear_tensorized_features_that_are_not_ints_raise(value: object) -> None:
    with pytest.raises(
        tfx.ShapeError,
        match=r"in_tensorized_features=.* must be a tuple of ints, e.g. \(8, 8, 12\)",
    ):
        tfx.FactorizedLinear(value, (2, 3))  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [(), (2, 0), (3, -1)])
def test_linear_empty_or_non_positive_tensorized_features_raise(value: tuple) -> None:
    with pytest.raises(
        tfx.ShapeError,
        match=r"out_tensorized_features=.* must be a non-empty tuple of positive ints",
    ):
        tfx.FactorizedLinear((2, 3), value)


def test_linear_fractional_tensorized_features_raise() -> None:
    with pytest.raises(tfx.ShapeError):
        tfx.FactorizedLinear((2.5, 4), (3,))


@pytest.mark.parametrize(
    "make",
    [
        lambda impl: make_linear("CP", implementation=impl),
        lambda impl: make_conv("CP", implementation=impl),
        lambda impl: make_embedding("CP", implementation=impl),
    ],
    ids=["linear", "conv", "embedding"],
)
def test_layer_unknown_implementation_suggests_the_closest(make: object) -> None:
    with pytest.raises(
        tfx.OptionError,
        match=r"implementation='factorised' is not registered. Did you mean 'factorized'\?",
    ):
        make("factorised")  # type: ignore[operator]


def test_single_layer_given_a_layer_index_raises() -> None:
    layer = make_linear("CP")
    with pytest.raises(
        tfx.OptionError,
        match=r"indices=1 given to a single layer \(n_layers=1\).\nFix: call layer\(x\)",
    ):
        layer(randn(2, 6), indices=1)


@pytest.mark.parametrize("index", [3, -4, 1.0])
def test_stacked_layer_index_out_of_range_raises(index: object) -> None:
    layer = make_linear("CP", n_layers=3)
    with pytest.raises(
        tfx.OptionError,
        match=rf"indices={index!r} must be an int in \[0, 3\) for a stack of 3 layers",
    ):
        layer(randn(2, 6), indices=index)


def test_stacked_layer_negative_index_counts_from_the_end() -> None:
    layer = make_linear("CP", n_layers=3)
    x = randn(2, 6)
    torch.testing.assert_close(layer(x, indices=-1), layer(x, indices=2))


def test_tracing_a_stacked_layer_with_a_symbolic_index_raises() -> None:
    with pytest.raises(tfx.OptionError, match=r"symbolic layer index.\nFix: trace layer\[i\]"):
        torch.fx.symbolic_trace(make_linear("CP", n_layers=3))


def test_tracing_a_single_layer_with_its_index_argument_works() -> None:
    layer = make_linear("Tucker")
    traced = torch.fx.symbolic_trace(layer)
    x = randn(2, 6)
    torch.testing.assert_close(traced(x, 0), layer(x))


# ------------------------------------------------------------------ FactorizedLinear
@pytest.mark.parametrize("n_layers", [0, -1, 2.0])
def test_linear_invalid_n_layers_raises(n_layers: object) -> None:
    with pytest.raises(tfx.OptionError, match=rf"n_layers={n_layers!r} must be a positive int"):
        tfx.FactorizedLinear((2, 3), (3, 2), n_layers=n_layers)  # type: ignore[arg-type]


def test_linear_given_weight_of_the_wrong_shape_raises() -> None:
    weight = tfx.TensorizedTensor.new(((3, 2), (2, 2)), rank=3, factorization="cp")
    with pytest.raises(
        tfx.ShapeError,
        match=r"tensorized_shape=\(\(3, 2\), \(2, 2\)\), "
        r"but this layer needs \(\(3, 2\), \(2, 3\)\)",
    ):
        tfx.FactorizedLinear((2, 3), (3, 2), factorization=weight)


def test_linear_get_linear_of_a_single_layer_raises() -> None:
    with pytest.raises(
        tfx.OptionError, match=r"get_linear: a single layer is parametrized \(n_layers=1\)"
    ):
        make_linear("CP").get_linear(0)


def test_linear_get_linear_out_of_range_raises() -> None:
    with pytest.raises(tfx.OptionError, match=r"indices=5 must be an int in \[0, 2\)"):
        make_linear("CP", n_layers=2)[5]


def test_from_linear_list_of_different_shapes_raises() -> None:
    with pytest.raises(
        tfx.ShapeError,
        match=r"from_linear_list needs linears of one shape, got \[\(10, 12\), \(10, 13\)\]",
    ):
        tfx.FactorizedLinear.from_linear_list(
            [nn.Linear(12, 10), nn.Linear(13, 10)], (3, 4), (2, 5)
        )


def test_from_linear_list_with_mixed_biases_raises() -> None:
    with pytest.raises(tfx.ShapeError, match=r"either every linear has a bias or none does"):
        tfx.FactorizedLinear.from_linear_list(
            [nn.Linear(12, 10), nn.Linear(12, 10, bias=False)], (3, 4), (2, 5)
        )


def test_from_linear_list_with_wrong_tensorized_shapes_raises() -> None:
    with pytest.raises(
        tfx.ShapeError, match=r"describe a \(10, 16\) weight, the linears have \(10, 12\)"
    ):
        tfx.FactorizedLinear.from_linear_list([nn.Linear(12, 10)] * 2, (4, 4), (2, 5), rank=0.5)


def test_from_linear_with_wrong_tensorized_shapes_raises() -> None:
    with pytest.raises(tfx.ShapeError, match=r"describe a 10x16 weight, but the layer's is 10x12"):
        tfx.FactorizedLinear.from_linear(
            nn.Linear(12, 10), in_tensorized_features=(4, 4), out_tensorized_features=(2, 5)
        )


def test_from_linear_without_auto_tensorize_needs_both_shapes() -> None:
    with pytest.raises(
        tfx.OptionError, match=r"auto_tensorize=False needs both .*\nFix: pass them"
    ):
        tfx.FactorizedLinear.from_linear(
            nn.Linear(12, 10), auto_tensorize=False, in_tensorized_features=(3, 4)
        )


# ------------------------------------------------------------------ FactorizedConv
def test_conv_per_dimension_option_of_the_wrong_length_raises() -> None:
    with pytest.raises(
        tfx.ShapeError,
        match=r"stride=\(1, 2, 3\) has 3 entries but the convolution has 2 spatial dims",
    ):
        tfx.FactorizedConv(3, 4, (3, 3), stride=(1, 2, 3))


def test_conv_int_kernel_size_without_order_raises() -> None:
    with pytest.raises(
        tfx.ShapeError,
        match=r"kernel_size=3 is an int.*\nFix: FactorizedConv\(\.\.\., kernel_size=3, order=2\)",
    ):
        tfx.FactorizedConv(3, 4, 3)


def test_conv_order_that_contradicts_kernel_size_raises() -> None:
    with pytest.raises(tfx.ShapeError, match=r"order=3 but kernel_size=\(3, 3\) has 2 dims"):
        tfx.FactorizedConv(3, 4, (3, 3), order=3)


def test_conv_groups_that_do_not_divide_the_channels_raise() -> None:
    with pytest.raises(
        tfx.ShapeError, match=r"groups=2 must divide in_channels=3 and out_channels=4"
    ):
        tfx.FactorizedConv(3, 4, (3, 3), groups=2, implementation="reconstructed")


@pytest.mark.parametrize("implementation", ["factorized", "mobilenet", "auto"])
def test_conv_groups_need_the_reconstructed_implementation(implementation: str) -> None:
    with pytest.raises(
        tfx.UnsupportedSiteError, match=r"groups=2: .*\nFix: implementation='reconstructed'"
    ):
        tfx.FactorizedConv(4, 4, (3, 3), groups=2, implementation=implementation)


def test_conv_unknown_padding_mode_raises() -> None:
    with pytest.raises(
        tfx.OptionError,
        match=r"padding_mode='mirror' is not one of "
        r"\('zeros', 'reflect', 'replicate', 'circular'\)",
    ):
        tfx.FactorizedConv(3, 4, (3, 3), padding_mode="mirror")


def test_conv_same_padding_with_stride_raises_at_construction() -> None:
    with pytest.raises(
        tfx.ShapeError, match=r"padding='same' is not supported for strided convolutions"
    ):
        tfx.FactorizedConv(3, 4, (3, 3), padding="same", stride=2)


def test_conv_unknown_padding_string_raises_at_construction() -> None:
    with pytest.raises(
        tfx.OptionError,
        match=r"padding='full' is not registered.*\nAvailable: 'same', 'valid'. Or pass ints.",
    ):
        tfx.FactorizedConv(3, 4, (3, 3), padding="full")


def test_conv_given_kernel_of_the_wrong_shape_raises() -> None:
    kernel = tfx.FactorizedTensor.new((4, 3, 3, 2), rank=3, factorization="cp")
    with pytest.raises(
        tfx.ShapeError,
        match=r"the given kernel has shape \(4, 3, 3, 2\), this layer needs \(4, 3, 3, 3\)",
    ):
        tfx.FactorizedConv(3, 4, (3, 3), factorization=kernel)


def test_conv_get_conv_of_a_single_layer_raises() -> None:
    with pytest.raises(
        tfx.OptionError, match=r"get_conv: a single layer is parametrized \(n_layers=1\)"
    ):
        make_conv("CP").get_conv(0)


def test_from_conv_list_of_differently_configured_convs_raises() -> None:
    convs = [nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3, stride=2)]
    with pytest.raises(
        tfx.ShapeError, match=r"from_conv_list needs identically configured convolutions"
    ):
        tfx.FactorizedConv.from_conv_list(convs, rank=0.5)


def test_from_conv_list_with_mixed_biases_raises() -> None:
    convs = [nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3, bias=False)]
    with pytest.raises(tfx.ShapeError, match=r"either every convolution has a bias or none does"):
        tfx.FactorizedConv.from_conv_list(convs, rank=0.5)


def test_from_conv_of_a_non_convolution_raises() -> None:
    with pytest.raises(
        tfx.UnsupportedSiteError, match=r"from_conv needs an nn.Conv1d/2d/3d, got Linear"
    ):
        tfx.FactorizedConv.from_conv(nn.Linear(3, 4))


def test_from_conv_of_a_transposed_convolution_raises() -> None:
    with pytest.raises(
        tfx.UnsupportedSiteError,
        match=r"ConvTranspose2d is a transposed convolution.*\nFix: leave it dense",
    ):
        tfx.FactorizedConv.from_conv(nn.ConvTranspose2d(3, 4, 3))


# ------------------------------------------------------------------ FactorizedEmbedding
@pytest.mark.parametrize("padding_idx", [24, -25])
def test_embedding_padding_idx_out_of_range_raises(padding_idx: int) -> None:
    with pytest.raises(tfx.ShapeError, match=rf"padding_idx={padding_idx} is outside \[-24, 24\)"):
        make_embedding("CP", padding_idx=padding_idx)


def test_embedding_given_table_of_the_wrong_shape_raises() -> None:
    table = tfx.TensorizedTensor.new(((4, 6), (3, 4)), rank=4, factorization="blocktt")
    with pytest.raises(
        tfx.ShapeError,
        match=r"the given table has tensorized_shape=\(\(4, 6\), \(3, 4\)\), "
        r"but this layer needs \(\(2, 3, 4\), \(2, 2, 3\)\)",
    ):
        tfx.FactorizedEmbedding(
            24,
            12,
            tensorized_num_embeddings=(2, 3, 4),
            tensorized_embedding_dim=(2, 2, 3),
            factorization=table,
        )


def test_from_embedding_list_of_different_shapes_raises() -> None:
    with pytest.raises(
        tfx.ShapeError, match=r"from_embedding_list needs embeddings of one shape and padding_idx"
    ):
        tfx.FactorizedEmbedding.from_embedding_list([nn.Embedding(24, 12), nn.Embedding(24, 8)])


def test_from_embedding_list_of_different_padding_raises() -> None:
    with pytest.raises(tfx.ShapeError, match=r"one shape and padding_idx"):
        tfx.FactorizedEmbedding.from_embedding_list(
            [nn.Embedding(24, 12), nn.Embedding(24, 12, padding_idx=0)]
        )


def test_from_embedding_of_a_non_embedding_raises() -> None:
    with pytest.raises(
        tfx.UnsupportedSiteError, match=r"from_embedding needs an nn.Embedding, got Linear"
    ):
        tfx.FactorizedEmbedding.from_embedding(nn.Linear(3, 4))  # type: ignore[arg-type]


def test_from_embedding_with_max_norm_raises() -> None:
    with pytest.raises(
        tfx.UnsupportedSiteError,
        match=r"nn.Embedding\(max_norm=2.0\) renormalises .*\nFix: leave this embedding dense",
    ):
        tfx.FactorizedEmbedding.from_embedding(nn.Embedding(24, 12, max_norm=2.0))


def test_from_embedding_sparse_raises() -> None:
    with pytest.raises(
        tfx.OptionError,
        match=r"sparse=True has no factorized equivalent.\nFix: leave this embedding dense",
    ):
        tfx.FactorizedEmbedding.from_embedding(nn.Embedding(24, 12, sparse=True))


# ------------------------------------------------------------------ TRL / TCL
@pytest.mark.parametrize("input_shape", [(), (5, 0)])
def test_trl_input_shape_without_modes_raises(input_shape: object) -> None:
    with pytest.raises(
        tfx.ShapeError, match=r"TRL input_shape=.* must be a non-empty tuple of positive ints"
    ):
        tfx.TRL(input_shape, (5, 3))  # type: ignore[arg-type]


def test_tcl_unexpected_keyword_raises() -> None:
    with pytest.raises(
        tfx.OptionError, match=r"TCL got unexpected keyword arguments \['factorization'\]"
    ):
        tfx.TCL((3, 4), (2, 2), factorization="cp")


def test_tcl_rank_of_the_wrong_length_raises() -> None:
    with pytest.raises(
        tfx.ShapeError,
        match=r"TCL rank=\(2,\) needs one entry per input mode \(3, 4\).\nFix: e.g. rank=\(1, 2\)",
    ):
        tfx.TCL((3, 4), (2,))


# ------------------------------------------------------------------ hooks
@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_tensor_dropout_probability_outside_zero_one_raises(p: float) -> None:
    weight = tfx.FactorizedTensor.new((3, 4, 5), rank=3, factorization="cp")
    with pytest.raises(
        tfx.OptionError, match=rf"tensor dropout p={p} must be in \[0, 1\).\nFix: e.g. p=0.1"
    ):
        tfx.tensor_dropout(weight, p=p)


def test_tensor_dropout_min_values_below_one_raises() -> None:
    weight = tfx.FactorizedTensor.new((3, 4, 5), rank=3, factorization="cp")
    with pytest.raises(tfx.OptionError, match=r"min_values=0 must be >= 1"):
        tfx.tensor_dropout(weight, p=0.5, min_values=0)


def test_tensor_dropout_on_a_plain_module_raises() -> None:
    with pytest.raises(
        tfx.OptionError, match=r"tensor dropout applies to tfx factorized tensors, got Linear"
    ):
        tfx.tensor_dropout(nn.Linear(3, 4), p=0.5)  # type: ignore[arg-type]


def test_tensor_dropout_applied_twice_raises() -> None:
    weight = tfx.tensor_dropout(
        tfx.FactorizedTensor.new((3, 4, 5), rank=3, factorization="cp"), p=0.5
    )
    with pytest.raises(
        tfx.OptionError,
        match=r"tensor dropout is already applied to this tensor.\nFix: remove_tensor_dropout",
    ):
        tfx.tensor_dropout(weight, p=0.5)


def test_tensor_lasso_on_a_plain_module_raises() -> None:
    with pytest.raises(
        tfx.OptionError, match=r"tensor lasso applies to tfx factorized tensors, got Linear"
    ):
        tfx.tensor_lasso().apply(nn.Linear(3, 4))  # type: ignore[arg-type]


@pytest.mark.parametrize("form", ["Dense", "ComplexDense"])
def test_tensor_lasso_on_a_dense_tensor_raises(form: str) -> None:
    weight = tfx.FactorizedTensor.new((3, 4, 5), factorization=form)
    with pytest.raises(
        tfx.OptionError,
        match=rf"a {form} tensor has none.\nFix: apply it to a CP, Tucker, TT or BlockTT",
    ):
        tfx.tensor_lasso().apply(weight)


def test_tensor_lasso_applied_twice_raises() -> None:
    weight = tfx.FactorizedTensor.new((3, 4, 5), rank=3, factorization="cp")
    tfx.tensor_lasso().apply(weight)
    with pytest.raises(
        tfx.OptionError,
        match=r"tensor lasso is already applied to this tensor.\nFix: remove_tensor_lasso",
    ):
        tfx.tensor_lasso().apply(weight)


def test_tensor_lasso_unknown_factorization_suggests_the_closest() -> None:
    with pytest.raises(
        tfx.OptionError, match=r"factorization='tuker' is not registered. Did you mean 'Tucker'\?"
    ):
        tfx.tensor_lasso(factorization="tuker")
