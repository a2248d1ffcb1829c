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


def test_remove_tensor_dropout_without_dropout_raises() -> None:
    with pytest.raises(tfx.OptionError, match=r"CPTensor has no tensor dropout to remove"):
        tfx.remove_tensor_dropout(_tensor("plain-CP"))


def test_tensor_dropout_applied_twice_raises() -> None:
    t = _tensor("plain-CP")
    tfx.tensor_dropout(t, p=0.5)
    with pytest.raises(tfx.OptionError, match=r"already applied.*\n.*remove_tensor_dropout"):
        tfx.tensor_dropout(t, p=0.5)


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        ("CPDropout", "plain-CP"),
        ("TuckerDropout", "plain-Tucker"),
        ("TTDropout", "tensorized-BlockTT"),
    ],
)
def test_per_form_dropout_classes_drop_their_form(cls: str, name: str) -> None:
    t = getattr(tfx.nn, cls).apply(_tensor(name), 0.999, min_dim=1).train()
    assert t().rank != t.rank


def test_per_form_dropout_class_on_another_form_raises() -> None:
    with pytest.raises(
        tfx.OptionError, match=r"CPDropout applies to CP tensors, got a Tucker tensor"
    ):
        tfx.nn.CPDropout.apply(_tensor("plain-Tucker"), 0.5)


def test_tensor_dropout_unknown_implementation_suggests_the_closest() -> None:
    with pytest.raises(tfx.OptionError, match=r"implementation='mask_' is not registered. Did you"):
        tfx.tensor_dropout(_tensor("plain-CP"), p=0.5, implementation="mask_")  # type: ignore[arg-type]


# In eager training the default ("auto") drops components for real, as tltorch does.
def _rank_dims(rank: Any) -> list[int]:
    return [rank] if isinstance(rank, int) else list(rank)


@pytest.mark.parametrize("name", TENSORS)
def test_tensor_dropout_reduces_the_rank_in_eager_training(name: str) -> None:
    t = tfx.tensor_dropout(_tensor(name), p=0.999, min_dim=1).train()
    dropped = t()
    full = _rank_dims(t.rank)
    assert all(d <= f for d, f in zip(_rank_dims(dropped.rank), full, strict=True))
    assert dropped.rank != t.rank


@pytest.mark.parametrize(
    ("form", "rank", "expected"),
    [("tucker", (7, 8, 9), (1, 1, 1)), ("cp", 7, 1), ("tt", (1, 7, 8, 1), (1, 1, 1, 1))],
)
def test_tensor_dropout_near_one_keeps_one_component_per_dimension(
    form: str, rank: Any, expected: Any
) -> None:
    t = tfx.FactorizedTensor.new((8, 9, 10), rank=rank, factorization=form, dtype=F64)
    tfx.tensor_dropout(t, p=0.999, min_dim=1).train()
    assert t().rank == expected


@pytest.mark.parametrize("name", TENSORS)
def test_tensor_dropout_reduce_and_mask_agree_for_the_same_random_state(name: str) -> None:
    t = _tensor(name).train()
    hook = tfx.TensorDropout(0.5, min_dim=1, implementation="mask")
    torch.manual_seed(3)
    masked = _value(hook(t, (), t))
    hook.implementation = "reduce"
    torch.manual_seed(3)
    torch.testing.assert_close(_value(hook(t, (), t)), masked)


def _kept_columns(kept: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """The indices of ``full``'s columns that make up ``kept``."""
    return torch.tensor([int((full - c[:, None]).abs().sum(0).argmin()) for c in kept.T])


def test_tensor_dropout_reduced_cp_scales_kept_weights_by_one_over_keep_probability() -> None:
    t = tfx.tensor_dropout(_tensor("plain-CP"), p=0.75, min_dim=1).train()
    dropped = t()
    index = _kept_columns(dropped.factors[0], t.factors[0])
    torch.testing.assert_close(dropped.weights, t.weights[index] * 4)
    for kept, factor in zip(dropped.factors, t.factors, strict=True):
        torch.testing.assert_close(kept, factor[:, index])


def test_tensor_dropout_tucker_scales_the_core_once_per_sampled_mode() -> None:
    # min_dim=3: the mode of rank 3 is not sampled, so the scale is 2 ** 2, not 2 ** 3
    t = tfx.FactorizedTensor.new((4, 5, 6), rank=(3, 4, 5), factorization="tucker", dtype=F64)
    tfx.tensor_dropout(t, p=0.5, min_dim=3).train()
    dropped = t()
    assert dropped.rank[0] == 3
    core = t.core
    for mode in (1, 2):
        core = core.index_select(mode, _kept_columns(dropped.factors[mode], t.factors[mode]))
    torch.testing.assert_close(dropped.core, core * 4)


def test_tensor_dropout_in_eval_with_drop_test_does_not_rescale() -> None:
    t = tfx.tensor_dropout(_tensor("plain-CP"), p=0.75, min_dim=1, drop_test=True).eval()
    dropped = t()
    index = _kept_columns(dropped.factors[0], t.factors[0])
    torch.testing.assert_close(dropped.weights, t.weights[index])


def test_tensor_dropout_mask_keeps_the_rank_and_scales_cp_weights() -> None:
    t = tfx.tensor_dropout(_tensor("plain-CP"), p=0.75, min_dim=1, implementation="mask").train()
    ratio = t().weights / t.weights
    assert set(ratio.unique().tolist()) <= {0.0, 4.0}
    assert (ratio == 0).any() and (ratio == 4).any()


def test_tensor_dropout_mask_scales_tucker_factor_columns() -> None:
    t = tfx.tensor_dropout(_tensor("plain-Tucker"), p=0.5, min_dim=1, implementation="mask")
    dropped = t.train()()
    assert dropped.rank == t.rank
    for kept, factor in zip(dropped.decomposition[1], t.decomposition[1], strict=True):
        ratio = (kept / factor).unique()  # one scale per column: {0, 2}
        assert set(ratio.tolist()) <= {0.0, 2.0}


def test_tensor_dropout_keeps_components_of_rank_at_most_min_dim() -> None:
    t = tfx.FactorizedTensor.new((4, 5, 6), rank=3, factorization="cp", dtype=F64)
    tfx.tensor_dropout(t, p=0.9, min_dim=3).train()
    assert torch.equal(_value(t()), _value(t))


@pytest.mark.parametrize("implementation", ["reduce", "mask"])
def test_tensor_dropout_keeps_at_least_min_values_components(implementation: str) -> None:
    t = tfx.FactorizedTensor.new((4, 5, 6), rank=10, factorization="cp", dtype=F64)
    tfx.tensor_dropout(t, p=0.99, min_dim=1, min_values=3, implementation=implementation).train()  # type: ignore[arg-type]
    for _ in range(10):
        assert int((t().weights != 0).sum()) >= 3


def test_tensor_dropout_reduced_layer_output_matches_the_dense_reference() -> None:
    layer = make_linear("Tucker", rank=(2, 3, 3, 2), implementation="factorized")
    tfx.tensor_dropout(layer.weight, p=0.5, min_dim=1)
    layer.train()
    x = randn(4, 6)
    torch.manual_seed(7)
    out = layer(x)
    torch.manual_seed(7)
    weight = layer.weight()  # the same draws: the same reduced tensor
    assert weight.rank != layer.weight.rank
    torch.testing.assert_close(out, torch.nn.functional.linear(x, weight.to_matrix(), layer.bias))


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
    return 1 if isinstance(t.lasso_weights, torch.Tensor) else len(t.lasso_weights)


def _gates(t: tfx.FactorizedTensor) -> list[torch.Tensor]:
    return [t.lasso_weights] if isinstance(t.lasso_weights, torch.Tensor) else list(t.lasso_weights)


def _lasso(t: tfx.FactorizedTensor, **kwargs: Any) -> tfx.TensorLasso:
    """The tltorch-style lasso for ``t``'s form, applied to it."""
    lasso = tfx.TensorLasso.from_factorization(t, **kwargs)
    lasso.apply(t)
    return lasso


@pytest.mark.parametrize("name", TENSORS)
def test_tensor_lasso_gates_of_one_half_scale_each_component(name: str) -> None:
    t = _tensor(name)
    full = _value(t)
    lasso = _lasso(t, penalty=0.01)
    lasso.set_weights(t, 0.5)
    # every gated mode (CP: the weights; Tucker: each factor; TT: each bond) halves the tensor
    torch.testing.assert_close(_value(t()), 0.5 ** _gated_modes(t) * full)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("cp", tfx.nn.CPLasso),
        ("CP", tfx.nn.CPLasso),
        ("ComplexCP", tfx.nn.CPLasso),
        ("tucker", tfx.nn.TuckerLasso),
        ("tt", tfx.nn.TTLasso),
        ("BlockTT", tfx.nn.TTLasso),
        ("CPTensor", tfx.nn.CPLasso),
        ("TuckerTensor", tfx.nn.TuckerLasso),
        ("TTTensor", tfx.nn.TTLasso),
        ("TuckerTensorized", tfx.nn.TuckerLasso),
    ],
)
def test_tensor_lasso_returns_the_class_of_the_form(name: str, cls: type) -> None:
    lasso = tfx.tensor_lasso(factorization=name, penalty=0.2, threshold=0.0)
    assert type(lasso) is cls
    assert (lasso.penalty, lasso.threshold, lasso.clamp_weights) == (0.2, 0.0, True)
    assert type(tfx.TensorLasso.from_factorization_name(name)) is cls


@pytest.mark.parametrize("form", ["Dense", "ComplexDense"])
def test_tensor_lasso_of_a_dense_form_raises(form: str) -> None:
    with pytest.raises(tfx.OptionError, match=rf"factorization='{form}' has no rank components"):
        tfx.tensor_lasso(factorization=form)


def test_tensor_lasso_from_factorization_picks_the_class_of_the_tensor() -> None:
    assert type(tfx.TensorLasso.from_factorization(_tensor("plain-Tucker"))) is tfx.nn.TuckerLasso
    assert type(tfx.TensorLasso.from_factorization(_tensor("subclass-MyCP"))) is tfx.nn.CPLasso
    assert type(tfx.TensorLasso.from_factorization(_tensor("tensorized-BlockTT"))) is tfx.nn.TTLasso


def test_cp_lasso_on_a_tucker_tensor_raises() -> None:
    with pytest.raises(
        tfx.OptionError,
        match=r"CPLasso applies to CP tensors, got a Tucker tensor.\n"
        r"Fix: tfx.tensor_lasso\(factorization='tucker'\)",
    ):
        tfx.nn.CPLasso().apply(_tensor("plain-Tucker"))


@pytest.mark.parametrize(
    ("form", "rank", "shapes"),
    [
        ("cp", 4, {"lasso_weights": (4,)}),
        ("tucker", (2, 3, 4), {f"lasso_weights.param_{k}": (k + 2,) for k in range(3)}),
        (
            "tt",
            (1, 2, 3, 1),
            {"lasso_weights.param_0": (1, 1, 2), "lasso_weights.param_1": (1, 1, 3)},
        ),
    ],
)
def test_tensor_lasso_gates_have_tltorch_state_dict_keys_and_shapes(
    form: str, rank: Any, shapes: dict[str, tuple[int, ...]]
) -> None:
    t = tfx.FactorizedTensor.new((4, 5, 6), rank=rank, factorization=form, dtype=F64)
    tfx.tensor_lasso(factorization=form).apply(t)
    gates = {k: tuple(v.shape) for k, v in t.state_dict().items() if "lasso" in k}
    assert gates == shapes


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
    lasso = _lasso(t, penalty=0.01)
    _value(t())
    loss = lasso.loss
    assert isinstance(loss, torch.Tensor)
    torch.testing.assert_close(loss, torch.tensor(0.01, dtype=F64))  # mean |gate| = 1, normalised
    loss.backward()
    n = sum(g.numel() for g in _gates(t))
    for gate in _gates(t):
        torch.testing.assert_close(gate.grad, torch.full_like(gate, 0.01 / n))


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


def test_tensor_lasso_threshold_zeroes_gates_at_or_below_it_negative_ones_too() -> None:
    t = _tensor("plain-CP")
    _lasso(t, threshold=1e-3)
    with torch.no_grad():
        t.lasso_weights[1] = 1e-4
        t.lasso_weights[2] = 2e-3
        t.lasso_weights[3] = -0.5  # F.threshold, as in tltorch: every gate <= threshold
    t()
    assert t.lasso_weights[1] == 0 and t.lasso_weights[3] == 0
    assert t.lasso_weights[2] == 2e-3


def test_tensor_lasso_clamps_gates_to_one_before_use() -> None:
    t = _tensor("plain-CP")
    lasso = _lasso(t, threshold=0.0)
    lasso.set_weights(t, 3.0)
    assert bool((t.lasso_weights == 3).all())  # set as given, as in tltorch
    t()
    assert bool((t.lasso_weights == 1).all())
    lasso.set_weights(t, -3.0, clamp_weights=True)
    assert bool((t.lasso_weights == -1).all())


def test_tensor_lasso_without_clamping_keeps_large_gates() -> None:
    t = _tensor("plain-CP")
    lasso = _lasso(t, clamp_weights=False)
    lasso.set_weights(t, 3.0)
    torch.testing.assert_close(_value(t()), 3 * _value(t))


def test_tensor_lasso_reset_zeroes_the_loss_and_warns_when_read_unused() -> None:
    t = _tensor("plain-TT")
    lasso = _lasso(t, penalty=0.5)
    t()
    assert float(lasso.loss.detach()) > 0
    lasso.reset()
    with pytest.warns(
        tfx.TfxWarning, match=r"lasso.loss is 0: no tensor with this lasso ran forward"
    ):
        assert lasso.loss == 0


@pytest.mark.parametrize("name", TENSORS)
def test_remove_tensor_lasso_leaves_no_hook_and_no_gates(name: str) -> None:
    t = _tensor(name)
    full = _value(t)
    lasso = _lasso(t)
    lasso.set_weights(t, 0.5)
    assert tfx.remove_tensor_lasso(t) is t
    assert len(t._forward_hooks) == 0
    assert not hasattr(t, "lasso_weights")
    assert not any("lasso" in name for name, _ in t.named_parameters())
    assert torch.equal(_value(t()), full)


def test_remove_tensor_lasso_without_lasso_raises() -> None:
    with pytest.raises(tfx.OptionError, match=r"TuckerTensor has no tensor lasso to remove"):
        tfx.remove_tensor_lasso(_tensor("plain-Tucker"))


def test_tensor_lasso_remove_method_removes_only_that_lasso() -> None:
    t = _tensor("plain-CP")
    lasso = _lasso(t)
    tfx.tensor_dropout(t, p=0.5)
    lasso.remove(t)
    assert not hasattr(t, "lasso_weights")
    assert [type(h) for h in t._forward_hooks.values()] == [tfx.TensorDropout]


@pytest.mark.parametrize("lasso_first", [True, False])
def test_tensor_lasso_runs_before_tensor_dropout_whatever_the_order(lasso_first: bool) -> None:
    t = tfx.FactorizedTensor.new((4, 5, 6), rank=(3, 4, 5), factorization="tucker", dtype=F64)
    lasso = tfx.tensor_lasso(factorization="tucker")
    if lasso_first:
        lasso.apply(t)
    tfx.tensor_dropout(t, p=0.5, min_dim=1)
    if not lasso_first:
        lasso.apply(t)
    lasso.set_weights(t, 0.5)
    t.train()
    dropped = t()  # dropout reduced the gated tensor: no gate / rank mismatch
    assert dropped.rank != t.rank
    assert [type(h) for h in t._forward_hooks.values()] == [tfx.nn.TuckerLasso, tfx.TensorDropout]
    torch.testing.assert_close(lasso.loss, torch.tensor(0.005, dtype=F64))


def test_tensor_lasso_gates_are_trained_by_the_optimizer() -> None:
    layer = make_linear("CP", bias=False)
    lasso = tfx.tensor_lasso(penalty=1.0)
    lasso.apply(layer.weight)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer.weight.lasso_weights.detach().clone()
    layer(randn(4, 6))
    lasso.loss.backward()
    optimizer.step()
    assert bool((layer.weight.lasso_weights < before).all())


@pytest.mark.parametrize("form", ["CP", "BlockTT", "Tucker", "TT"])
def test_tensor_lasso_gates_apply_to_stacked_layers(form: str) -> None:
    layer = make_linear(form, rank=0.9, n_layers=3, bias=False)
    x = randn(4, 6)
    ones = layer(x, indices=1).detach()
    lasso = tfx.tensor_lasso(factorization=form)
    lasso.apply(layer.weight)
    lasso.set_weights(layer.weight, 0.5)
    torch.testing.assert_close(layer(x, indices=1), 0.5 ** _gated_modes(layer.weight) * ones)


def test_tensor_lasso_generic_class_accepts_every_form_with_a_rank() -> None:
    for name in TENSORS:
        t = _tensor(name)
        tfx.TensorLasso().apply(t)
        assert _gated_modes(t) == len(tfx.nn._hooks.rank_sizes(t))


# ------------------------------------------------------------------ hooks under fx and compile
def test_fx_trace_of_a_layer_with_tensor_dropout_in_train_mode_samples_masks() -> None:
    layer = make_linear("CP", rank=6)
    tfx.tensor_dropout(layer.weight, p=0.5, min_dim=1)
    traced = torch.fx.symbolic_trace(torch.nn.Sequential(layer).train())
    traced.graph.lint()
    x = randn(4, 6)
    assert any(not torch.equal(traced(x), layer(x)) for _ in range(3))


def test_fx_trace_of_auto_tensor_dropout_masks_at_full_rank() -> None:
    layer = make_linear("Tucker", rank=(2, 3, 3, 2))
    tfx.tensor_dropout(layer.weight, p=0.5, min_dim=1)
    traced = torch.fx.symbolic_trace(torch.nn.Sequential(layer).train())
    assert "nonzero" not in traced.code and "bernoulli" in traced.code


def test_fx_trace_of_a_layer_with_tensor_lasso_matches_eager() -> None:
    # The traced graph applies the gates (clamped and thresholded out of place); the penalty is
    # a side effect that graphs do not replay, so lasso.loss is tracked in eager and compile only.
    layer = make_linear("CP", rank=6)
    lasso = tfx.tensor_lasso(factorization="cp", penalty=0.01)
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
    lasso = tfx.tensor_lasso(factorization="tucker", penalty=0.01)
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
