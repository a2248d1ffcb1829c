"""state_dict round trips, deepcopy and .to(dtype) of every layer and form."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from tests.helpers import is_complex_form
from tests.nn._helpers import PLAIN_FORMS, TENSORIZED_FORMS, build


def _cases(forms_of: dict[str, list[str]]) -> list:
    return [
        pytest.param(kind, form, id=f"{kind}-{form}")
        for kind, forms in forms_of.items()
        for form in forms
    ]


ALL = _cases(
    {
        "linear": TENSORIZED_FORMS,
        "conv": PLAIN_FORMS,
        "embedding": TENSORIZED_FORMS,
        "trl": PLAIN_FORMS,
        "tcl": ["CP"],
    }
)
REAL = _cases(
    {
        "linear": [f for f in TENSORIZED_FORMS if not is_complex_form(f)],
        "conv": [f for f in PLAIN_FORMS if not is_complex_form(f)],
        "embedding": [f for f in TENSORIZED_FORMS if not is_complex_form(f)],
        "trl": [f for f in PLAIN_FORMS if not is_complex_form(f)],
        "tcl": ["CP"],
    }
)


def _with_random_bias(layer: nn.Module) -> nn.Module:
    bias = getattr(layer, "bias", None)
    if bias is not None:
        with torch.no_grad():
            bias.normal_()  # TRL zero-initialises it: make it part of what is saved
    return layer


@pytest.mark.parametrize(("kind", "form"), ALL)
def test_state_dict_round_trip_into_a_fresh_layer_preserves_outputs(kind: str, form: str) -> None:
    layer, inputs = build(kind, form)
    _with_random_bias(layer)
    torch.manual_seed(1)
    fresh, _ = build(kind, form)
    assert not torch.equal(fresh(*inputs), layer(*inputs))
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(fresh(*inputs), layer(*inputs))


@pytest.mark.parametrize(("kind", "form"), ALL)
def test_deepcopy_preserves_outputs_and_owns_its_parameters(kind: str, form: str) -> None:
    layer, inputs = build(kind, form)
    _with_random_bias(layer)
    clone = copy.deepcopy(layer)
    assert torch.equal(clone(*inputs), layer(*inputs))
    with torch.no_grad():
        next(clone.parameters()).mul_(2)
    assert not torch.equal(clone(*inputs), layer(*inputs))


def _cast_inputs(inputs: tuple[torch.Tensor, ...], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    out = []
    for x in inputs:
        if x.is_complex():
            x = x.to(torch.complex64)
        elif x.is_floating_point():
            x = x.to(dtype)
        out.append(x)
    return tuple(out)


@pytest.mark.parametrize(("kind", "form"), ALL)
def test_to_float32_casts_parameters_and_output(kind: str, form: str) -> None:
    layer, inputs = build(kind, form)
    expected = layer(*inputs)
    layer.to(torch.float32)
    assert {p.dtype for p in layer.parameters()} == {torch.float32}
    out = layer(*_cast_inputs(inputs, torch.float32))
    assert out.dtype == (torch.complex64 if is_complex_form(form) else torch.float32)
    torch.testing.assert_close(out, expected.to(out.dtype))


@pytest.mark.parametrize(("kind", "form"), REAL)
def test_to_bfloat16_casts_parameters_and_output(kind: str, form: str) -> None:
    layer, inputs = build(kind, form)
    layer.to(torch.bfloat16)
    assert {p.dtype for p in layer.parameters()} == {torch.bfloat16}
    out = layer(*_cast_inputs(inputs, torch.bfloat16))
    assert out.dtype == torch.bfloat16
    # Against the same layer in float64 from the bf16 parameters and inputs. A factorized
    # forward is a chain of contractions, each rounding its result to bf16 (2**-9 relative),
    # so elementwise tolerances fail on entries that cancel (nn.Linear's single bf16 matmul
    # has one rounding); the bound is 8 roundings at the output's scale.
    layer.to(torch.float64)
    reference = layer(*_cast_inputs(_cast_inputs(inputs, torch.bfloat16), torch.float64))
    error = (out.double() - reference).abs().max()
    assert error <= 8 * 2**-9 * reference.abs().max()


@pytest.mark.parametrize(("kind", "form"), ALL)
def test_to_float64_after_float32_computes_in_float64(kind: str, form: str) -> None:
    layer, inputs = build(kind, form)
    layer.to(torch.float32).to(torch.float64)
    assert {p.dtype for p in layer.parameters()} == {torch.float64}
    out = layer(*inputs)
    assert out.dtype == (torch.complex128 if is_complex_form(form) else torch.float64)
