"""Sibling linears that read one input share an input basis when that is the better option."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch import nn

import tfx


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class Attention(nn.Module):
    """Three projections of one input, as in self-attention, and an output projection."""

    def __init__(self, dim: int = 64, inner: int = 48, basis: int | None = 8) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(dim, inner) for _ in range(3))
        self.out = nn.Linear(inner, dim)
        if basis is not None:  # q, k, v read the input through one rank-``basis`` subspace
            shared = torch.randn(basis, dim) / dim**0.5
            with torch.no_grad():
                for layer in (self.q, self.k, self.v):
                    layer.weight.copy_(torch.randn(inner, basis) @ shared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        attn = torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1)
        return self.out(attn @ v)


def siblings(plan: tfx.FactorizationPlan) -> list[tfx.cost.Choice]:
    return [plan.choice(s) for s in ("q", "k", "v")]


@pytest.fixture(scope="module")
def low_rank_attention() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return Attention().eval(), torch.randn(4, 10, 64)


def test_siblings_with_a_common_basis_take_the_joint_option(low_rank_attention) -> None:  # noqa: ANN001
    model, x = low_rank_attention
    result = tfx.factorize(
        model, 0.5, example_inputs=(x,), calibration=[(x,)], forms=("svd",), progress=False
    )
    rows = siblings(result.tfx_plan)
    assert (
        {r.group for r in rows} == {"q+2"}
        and len({r.rank for r in rows}) == 1
        and rows[0].rank >= 8
    )
    assert all(r.error < 1e-6 for r in rows)
    assert n_params(result) == result.tfx_plan.total_params_after <= 0.5 * n_params(model)
    with torch.no_grad():
        torch.testing.assert_close(result(x), model(x), rtol=1e-4, atol=1e-5)


def test_graph_result_computes_the_shared_basis_product_once(low_rank_attention) -> None:  # noqa: ANN001
    model, x = low_rank_attention
    gm = tfx.factorize(
        model, 0.5, example_inputs=(x,), calibration=[(x,)], forms=("svd",), progress=False
    )
    assert isinstance(gm, torch.fx.GraphModule)
    basis = gm.get_submodule("q").weight.factors.factor_1
    reads = [
        n for n in gm.graph.nodes if n.op == "get_attr" and gm.get_parameter(str(n.target)) is basis
    ]
    assert len(reads) == 1
    assert (
        len([u for u in reads[0].users if u.op == "call_function"]) == 1
    )  # one x @ V for q, k and v


def test_modules_result_members_hold_one_basis() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=96,
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    model = transformers.BertModel(config).eval()
    basis = torch.randn(8, 64) / 8
    attention = model.encoder.layer[0].attention.self
    with torch.no_grad():
        for layer in (attention.query, attention.key, attention.value):
            layer.weight.copy_(torch.randn(64, 8) @ basis)
    ids = torch.randint(0, 96, (2, 12))
    batch = {"input_ids": ids}
    result = tfx.factorize(
        model, 0.6, example_inputs=batch, calibration=[batch], forms=("svd",), progress=False
    )
    assert result.tfx_plan.emit == "modules"
    got = result.encoder.layer[0].attention.self
    rows = [
        result.tfx_plan.choice(f"encoder.layer.0.attention.self.{n}")
        for n in ("query", "key", "value")
    ]
    assert len({r.group for r in rows}) == 1 and rows[0].group is not None
    assert (
        got.query.weight.factors.factor_1
        is got.key.weight.factors.factor_1
        is got.value.weight.factors.factor_1
    )
    assert n_params(result) == result.tfx_plan.total_params_after


def test_random_siblings_keep_separate_options_when_better() -> None:
    torch.manual_seed(0)
    model = Attention(basis=None).eval()
    x = torch.randn(4, 10, 64)
    result = tfx.factorize(
        model, 0.5, example_inputs=(x,), calibration=[(x,)], forms=("svd",), progress=False
    )
    assert all(r.group is None for r in siblings(result.tfx_plan))


def test_shared_bases_need_calibration_data(low_rank_attention) -> None:  # noqa: ANN001
    """Without data the joint error is a weight error, which flatters the joint option."""
    model, x = low_rank_attention
    result = tfx.factorize(model, 0.5, example_inputs=(x,), forms=("svd",), progress=False)
    assert all(r.group is None for r in siblings(result.tfx_plan))


def test_joint_basis_at_full_rank_reproduces_every_member_in_float64() -> None:
    torch.manual_seed(0)
    model = Attention(basis=None).double().eval()
    x = torch.randn(3, 5, 64, dtype=torch.float64)
    plan = tfx.plan(model, 1.0, example_inputs=(x,), forms=("svd",), progress=False)
    rank = 64  # min(3 * 48, 64)
    choices = []
    for c in plan.choices:
        if c.site in ("q", "k", "v"):
            c = dataclasses.replace(
                c, form="svd", tensorized_shape=((48,), (64,)), rank=rank, group="q+2"
            )
        choices.append(c)
    result = tfx.factorize(
        model, plan=dataclasses.replace(plan, choices=choices), example_inputs=(x,), progress=False
    )
    torch.testing.assert_close(result(x), model(x))
    assert n_params(result) == result.tfx_plan.total_params_after
    assert result.tfx_plan.choice("k").params_after == 48 * rank  # V and w are counted at q


def test_saved_plan_with_a_shared_basis_loads_bit_for_bit(low_rank_attention, tmp_path) -> None:  # noqa: ANN001
    model, x = low_rank_attention
    result = tfx.factorize(
        model, 0.5, example_inputs=(x,), calibration=[(x,)], forms=("svd",), progress=False
    )
    tfx.save(result, tmp_path / "attention.tfx")
    with (
        warnings.catch_warnings()
    ):  # re-applied without the calibration data: the factors are loaded anyway
        warnings.simplefilter("ignore", tfx.TfxWarning)
        loaded = tfx.load(
            Attention(basis=None).eval(), tmp_path / "attention.tfx", example_inputs=(x,)
        )
    assert {r.group for r in siblings(loaded.tfx_plan)} == {"q+2"}
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result(x), rtol=0, atol=0)


@pytest.mark.parametrize("calibrated", [False, True])
def test_member_energies_from_grams_equal_the_stacked_svd_in_float64(calibrated: bool) -> None:
    """Each member's cumulative energy in the joint directions, from the members' n x n Grams,
    equals the one read off the SVD of the stacked (whitened) weights."""
    from tfx._shared import SiblingGroup, member_energies
    from tfx.cost._whiten import InputStats
    from tfx.passes._match import find_module_sites

    torch.manual_seed(0)
    model = Attention(dim=40, inner=24, basis=None).double()
    sites = find_module_sites(model)
    members = [i for i, s in enumerate(sites) if s.name in ("q", "k", "v")]
    stats = None
    if calibrated:
        stats = InputStats(40)
        stats.update(torch.randn(300, 40, dtype=torch.float64) * torch.linspace(0.1, 3, 40))
    got = member_energies(SiblingGroup(members, "q+2"), sites, stats)
    stacked = torch.cat([sites[i].weight.detach() for i in members])
    if stats is not None:
        stacked = stats.whitening().apply(stacked)
    u, s, _ = torch.linalg.svd(stacked, full_matrices=False)
    scaled = (u * s)[:, : min(stacked.shape)]
    for k, energy in enumerate(got):
        want = scaled[24 * k : 24 * (k + 1)].square().sum(0).cumsum(0)
        torch.testing.assert_close(energy, want, rtol=1e-9, atol=1e-9 * float(want[-1]))


def test_module_siblings_share_one_moment_observed_once() -> None:
    """Sites found as modules that share= names together get one InputStats, hooked once, equal
    to each one's own."""
    from tfx.passes._calibrate import collect_statistics
    from tfx.passes._match import find_module_sites

    torch.manual_seed(0)
    model = Attention(dim=64, inner=48, basis=None).double()
    sites = [s for s in find_module_sites(model) if s.name in ("q", "k", "v")]
    assert all(s.info.factorizable for s in sites)
    root = nn.Module()
    root.model = model
    root.forward = lambda x: model(x)  # type: ignore[method-assign]
    batches = [(torch.randn(2, 5, 64, dtype=torch.float64),) for _ in range(3)]
    alone = collect_statistics(root, sites, batches, mask_fn=None)
    shared = collect_statistics(root, sites, batches, mask_fn=None, share=[["q", "k", "v"]])
    assert shared["q"] is shared["k"] is shared["v"]
    assert alone["q"] is not alone["k"]
    assert shared["q"].count == alone["q"].count == 30
    torch.testing.assert_close(shared["v"].moment, alone["v"].moment, rtol=0, atol=0)
