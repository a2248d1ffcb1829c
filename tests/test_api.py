"""``tfx.factorize`` / ``tfx.plan`` / ``tfx.save`` / ``tfx.load`` end to end, and their errors.

Four models: an MLP and a ResNet-style CNN (``symbolic_trace`` path), a tiny HF
``BertModel`` (keyword inputs) and ``GPT2LMHeadModel`` (positional inputs, tied
LM head), both on the ``torch.export`` path. Factorized results are cached per
(model, budget) in a module-scoped fixture: capturing a HF model costs seconds.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import fx, nn
from torch.utils._pytree import tree_flatten

import tfx
from tests.passes._models import (
    MLP,
    SmallCNN,
    Untraceable,
    bert_inputs,
    call,
    gpt2_inputs,
    max_rel_error,
    tiny_bert,
    tiny_gpt2,
)
from tfx import (
    BudgetError,
    FactorizationPlan,
    OptionError,
    PlanMismatchError,
    TensorError,
    TfxError,
)
from tfx.cost import candidates
from tfx.passes import capture, find_sites
from tfx.tensors._rank import tt_rank_bounds


# ------------------------------------------------------------------ cases
@dataclasses.dataclass
class Case:
    """A model, its example inputs, the capture path it takes, and cached factorizations."""

    name: str
    factory: Callable[[], nn.Module]
    inputs: Any
    path: str
    model: nn.Module = dataclasses.field(init=False)
    state_before: dict[str, torch.Tensor] = dataclasses.field(init=False)
    cache: dict[float, fx.GraphModule] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        torch.manual_seed(0)
        self.model = self.factory()
        self.state_before = {k: v.clone() for k, v in self.model.state_dict().items()}

    def fresh(self, seed: int = 123) -> nn.Module:
        """Another instance of the same architecture, with other weights."""
        torch.manual_seed(seed)
        return self.factory()

    def factorized(self, budget: float) -> fx.GraphModule:
        if budget not in self.cache:
            self.cache[budget] = tfx.factorize(
                self.model, budget, example_inputs=self.inputs, progress=False
            )
        return self.cache[budget]


_FACTORIES: dict[str, tuple[Callable[[], nn.Module], Callable[[], Any], str]] = {
    "mlp": (lambda: MLP().eval(), lambda: (torch.randn(6, 32),), "symbolic_trace"),
    "cnn": (lambda: SmallCNN().eval(), lambda: (torch.randn(2, 3, 8, 8),), "symbolic_trace"),
    "bert": (tiny_bert, bert_inputs, "export"),
    "gpt2": (tiny_gpt2, gpt2_inputs, "export"),
}
CASES = list(_FACTORIES)


@pytest.fixture(scope="module", params=CASES)
def case(request) -> Case:
    factory, inputs, path = _FACTORIES[request.param]
    torch.manual_seed(7)
    return Case(request.param, factory, inputs(), path)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def full_rank_plan(plan: FactorizationPlan) -> FactorizationPlan:
    """``plan`` with every factorizable site set to 'svd' at full rank (exact for every kind)."""
    choices = []
    for c in plan.choices:
        if c.reason:  # stays dense: tied, tiny, skipped, ...
            choices.append(c)
            continue
        if c.kind == "conv":
            out_c, in_c, *kernel = c.weight_shape
            bounds = tt_rank_bounds(c.weight_shape)
            tshape, rank = None, (1, min(out_c, in_c * math.prod(kernel)), *bounds[2:])
        else:
            rows, cols = c.weight_shape
            tshape, rank = ((rows,), (cols,)), min(rows, cols)
        choices.append(dataclasses.replace(c, form="svd", tensorized_shape=tshape, rank=rank))
    return dataclasses.replace(plan, choices=choices)


def factor_parameters(gm: fx.GraphModule, plan: FactorizationPlan) -> dict[str, nn.Parameter]:
    """The parameters of the factorized weights (``<site>.weight.<factor>``)."""
    sites = [c.site for c in plan.choices if c.form != "dense"]
    return {
        n: p for n, p in gm.named_parameters() if any(n.startswith(s + ".weight.") for s in sites)
    }


def scalar_loss(output: Any) -> torch.Tensor:
    """The sum of every floating output (so every output head gets a gradient)."""
    leaves, _ = tree_flatten(output)
    return sum(x.sum() for x in leaves if isinstance(x, torch.Tensor) and x.is_floating_point())


# ---------------------------------------------------------- budget = 1.0
def test_factorize_budget_one_reproduces_outputs(case) -> None:
    gm = case.factorized(1.0)
    assert max_rel_error(call(case.model, case.inputs), call(gm, case.inputs)) <= 1e-5


def test_factorize_full_rank_plan_reproduces_outputs(case) -> None:
    plan = full_rank_plan(case.factorized(1.0).tfx_plan)
    assert sum(c.form == "svd" for c in plan.choices) >= 3
    gm = tfx.factorize(case.model, plan=plan, example_inputs=case.inputs, progress=False)
    assert [c.form for c in gm.tfx_plan.choices] == [c.form for c in plan.choices]
    assert any(".weight.factors." in k for k in gm.state_dict())  # really factorized
    assert max_rel_error(call(case.model, case.inputs), call(gm, case.inputs)) <= 1e-5


# ------------------------------------------------------- smaller budgets
@pytest.mark.parametrize("budget", [0.5, 0.25])
def test_factorize_total_params_within_budget(case, budget) -> None:
    gm = case.factorized(budget)
    assert n_params(gm) <= budget * n_params(case.model)
    assert any(c.form != "dense" for c in gm.tfx_plan.choices)


@pytest.mark.parametrize("budget", [0.5, 0.25])
def test_factorize_plan_counts_emitted_parameters_exactly(case, budget) -> None:
    gm = case.factorized(budget)
    assert gm.tfx_plan.total_params_after == n_params(gm)
    assert gm.tfx_plan.total_params_before == n_params(case.model)


@pytest.mark.parametrize("budget", [0.5, 0.25])
def test_factorize_preserves_output_type_and_shapes(case, budget) -> None:
    gm = case.factorized(budget)
    with torch.no_grad():
        expected, got = call(case.model, case.inputs), call(gm, case.inputs)
    assert type(got) is type(expected)
    exp_leaves, exp_spec = tree_flatten(expected)
    got_leaves, got_spec = tree_flatten(got)
    assert got_spec == exp_spec
    assert [t.shape for t in got_leaves] == [t.shape for t in exp_leaves]
    assert all(bool(torch.isfinite(t).all()) for t in got_leaves if isinstance(t, torch.Tensor))


def test_factorize_hf_output_is_a_model_output(case) -> None:
    if case.path != "export":
        pytest.skip("HF models only")
    from transformers.utils import ModelOutput

    assert isinstance(call(case.factorized(0.5), case.inputs), ModelOutput)


def test_factorize_records_verified_output_error(case) -> None:
    gm = case.factorized(0.5)
    error = max_rel_error(call(case.model, case.inputs), call(gm, case.inputs))
    assert gm.tfx_plan.output_error == pytest.approx(error, rel=1e-6, abs=1e-12)


def test_factorize_without_verify_records_no_error() -> None:
    model = MLP().eval()
    gm = tfx.factorize(
        model, 0.5, example_inputs=(torch.randn(4, 32),), verify=False, progress=False
    )
    assert gm.tfx_plan.output_error is None


# --------------------------------------------------------- the result
def test_factorize_result_type_follows_the_capture_path(case) -> None:
    """A traced model becomes a GraphModule; an exported one whose sites are all layer modules
    stays the model's own class, its layers replaced (signature, generate, save_pretrained kept)."""
    gm = case.factorized(0.5)
    if case.path == "symbolic_trace":
        assert isinstance(gm, fx.GraphModule)
        assert gm.tfx_plan.emit == "graph"
    else:
        assert type(gm) is type(case.model)
        assert gm.tfx_plan.emit == "modules"
        factorized = [c.site for c in gm.tfx_plan.choices if c.form != "dense"]
        assert factorized
        assert all(
            isinstance(gm.get_submodule(s), tfx.nn.FactorizedLinear | tfx.nn.FactorizedEmbedding)
            for s in factorized
        )
    assert isinstance(gm.tfx_plan, FactorizationPlan)
    assert gm.tfx_plan.capture == case.path
    assert {c.path for c in gm.tfx_plan.choices} == {case.path}


def test_factorize_export_path_emits_a_graph_on_request() -> None:
    model, inputs = tiny_bert(), bert_inputs()
    gm = tfx.factorize(model, 0.5, example_inputs=inputs, progress=False, emit="graph")
    assert isinstance(gm, fx.GraphModule)
    assert gm.tfx_plan.emit == "graph"
    assert max_rel_error(call(model, inputs), call(gm, inputs)) < 1.0


def test_factorize_graph_passes_lint(case) -> None:
    if case.path != "symbolic_trace":
        pytest.skip("an exported model's result is the model itself (no graph)")
    gm = case.factorized(0.25)
    gm.graph.lint()
    factorized = {c.site for c in gm.tfx_plan.choices if c.form != "dense"}
    assert factorized
    reads = {str(n.target) for n in gm.graph.nodes if n.op in ("get_attr", "call_module")}
    replaced = factorized | {
        f"{site}.weight" for site in factorized
    }  # the layer call or its dense weight
    assert not reads & replaced
    assert all(any(r.startswith(f"{site}.weight.") for r in reads) for site in factorized)


def test_factorize_plan_lists_every_site(case) -> None:
    gm = case.factorized(0.5)
    captured = capture(case.model, case.inputs) if case.path == "symbolic_trace" else None
    names = [c.site for c in gm.tfx_plan.choices]
    assert len(names) == len(set(names))
    if captured is not None:
        assert names == [s.name for s in find_sites(captured.gm, path=captured.path)]
    layers = [
        n
        for n, m in case.model.named_modules()
        if isinstance(m, nn.Linear | nn.Conv2d | nn.Embedding)
    ]
    assert set(layers) <= set(names)


def test_factorize_leaves_model_untouched(case) -> None:
    case.factorized(0.5)
    case.factorized(0.25)
    after = case.model.state_dict()
    assert after.keys() == case.state_before.keys()
    assert all(torch.equal(after[k], case.state_before[k]) for k in after)
    assert not case.model.training
    assert not any(type(m).__module__.startswith("tfx") for m in case.model.modules())


def test_factorize_result_shares_no_parameter_with_model() -> None:
    model = MLP().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gm = tfx.factorize(model, 0.5, example_inputs=(torch.randn(4, 32),), progress=False)
    with torch.no_grad():
        for p in gm.parameters():
            p.add_(1.0)  # one "optimizer step" on the factorized model
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_factorize_keeps_train_eval_mode(training) -> None:
    model = MLP().train(training)
    gm = tfx.factorize(model, 0.5, example_inputs=(torch.randn(4, 32),), progress=False)
    assert gm.training is training
    assert all(m.training is training for m in gm.modules())
    assert model.training is training


def test_factorize_result_trains_and_gradients_reach_factors(case) -> None:
    gm = case.factorized(0.5)  # shared: its mode and gradients are restored below
    assert gm.training is False
    try:
        gm.train()
        assert gm.training and all(m.training for m in gm.modules())
        scalar_loss(call(gm, case.inputs)).backward()
        factors = factor_parameters(gm, gm.tfx_plan)
        assert factors
        assert all(p.grad is not None for p in factors.values()), [
            n for n, p in factors.items() if p.grad is None
        ]
        assert any(float(p.grad.abs().sum()) > 0 for p in factors.values())
    finally:
        gm.eval()
        gm.zero_grad(set_to_none=True)
        case.model.zero_grad(set_to_none=True)


def test_factorize_result_deepcopy_keeps_plan() -> None:
    gm = tfx.factorize(MLP().eval(), 0.5, example_inputs=(torch.randn(4, 32),), progress=False)
    assert copy.deepcopy(gm).tfx_plan == gm.tfx_plan


def test_factorize_export_path_says_dropout_is_frozen() -> None:
    # torch.export captures in eval mode: dropout stays off after .train(), and the plan says so.
    model = tiny_bert()
    inputs = bert_inputs()
    gm = tfx.factorize(model, 0.5, example_inputs=inputs, progress=False, emit="graph").train()
    first, second = call(gm, inputs).last_hidden_state, call(gm, inputs).last_hidden_state
    assert torch.equal(first, second)
    assert any("dropout is off" in note for note in gm.tfx_plan.notes)
    assert "dropout is off" in str(gm.tfx_plan)


def test_factorize_modules_result_keeps_dropout_in_training() -> None:
    # emitted into the model's own modules, the model's own forward runs: .train() turns dropout on.
    model = tiny_bert()
    inputs = bert_inputs()
    gm = tfx.factorize(model, 0.5, example_inputs=inputs, progress=False).train()
    first, second = call(gm, inputs).last_hidden_state, call(gm, inputs).last_hidden_state
    assert not torch.equal(first, second)
    assert not any("dropout is off" in note for note in gm.tfx_plan.notes)


def test_factorize_preserves_float64() -> None:
    model = MLP().double().eval()
    x = torch.randn(4, 32, dtype=torch.float64)
    gm = tfx.factorize(model, 0.5, example_inputs=(x,), progress=False)
    assert {p.dtype for p in gm.parameters()} == {torch.float64}
    assert gm(x).dtype == torch.float64


def test_factorize_float64_full_rank_matches_to_float64_rounding() -> None:
    model = MLP().double().eval()
    x = (torch.randn(4, 32, dtype=torch.float64),)
    plan = full_rank_plan(tfx.plan(model, 1.0, example_inputs=x, progress=False))
    gm = tfx.factorize(model, plan=plan, example_inputs=x, progress=False)
    torch.testing.assert_close(gm(*x), model(*x))


def test_factorize_preserves_float64_conv() -> None:
    model = SmallCNN().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    gm = tfx.factorize(model, 0.5, example_inputs=(x,), progress=False)
    assert {p.dtype for p in gm.parameters()} == {torch.float64}
    assert gm(x).dtype == torch.float64


def test_factorize_plans_a_tied_table_once_and_keeps_it_tied(case) -> None:
    if case.name != "gpt2":
        pytest.skip("GPT-2's LM head shares the token embedding")
    gm = case.factorized(0.25)
    rows = [gm.tfx_plan.choice(site) for site in ("transformer.wte", "lm_head")]
    assert {(c.form, str(c.rank)) for c in rows} and rows[0].form == rows[1].form
    if rows[0].form == "dense":
        assert all("tied" in c.reason for c in rows)
        assert gm.transformer.wte.weight is gm.lm_head.weight
    else:
        assert rows[1].params_after == 0  # the table is counted once, at its first reader
        assert gm.transformer.wte.weight is gm.lm_head.weight  # one tensor module: still tied
    assert n_params(gm) == gm.tfx_plan.total_params_after


def test_factorize_skip_leaves_module_dense() -> None:
    model = MLP().eval()
    plan = tfx.plan(
        model, 0.7, example_inputs=(torch.randn(4, 32),), skip=["encoder.2"], progress=False
    )
    assert plan.choice("encoder.2").form == "dense"
    assert plan.choice("encoder.2").reason == "skipped (skip=)"


def test_factorize_kinds_restricts_factorized_sites() -> None:
    model = SmallCNN().eval()
    plan = tfx.plan(
        model, 1.0, example_inputs=(torch.randn(2, 3, 8, 8),), kinds=("linear",), progress=False
    )
    assert {c.site for c in plan.choices if not c.reason} == {"head"}


def test_factorize_forms_restricts_chosen_forms() -> None:
    model = MLP().eval()
    plan = tfx.plan(model, 0.3, example_inputs=(torch.randn(4, 32),), forms=("tt",), progress=False)
    assert {c.form for c in plan.choices} <= {"tt", "dense"}
    assert any(c.form == "tt" for c in plan.choices)


@pytest.mark.parametrize("strategy", tfx.cost.available_strategies())
def test_factorize_every_strategy_is_within_budget(strategy) -> None:
    model = MLP().eval()
    x = torch.randn(4, 32)
    calibration = [(x,)] if strategy == "sensitivity" else None  # the one strategy that needs data
    gm = tfx.factorize(
        model, 0.4, example_inputs=(x,), strategy=strategy, calibration=calibration, progress=False
    )
    assert n_params(gm) <= 0.4 * n_params(model)
    assert gm.tfx_plan.strategy == strategy


def test_factorize_progress_bars_do_not_warn() -> None:
    model = MLP().eval()
    gm = tfx.factorize(model, 0.5, example_inputs=(torch.randn(4, 32),), progress=True)
    assert n_params(gm) <= 0.5 * n_params(model)


def test_factorize_flop_budget_is_respected() -> None:
    model = MLP().eval()
    gm = tfx.factorize(
        model, tfx.Budget(flops=0.3), example_inputs=(torch.randn(8, 32),), progress=False
    )
    plan = gm.tfx_plan
    assert plan.total_flops_after <= 0.3 * plan.total_flops_before


def test_factorize_flop_and_param_budgets_together() -> None:
    model = MLP().eval()
    budget = tfx.Budget(params=0.6, flops=0.4)
    gm = tfx.factorize(model, budget, example_inputs=(torch.randn(8, 32),), progress=False)
    plan = gm.tfx_plan
    assert plan.total_flops_after <= 0.4 * plan.total_flops_before
    assert n_params(gm) <= 0.6 * n_params(model)


def test_factorize_flop_budget_needs_example_inputs() -> None:
    with pytest.raises(BudgetError, match=r"(?s)FLOP budget needs the layers' input shapes"):
        tfx.factorize(MLP(), tfx.Budget(flops=0.5), progress=False)


def test_factorize_untraceable_model_takes_module_swap() -> None:
    model = Untraceable().eval()
    x = torch.randn(4, 32)
    with pytest.warns(tfx.TfxWarning, match="captured by module swap.*symbolic_trace: TraceError"):
        gm = tfx.factorize(model, 0.5, progress=False)
    assert type(gm) is Untraceable
    assert gm.tfx_plan.capture == "module_swap"
    assert any("module swap" in n for n in gm.tfx_plan.notes)
    assert n_params(gm) <= 0.5 * n_params(model)
    assert gm(x).shape == model(x).shape


def test_save_load_round_trip_without_example_inputs(tmp_path) -> None:
    model = MLP().eval()
    x = torch.randn(64, 32)
    gm = tfx.factorize(model, 0.3, example_inputs=(x,), progress=False)
    tfx.save(gm, tmp_path / "mlp.tfx")
    loaded = tfx.load(MLP().eval(), tmp_path / "mlp.tfx")
    with torch.no_grad():
        assert torch.equal(gm(x), loaded(x))


def test_save_state_dict_keys_use_original_module_names(tmp_path) -> None:
    model = MLP().eval()
    gm = tfx.factorize(model, 0.3, example_inputs=(torch.randn(4, 32),), progress=False)
    tfx.save(gm, tmp_path / "mlp.tfx")
    data = torch.load(tmp_path / "mlp.tfx", weights_only=True)
    assert FactorizationPlan.from_json(data["tfx_plan"]) == gm.tfx_plan
    factorized = [c.site for c in gm.tfx_plan.choices if c.form != "dense"]
    assert factorized
    for site in factorized:
        assert any(k.startswith(site + ".weight.") for k in data["state_dict"])
    assert "norm.weight" in data["state_dict"]


def test_save_needs_a_factorized_module(tmp_path) -> None:
    gm = fx.symbolic_trace(MLP())
    with pytest.raises(OptionError, match=r"tfx\.save needs a module returned by tfx\.factorize"):
        tfx.save(gm, tmp_path / "x.tfx")


# --------------------------------------------------------------- errors
def _mlp_floor(model: nn.Module, x: torch.Tensor) -> int:
    """The smallest reachable size: parameters outside the sites + each site's cheapest option."""
    captured = capture(model, (x,))
    sites = find_sites(captured.gm, path=captured.path)
    total = n_params(model)
    return (
        total
        - sum(s.info.dense_params for s in sites)
        + sum(candidates(s.info, s.weight)[0].params for s in sites)
    )


def test_factorize_accepts_budget_at_exact_minimum() -> None:
    model, x = MLP().eval(), torch.randn(4, 32)
    floor = _mlp_floor(model, x)
    gm = tfx.factorize(model, floor, example_inputs=(x,), progress=False)
    assert n_params(gm) == floor


def test_factorize_raises_one_below_minimum() -> None:
    model, x = MLP().eval(), torch.randn(4, 32)
    floor = _mlp_floor(model, x)
    with pytest.raises(
        BudgetError, match=rf"budget={floor - 1} .* below the smallest reachable size"
    ):
        tfx.factorize(model, floor - 1, example_inputs=(x,), progress=False)


def test_factorize_unreachable_budget_names_smallest_fraction() -> None:
    model, x = MLP().eval(), torch.randn(4, 32)
    floor = _mlp_floor(model, x)
    fraction = math.ceil(1000 * floor / n_params(model)) / 1000
    with pytest.raises(
        BudgetError,
        match=rf"(?s)\({100 * floor / n_params(model):.1f}%\).*budget >= {fraction:.3f}",
    ):
        tfx.factorize(model, 0.01, example_inputs=(x,), progress=False)


def test_factorize_unreachable_budget_fix_is_reachable() -> None:
    model, x = MLP().eval(), torch.randn(4, 32)
    with pytest.raises(BudgetError) as info:
        tfx.factorize(model, 0.01, example_inputs=(x,), progress=False)
    fraction = float(str(info.value).split("budget >= ")[1].split(",")[0])
    gm = tfx.factorize(model, fraction, example_inputs=(x,), progress=False)
    assert n_params(gm) <= fraction * n_params(model)


def test_factorize_unreachable_budget_names_sites_that_stay_dense() -> None:
    model, x = MLP().eval(), torch.randn(4, 32)
    with pytest.raises(BudgetError, match=r"tiny \(linear 4x24: tiny"):
        tfx.factorize(model, 0.01, example_inputs=(x,), progress=False)


def test_factorize_unreachable_budget_quotes_nonzero_sizes() -> None:
    with pytest.raises(BudgetError) as info:
        tfx.factorize(MLP().eval(), 0.01, example_inputs=(torch.randn(4, 32),), progress=False)
    assert "0.00M" not in str(info.value)


@pytest.mark.parametrize(
    ("budget", "match"),
    [
        (-0.5, r"budget=-0\.5 is not a positive number"),
        (0, r"budget=0 is not a positive number"),
        (1.5, r"budget=1\.5 is a float above 1, but fractions of the model are in \(0, 1\]"),
        ("half", r"budget='half' is not a positive number"),
        (None, r"no budget given"),
        (float("nan"), r"is not a positive number"),
    ],
)
def test_factorize_malformed_budget(budget, match) -> None:
    with pytest.raises(BudgetError, match=match):
        tfx.factorize(MLP(), budget, example_inputs=(torch.randn(4, 32),), progress=False)


def test_factorize_example_inputs_that_do_not_fit() -> None:
    with pytest.raises(
        OptionError, match=r"(?s)cannot run on example_inputs: RuntimeError.*Fix: pass a tuple"
    ):
        tfx.factorize(MLP(), 0.5, example_inputs=(torch.randn(4, 7),), progress=False)


def test_factorize_example_inputs_with_wrong_keyword() -> None:
    with pytest.raises(OptionError, match=r"cannot run on example_inputs: TypeError"):
        tfx.factorize(MLP(), 0.5, example_inputs={"nope": torch.randn(4, 32)}, progress=False)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_factorize_non_finite_weight(bad) -> None:
    model = MLP().eval()
    with torch.no_grad():
        model.encoder[2].weight[3, 5] = bad
    with pytest.raises(
        TensorError, match=r"(?s)weight of 'encoder\.2' contains NaN or Inf.*skip=\['encoder\.2'\]"
    ):
        tfx.factorize(model, 0.5, example_inputs=(torch.randn(4, 32),), progress=False)


def test_factorize_non_finite_weight_can_be_skipped() -> None:
    model = MLP().eval()
    with torch.no_grad():
        model.encoder[2].weight[3, 5] = math.nan
    plan = tfx.plan(model, 0.7, skip=["encoder.2"], progress=False)
    assert plan.choice("encoder.2").form == "dense"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"forms": ("svd", "tuker")}, r"form='tuker' is not registered\. Did you mean 'tucker'\?"),
        ({"kinds": ("linaer",)}, r"kind='linaer' is not registered\. Did you mean 'linear'\?"),
        ({"strategy": "gredy"}, r"strategy='gredy' is not registered\. Did you mean 'greedy'\?"),
    ],
    ids=["form", "kind", "strategy"],
)
@pytest.mark.parametrize("entry", [tfx.factorize, tfx.plan], ids=["factorize", "plan"])
def test_unknown_option_suggests_close_name(entry, kwargs, match) -> None:
    with pytest.raises(OptionError, match=match):
        entry(MLP(), 0.5, progress=False, **kwargs)


def test_unknown_option_lists_available_names() -> None:
    with pytest.raises(OptionError, match=r"Available: 'blocktt', 'cp', 'svd', 'tt', 'tucker'"):
        tfx.factorize(MLP(), 0.5, forms=("qr",), progress=False)


def test_factorize_plan_for_another_architecture() -> None:
    plan = tfx.plan(MLP(), 0.5, progress=False)
    with pytest.raises(
        PlanMismatchError,
        match=r"the plan's site 'encoder\.0' .* does not fit this model: no such site",
    ):
        tfx.factorize(SmallCNN(), plan=plan, progress=False)


def test_factorize_plan_with_other_weight_shape() -> None:
    plan = tfx.plan(MLP(), 0.5, progress=False)
    with pytest.raises(
        PlanMismatchError, match=r"site 'encoder\.0' \(weight \(64, 32\)\).*weight \(48, 16\)"
    ):
        tfx.factorize(MLP(d_in=16, hidden=48), plan=plan, progress=False)


def test_factorize_plan_missing_a_site() -> None:
    plan = tfx.plan(MLP(), 0.5, progress=False)
    partial = dataclasses.replace(plan, choices=plan.choices[:-1])
    with pytest.raises(PlanMismatchError, match=r"sites the plan does not cover: \['tiny'\]"):
        tfx.factorize(MLP(), plan=partial, progress=False)


def test_factorize_skip_naming_no_module() -> None:
    with pytest.raises(
        OptionError,
        match=r"(?s)skip='encoder\.00' names no module of MLP\. Did you mean 'encoder\.0'\?",
    ):
        tfx.factorize(MLP(), 0.5, skip=["encoder.00"], progress=False)


def test_factorize_needs_a_module() -> None:
    with pytest.raises(OptionError, match=r"needs an nn\.Module, got str"):
        tfx.factorize("model", 0.5, progress=False)


@pytest.mark.parametrize(
    "error",
    [
        BudgetError,
        OptionError,
        PlanMismatchError,
        TensorError,
        tfx.TraceError,
        tfx.ShapeError,
        tfx.RankError,
    ],
)
def test_errors_are_tfx_errors_and_builtins(error) -> None:
    assert issubclass(error, TfxError)
    assert issubclass(error, ValueError | RuntimeError)


# ------------------------------------------------------------------ padding awkward sizes
class _Awkward(torch.nn.Module):
    """An embedding and a linear whose sizes have large prime factors (1021, 1019)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(1021, 96)
        self.fc = torch.nn.Linear(96, 1019)

    def forward(self, i: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(i))


def test_padded_sizes_reproduce_the_model_at_full_rank() -> None:
    model = _Awkward().double().eval()
    idx = torch.randint(0, 1021, (4, 8))
    plan = tfx.plan(model, 0.5, example_inputs=(idx,), progress=False)
    emb, fc = plan.choice("emb"), plan.choice("fc")
    emb.form, emb.tensorized_shape, emb.rank = (
        "tt",
        ((8, 8, 16), (4, 4, 6)),
        10**6,
    )  # 1021 -> 1024 rows
    fc.form, fc.tensorized_shape, fc.rank = (
        "tucker",
        ((5, 12, 17), (4, 4, 6)),
        (5, 12, 17, 4, 4, 6),
    )  # 1019 -> 1020
    gm = tfx.factorize(model, plan=plan, example_inputs=(idx,), progress=False)
    with torch.no_grad():
        torch.testing.assert_close(gm(idx), model(idx))
    gm.graph.lint()


def test_padded_candidates_count_their_real_parameters() -> None:
    model = _Awkward().eval()
    idx = torch.randint(0, 1021, (4, 8))
    gm = tfx.factorize(model, 0.3, example_inputs=(idx,), progress=False)
    assert sum(p.numel() for p in gm.parameters()) == gm.tfx_plan.total_params_after
    assert gm.tfx_plan.total_params_after <= 0.3 * sum(p.numel() for p in model.parameters())


def test_plan_leaves_out_forms_with_more_flops_than_dense_when_the_budget_allows() -> None:
    """BlockTT at moderate compression and one row of input costs more FLOPs than the dense
    layer: without a device profile the FLOP rule leaves those options out while the budget
    can be met without them, and plain low-rank is unaffected."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(768, 768)).eval()
    x = torch.randn(1, 768)
    unfiltered = _not_slower_off(lambda: tfx.plan(model, 0.5, example_inputs=(x,), progress=False))
    assert (
        unfiltered.choices[0].flops_after > unfiltered.choices[0].flops_before
    )  # the rule has work to do
    assert "more FLOPs than dense" in unfiltered.choices[
        0
    ].reason and "more FLOPs than dense" in str(unfiltered)
    plan = tfx.plan(model, 0.5, example_inputs=(x,), progress=False)
    choice = plan.choices[0]
    assert choice.flops_after <= choice.flops_before / tfx.cost._planner.MIN_SPEEDUP
    assert choice.error < 1.0
    assert "FLOPs" not in choice.reason and not any("FLOPs" in n for n in plan.notes)
    svd = tfx.plan(
        model, 0.5, example_inputs=(torch.randn(64, 768),), forms=("svd",), progress=False
    ).choices[0]
    assert svd.flops_after < svd.flops_before and "FLOPs" not in svd.reason


def test_flop_rule_keeps_every_option_and_says_so_when_the_budget_needs_them() -> None:
    from tfx.cost import Option
    from tfx.cost._planner import not_slower as _not_slower
    from tfx.passes._match import find_module_sites

    linear, embedding = (
        s.info for s in find_module_sites(nn.Sequential(nn.Linear(64, 64), nn.Embedding(100, 64)))
    )
    dense = Option("dense", None, None, 4096, 8192, 0.0)
    slow = Option(
        "blocktt", ((8, 8), (8, 8)), (1, 4, 1), 512, 9000, 0.5
    )  # fewer params, more FLOPs
    fast = Option("svd", ((64,), (64,)), 8, 1032, 2048, 0.6)
    gather = [
        Option("dense", None, None, 6400, 0, 0.0),
        Option("tt", ((10, 10), (8, 8)), (1, 4, 1), 576, 900, 0.5),
    ]
    kept, note = _not_slower([[dense, slow, fast], gather], 1032 + 576, [linear, embedding], None)
    assert kept == [[dense, fast], gather] and note == ""  # embeddings keep every option
    kept, note = _not_slower([[dense, slow, fast], gather], 512 + 576, [linear, embedding], None)
    assert kept == [[dense, slow, fast], gather] and "more FLOPs than their dense layer" in note


def _not_slower_off(make: Any) -> Any:
    """``make()`` with the speed rule switched off (every option kept)."""
    import tfx.cost._planner as planner

    original = planner.MIN_SPEEDUP
    planner.MIN_SPEEDUP = 1e-9
    try:
        return make()
    finally:
        planner.MIN_SPEEDUP = original
