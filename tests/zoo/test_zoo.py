"""``tfx.factorize`` on tiny Hugging Face models: the result is a faithful stand-in.

The contract, checked on every architecture of :data:`tests.zoo.models.ZOO`:

* the result of ``tfx.factorize(model, 0.5, example_inputs=ex)`` (``ex``: keyword inputs,
  batch 1) is a copy of the model, of the same class, with its layers replaced by
  ``tfx.nn`` ones; the model itself is left untouched (:func:`check_result` holds the
  post-conditions: parameter count, tied weights, finite outputs, something factorized);
* it runs on another batch size and sequence length, and takes keywords the example did
  not use (``attention_mask``, ``labels``);
* with one site forced to a full-rank factorization it reproduces the model, also through
  ``generate()`` with and without the KV cache;
* it saves with ``save_pretrained`` and round-trips through ``tfx.save`` / ``tfx.load``;
* it trains: one SGD step moves its factors.

:data:`~tests.zoo.models.FAST` runs by default; the other architectures are marked slow.
Capturing a model costs seconds, so each architecture is factorized once per
module (:class:`Case` memoizes results, and failures, by key).
"""

from __future__ import annotations

import copy
import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

import tfx
from tfx.nn import FactorizedConv, FactorizedEmbedding, FactorizedLinear

from .models import FAST, ZOO, Arch

BUDGET = 0.5
BATCH, LENGTH = 1, 8
OTHER_BATCH, OTHER_LENGTH = 3, 6  # OTHER_LENGTH: a vision model's image side is 4x this
NEW_TOKENS = 4
TFX_LAYERS = (FactorizedLinear, FactorizedEmbedding, FactorizedConv)
EXACT = {"rtol": 1e-4, "atol": 1e-5}  # float32 rounding through a full-rank factorization


def _params(keep: Callable[[Arch], bool] = lambda arch: True) -> list[Any]:
    return [
        pytest.param(name, id=name, marks=() if name in FAST else pytest.mark.slow)
        for name, arch in ZOO.items()
        if keep(arch)
    ]


ALL = _params()
TEXT = _params(lambda arch: arch.text)
GENERATIVE = _params(lambda arch: arch.causal or arch.seq2seq)


# ------------------------------------------------------------------ helpers
def main_output(out: Any) -> torch.Tensor:
    """The output a user looks at first: ``logits``, else ``last_hidden_state``, else the first."""
    for key in ("logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    return out[0]


def float_leaves(out: Any) -> list[torch.Tensor]:
    """The floating-point tensors of an output, flattened."""
    leaves, _ = tree_flatten(out)
    return [t for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()]


def tied_groups(model: nn.Module) -> list[list[str]]:
    """Names reaching one Parameter object, for each Parameter reached under several names."""
    names: dict[int, list[str]] = defaultdict(list)
    for name, param in model.named_parameters(remove_duplicate=False):
        names[id(param)].append(name)
    return [group for group in names.values() if len(group) > 1]


def _site(param_name: str) -> str:
    return param_name.rpartition(".")[0]


def check_result(model: nn.Module, result: nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    """The post-conditions of ``result = tfx.factorize(model, ...)``, run on ``inputs``."""
    plan = result.tfx_plan
    assert type(result) is type(model)
    assert sum(p.numel() for p in result.parameters()) == plan.total_params_after
    assert any(c.form != "dense" for c in plan.choices), "nothing was factorized"
    params = dict(result.named_parameters(remove_duplicate=False))
    by_site = {c.site: c for c in plan.choices}
    for group in tied_groups(model):
        kept = [name for name in group if name in params]
        assert len({id(params[name]) for name in kept}) <= 1, f"tie broken: {kept}"
        marks = {(by_site[s].form, by_site[s].rank) for s in map(_site, group) if s in by_site}
        assert len(marks) <= 1, f"tied sites planned differently: {group} -> {marks}"
    with torch.no_grad():
        out = result(**inputs)
    assert all(bool(torch.isfinite(t).all()) for t in float_leaves(out))


def factor_modules(module: nn.Module) -> list[nn.Module]:
    """The ``tfx.nn`` layers inside ``module`` (itself included)."""
    return [m for m in module.modules() if isinstance(m, TFX_LAYERS)]


def _tied_sites(model: nn.Module) -> set[str]:
    return {_site(name) for group in tied_groups(model) for name in group}


def full_rank_plan(model: nn.Module, inputs: dict[str, torch.Tensor]) -> tfx.FactorizationPlan:
    """The budget-1.0 plan with its largest untied linear site forced to a full-rank SVD.

    Mirrors the ``'svd'`` option of ``tfx.cost._options``: tensorized shape
    ``((out,), (in,))``, an int rank, ``rank * (1 + out + in)`` parameters.
    """
    plan = tfx.plan(model, 1.0, example_inputs=inputs, progress=False)
    lossy = [c.site for c in plan.choices if c.form != "dense"]
    assert not lossy, f"budget 1.0 already factorizes {lossy}: no exact comparison"
    tied = _tied_sites(model)
    linears = [
        c
        for c in plan.choices
        if c.kind == "linear" and c.site not in tied and min(c.weight_shape) > 1
    ]
    assert linears, "no linear site to force"
    choice = max(linears, key=lambda c: c.params_before)
    rows, cols = choice.weight_shape
    choice.form = "svd"
    choice.rank = min(rows, cols)
    choice.tensorized_shape = ((rows,), (cols,))
    choice.params_after = choice.rank * (1 + rows + cols)
    choice.order = "factors"
    choice.error = 0.0
    return plan


class Case:
    """One architecture: its model, inputs and (memoized) tfx results."""

    def __init__(self, arch: Arch) -> None:
        self.arch = arch
        self.model = arch.build()
        self.inputs = arch.inputs(BATCH, LENGTH)
        self._memo: dict[str, Any] = {}
        self.warnings: dict[str, list[str]] = {}

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        # TfxWarnings (a note on how the model was captured) are kept in ``self.warnings``, not
        # raised: they are tfx telling the user something, not a broken contract. Others raise.
        if key not in self._memo:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("error")
                warnings.simplefilter("always", tfx.TfxWarning)
                try:
                    self._memo[key] = (True, make())
                except Exception as err:  # noqa: BLE001 - replayed to every test that needs it
                    self._memo[key] = (False, err)
            self.warnings[key] = [str(w.message) for w in caught]
        ok, value = self._memo[key]
        if not ok:
            raise value
        return value

    @property
    def result(self) -> nn.Module:
        """``tfx.factorize(model, 0.5)``."""
        return self._once(
            "result",
            lambda: tfx.factorize(self.model, BUDGET, example_inputs=self.inputs, progress=False),
        )

    @property
    def exact(self) -> nn.Module:
        """The model with one linear site factorized at full rank (budget 1.0)."""
        return self._once(
            "exact",
            lambda: tfx.factorize(
                self.model,
                example_inputs=self.inputs,
                progress=False,
                plan=full_rank_plan(self.model, self.inputs),
            ),
        )

    def other_inputs(self) -> dict[str, torch.Tensor]:
        return self.arch.inputs(OTHER_BATCH, OTHER_LENGTH if self.arch.variable_length else LENGTH)


@pytest.fixture(scope="module")
def cases() -> Callable[[str], Case]:
    made: dict[str, Case] = {}

    def get(name: str) -> Case:
        if name not in made:
            made[name] = Case(ZOO[name])
        return made[name]

    return get


@pytest.fixture
def case(cases: Callable[[str], Case], name: str) -> Case:
    return cases(name)


def _run(module: nn.Module, inputs: dict[str, torch.Tensor], **extra: Any) -> Any:
    with torch.no_grad():
        return module(**inputs, **extra)


# ------------------------------------------------------------------ the result
@pytest.mark.parametrize("name", ALL)
def test_zoo_factorize_result_meets_contract(case: Case) -> None:
    check_result(case.model, case.result, case.inputs)


@pytest.mark.parametrize("name", ALL)
def test_zoo_factorize_result_holds_tfx_layers(case: Case) -> None:
    plan = case.result.tfx_plan
    assert plan.capture
    assert isinstance(plan.notes, list)
    assert factor_modules(case.result)
    modules = dict(case.result.named_modules())
    for site in (c.site for c in plan.choices if c.form != "dense" and c.site in modules):
        assert factor_modules(modules[site]), f"{site} is still {type(modules[site]).__name__}"


@pytest.mark.parametrize("name", ALL)
def test_zoo_factorize_leaves_model_untouched(case: Case) -> None:
    case.result  # noqa: B018 - factorize (memoized) before looking at the model
    fresh = case.arch.build()
    before, after = fresh.state_dict(), case.model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in after)
    assert [type(m) for m in case.model.modules()] == [type(m) for m in fresh.modules()]
    assert tied_groups(case.model) == tied_groups(fresh)
    assert not case.model.training
    if hasattr(fresh, "config"):
        assert case.model.config.to_dict() == fresh.config.to_dict()


@pytest.mark.parametrize("name", ALL)
def test_zoo_result_runs_on_other_batch_and_length(case: Case) -> None:
    inputs = case.other_inputs()
    expected, got = _run(case.model, inputs), _run(case.result, inputs)
    assert main_output(got).shape == main_output(expected).shape
    assert main_output(got).shape[0] == OTHER_BATCH
    assert all(bool(torch.isfinite(t).all()) for t in float_leaves(got))


@pytest.mark.parametrize("name", TEXT)
def test_zoo_result_accepts_attention_mask(case: Case) -> None:
    mask = torch.ones_like(case.inputs["input_ids"])
    without, with_mask = (
        _run(case.result, case.inputs),
        _run(case.result, case.inputs, attention_mask=mask),
    )
    torch.testing.assert_close(main_output(with_mask), main_output(without), **EXACT)


@pytest.mark.parametrize("name", GENERATIVE)
def test_zoo_result_accepts_labels(case: Case) -> None:
    labels = case.inputs["decoder_input_ids" if case.arch.seq2seq else "input_ids"]
    out = _run(case.result, case.inputs, labels=labels)
    assert out.loss.ndim == 0
    assert bool(torch.isfinite(out.loss))


# ------------------------------------------------------------------ full rank reproduces the model
@pytest.mark.parametrize("name", ALL)
def test_zoo_full_rank_factorization_reproduces_model(case: Case) -> None:
    assert any(isinstance(m, FactorizedLinear) for m in case.exact.modules())
    assert sum(p.numel() for p in case.exact.parameters()) == case.exact.tfx_plan.total_params_after
    torch.testing.assert_close(
        main_output(_run(case.exact, case.inputs)),
        main_output(_run(case.model, case.inputs)),
        **EXACT,
    )


@pytest.mark.parametrize("name", ALL)
def test_zoo_full_rank_factorization_reproduces_model_on_other_batch(case: Case) -> None:
    inputs = case.other_inputs()
    torch.testing.assert_close(
        main_output(_run(case.exact, inputs)), main_output(_run(case.model, inputs)), **EXACT
    )


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no_cache"])
@pytest.mark.parametrize("name", GENERATIVE)
def test_zoo_full_rank_generate_matches_model(case: Case, use_cache: bool) -> None:
    ids = case.inputs["input_ids"]
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "use_cache": use_cache}
    expected = case.model.generate(ids, **kwargs)
    got = case.exact.generate(ids, **kwargs)
    assert torch.equal(got, expected)


# ------------------------------------------------------------------ save and load
@pytest.mark.parametrize("name", ALL)
def test_zoo_result_save_pretrained_writes_files(case: Case, tmp_path) -> None:
    case.result.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file()
    assert any(p.suffix in (".safetensors", ".bin") for p in tmp_path.iterdir())


@pytest.mark.parametrize("name", ALL)
def test_zoo_tfx_save_load_reproduces_result(case: Case, tmp_path) -> None:
    path = tmp_path / "model.pt"
    tfx.save(case.result, path)
    loaded = tfx.load(case.arch.build(), path, example_inputs=case.inputs)
    torch.testing.assert_close(
        main_output(_run(loaded, case.inputs)),
        main_output(_run(case.result, case.inputs)),
        rtol=0,
        atol=0,
    )


# ------------------------------------------------------------------ training
@pytest.mark.parametrize("name", ALL)
def test_zoo_result_train_step_updates_factors(case: Case) -> None:
    net = copy.deepcopy(case.result)
    net.train()
    factors = [
        p for m in factor_modules(net) for n, p in m.named_parameters() if not n.endswith("bias")
    ]
    assert factors
    before = [p.detach().clone() for p in factors]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    main_output(net(**case.inputs)).float().pow(2).mean().backward()
    optimizer.step()
    assert any(not torch.equal(p, b) for p, b in zip(factors, before, strict=True))


# ------------------------------------------------------------------ the graph emission
@pytest.mark.parametrize("name", _params(lambda arch: not (arch.causal or arch.seq2seq)))
def test_zoo_graph_result_runs_on_other_batch_and_matches_the_modules_result(case: Case) -> None:
    """``emit="graph"`` on the export path (models whose graph is the model: no cache output):
    a GraphModule over the same plan, not pinned to the example's batch of one."""
    graph = tfx.factorize(
        case.model,
        plan=case.result.tfx_plan,
        example_inputs=case.inputs,
        progress=False,
        emit="graph",
    )
    assert isinstance(graph, torch.fx.GraphModule)
    assert sum(p.numel() for p in graph.parameters()) == graph.tfx_plan.total_params_after
    other = case.other_inputs()
    torch.testing.assert_close(
        main_output(_run(graph, other)), main_output(_run(case.result, other)), **EXACT
    )
