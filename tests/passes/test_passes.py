"""Passes with contracts: requires / ensures, the site context of errors, the plan kept."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import fx, nn

import tfx
import tfx.passes._decompose as decompose_stage
from tfx.passes import Compilation, SiteError
from tfx.passes._analysis import Calibrate, Capture, Match
from tfx.passes._emit import Emit
from tfx.passes._pass import ContractError, describe, site_context
from tfx.passes._rewrite import Rewrite


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64)).eval()


def _site(name: str, kind: str, shape: tuple[int, ...]) -> Any:
    return SimpleNamespace(info=SimpleNamespace(name=name, kind=kind, weight_shape=shape))


def test_describe_names_the_site_its_shape_and_choice() -> None:
    site = _site("encoder.layer.3.output.dense", "linear", (384, 1536))
    choice = SimpleNamespace(form="svd", rank=152)
    assert (
        describe(site, choice) == "'encoder.layer.3.output.dense' (linear 384x1536, svd rank 152)"
    )


def test_describe_writes_a_rank_tuple_and_a_dense_choice() -> None:
    site = _site("conv", "conv", (16, 8, 3, 3))
    assert describe(site, SimpleNamespace(form="tt", rank=(1, 8, 3, 1))).endswith(
        "(conv 16x8x3x3, tt rank (1, 8, 3, 1))"
    )
    assert (
        describe(site, SimpleNamespace(form="dense", rank=None)) == "'conv' (conv 16x8x3x3, dense)"
    )


def test_site_context_keeps_a_tfx_error_and_prefixes_its_message() -> None:
    site = _site("fc", "linear", (32, 16))
    error = tfx.RankError("rank 40 is above 16")
    with pytest.raises(tfx.RankError) as raised:
        with site_context(site, SimpleNamespace(form="svd", rank=40)):
            raise error
    assert raised.value is error
    assert (
        str(raised.value)
        == "while factorizing 'fc' (linear 32x16, svd rank 40): rank 40 is above 16"
    )


def test_site_context_wraps_other_errors_with_the_original_chained() -> None:
    site = _site("fc", "linear", (32, 16))
    with pytest.raises(SiteError) as raised:
        with site_context(site, SimpleNamespace(form="svd", rank=4)):
            raise FloatingPointError("SVD did not converge")
    assert isinstance(raised.value, tfx.TfxError) and isinstance(raised.value, RuntimeError)
    assert isinstance(raised.value.__cause__, FloatingPointError)
    assert raised.value.site == "fc"
    assert str(raised.value) == (
        "while factorizing 'fc' (linear 32x16, svd rank 4): "
        "FloatingPointError: SVD did not converge"
    )


def test_site_context_nested_names_the_site_once() -> None:
    site = _site("fc", "linear", (32, 16))
    with pytest.raises(SiteError, match=r"^while factorizing 'fc' [^:]*: ValueError: x$"):
        with site_context(site), site_context(site):
            raise ValueError("x")


def test_factorize_names_the_site_a_decomposition_failed_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(site: Any, choice: Any) -> nn.Module:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(decompose_stage, "build_layer", broken)
    with pytest.raises(
        SiteError, match=r"^while factorizing '0' \(linear 128x64, svd rank \d+\): "
    ) as raised:
        tfx.factorize(_mlp(), 0.5, forms=("svd",), progress=False)
    assert str(raised.value).endswith("RuntimeError: out of memory")
    assert isinstance(raised.value.__cause__, RuntimeError)


def test_factorize_keeps_the_class_of_a_tfx_error_raised_for_a_site(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(site: Any, choice: Any) -> nn.Module:
        raise tfx.ShapeError("no tensorization fits")

    monkeypatch.setattr(decompose_stage, "build_layer", broken)
    with pytest.raises(
        tfx.ShapeError,
        match=r"^while factorizing '0' \(linear 128x64, svd rank \d+\): no tensorization fits$",
    ):
        tfx.factorize(_mlp(), 0.5, forms=("svd",), progress=False)


@pytest.mark.parametrize(
    ("step", "missing"),
    [
        (lambda: Match(("linear",)), "'captured' is not set: run Capture first"),
        (lambda: Calibrate(None), "'captured' is not set: run Capture first"),
        (lambda: Rewrite(), "'captured' is not set: run Capture first"),
        (lambda: Emit(), "'plan' is not set: run the planner"),
    ],
)
def test_pass_requires_names_the_pass_that_has_not_run(step: Any, missing: str) -> None:
    with pytest.raises(ContractError, match=missing):
        step()(Compilation(_mlp()))


def test_capture_requires_a_module_with_values() -> None:
    with pytest.raises(tfx.OptionError, match="needs an nn.Module"):
        Capture()(Compilation("not a model"))  # type: ignore[arg-type]


def test_passes_in_order_fill_in_the_compilation() -> None:
    model = _mlp()
    state = Compilation(model, (torch.randn(4, 64),))
    Capture()(state)
    Match(("linear",))(state)
    Calibrate(None)(state)
    assert state.captured.path == "symbolic_trace"
    assert [s.name for s in state.sites] == ["0", "2"]
    assert state.emission == "graph" and state.calibrated is None
    torch.testing.assert_close(state.reference, model(state.example_inputs[0]))


def test_emit_ensures_the_parameter_count_of_the_plan() -> None:
    model = _mlp()
    gm = tfx.factorize(model, 0.5, forms=("svd",), progress=False)
    gm.register_parameter("extra", nn.Parameter(torch.zeros(3)))
    state = Compilation(model, plan=gm.tfx_plan, result=gm, emission="graph")
    with pytest.raises(tfx.PlanMismatchError, match="holds .* parameters but its plan says"):
        Emit(verify=False)(state)


def test_emit_ensures_ties_are_kept() -> None:
    model = _mlp()
    gm = tfx.factorize(model, 0.5, forms=("svd",), progress=False)
    ties = [["a.weight", "b.weight"]]  # as if the model had tied a and b
    gm.a = nn.Linear(2, 2)
    gm.b = nn.Linear(2, 2)
    # "modules": no dead-submodule pruning, which would drop a and b from the graph result
    state = Compilation(model, ties=ties, plan=gm.tfx_plan, result=gm, emission="modules")
    with pytest.raises(tfx.PlanMismatchError, match="no longer one parameter"):
        Emit(verify=False)(state)


def test_graph_result_keeps_its_plan_through_fx_preserved_attributes() -> None:
    gm = tfx.factorize(_mlp(), 0.5, forms=("svd",), progress=False)
    assert isinstance(gm, fx.GraphModule)
    assert gm.meta["_user_preserved_attributes"]["tfx_plan"] is gm.tfx_plan
    assert "__deepcopy__" not in type(gm).__dict__  # no patched class
    copied = copy.deepcopy(gm)
    assert copied.tfx_plan == gm.tfx_plan and copied.tfx_plan is not gm.tfx_plan
    assert copied.meta["_user_preserved_attributes"]["tfx_plan"] is copied.tfx_plan
