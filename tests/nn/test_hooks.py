"""Tensor dropout and tensor lasso: forward hooks on every form (tensorized, complex, subclass)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import tfx
from tests.helpers import dense, family
from tests.nn._helpers import (
    PLAIN_FORMS,
    TENSORIZED_FORMS,
    bug,
    linear_reference,
    make_conv,
    make_embedding,
    make_linear,
    make_trl,
    randn,
)

F64 = torch.float64


class MyCP(tfx.CPTensor):
    """A user subclass (tltorch 0.5's hooks raise KeyError on these)."""


def _my_cp() -> MyCP:
    source = tfx.CPTensor.new((4, 5, 6), rank=6, dtype=F64)
    return MyCP(source.weights, list(source.factors))


def _tensor(name: str) -> tfx.FactorizedTensor:
    """A factorized tensor with every rank component > 1, so min_dim=1 drops from each."""
    kind, form = name.split("-", 1)
    if kind == "plain":
        return tfx.FactorizedTensor.new((4, 5, 6), rank=0.9, factorization=form, dtype=F64)
    if kind == "tensorized":
        return tfx.TensorizedTensor.new(((2, 3), (3, 2)), rank=0.9, factorization=form, dtype=F64)
    return _my_cp()


FACTORIZED = [f for f in PLAIN_FORMS if family(f) != "dense"]
TENSORIZED_FACTORIZED = [f for f in TENSORIZED_FORMS if family(f) != "dense"]
TENSORS = (
    [f"plain-{f}" for f in FACTORIZED]
    + [f"tensorized-{f}" for f in TENSORIZED_FACTORIZED]
    + ["subclass-MyCP"]
)
DENSE = ["plain-Dense", "plain-ComplexDense", "tensorized-Dense", "tensorized-ComplexDense"]


def _value(t: Any) -> torch.Tensor:
    return dense(t).detach()


# ------------------------------------------------------------------ tensor dropout
@pytest.mark.parametrize("name", TENSORS)
def test_tensor_dropout_changes_the_tensor_in_train_mode_only(name: str) -> None:
    t = _tensor(name)
    full = _value(t)
    tfx.tensor_dropout(t, p=0.5, min_dim=1)
    t.train()
    assert any(not torch.equal(_value(t()), full) for _ in range(5))
    t.eval()
    assert torch.equal(_value(t()), full)


@pytest.mark.parametrize("name", TENSORS)
def test_tensor_dropout_with_drop_test_also_drops_in_eval(name: str) -> None:
    t = _tensor(name)
    full = _value(t)
    tfx.tensor_dropout(t, p=0.5, min_dim=1, drop_test=True)
    t.eval()
    assert any(not torch.equal(_value(t()), full) for _ in range(5))


@pytest.mark.parametrize("name", TENSORS)
def test_tensor_dropout_with_p_zero_is_the_identity(name: str) -> None:
    t = _tensor(name)
    tfx.tensor_dropout(t, p=0.0, min_dim=1).train()
    assert torch.equal(_value(t()), _value(t))


@pytest.mark.parametrize("name", DENSE)
def test_tensor_dropout_leaves_dense_tensors_unchanged(name: str) -> None:
    t = _tensor(name)
    tfx.tensor_dropout(t, p=0.5, min_dim=1).train()
    assert torch.equal(_value(t()), _value(t))


@pytest.mark.parametrize("name", TENSORS)
def test_remove_tensor_dropout_leaves_no_hook(name: str) -> None:
    t = _tensor(name)
    tfx.tensor_dropout(t, p=0.5, min_dim=1)
    assert len(t._forward_hooks) == 1
    assert tfx.remove_tensor_dropout(t) is t
    assert len(t._forward_hooks) == 0
    t.train()
    assert torch.equal(_value(t()), _value(t))


def test_tensor_dropout_applied_twice_raises() -> None:
    t = _tensor("plain-CP")
    tfx.tensor_dropout(t, p=0.5)
    with pytest.raises(tfx.OptionError, match=r"already applied.*\n.*remove_tensor_dropout"):
        tfx.tensor_dropout(t, p=0.5)


def test_tensor_dropout_scales_kept_cp_components_by_one_over_keep_probability() -> None:
    t = tfx.tensor_dropout(_tensor("plain-CP"), p=0.75, min_dim=1).train()
    ratio = t().weights / t.weights
    assert set(ratio.unique().tolist()) <= {0.0, 4.0}
    assert (ratio == 0).any() and (ratio == 4).any()


def test_tensor_dropout_scales_tucker_factor_columns() -> None:
    t = tfx.tensor_dropout(_tensor("plain-Tucker"), p=0.5, min_dim=1).train()
    dropped = t()
    for kept, factor in zip(dropped.decomposition[1], t.decomposition[1], strict=True):
        ratio = (kept / factor).unique()  # one scale per column: {0, 2}
        assert set(ratio.tolist()) <= {0.0, 2.0}


def test_tensor_dropout_keeps_components_of_rank_at_most_min_dim() -> None:
    t = tfx.FactorizedTensor.new((4, 5, 6), rank=3, factorization="cp", dtype=F64)
    tfx.tensor_dropout(t, p=0.9, min_dim=3).train()
    assert torch.equal(_value(t()), _value(t))


def test_tensor_dropout_keeps_at_least_min_values_components() -> None:
    t = tfx.FactorizedTensor.new((4, 5, 6), rank=10, factorization="cp", dtype=F64)
    tfx.tensor_dropout(t, p=0.99, min_dim=1, min_values=3).train()
    for _ in range(10):
        assert int((t().weights != 0).sum()) >= 3


def _layers() -> list:
    return [
        pytest.param(
            lambda: make_linear("BlockTT", rank=4, bias=False), (randn(4, 6),), id="linear-BlockTT"
        ),
        pytest.param(
            lambda: make_linear("ComplexTucker", bias=False),
            (randn(4, 6, form="ComplexCP"),),
            id="linear-ComplexTucker",
        ),
        pytest.param(lambda: make_linear("CP", n_layers=2), (randn(4, 6),), id="linear-CP-stacked"),
        pytest.param(lambda: make_conv("TT", padding=1), (randn(2, 3, 5, 5),), id="conv-TT"),
        pytest.param(lambda: make_embedding("CP"), (torch.tensor([1, 5, 9]),), id="embedding-CP"),
        pytest.param(lambda: make_trl("Tucker"), (randn(5, 3, 4),), id="trl-Tucker"),
        pytest.param(
            lambda: tfx.TRL((4, 5), (6,), factorization=_my_cp()),
            (randn(5, 4, 5),),
            id="trl-MyCP",
        ),
    ]


@pytest.mark.parametrize(("make", "inputs"), _layers())
def test_tensor_dropout_on_a_layer_weight_changes_train_outputs_only(
    make: Any, inputs: tuple
) -> None:
    layer = make()
    expected = layer(*inputs).detach()
    tfx.tensor_dropout(layer.weight, p=0.5, min_dim=1)
    layer.train()
    assert any(not torch.allclose(layer(*inputs), expected) for _ in range(5))
    layer.eval()
    torch.testing.assert_close(layer(*inputs), expected)


def test_tensor_dropout_gradients_flow_to_the_factors() -> None:
    layer = make_linear("Tucker")
    tfx.tensor_dropout(layer.weight, p=0.5, min_dim=1).train()
    layer(randn(4, 6)).sum().backward()
    assert all(p.grad is not None for p in layer.weight.parameters())


def test_tensor_dropout_module_train_mode_follows_the_layer() -> None:
    layer = make_linear("CP", bias=False)
    tfx.tensor_dropout(layer.weight, p=0.5, min_dim=1)
    x = randn(4, 6)
    layer.eval()
    torch.testing.assert_close(layer(x), linear_reference(layer, x))


# ------------------------------------------------------------------ tensor lasso
def _gated_modes(t: tfx.FactorizedTensor) -> int:
    return len(t.lasso_weights)


@pytest.mark.parametrize("name", TENSORS)
def test_tensor_lasso_gates_of_one_half_scale_each_component(name: str) -> None:
    t = _tensor(name)
    full = _value(t)
    lasso = tfx.tensor_lasso(penalty=0.01)
    lasso.apply(t)
    lasso.set_weights(t, 0.5)
    # every gated mode (CP: the weights; Tucker: each factor; TT: each bond) halves the tensor
    torch.testing.assert_close(_value(t()), 0.5 ** _gated_modes(t) * full)


def test_tensor_lasso_cp_halves_a_layer_output() -> None:
    layer = make_linear("CP", bias=False)
    x = randn(4, 6)
    ones = layer(x).detach()
    lasso = tfx.tensor_lasso(factorization="cp", penalty=0.01)
    lasso.apply(layer.weight)
    torch.testing.assert_close(layer(x), ones)
    lasso.set_weights(layer.weight, 0.5)
    torch.testing.assert_close(layer(x), ones / 2)


@pytest.mark.parametrize("name", TENSORS)
def test_tensor_lasso_loss_is_positive_and_differentiable_in_the_gates(name: str) -> None:
    t = _tensor(name)
    lasso = tfx.tensor_lasso(penalty=0.01)
    lasso.apply(t)
    _value(t())
    loss = lasso.loss
    assert isinstance(loss, torch.Tensor)
    torch.testing.assert_close(loss, torch.tensor(0.01, dtype=F64))  # mean |gate| = 1, normalised
    loss.backward()
    for gate in t.lasso_weights:
        torch.testing.assert_close(
            gate.grad, torch.full_like(gate, 0.01 / sum(g.numel() for g in t.lasso_weights))
        )


def test_tensor_lasso_loss_without_normalisation_sums_the_gates() -> None:
    t = tfx.FactorizedTensor.new((4, 5, 6), rank=(2, 3, 4), factorization="tucker", dtype=F64)
    lasso = tfx.tensor_lasso(factorization="tucker", penalty=0.1, normalize_loss=False)
    lasso.apply(t)
    t()
    torch.testing.assert_close(lasso.loss, torch.tensor(0.1 * 9, dtype=F64))


def test_tensor_lasso_output_is_differentiable_in_the_gates() -> None:
    layer = make_linear("Tucker", bias=False)
    tfx.tensor_lasso(factorization="tucker").apply(layer.weight)
    layer(randn(4, 6)).square().sum().backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in layer.weight.lasso_weights)


def test_tensor_lasso_threshold_zeroes_tiny_gates() -> None:
    t = _tensor("plain-CP")
    lasso = tfx.tensor_lasso(threshold=1e-3)
    lasso.apply(t)
    with torch.no_grad():
        t.lasso_weights[0][1] = 1e-4
        t.lasso_weights[0][2] = 2e-3
    t()
    assert t.lasso_weights[0][1] == 0
    assert t.lasso_weights[0][2] == 2e-3


def test_tensor_lasso_clamps_gates_to_one() -> None:
    t = _tensor("plain-CP")
    lasso = tfx.tensor_lasso()
    lasso.apply(t)
    lasso.set_weights(t, 3.0, clamp_weights=False)
    assert bool((t.lasso_weights[0] == 3).all())
    t()
    assert bool((t.lasso_weights[0] == 1).all())
    lasso.set_weights(t, -3.0)
    assert bool((t.lasso_weights[0] == -1).all())


def test_tensor_lasso_without_clamping_keeps_large_gates() -> None:
    t = _tensor("plain-CP")
    lasso = tfx.tensor_lasso(clamp_weights=False)
    lasso.apply(t)
    lasso.set_weights(t, 3.0, clamp_weights=False)
    torch.testing.assert_close(_value(t()), 3 * _value(t))


def test_tensor_lasso_reset_zeroes_the_loss() -> None:
    t = _tensor("plain-TT")
    lasso = tfx.tensor_lasso(penalty=0.5)
    lasso.apply(t)
    t()
    assert float(lasso.loss.detach()) > 0
    lasso.reset()
    assert lasso.loss == 0


@pytest.mark.parametrize("name", TENSORS)
def test_remove_tensor_lasso_leaves_no_hook_and_no_gates(name: str) -> None:
    t = _tensor(name)
    full = _value(t)
    lasso = tfx.tensor_lasso()
    lasso.apply(t)
    lasso.set_weights(t, 0.5)
    assert tfx.remove_tensor_lasso(t) is t
    assert len(t._forward_hooks) == 0
    assert not hasattr(t, "lasso_weights")
    assert not any("lasso" in name for name, _ in t.named_parameters())
    assert torch.equal(_value(t()), full)


def test_tensor_lasso_remove_method_removes_only_that_lasso() -> None:
    t = _tensor("plain-CP")
    lasso = tfx.tensor_lasso()
    lasso.apply(t)
    tfx.tensor_dropout(t, p=0.5)
    lasso.remove(t)
    assert not hasattr(t, "lasso_weights")
    assert [type(h) for h in t._forward_hooks.values()] == [tfx.TensorDropout]


def test_tensor_lasso_gates_are_trained_by_the_optimizer() -> None:
    layer = make_linear("CP", bias=False)
    lasso = tfx.tensor_lasso(penalty=1.0)
    lasso.apply(layer.weight)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer.weight.lasso_weights[0].detach().clone()
    layer(randn(4, 6))
    lasso.loss.backward()
    optimizer.step()
    assert bool((layer.weight.lasso_weights[0] < before).all())


@pytest.mark.parametrize("form", ["CP", "BlockTT", "Tucker", "TT"])
def test_tensor_lasso_gates_apply_to_stacked_layers(form: str) -> None:
    layer = make_linear(form, rank=0.9, n_layers=3, bias=False)
    x = randn(4, 6)
    ones = layer(x, indices=1).detach()
    lasso = tfx.tensor_lasso()
    lasso.apply(layer.weight)
    lasso.set_weights(layer.weight, 0.5)
    torch.testing.assert_close(layer(x, indices=1), 0.5 ** _gated_modes(layer.weight) * ones)


def test_tensor_lasso_accepts_every_form_name() -> None:
    for form in sorted(set(PLAIN_FORMS) | set(TENSORIZED_FORMS)):
        assert isinstance(tfx.tensor_lasso(factorization=form), tfx.TensorLasso)


# ------------------------------------------------------------------ hooks under fx and compile
def test_fx_trace_of_a_layer_with_tensor_dropout_in_train_mode_samples_masks() -> None:
    layer = make_linear("CP", rank=6)
    tfx.tensor_dropout(layer.weight, p=0.5, min_dim=1)
    traced = torch.fx.symbolic_trace(torch.nn.Sequential(layer).train())
    traced.graph.lint()
    x = randn(4, 6)
    assert any(not torch.equal(traced(x), layer(x)) for _ in range(3))


def test_fx_trace_of_a_layer_with_tensor_lasso_matches_eager() -> None:
    # The traced graph applies the gates (clamped and thresholded out of place); the penalty is
    # a side effect that graphs do not replay, so lasso.loss is tracked in eager and compile only.
    layer = make_linear("CP", rank=6)
    lasso = tfx.tensor_lasso(penalty=0.01)
    lasso.apply(layer.weight)
    lasso.set_weights(layer.weight, 0.5)
    traced = torch.fx.symbolic_trace(torch.nn.Sequential(layer))
    x = randn(4, 6)
    expected = layer(x)
    torch.testing.assert_close(traced(x), expected)


def test_fx_trace_of_a_layer_with_tensor_dropout_in_eval_mode_matches_eager() -> None:
    layer = make_linear("Tucker")
    tfx.tensor_dropout(layer.weight, p=0.5, min_dim=1)
    model = torch.nn.Sequential(layer).eval()
    traced = torch.fx.symbolic_trace(model)
    x = randn(4, 6)
    torch.testing.assert_close(traced(x), model(x))


def test_compile_of_a_layer_with_tensor_dropout_samples_in_train_and_matches_in_eval() -> None:
    torch._dynamo.reset()
    layer = make_linear("TT", rank=3)
    tfx.tensor_dropout(layer.weight, p=0.5, min_dim=1)
    model = torch.nn.Sequential(layer)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    x = randn(4, 6)
    model.eval()
    torch.testing.assert_close(compiled(x), model(x))
    model.train()
    outs = [compiled(x) for _ in range(4)]
    assert any(not torch.equal(outs[0], out) for out in outs[1:])
    torch._dynamo.reset()


def test_compile_of_a_layer_with_tensor_lasso_matches_eager_and_records_the_loss() -> None:
    torch._dynamo.reset()
    layer = make_linear("Tucker", rank=0.9)
    lasso = tfx.tensor_lasso(penalty=0.01)
    lasso.apply(layer.weight)
    lasso.set_weights(layer.weight, 0.5)
    x = randn(4, 6)
    expected = layer(x).detach()
    lasso.reset()
    compiled = torch.compile(torch.nn.Sequential(layer), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), expected)
    torch.testing.assert_close(lasso.loss, torch.tensor(0.005, dtype=F64))
    lasso.loss.backward()
    assert all(g.grad is not None for g in layer.weight.lasso_weights)
    torch._dynamo.reset()
