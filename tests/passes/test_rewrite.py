"""Rewrite and emit: full-rank layers spliced in place of each site reproduce the graph."""

from __future__ import annotations

import copy
import dataclasses
import math
import re

import pytest
import torch
from torch import fx, nn

import tfx
from tests.passes._models import MLP, Functional, RootFunctional, SmallCNN
from tfx.cost import Choice
from tfx.passes import build_layer, capture, emit, find_sites, output_error, rewrite
from tfx.tensors._rank import tt_rank_bounds


def full_rank_choice(site) -> Choice:
    """'svd' at full rank: exact for every kind (for conv: TT with the first bond full)."""
    info = site.info
    if info.kind == "conv":
        out_c, in_c, *kernel = info.weight_shape
        bounds = tt_rank_bounds(info.weight_shape)
        tshape, rank = None, (1, min(out_c, in_c * torch.Size(kernel).numel()), *bounds[2:])
    else:
        rows, cols = info.weight_shape
        tshape, rank = ((rows,), (cols,)), min(rows, cols)
    return Choice(
        info.name,
        info.kind,
        info.weight_shape,
        "svd",
        tshape,
        rank,
        info.dense_params,
        0,
        0,
        0,
        0.0,
    )


def _dense_choice(site) -> Choice:
    return dataclasses.replace(
        full_rank_choice(site), form="dense", tensorized_shape=None, rank=None
    )


_IDS = lambda: (torch.randint(0, 40, (2, 8)),)  # noqa: E731
CASES = {
    "functional": (Functional, _IDS),
    "root_functional": (RootFunctional, _IDS),
    "mlp": (MLP, lambda: (torch.randn(4, 32, dtype=torch.float64),)),
    "cnn": (SmallCNN, lambda: (torch.randn(2, 3, 8, 8, dtype=torch.float64),)),
}


def _rewritten(case: str) -> tuple[torch.nn.Module, fx.GraphModule, tuple]:
    factory, make_inputs = CASES[case]
    model = factory().double().eval()
    inputs = make_inputs()
    captured = capture(model, inputs)
    sites = [s for s in find_sites(captured.gm, path=captured.path) if s.info.factorizable]
    rewrite(captured.gm, sites, [full_rank_choice(s) for s in sites])
    return model, emit(captured.gm), inputs


@pytest.mark.parametrize("case", sorted(CASES))
def test_rewrite_full_rank_reproduces_model_in_float64(case) -> None:
    model, gm, inputs = _rewritten(case)
    torch.testing.assert_close(gm(*inputs), model(*inputs))


@pytest.mark.parametrize("case", sorted(CASES))
def test_rewrite_graph_passes_lint(case) -> None:
    _, gm, _ = _rewritten(case)
    gm.graph.lint()
    assert not any(n.op == "call_module" and n.target == "encoder.0" for n in gm.graph.nodes)


def test_rewrite_registers_factors_under_the_original_name() -> None:
    _, gm, _ = _rewritten("mlp")
    keys = set(gm.state_dict())
    assert any(k.startswith("encoder.0.weight.") for k in keys)
    assert "encoder.0.bias" in keys
    assert "encoder.0.weight" not in keys


def test_rewrite_leaves_dense_choices_alone() -> None:
    model = MLP().double().eval()
    x = torch.randn(3, 32, dtype=torch.float64)
    captured = capture(model, (x,))
    sites = find_sites(captured.gm, path=captured.path)
    before = [n.format_node() for n in captured.gm.graph.nodes]
    rewrite(captured.gm, sites, [_dense_choice(s) for s in sites])
    assert [n.format_node() for n in captured.gm.graph.nodes] == before


def test_rewrite_progress_is_updated_once_per_site() -> None:
    model = MLP().double().eval()
    captured = capture(model, (torch.randn(3, 32, dtype=torch.float64),))
    sites = [s for s in find_sites(captured.gm, path=captured.path) if s.info.factorizable]

    class Bar:
        n = 0

        def update(self, k: int) -> None:
            self.n += k

    bar = Bar()
    rewrite(captured.gm, sites, [full_rank_choice(s) for s in sites], bar)
    assert bar.n == len(sites) == 3


@pytest.mark.parametrize("case", sorted(CASES))
def test_build_layer_full_rank_weight_equals_site_weight(case) -> None:
    factory, make_inputs = CASES[case]
    captured = capture(factory().double(), make_inputs())
    for site in (s for s in find_sites(captured.gm, path=captured.path) if s.info.factorizable):
        layer = build_layer(site, full_rank_choice(site))
        weight = layer.weight
        dense = weight.to_matrix() if hasattr(weight, "to_matrix") else weight.to_tensor()
        torch.testing.assert_close(dense.detach().reshape(site.weight.shape), site.weight)


def test_output_error_is_zero_for_identical_modules() -> None:
    model = MLP().eval()
    x = (torch.randn(3, 32),)
    assert output_error(model, model, x) == 0.0


def test_output_error_is_max_abs_difference_over_max_abs() -> None:
    class Shift(torch.nn.Module):
        def forward(self, x):
            return x + 0.5

    x = torch.tensor([[1.0, -4.0]])
    assert output_error(torch.nn.Identity(), Shift(), (x,)) == pytest.approx(0.5 / 4.0)


def test_rewrite_site_feeding_a_site_directly() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Linear(64, 32)).double().eval()
    x = torch.randn(4, 32, dtype=torch.float64)
    captured = capture(model, (x,))
    sites = find_sites(captured.gm, path=captured.path)
    rewrite(captured.gm, sites, [full_rank_choice(s) for s in sites])
    gm = emit(captured.gm)
    torch.testing.assert_close(gm(x), model(x))


class _ExportOnlyPrimeHead(nn.Module):
    """A layer with a prime output size behind shape-dependent control flow: symbolic_trace
    fails, torch.export captures, and the cost model pads 1021 -> 1024 for the TT forms."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(64, 1021, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 0:
            x = x * 1.0
        return self.head(x)


@pytest.mark.parametrize("form", ["tt", "blocktt"])
def test_padded_site_on_the_export_path(form: str) -> None:
    """The padded layer replaces the module holding the old weight: the graph's read of that
    weight goes with it (it used to fail graph.lint())."""
    model = _ExportOnlyPrimeHead().eval()
    x = torch.randn(3, 64)
    gm = tfx.factorize(model, 0.5, example_inputs=(x,), forms=(form,), progress=False)
    choice = gm.tfx_plan.choice("head")
    assert gm.tfx_plan.capture == "export" and choice.form == form
    assert math.prod(choice.tensorized_shape[0]) > 1021  # padded
    with torch.no_grad():
        dense = tfx.factorize(model, 1.0, example_inputs=(x,), forms=(form,), progress=False)
        assert gm(x).shape == (3, 1021)
        torch.testing.assert_close(dense(x), model(x), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ fast parameter reads
_SLOW_READ = re.compile(r"= self\.(?!_modules\[|_parameters\[|_buffers\[)")


@pytest.mark.parametrize("case", sorted(CASES))
def test_emitted_code_reads_parameters_through_the_module_dicts(case) -> None:
    """No ``self.a.b`` attribute chain (an ``nn.Module.__getattr__`` per step) is left for a
    parameter or submodule; the graph keeps its get_attr nodes; outputs are unchanged."""
    model, gm, inputs = _rewritten(case)
    reads = [line.strip() for line in gm.code.splitlines() if _SLOW_READ.search(line)]
    assert reads == [], reads
    assert "_parameters[" in gm.code
    assert any(n.op == "get_attr" for n in gm.graph.nodes)
    torch.testing.assert_close(gm(*inputs), model(*inputs), rtol=1e-9, atol=1e-9)


def test_fast_reads_see_replaced_and_reassigned_parameters() -> None:
    torch.manual_seed(0)
    model = MLP().double().eval()
    x = torch.randn(4, 32, dtype=torch.float64)
    gm = tfx.factorize(model, 0.6, example_inputs=(x,), progress=False)
    before = gm(x)
    # load_state_dict(assign=True) puts new Parameter objects in the dicts
    state = {k: v * 2 if "factor_0" in k else v for k, v in gm.state_dict().items()}
    gm.load_state_dict(state, assign=True)
    changed = gm(x)
    assert not torch.allclose(changed, before)
    ref = copy.deepcopy(gm)
    torch.testing.assert_close(ref(x), changed)
    # a parameter replaced by attribute assignment is read, not a cached object
    name = next(k for k in state if "factor_0" in k)
    owner, _, attr = name.rpartition(".")
    setattr(gm.get_submodule(owner), attr, nn.Parameter(torch.zeros_like(state[name])))
    assert not torch.allclose(gm(x), changed)


def test_fast_reads_keep_plain_attributes_and_survive_recompile_and_pickle(tmp_path) -> None:
    torch.manual_seed(0)
    model = MLP().double().eval()
    x = torch.randn(4, 32, dtype=torch.float64)
    gm = tfx.factorize(model, 0.6, example_inputs=(x,), progress=False)
    expected = gm(x)
    gm.recompile()
    assert (
        not _SLOW_READ.search(gm.code) and "_parameters[" in gm.code
    )  # the transformer stays registered
    torch.save(gm, tmp_path / "gm.pt")
    loaded = torch.load(tmp_path / "gm.pt", weights_only=False)
    torch.testing.assert_close(loaded(x), expected)
    # an fx tensor constant is a plain attribute: read as printed
    graph = fx.Graph()
    inp = graph.placeholder("x")
    const = graph.get_attr("_tensor_constant0")
    graph.output(graph.call_function(torch.add, (inp, const)))
    root = nn.Module()
    root._tensor_constant0 = torch.ones(3)
    plain = fx.GraphModule(root, graph)  # it registers the tensor as a buffer ...
    del plain._tensor_constant0
    plain._tensor_constant0 = torch.ones(3)  # ... made a plain attribute again
    from tfx.passes._emit import fast_reads

    fast_reads(plain)
    plain.recompile()
    assert "self._tensor_constant0" in plain.code
    torch.testing.assert_close(plain(torch.zeros(3)), torch.ones(3))


# ------------------------------------------------------------------ single-row layout
def test_single_row_low_rank_plans_store_factors_column_major() -> None:
    """A plan for one input row keeps the low-rank factors transposed in memory (same shapes and
    values); plans for more rows keep them row-major. Outputs, state_dict and training agree."""
    torch.manual_seed(0)
    dense = nn.Linear(96, 80).double().eval()
    budget = 40 * (1 + 96 + 80) + 80
    one = tfx.factorize(
        dense,
        budget,
        example_inputs=(torch.randn(1, 96, dtype=torch.float64),),
        forms=("svd",),
        progress=False,
    )
    many = tfx.factorize(
        dense,
        budget,
        example_inputs=(torch.randn(64, 96, dtype=torch.float64),),
        forms=("svd",),
        progress=False,
    )
    u1, v1 = one.weight.weight.factors.factor_0, one.weight.weight.factors.factor_1
    assert u1.shape == (80, 40) and u1.stride() == (1, 80) and v1.stride() == (1, 96)
    assert many.weight.weight.factors.factor_0.is_contiguous()
    for x in (torch.randn(1, 96, dtype=torch.float64), torch.randn(7, 3, 96, dtype=torch.float64)):
        torch.testing.assert_close(one(x), many(x), rtol=1e-10, atol=1e-10)
    # a state_dict moves between the layouts; the parameter keeps its own
    many.load_state_dict(one.state_dict())
    assert many.weight.weight.factors.factor_0.is_contiguous()
    x = torch.randn(5, 96, dtype=torch.float64)
    torch.testing.assert_close(one(x), many(x), rtol=1e-12, atol=1e-12)
    # a training step works on the column-major factors
    one.train()
    opt = torch.optim.Adam(one.parameters(), lr=1e-2)
    before = u1.detach().clone()
    one(x).square().sum().backward()
    opt.step()
    assert not torch.equal(before, u1.detach()) and u1.stride() == (1, 80)
