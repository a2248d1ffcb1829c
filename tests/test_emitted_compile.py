"""What ``tfx.factorize`` emits goes through ``torch.compile(fullgraph=True)`` and ``torch.export``.

``factorize`` builds layers with the ``"reconstructed"`` and ``"auto"`` implementations (and
``"factorized"``, which ``tests/nn/test_trace.py`` covers by default). In the default suite,
for each form (dense, CP, Tucker, TT, BlockTT) and each of those two implementations:

- the ``tfx.nn`` layer alone, compiled with dynamo's ``"eager"`` backend and exported;
- the model ``factorize`` returns (its plan re-applied with the contraction order that
  selects the implementation), compiled with ``"aot_eager"`` (dynamo, then AOTAutograd's
  functionalized joint graph) and exported;

each compared with eager in float64 at default tolerances. The layers are tiny and every
model is planned once per form and built once per implementation, for compile and export to
share: about 20 s on two CPU cores. Inductor runs per form and implementation stay in
``make test-slow`` (``tests/nn/test_trace.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import tfx
from tests.nn._helpers import build
from tfx import FactorizationPlan

FORMS = ["Dense", "CP", "Tucker", "TT", "BlockTT"]
IMPLEMENTATIONS = ["reconstructed", "auto"]
# factorize's form names, as a user passes them ("svd" is the low-rank matrix).
FACTORIZE_FORMS = ["svd", "cp", "tucker", "tt", "blocktt"]


class _Model(nn.Module):
    """A layer followed by one more op, as in a user's model."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) * 2.0


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _case(form: str, implementation: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    layer, inputs = build("linear", form, implementation)
    return _Model(layer).eval(), inputs


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("form", FORMS)
def test_compile_fullgraph_of_emitted_linear_matches_eager(form: str, implementation: str) -> None:
    model, inputs = _case(form, implementation)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(*inputs), model(*inputs))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("form", FORMS)
def test_export_of_emitted_linear_matches_eager(form: str, implementation: str) -> None:
    model, inputs = _case(form, implementation)
    exported = torch.export.export(model, inputs)
    torch.testing.assert_close(exported.module()(*inputs), model(*inputs))


# --------------------------------------------------------------------------- factorize's result
# A plan's contraction order decides the implementation factorize emits.
_ORDER = {"reconstructed": "reconstruct", "auto": None}


@pytest.fixture(scope="module")
def planned() -> dict[str, tuple[nn.Module, torch.Tensor, FactorizationPlan]]:
    """Per form: a small MLP, an input and the plan factorize made for it (planned once)."""
    out = {}
    for form in FACTORIZE_FORMS:
        torch.manual_seed(0)
        # 27 = 3 x 3 x 3: every form has options, and CP's decomposition stays fast.
        model = nn.Sequential(nn.Linear(27, 27), nn.GELU(), nn.Linear(27, 27)).double().eval()
        x = torch.randn(6, 27, dtype=torch.float64)
        result = tfx.factorize(model, 0.5, example_inputs=(x,), forms=(form,), progress=False)
        out[form] = (model, x, result.tfx_plan)
    return out


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def implementation(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module", params=FACTORIZE_FORMS)
def emitted(
    request: pytest.FixtureRequest,
    planned: dict[str, tuple[nn.Module, torch.Tensor, FactorizationPlan]],
    implementation: str,
) -> tuple[nn.Module, torch.Tensor]:
    """What factorize emits for one form and implementation, shared by compile and export."""
    model, x, plan = planned[request.param]
    choices = [dataclasses.replace(c, order=_ORDER[implementation]) for c in plan.choices]
    result = tfx.factorize(
        model, plan=dataclasses.replace(plan, choices=choices), example_inputs=(x,), progress=False
    )
    layers = [m for m in result.modules() if isinstance(m, tfx.FactorizedLinear)]
    assert layers and all(m.implementation == implementation for m in layers)
    return result.eval(), x


def test_compile_fullgraph_of_factorize_result_matches_eager(
    emitted: tuple[nn.Module, torch.Tensor],
) -> None:
    result, x = emitted
    compiled = torch.compile(result, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), result(x))


def test_export_of_factorize_result_matches_eager(
    emitted: tuple[nn.Module, torch.Tensor],
) -> None:
    result, x = emitted
    exported = torch.export.export(result, (x,))
    torch.testing.assert_close(exported.module()(x), result(x))
