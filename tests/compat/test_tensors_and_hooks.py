"""tltorch 0.5 user code for over-complete ranks, tensor dropout and tensor lasso, on tfx.

Written as a tltorch user writes it (``import tfx as tltorch``; tltorch's argument
order and defaults). The expected ranks are what tltorch 0.5.0 returns for the
same calls (recorded from it once; tltorch is never imported by the tests), and
values are checked against dense PyTorch in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import tfx as tltorch
import tfx.tensor_hooks

F64 = torch.float64


# ------------------------------------------------------------------ over-complete ranks
def test_tucker_new_with_an_int_rank_above_a_mode_size() -> None:
    tensor = tltorch.TuckerTensor.new((6, 2, 4, 5), rank=3)
    assert tensor.rank == (3, 3, 3, 3)  # tltorch: (3, 3, 3, 3)
    assert [tuple(f.shape) for f in tensor.factors] == [(6, 3), (2, 3), (4, 3), (5, 3)]


def test_factorized_tensor_new_tt_with_an_int_rank_on_every_bond() -> None:
    tensor = tltorch.FactorizedTensor.new((2, 3, 4), rank=5, factorization="TT")
    assert tensor.rank == (1, 5, 5, 1)  # tltorch: (1, 5, 5, 1)


def test_factorized_tensor_new_tt_same_rank_on_a_conv_kernel() -> None:
    tensor = tltorch.FactorizedTensor.new((5, 4, 3, 3), rank="same", factorization="TT")
    assert tensor.rank == (1, 6, 4, 4, 1)  # tltorch: [1, 6, 4, 4, 1]


def test_factorized_embedding_from_scratch_with_tucker_rank_8() -> None:
    layer = tltorch.FactorizedEmbedding(1000, 32, factorization="tucker", rank=8, dtype=F64)
    assert layer.weight.tensorized_shape == ((5, 8, 25), (2, 4, 4))
    assert layer.weight.rank == (8,) * 6  # tltorch: [8, 8, 8, 8, 8, 8]
    index = torch.tensor([0, 17, 999])
    torch.testing.assert_close(layer(index), layer.weight.to_matrix()[index])


def test_from_embedding_with_tucker_rank_8_keeps_tltorch_shape() -> None:
    embedding = nn.Embedding(1000, 32, dtype=F64)
    layer = tltorch.FactorizedEmbedding.from_embedding(
        embedding, factorization="tucker", rank=8, n_tensorized_modes=3
    )
    assert layer.weight.tensorized_shape == ((5, 8, 25), (2, 4, 4))
    assert layer.weight.rank == (8,) * 6  # tltorch: [8, 8, 8, 8, 8, 8]
    index = torch.tensor([3, 500])
    torch.testing.assert_close(layer(index), layer.weight.to_matrix()[index])


def test_from_embedding_with_an_over_complete_tucker_rank_is_exact() -> None:
    embedding = nn.Embedding(12, 6, dtype=F64)
    layer = tltorch.FactorizedEmbedding.from_embedding(
        embedding,
        factorization="tucker",
        rank=5,  # above every mode size: (3, 4) x (2, 3)
        auto_tensorize=False,
        tensorized_num_embeddings=(3, 4),
        tensorized_embedding_dim=(2, 3),
    )
    assert layer.weight.rank == (5, 5, 5, 5)
    index = torch.arange(12)
    torch.testing.assert_close(layer(index), embedding(index))


def test_from_linear_with_an_over_complete_tucker_rank_is_exact() -> None:
    linear = nn.Linear(6, 6, dtype=F64)
    layer = tltorch.FactorizedLinear.from_linear(
        linear,
        in_tensorized_features=(2, 3),
        out_tensorized_features=(3, 2),
        factorization="tucker",
        rank=4,
    )
    assert layer.weight.rank == (4, 4, 4, 4)
    x = torch.randn(5, 6, dtype=F64)
    torch.testing.assert_close(layer(x), linear(x))


def test_from_conv_with_an_over_complete_tt_rank_is_exact() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1, dtype=F64)
    layer = tltorch.FactorizedConv.from_conv(conv, rank=10, factorization="tt")
    assert layer.weight.rank == (1, 10, 10, 10, 1)  # over the bounds (1, 4, 9, 3, 1): padded
    x = torch.randn(2, 3, 5, 5, dtype=F64)
    torch.testing.assert_close(layer(x), conv(x))


# ------------------------------------------------------------------ tensor dropout
def test_tensor_dropout_reduces_the_tucker_rank_while_training() -> None:
    tensor = tltorch.TuckerTensor.new((8, 9, 10), rank=(7, 8, 9), dtype=F64)
    tensor = tltorch.tensor_dropout(tensor, p=0.999, min_dim=1)
    tensor.train()
    assert tensor().rank == (1, 1, 1)
    tensor.eval()
    assert tensor().rank == (7, 8, 9)
    tltorch.remove_tensor_dropout(tensor)


def test_tensor_dropout_keeps_one_cp_weight_and_one_tt_bond_component() -> None:
    cp = tltorch.FactorizedTensor.new((3, 4, 5), rank=6, factorization="CP").normal_()
    cp = tltorch.tensor_dropout(cp, p=0.999, min_dim=1)
    assert cp().rank == 1
    tt = tltorch.FactorizedTensor.new((4, 5, 6), rank=(1, 4, 5, 1), factorization="TT")
    tt = tltorch.tensor_dropout(tt, p=0.999, min_dim=1)
    assert tt().rank == (1, 1, 1, 1)


def test_tensor_dropout_on_a_layer_weight_trains_on_a_smaller_rank() -> None:
    layer = tltorch.FactorizedLinear(
        (4, 4), (4, 4), factorization="tucker", rank=(4, 4, 4, 4), dtype=F64
    )
    tltorch.tensor_dropout(layer.weight, p=0.5, min_dim=1)
    x = torch.randn(3, 16, dtype=F64)
    torch.manual_seed(0)
    out = layer(x)
    torch.manual_seed(0)
    weight = layer.weight()  # the tensor that forward used
    torch.testing.assert_close(out, F.linear(x, weight.to_matrix(), layer.bias))
    out.sum().backward()
    assert layer.weight.core.grad is not None
    layer.eval()
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight.to_matrix(), layer.bias))


# ------------------------------------------------------------------ tensor lasso
def test_tensor_lasso_as_in_the_tltorch_docstring() -> None:
    tensor = tltorch.FactorizedTensor.new((3, 4, 2), rank="same", factorization="CP").normal_()
    tensor2 = tltorch.FactorizedTensor.new((5, 6, 7), rank=0.5, factorization="CP").normal_()
    regularizer = tltorch.tensor_lasso(factorization="cp", penalty=0.01)
    regularizer.apply(tensor)
    regularizer.apply(tensor2)
    total = torch.sum(tensor().to_tensor()) + torch.sum(tensor2().to_tensor())
    l1_loss = regularizer.loss
    (total + l1_loss).backward()
    torch.testing.assert_close(l1_loss.detach(), torch.tensor(0.01))  # gates of 1, normalised
    regularizer.reset()
    regularizer.remove(tensor)
    tltorch.remove_tensor_lasso(tensor2)
    assert not hasattr(tensor, "lasso_weights") and not hasattr(tensor2, "lasso_weights")


def test_tensor_lasso_classes_by_factorization() -> None:
    assert type(tltorch.tensor_lasso(factorization="CP")).__name__ == "CPLasso"
    assert type(tltorch.tensor_lasso(factorization="tucker")).__name__ == "TuckerLasso"
    assert type(tltorch.tensor_lasso(factorization="TT")).__name__ == "TTLasso"
    lasso = tltorch.tensor_hooks.TensorLasso.from_factorization_name("TuckerTensor", penalty=0.1)
    assert type(lasso).__name__ == "TuckerLasso" and lasso.penalty == 0.1


def test_tucker_lasso_gates_scale_a_layer_weight() -> None:
    layer = tltorch.FactorizedLinear(
        (2, 3), (3, 2), factorization="tucker", rank=(2, 2, 2, 2), dtype=F64
    )
    x = torch.randn(4, 6, dtype=F64)
    expected = layer(x).detach()
    lasso = tltorch.tensor_lasso(factorization="tucker", penalty=0.05)
    lasso.apply(layer.weight)
    lasso.set_weights(layer.weight, 0.5)
    out = layer(x)  # four gated modes: the weight is scaled by 0.5 ** 4
    torch.testing.assert_close(out - layer.bias, (expected - layer.bias) * 0.5**4)
    torch.testing.assert_close(lasso.loss, torch.tensor(0.05 * 0.5, dtype=F64))
    lasso.reset()


def test_tt_lasso_gates_have_tltorch_shapes() -> None:
    tensor = tltorch.TTTensor.new((3, 4, 5), rank=(1, 2, 3, 1))
    tltorch.tensor_lasso(factorization="tt").apply(tensor)
    assert [tuple(w.shape) for w in tensor.lasso_weights] == [(1, 1, 2), (1, 1, 3)]
