"""Every layer inside a model: torch.fx.symbolic_trace, torch.compile(fullgraph=True), torch.export.

tltorch 0.5 fails all three. The graphs must show the contraction ops
(einsum / conv / linear calls), not one opaque call, and every captured
model must compute what eager computes (float64, default tolerances).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from tests.helpers import family
from tests.nn._helpers import (
    PLAIN_FORMS,
    TENSORIZED_FORMS,
    build,
    contraction_ops,
    make_linear,
    randn,
)

CONV_OPS = {"conv1d", "conv2d", "conv3d"}


class Model(nn.Module):
    """A layer followed by one more op, as a user's model would have."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) * 2.0


def _implementations(kind: str, form: str) -> list[str]:
    if kind in ("trl", "tcl"):
        return ["factorized"]
    extra = ["mobilenet"] if kind == "conv" and family(form) == "cp" else []
    return ["factorized", "reconstructed", "auto", *extra]


def cases(
    *,
    implementations: tuple[str, ...] | None = None,
    forms: list[str] | None = None,
) -> list:
    """pytest params (kind, form, implementation) for every layer kind."""
    out = []
    for kind in ("linear", "conv", "embedding", "trl", "tcl"):
        kind_forms = (
            ["CP"]
            if kind == "tcl"
            else (TENSORIZED_FORMS if kind in ("linear", "embedding") else PLAIN_FORMS)
        )
        for form in kind_forms:
            if forms is not None and form not in forms and kind != "tcl":
                continue
            for impl in _implementations(kind, form):
                if implementations is not None and impl not in implementations:
                    continue
                name = "tcl" if kind == "tcl" else f"{kind}-{form}-{impl}"
                out.append(pytest.param(kind, form, impl, id=name))
    return out


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(kind: str, form: str, implementation: str) -> tuple[Model, tuple[torch.Tensor, ...]]:
    layer, inputs = build(kind, form, implementation)
    return Model(layer), inputs


# ------------------------------------------------------------------ torch.fx
@pytest.mark.parametrize(("kind", "form", "implementation"), cases())
def test_fx_trace_of_layer_matches_eager_and_shows_contractions(
    kind: str, form: str, implementation: str
) -> None:
    model, inputs = _model(kind, form, implementation)
    traced = torch.fx.symbolic_trace(model)
    traced.graph.lint()
    torch.testing.assert_close(traced(*inputs), model(*inputs))
    ops = contraction_ops(traced.graph)
    if not (kind == "embedding" and family(form) == "dense"):
        assert ops, "no contraction op in the graph"  # (a dense table's rows are read directly)
    assert not [
        n for n in traced.graph.nodes if n.op == "call_module"
    ], "the layer is an opaque leaf"
    factorized = implementation in ("factorized", "mobilenet") and family(form) != "dense"
    if factorized and kind in ("linear", "trl", "tcl"):
        # planned steps: GEMMs on views (linear, TRL) or einsums (TCL's mode products)
        assert {"mm", "bmm", "addmm", "einsum"} & set(ops)
    if factorized and kind == "conv":
        # pointwise in, (separable / core) convolution(s), pointwise out
        assert sum(op in CONV_OPS for op in ops) >= (2 if family(form) == "tt" else 3)


@pytest.mark.parametrize("kind", ["linear", "conv", "embedding", "trl", "tcl"])
def test_fx_trace_of_a_stacked_sublayer_matches_eager(kind: str) -> None:
    layer, inputs = build(kind, "Tucker", n_layers=3)
    model = Model(layer[1]) if kind in ("linear", "conv") else _Indexed(layer, 1)
    traced = torch.fx.symbolic_trace(model)
    traced.graph.lint()
    torch.testing.assert_close(traced(*inputs), layer(*inputs, indices=1) * 2.0)


class _Indexed(nn.Module):
    def __init__(self, layer: nn.Module, index: int) -> None:
        super().__init__()
        self.layer, self.index = layer, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x, indices=self.index) * 2.0


def test_fx_traced_model_keeps_working_for_other_batch_sizes() -> None:
    model = Model(make_linear("CP"))
    traced = torch.fx.symbolic_trace(model)
    for batch in (1, 3, 700):
        x = randn(batch, 6)
        torch.testing.assert_close(traced(x), model(x))


# ------------------------------------------------------------------ torch.compile
def _compiled_matches_eager(kind: str, form: str, implementation: str, backend: str) -> None:
    model, inputs = _model(kind, form, implementation)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    torch.testing.assert_close(compiled(*inputs), model(*inputs))


# The default run compiles the factorized path of one form per family (and a complex one);
# `make test-slow` compiles every form and implementation.
DEFAULT_FORMS = ["CP", "Tucker", "TT", "BlockTT", "ComplexCP"]
DEFAULT_CASES = cases(implementations=("factorized", "mobilenet"), forms=DEFAULT_FORMS)
OTHER_CASES = [p for p in cases() if p.id not in {d.id for d in DEFAULT_CASES}]


@pytest.mark.parametrize(("kind", "form", "implementation"), DEFAULT_CASES)
def test_compile_eager_backend_matches_eager(kind: str, form: str, implementation: str) -> None:
    _compiled_matches_eager(kind, form, implementation, "eager")


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "form", "implementation"), OTHER_CASES)
def test_compile_eager_backend_matches_eager_every_form_and_implementation(
    kind: str, form: str, implementation: str
) -> None:
    _compiled_matches_eager(kind, form, implementation, "eager")


def test_compile_stacked_layer_and_new_batch_size_match_eager() -> None:
    layer = make_linear("BlockTT", n_layers=3)
    model = _Indexed(layer, 2)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    for batch in (5, 9, 33):
        x = randn(batch, 6)
        torch.testing.assert_close(compiled(x), model(x))


# Inductor's C++ codegen imports torch.jit.script_method, which warns on this torch.
INDUCTOR_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


@pytest.mark.filterwarnings(INDUCTOR_WARNING)
def test_compile_inductor_matches_eager() -> None:
    _compiled_matches_eager("linear", "CP", "factorized", "inductor")


@pytest.mark.slow
@pytest.mark.filterwarnings(INDUCTOR_WARNING)
@pytest.mark.filterwarnings("ignore:Torchinductor does not support code generation for complex")
@pytest.mark.parametrize(
    ("kind", "form", "implementation"),
    [
        ("conv", "Tucker", "factorized"),
        ("conv", "CP", "mobilenet"),
        ("embedding", "BlockTT", "factorized"),
        ("trl", "TT", "factorized"),
        ("linear", "ComplexTucker", "factorized"),
        ("tcl", "CP", "factorized"),
    ],
)
def test_compile_inductor_matches_eager_for_each_layer(
    kind: str, form: str, implementation: str
) -> None:
    _compiled_matches_eager(kind, form, implementation, "inductor")


# ------------------------------------------------------------------ torch.export
def _exported_matches_eager(kind: str, form: str, implementation: str) -> None:
    model, inputs = _model(kind, form, implementation)
    exported = torch.export.export(model, inputs)
    torch.testing.assert_close(exported.module()(*inputs), model(*inputs))


@pytest.mark.parametrize(("kind", "form", "implementation"), DEFAULT_CASES)
def test_export_matches_eager(kind: str, form: str, implementation: str) -> None:
    _exported_matches_eager(kind, form, implementation)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "form", "implementation"), OTHER_CASES)
def test_export_matches_eager_every_form_and_implementation(
    kind: str, form: str, implementation: str
) -> None:
    _exported_matches_eager(kind, form, implementation)
