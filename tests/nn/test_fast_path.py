"""The eager fast path of FactorizedLinear never serves a stale or wrong result.

``FactorizedLinear.forward`` runs a generated function per input shape (``layer._fast``); these
tests change everything that function depends on between calls (parameters in place and
replaced, dtype, hooks, grad mode, batch buckets, copies) and compare every output with
``F.linear`` on the reconstructed matrix, in float64.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tfx
from tests.helpers import is_complex_form

F64 = torch.float64
FORMS = [f for f in tfx.tensors.available(tensorized=True) if not is_complex_form(f)]
IN, OUT = (3, 4, 2), (2, 5, 2)


def make(form: str, **kwargs: object) -> tfx.FactorizedLinear:
    return tfx.FactorizedLinear(IN, OUT, factorization=form, rank=0.5, dtype=F64, **kwargs)  # type: ignore[arg-type]


def reference(layer: tfx.FactorizedLinear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer.weight.to_matrix(), layer.bias)


def check(layer: tfx.FactorizedLinear, x: torch.Tensor) -> torch.Tensor:
    y = layer(x)
    torch.testing.assert_close(y, reference(layer, x))
    return y


@pytest.mark.parametrize("form", FORMS)
def test_fast_path_is_taken(form: str) -> None:
    layer = make(form)
    check(layer, torch.randn(4, 24, dtype=F64))
    assert layer._fast[torch.Size([4, 24])], "the fast path was not compiled"


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("implementation", ["factorized", "reconstructed", "auto"])
@pytest.mark.parametrize(
    "shape", [(1, 24), (3, 24), (17, 24), (70, 24), (2, 5, 24), (24,)], ids=str
)
def test_fast_path_across_batch_buckets(
    form: str, implementation: str, shape: tuple[int, ...]
) -> None:
    layer = make(form, implementation=implementation)
    for _ in range(2):  # the first call compiles, the second replays
        check(layer, torch.randn(*shape, dtype=F64))


@pytest.mark.parametrize("form", FORMS)
def test_fast_path_sees_in_place_optimizer_steps(form: str) -> None:
    layer = make(form)
    x = torch.randn(5, 24, dtype=F64)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1e-2)
    for _ in range(3):
        y = check(layer, x)
        y.sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    check(layer, x)


@pytest.mark.parametrize("form", FORMS)
def test_fast_path_gradients_reach_every_parameter(form: str) -> None:
    layer = make(form)
    x = torch.randn(5, 24, dtype=F64, requires_grad=True)
    layer(x)  # compile under grad
    grad_out = torch.randn(5, 20, dtype=F64)
    params = [x, *layer.parameters()]
    got = torch.autograd.grad(layer(x), params, grad_out)
    want = torch.autograd.grad(reference(layer, x), params, grad_out)
    for g, w in zip(got, want, strict=False):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("form", FORMS)
def test_fast_path_under_no_grad_then_grad(form: str) -> None:
    layer = make(form)
    x = torch.randn(3, 24, dtype=F64)
    with torch.no_grad():
        y = check(layer, x)
    assert y.grad_fn is None
    y = check(layer, x)
    assert y.requires_grad


@pytest.mark.parametrize("form", FORMS)
def test_fast_path_after_dtype_moves(form: str) -> None:
    layer = tfx.FactorizedLinear(IN, OUT, factorization=form, rank=0.5)
    x = torch.randn(3, 24)
    layer(x)
    layer.to(F64)
    check(layer, x.double())
    with pytest.raises(
        RuntimeError
    ):  # mixed dtypes go the general path, which rejects them as before
        torch.testing.assert_close(layer(x.float()), reference(layer, x.double()).float())
    layer.float()
    torch.testing.assert_close(layer(x), reference(layer, x))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("assign", [False, True])
def test_fast_path_after_load_state_dict(form: str, assign: bool) -> None:
    layer, other = make(form), make(form)
    x = torch.randn(3, 24, dtype=F64)
    layer(x)
    layer.load_state_dict(other.state_dict(), assign=assign)
    torch.testing.assert_close(check(layer, x), other(x))


@pytest.mark.parametrize("form", [f for f in FORMS if f != "Dense"])
def test_fast_path_after_replacing_a_factor(form: str) -> None:
    layer = make(form)
    x = torch.randn(3, 24, dtype=F64)
    layer(x)
    factor = layer.weight.factors[0]
    layer.weight.factors[0] = nn.Parameter(torch.randn_like(factor))
    check(layer, x)


@pytest.mark.parametrize("form", FORMS)
def test_fast_path_honours_hooks_added_and_removed(form: str) -> None:
    layer = make(form)
    x = torch.randn(3, 24, dtype=F64)
    plain = check(layer, x)
    calls = []
    pre = layer.weight.register_forward_pre_hook(lambda module, args: calls.append(1))
    halved = layer.weight.register_forward_hook(lambda module, args, out: _scaled(out, 0.5))
    torch.testing.assert_close(layer(x), 0.5 * (plain - layer.bias) + layer.bias)
    assert calls == [1]
    pre.remove()
    halved.remove()
    torch.testing.assert_close(layer(x), plain)
    assert calls == [1]


def _scaled(weight: tfx.TensorizedTensor, factor: float) -> tfx.TensorizedTensor:
    return tfx.TensorizedTensor.from_matrix(
        factor * weight.to_matrix().detach(), OUT, IN, rank=1.0, factorization="dense"
    )


@pytest.mark.parametrize("form", FORMS)
def test_fast_path_honours_global_module_hooks(form: str) -> None:
    layer = make(form)
    x = torch.randn(3, 24, dtype=F64)
    layer(x)
    seen = []
    handle = nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: seen.append(type(module))
    )
    try:
        check(layer, x)
    finally:
        handle.remove()
    assert type(layer.weight) in seen


@pytest.mark.parametrize("form", ["cp", "tucker"])
def test_fast_path_with_tensor_dropout_in_training(form: str) -> None:
    layer = make(form)
    x = torch.randn(3, 24, dtype=F64)
    plain = layer(x)
    tfx.tensor_dropout(layer.weight, p=0.9, min_dim=1)
    layer.train()
    dropped = [layer(x) for _ in range(5)]
    assert any(not torch.allclose(d, plain) for d in dropped), "tensor dropout had no effect"
    layer.eval()
    torch.testing.assert_close(layer(x), plain)
    tfx.remove_tensor_dropout(layer.weight)
    layer.train()
    torch.testing.assert_close(layer(x), plain)


@pytest.mark.parametrize("form", FORMS)
def test_fast_path_cache_is_not_copied_or_pickled(form: str) -> None:
    layer = make(form)
    x = torch.randn(3, 24, dtype=F64)
    layer(x)
    for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert not twin._fast
        with torch.no_grad():
            twin.weight.normal_(0, 1)  # the copy's own parameters, not the original's
        check(twin, x)
    check(layer, x)


@pytest.mark.parametrize("form", FORMS)
def test_fast_path_with_bias_removed_or_checkpointing(form: str) -> None:
    layer = make(form, checkpointing=True)
    x = torch.randn(3, 24, dtype=F64, requires_grad=True)
    check(layer, x)  # training: checkpointed general path
    layer.eval()
    check(layer, x)
    layer.bias = None
    check(layer, x)


def test_fast_path_with_a_new_weight() -> None:
    layer = make("cp")
    x = torch.randn(3, 24, dtype=F64)
    layer(x)
    layer.weight = tfx.TensorizedTensor.new((OUT, IN), rank=0.5, factorization="tucker", dtype=F64)
    check(layer, x)
