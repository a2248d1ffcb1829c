"""FLOPs and bytes of candidates: hand counts, the cheaper order, the emitted module's real FLOPs.

Convention (``tfx.cost._flops``): a pairwise step that sums letters of total size > 1 is a
(batched) matmul, ``2 * m * n * k`` FLOPs -- what ``torch.utils.flop_counter.FlopCounterMode``
counts for ``mm``/``bmm``/``addmm`` and convolutions; any other product step (a broadcast
scaling, an outer product) is one FLOP per output element -- what FlopCounterMode leaves
out and :class:`_Multiplies` below counts (``aten.mul`` on floating tensors). Bias additions
are counted by neither.
"""

from __future__ import annotations

import dataclasses
import math

import opt_einsum
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import tfx
from tfx.cost import Choice, FactorizationPlan, Option, SiteInfo, candidates, dense_option
from tfx.cost._flops import _path_cost, batch_bucket, order_costs, price
from tfx.functional._planning import planned_batch
from tfx.passes import build_layer, capture, find_sites


class _Multiplies(TorchDispatchMode):
    """Counts the elements written by floating-point ``aten.mul`` (elementwise product steps)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.mul.Tensor and out.is_floating_point():
            self.count += out.numel()
        return out


def _site(layer: nn.Module, x: torch.Tensor):
    captured = capture(nn.Sequential(layer).double(), (x,))
    (site,) = find_sites(captured.gm, path=captured.path)
    return site


def _choice(site, option: Option, order: str) -> Choice:
    info = site.info
    return Choice(
        info.name,
        info.kind,
        info.weight_shape,
        option.form,
        option.tensorized_shape,
        option.rank,
        info.dense_params,
        option.params,
        0,
        option.flops,
        option.error,
        tokens=info.tokens,
        order=order,
    )


def _measured(site, option: Option, order: str, x: torch.Tensor) -> int:
    """FLOPs the emitted layer runs, traced as rewrite splices it.

    FlopCounterMode's count plus the elementwise products.
    """
    layer = build_layer(site, _choice(site, option, order))
    with planned_batch(site.info.tokens):
        traced = torch.fx.symbolic_trace(layer)
    with torch.no_grad(), FlopCounterMode(display=False) as counter, _Multiplies() as products:
        traced(x)
    return counter.get_total_flops() + products.count


# ------------------------------------------------------------------ hand counts
@pytest.mark.parametrize(
    ("tokens", "rows", "cols", "rank"), [(4, 12, 8, 3), (64, 48, 32, 8), (1, 40, 40, 16)]
)
def test_svd_linear_flops_equal_a_hand_count(tokens: int, rows: int, cols: int, rank: int) -> None:
    site = SiteInfo(
        "fc", "linear", (rows, cols), tokens=tokens
    )  # tokens: powers of 4, their own bucket
    option = Option("svd", ((rows,), (cols,)), rank, rank * (1 + rows + cols), 0, 0.0)
    # x @ V, then U: 2 t r (in + out); the weights scale the smallest of V, x V and U.
    expected = 2 * tokens * rank * (rows + cols) + rank * min(tokens, rows, cols)
    assert order_costs(site, option)["factors"].flops == expected


def test_cp_reconstruct_flops_equal_a_hand_count() -> None:
    site = SiteInfo("fc", "linear", (12, 8), tokens=5)
    option = Option("svd", ((12,), (8,)), 3, 3 * 21, 0, 0.0)
    # weights into the smaller factor (8 x 3), U diag(w) V^T (2 * 12 * 8 * 3), then the dense layer.
    expected = 8 * 3 + 2 * 12 * 8 * 3 + 2 * 5 * 12 * 8
    assert order_costs(site, option)["reconstruct"].flops == expected


def test_tt_embedding_flops_equal_a_hand_count() -> None:
    site = SiteInfo("emb", "embedding", (60, 24), tokens=7)
    rank = (1, 2, 3, 4, 5, 2, 1)
    option = Option("tt", ((3, 4, 5), (2, 3, 4)), rank, 0, 0, 0.0)
    t = 7
    rows = (
        2 * t * 2 * 3 + 2 * t * 3 * 4
    )  # chain the gathered row cores: (t, r1) x (t, r1, r2), then r2 x r3
    cols = (
        2 * t * 1 * 4 * 2 * 5 + 2 * t * 2 * 5 * 3 * 2 + 2 * t * 6 * 2 * 4 * 1
    )  # one column core at a time
    assert order_costs(site, option)["factors"].flops == rows + cols


@pytest.mark.parametrize(
    ("equation", "shapes"),
    [
        (
            "nBC,abc,Aa,Bb,Cc->nA",
            ((16, 4, 6), (3, 2, 3), (8, 3), (4, 2), (6, 3)),
        ),  # Tucker input contraction
        (
            "nCD,Ab,bBc,cCd,dD->nAB",
            ((64, 4, 5), (3, 2), (2, 4, 3), (3, 4, 2), (2, 5)),
        ),  # TT input contraction
    ],
)
def test_path_flops_equal_opt_einsum_count_when_every_step_sums(equation: str, shapes) -> None:
    # opt_einsum counts 2 x size for a step with a summed index: the same as ours when every
    # step sums.
    _, info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize="optimal")
    assert all(c[1] for c in info.contraction_list)  # every step sums an index
    assert _path_cost(equation, tuple(shapes), None, None, 0).flops == info.opt_cost


def test_path_flops_are_priced_at_tokens_along_the_bucket_path() -> None:
    equation, shapes = "nB,z,Az,Bz->nA", ((16, 8), (3,), (12, 3), (8, 3))
    at_16 = _path_cost(equation, shapes, None, "n", 16).flops
    at_13 = _path_cost(equation, shapes, None, "n", 13).flops
    assert at_16 - at_13 == 3 * (2 * 3 * (8 + 12))  # three rows fewer through both matmuls


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 15, 16, 17, 64, 65, 1000, 1024, 4097])
def test_batch_bucket_agrees_with_functional(n: int) -> None:
    from tfx.functional._planning import batch_bucket as functional_bucket

    assert batch_bucket(n) == functional_bucket(n)


# ------------------------------------------------------------------ the cheaper order
_SITES = [
    SiteInfo("fc", "linear", (48, 36), tokens=3),
    SiteInfo("fc", "linear", (96, 64), tokens=500),
    SiteInfo("emb", "embedding", (97, 32), tokens=40),
    SiteInfo("conv", "conv", (12, 8, 3, 3), tokens=2 * 81),
    SiteInfo("conv", "conv", (24, 16, 5), tokens=13, in_tokens=30),
]


@pytest.mark.parametrize("site", _SITES, ids=lambda s: f"{s.kind}{s.weight_shape}")
def test_chosen_order_never_costs_more_than_either(site: SiteInfo) -> None:
    torch.manual_seed(0)
    options = candidates(site, torch.randn(site.weight_shape))
    assert len(options) > 5
    for option in options:
        if option.form == "dense":
            assert option.order == "dense"
            continue
        costs = order_costs(site, option)
        assert option.order in costs
        assert option.flops == min(c.flops for c in costs.values())
        assert option.bytes == costs[option.order].elements * 4


def test_reconstruct_is_chosen_when_it_is_cheaper() -> None:
    # A full-rank Tucker-2 conv: on many positions the rebuilt kernel's one convolution beats
    # pointwise + core + pointwise; on one position the factors win.
    option = Option("tucker", None, (12, 8, 3, 3), 0, 0, 0.0)
    assert (
        price(SiteInfo("conv", "conv", (12, 8, 3, 3), tokens=10_000), option).order == "reconstruct"
    )
    assert price(SiteInfo("conv", "conv", (12, 8, 3, 3), tokens=1), option).order == "factors"


def test_linear_factor_path_may_rebuild_inside_and_then_ties() -> None:
    # opt_einsum may contract the factors first: never dearer than the explicit rebuild.
    site = SiteInfo("fc", "linear", (36, 48), tokens=10_000)
    costs = order_costs(site, Option("tucker", ((6, 6), (6, 8)), (6, 6, 6, 8), 0, 0, 0.0))
    assert costs["factors"].flops <= costs["reconstruct"].flops


# ------------------------------------------------------------------ bytes
@given(tokens=st.integers(17, 63), site=st.sampled_from(_SITES))
def test_bytes_are_positive_and_grow_with_tokens_within_a_bucket(
    tokens: int, site: SiteInfo
) -> None:
    torch.manual_seed(0)
    small, large = (
        dataclasses.replace(site, tokens=tokens),
        dataclasses.replace(site, tokens=tokens + 1),
    )
    weight = torch.randn(site.weight_shape)
    for option in candidates(small, weight, ("svd", "tucker", "tt"))[::7]:
        if option.form == "dense":
            continue
        for order, cost in order_costs(small, option).items():
            assert cost.elements > 0
            assert order_costs(large, option)[order].elements > cost.elements
            assert order_costs(large, option)[order].flops >= cost.flops


@pytest.mark.parametrize("kind", ["linear", "conv", "embedding"])
def test_dense_bytes_grow_with_tokens(kind: str) -> None:
    shape = {"linear": (32, 16), "conv": (8, 4, 3, 3), "embedding": (50, 16)}[kind]
    sizes = [dense_option(SiteInfo("s", kind, shape, tokens=t), 2).bytes for t in (1, 2, 64, 1000)]
    assert sizes[0] > 0
    assert sizes == sorted(set(sizes))


def test_bytes_scale_with_itemsize() -> None:
    site = SiteInfo("fc", "linear", (48, 36), tokens=8)
    option = Option("tt", ((6, 8), (6, 6)), (1, 4, 4, 4, 1), 0, 0, 0.0)
    assert price(site, option, 2).bytes * 4 == price(site, option, 8).bytes


# ------------------------------------------------------------------ the emitted module
_CASES = {
    "linear": (lambda: nn.Linear(48, 36), lambda: torch.randn(3, 5, 48, dtype=torch.float64)),
    "linear-padded": (
        lambda: nn.Linear(1019, 40),
        lambda: torch.randn(70, 1019, dtype=torch.float64),
    ),
    "embedding": (lambda: nn.Embedding(60, 24), lambda: torch.randint(0, 60, (3, 40))),
    "embedding-padded": (lambda: nn.Embedding(97, 32), lambda: torch.randint(0, 97, (2, 9))),
    "conv": (
        lambda: nn.Conv2d(8, 12, 3, padding=1, stride=2),
        lambda: torch.randn(2, 8, 9, 9, dtype=torch.float64),
    ),
    "conv1d": (
        lambda: nn.Conv1d(16, 24, 5, stride=2),
        lambda: torch.randn(1, 16, 30, dtype=torch.float64),
    ),
}


def _forms(case: str) -> tuple[str, ...]:
    if case.startswith("conv"):
        return ("svd", "tucker", "tt")
    if case.endswith("padded"):  # a prime size: only the padded TT / BlockTT tensorizations
        return ("tt", "blocktt")
    return ("svd", "tucker", "tt", "blocktt", "cp")


@pytest.mark.parametrize(
    ("case", "form"), [(c, f) for c in _CASES for f in _forms(c)], ids=lambda v: str(v)
)
@pytest.mark.parametrize("order", ["factors", "reconstruct"])
def test_emitted_layer_runs_exactly_the_priced_flops(case: str, form: str, order: str) -> None:
    torch.manual_seed(0)
    make_layer, make_x = _CASES[case]
    x = make_x()
    site = _site(make_layer(), x)
    options = [o for o in candidates(site.info, site.weight, (form,)) if o.form == form]
    if case.endswith("padded"):  # the tensorizations of the zero-padded weight
        options = [
            o
            for o in options
            if math.prod(map(math.prod, o.tensorized_shape)) != site.weight.numel()
        ]
    assert options
    for option in options[:: max(1, len(options) // 3)]:
        assert (
            _measured(site, option, order, x) == order_costs(site.info, option)[order].flops
        ), option


def test_emitted_cp_conv_runs_at_least_the_priced_flops() -> None:
    # CP's separable depthwise steps also visit the padding halo, which the estimate leaves out.
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    site = _site(nn.Conv2d(8, 12, 3, padding=1), x)
    (option, *_) = [o for o in candidates(site.info, site.weight, ("cp",)) if o.form == "cp"]
    measured = _measured(site, option, "factors", x)
    priced = order_costs(site.info, option)["factors"].flops
    assert priced <= measured <= 1.2 * priced
    assert (
        _measured(site, option, "reconstruct", x)
        == order_costs(site.info, option)["reconstruct"].flops
    )


def test_factorize_plan_flops_equal_the_factorized_models() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 48), nn.ReLU(), nn.Linear(48, 10)
    ).double()
    x = torch.randn(
        24, 64, dtype=torch.float64
    )  # 24 rows: planned for the bucket of 64, priced at 24
    gm = tfx.factorize(model, 0.5, example_inputs=(x,), progress=False)
    plan = gm.tfx_plan
    assert any(c.form != "dense" for c in plan.choices)
    assert all(c.order in ("factors", "reconstruct", "dense") for c in plan.choices)
    with torch.no_grad(), FlopCounterMode(display=False) as counter, _Multiplies() as products:
        gm(x)
    assert counter.get_total_flops() + products.count == plan.total_flops_after


def test_build_layer_follows_the_choice_order() -> None:
    x = torch.randn(4, 48, dtype=torch.float64)
    site = _site(nn.Linear(48, 36), x)
    option = next(o for o in candidates(site.info, site.weight, ("tt",)) if o.form == "tt")
    assert build_layer(site, _choice(site, option, "reconstruct")).implementation == "reconstructed"
    assert build_layer(site, _choice(site, option, "factors")).implementation == "factorized"
    assert (
        build_layer(site, _choice(site, option, "auto")).implementation == "auto"
    )  # plans saved before


# ------------------------------------------------------------------ plans
def test_old_plan_json_without_bytes_or_order_loads() -> None:
    row = Choice(
        "fc", "linear", (8, 4), "svd", ((8,), (4,)), 2, 32, 26, 64, 50, 0.1, tokens=2
    ).to_dict()
    for key in ("bytes_before", "bytes_after", "order"):
        del row[key]
    old = {"choices": [row], "total_params_before": 40, "fixed_params": 8, "budget_params": 30.0}
    plan = FactorizationPlan.from_dict(old)
    (choice,) = plan.choices
    assert (choice.bytes_before, choice.bytes_after, choice.order) == (0, 0, "auto")
    assert plan.total_bytes_after == 0
    assert FactorizationPlan.from_json(plan.to_json()) == plan


def test_plan_json_round_trips_bytes_and_order() -> None:
    choice = Choice(
        "fc",
        "linear",
        (8, 4),
        "tt",
        ((2, 4), (2, 2)),
        (1, 2, 2, 2, 1),
        32,
        20,
        64,
        50,
        0.1,
        tokens=2,
        bytes_before=300,
        bytes_after=200,
        order="reconstruct",
    )
    plan = FactorizationPlan([choice], 40, 8, 30.0)
    again = FactorizationPlan.from_json(plan.to_json())
    assert again == plan
    assert (again.choices[0].bytes_after, again.choices[0].order) == (200, "reconstruct")
    assert "rebuilds weight" in plan.table()
