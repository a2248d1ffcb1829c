"""Calibration: statistics against a direct computation, whitened factorization end to end,
the sensitivity strategy, and their errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tfx
from tests.passes._models import MLP, SmallCNN, Untraceable, bert_inputs, max_rel_error, tiny_bert
from tfx import OptionError
from tfx.cost._whiten import relative_output_error
from tfx.passes import capture, find_sites
from tfx.passes._calibrate import collect_statistics, measure_sensitivity, whitened_site


def _inputs_by_hook(
    model: nn.Module, batches: list[tuple[torch.Tensor, ...]]
) -> dict[str, list[torch.Tensor]]:
    """Every linear / conv layer's inputs, recorded directly with forward pre-hooks (float64)."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            handles.append(
                module.register_forward_pre_hook(
                    lambda m, args, name=name: seen.setdefault(name, []).append(
                        args[0].detach().double()
                    )
                )
            )
    with torch.no_grad():
        for batch in batches:
            model(*batch)
    for h in handles:
        h.remove()
    return seen


def test_linear_statistics_match_a_direct_computation() -> None:
    model = MLP().eval()
    batches = [(torch.randn(5, 7, 32),), (torch.randn(3, 7, 32),)]
    captured = capture(model, batches[0])
    sites = find_sites(captured.gm, path=captured.path)
    stats = collect_statistics(captured.gm, sites, batches)
    direct = _inputs_by_hook(model, batches)
    factorizable = [s.name for s in sites if s.info.factorizable]
    assert sorted(stats) == sorted(factorizable) and factorizable
    for name in factorizable:
        rows = torch.cat([x.reshape(-1, x.shape[-1]) for x in direct[name]])
        assert stats[name].count == rows.shape[0]
        torch.testing.assert_close(
            stats[name].covariance(), rows.T @ rows / rows.shape[0], rtol=1e-5, atol=1e-6
        )
    # the captured graph is left as it was: no observer nodes, same outputs
    assert not any("calibration" in str(n.target) for n in captured.gm.graph.nodes)
    assert max_rel_error(model(*batches[0]), captured.gm(*batches[0])) == 0.0


def test_conv_statistics_are_im2col_second_moments() -> None:
    model = SmallCNN().eval()
    batches = [(torch.randn(2, 3, 8, 8),), (torch.randn(3, 3, 8, 8),)]
    captured = capture(model, batches[0])
    sites = find_sites(captured.gm, path=captured.path)
    stats = collect_statistics(captured.gm, sites, batches)
    direct = _inputs_by_hook(model, batches)
    modules = dict(model.named_modules())
    convs = [s for s in sites if s.info.kind == "conv" and s.info.factorizable]
    assert convs
    for site in convs:
        conv = modules[site.name]
        patches = torch.cat(
            [
                F.unfold(
                    x,
                    conv.kernel_size,
                    dilation=conv.dilation,
                    padding=conv.padding,
                    stride=conv.stride,
                )
                .transpose(1, 2)
                .reshape(-1, math.prod(conv.weight.shape[1:]))
                for x in direct[site.name]
            ]
        )
        torch.testing.assert_close(
            stats[site.name].covariance(),
            patches.T @ patches / patches.shape[0],
            rtol=1e-5,
            atol=1e-6,
        )


def test_sites_sharing_an_input_share_statistics() -> None:
    model = tiny_bert()
    inputs = bert_inputs()
    captured = capture(model, inputs)
    sites = find_sites(captured.gm, path=captured.path)
    stats = collect_statistics(captured.gm, sites, [inputs])
    names = [s.name for s in sites if s.info.factorizable and s.info.kind == "linear"]
    query = next(n for n in names if n.endswith("query"))
    key = next(n for n in names if n.endswith("key"))
    assert stats[query] is stats[key]


class _Anisotropic(nn.Module):
    """One linear layer whose input features have geometrically decaying scales (three decades).

    Geometric scales ``q ** i`` are separable over any row-major split of the feature index
    (``q ** (i1 * n2 + i2) = q ** (i1 * n2) * q ** i2``), so the input's second moment is a
    Kronecker product for every tensorization: the case Kronecker-factored whitening is exact for.
    """

    def __init__(self, d: int = 64) -> None:
        super().__init__()
        self.register_buffer("scale", torch.logspace(0, -3, d))
        self.layer = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x * self.scale)


@pytest.mark.parametrize("form", ["svd", "tucker", "tt", "blocktt"])
def test_calibrated_factorize_beats_plain_on_held_out_output_error(form: str) -> None:
    model = _Anisotropic().double().eval()
    calibration = [(torch.randn(256, 64, dtype=torch.float64),) for _ in range(4)]
    held = torch.randn(1024, 64, dtype=torch.float64)
    errors = {}
    for calib in (None, calibration):
        gm = tfx.factorize(
            model,
            0.45,
            example_inputs=calibration[0],
            forms=(form,),
            calibration=calib,
            progress=False,
        )
        assert gm.tfx_plan.choice("layer").form == form
        with torch.no_grad():
            ref = model(held)
            errors[calib is None] = float((gm(held) - ref).norm() / ref.norm())
    assert errors[False] < 0.8 * errors[True], errors


def test_whitened_site_has_the_chosen_structure() -> None:
    """The output-aware weight is exactly representable at the chosen rank: the layer built
    from it reproduces it (so build_layer's re-decomposition loses nothing)."""
    model = _Anisotropic().double().eval()
    batches = [(torch.randn(256, 64, dtype=torch.float64),)]
    for form in ("svd", "tucker", "tt", "blocktt"):
        the_plan = tfx.plan(
            model,
            0.5,
            example_inputs=batches[0],
            forms=(form,),
            calibration=batches,
            progress=False,
        )
        captured = capture(model, batches[0])
        site = next(s for s in find_sites(captured.gm, path=captured.path) if s.name == "layer")
        stats = collect_statistics(captured.gm, [site], batches)["layer"]
        choice = the_plan.choice("layer")
        target = _target(whitened_site(site, choice, stats))
        from tfx.passes import build_layer

        layer = build_layer(dataclass_replace(site, target), choice)
        eye = torch.eye(64, dtype=torch.float64)
        rebuilt = layer(eye).T - (site.bias[:, None] if site.bias is not None else 0)
        torch.testing.assert_close(rebuilt, target, rtol=1e-8, atol=1e-9)
        # and the plan's error estimate is the whitened output error (svd: exact)
        if form == "svd":
            white = stats.whitening()
            cov = white.sqrt[0] @ white.sqrt[0].T
            assert choice.error == pytest.approx(
                relative_output_error(site.weight, target, cov), rel=1e-6
            )


def dataclass_replace(site, weight):  # noqa: ANN001, ANN201 - test helper
    import dataclasses

    return dataclasses.replace(site, weight=weight, svd=None)


def _target(site) -> torch.Tensor:  # noqa: ANN001 - test helper
    """The output-aware weight a whitened site stands for (its SVD's product, if it has one)."""
    if site.svd is None:
        return site.weight
    u, s, vh = site.svd
    return (u * s) @ vh


def test_calibration_on_the_export_path_and_other_sequence_lengths() -> None:
    """HF BERT (torch.export path), calibrated at one sequence length, runs at others."""
    model = tiny_bert()
    gen = torch.Generator().manual_seed(0)
    batches = [
        {
            "input_ids": torch.randint(0, 96, (4, n), generator=gen),
            "attention_mask": torch.ones(4, n, dtype=torch.long),
        }
        for n in (8, 12, 16)
    ]
    gm = tfx.factorize(
        model,
        0.6,
        example_inputs=batches[0],
        calibration=batches,
        strategy="sensitivity",
        progress=False,
    )
    plan = gm.tfx_plan
    assert plan.capture == "export"
    assert plan.total_params_after <= plan.budget_params
    measured = [c for c in plan.choices if c.sensitivity is not None]
    assert measured and all(c.sensitivity >= 0 for c in measured)
    assert any("calibrated on 3 batches" in n for n in plan.notes)
    other = {
        "input_ids": torch.randint(0, 96, (2, 20), generator=gen),
        "attention_mask": torch.ones(2, 20, dtype=torch.long),
    }
    with torch.no_grad():
        assert gm(**other).last_hidden_state.shape == (2, 20, 32)


def test_calibration_on_the_module_swap_path() -> None:
    model = Untraceable().eval()
    batches = [(torch.randn(16, 32),) for _ in range(3)]
    with pytest.warns(tfx.TfxWarning, match="module swap"):
        gm = tfx.factorize(model, 0.5, calibration=batches, strategy="sensitivity", progress=False)
    plan = gm.tfx_plan
    assert plan.capture == "module_swap"
    assert {c.site for c in plan.choices if c.sensitivity is not None} == {"a", "b"}
    assert plan.total_params_after <= plan.budget_params
    with torch.no_grad():
        assert gm(batches[0][0]).shape == (16, 32)


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.8])
def test_sensitivity_strategy_never_exceeds_the_budget(budget: float) -> None:
    model = SmallCNN().eval()
    batches = [(torch.randn(4, 3, 8, 8),) for _ in range(2)]
    gm = tfx.factorize(
        model,
        budget,
        example_inputs=batches[0],
        calibration=batches,
        strategy="sensitivity",
        progress=False,
    )
    total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in gm.parameters()) <= budget * total
    assert gm.tfx_plan.strategy == "sensitivity"


def test_sensitivity_of_a_site_whose_output_is_ignored_is_zero() -> None:
    class Branches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(32, 32)
            self.unused = nn.Linear(32, 32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x) + 0 * self.unused(x)

    model = Branches().eval()
    captured = capture(model, (torch.randn(8, 32),))
    sites = find_sites(captured.gm, path=captured.path)
    sens = measure_sensitivity(captured.gm, sites, (torch.randn(8, 32),))
    assert sens["unused"] == 0.0
    assert sens["used"] > 0.1


def test_sensitivity_needs_calibration() -> None:
    with pytest.raises(OptionError, match="calibration"):
        tfx.factorize(MLP(), 0.5, strategy="sensitivity", progress=False)


def test_empty_calibration_is_an_error() -> None:
    with pytest.raises(OptionError, match="calibration= is empty"):
        tfx.factorize(MLP(), 0.5, calibration=[], progress=False)


def test_calibration_batch_that_does_not_fit_names_the_batch() -> None:
    with pytest.raises(OptionError, match="calibration batch 1 does not fit"):
        tfx.factorize(
            MLP(), 0.5, calibration=[(torch.randn(4, 32),), (torch.randn(4, 17),)], progress=False
        )


def test_calibration_leaves_the_model_untouched() -> None:
    model = MLP().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tfx.factorize(
        model, 0.5, calibration=[(torch.randn(8, 32),)], strategy="sensitivity", progress=False
    )
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(h for m in model.modules() for h in (m._forward_hooks, m._forward_pre_hooks))


def test_sensitivity_needs_floating_outputs() -> None:
    class Argmax(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(32, 64), nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x))).argmax(-1)

    with pytest.raises(OptionError, match="(?s)floating outputs.*logits"):
        tfx.factorize(
            Argmax().eval(),
            0.5,
            example_inputs=(torch.randn(8, 32),),
            calibration=[(torch.randn(8, 32),)],
            strategy="sensitivity",
            progress=False,
        )


def test_calibration_batches_wider_than_a_size_one_example_work() -> None:
    """torch.export keeps a dimension of size 1 at 1; tfx captures a one-row example on a
    two-row copy, so calibration batches of 4 rows run through the graph, and so does the result."""
    model = tiny_bert()
    ids = torch.randint(0, 96, (1, 8))
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    wider = torch.randint(0, 96, (4, 8))
    batch = {"input_ids": wider, "attention_mask": torch.ones_like(wider)}
    gm = tfx.factorize(model, 0.6, example_inputs=example, progress=False, calibration=[batch])
    assert any(c.form != "dense" for c in gm.tfx_plan.choices)
    with torch.no_grad():
        assert gm(**batch).last_hidden_state.shape == (4, 8, 32)


def test_reapplying_a_calibrated_plan_without_calibration_warns(tmp_path) -> None:  # noqa: ANN001
    model = MLP().eval()
    batches = [(torch.randn(16, 32),)]
    gm = tfx.factorize(model, 0.5, example_inputs=batches[0], calibration=batches, progress=False)
    with pytest.warns(tfx.TfxWarning, match="calibration"):
        tfx.factorize(model, plan=gm.tfx_plan, progress=False)
    again = tfx.factorize(
        model, plan=gm.tfx_plan, calibration=batches, progress=False
    )  # no warning
    x = torch.randn(4, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), gm(x))
    path = tmp_path / "calibrated.pt"
    tfx.save(gm, path)
    loaded = tfx.load(model, path)  # restores the saved factors: no warning, same outputs
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), gm(x), rtol=0, atol=0)


def test_padded_positions_are_left_out_of_the_statistics() -> None:
    """Statistics of a padded batch (attention_mask zeros) equal those of its unpadded rows."""
    from tfx.passes import capture, find_sites
    from tfx.passes._calibrate import collect_statistics

    model = tiny_bert().double()
    ids = torch.randint(1, 96, (2, 8))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0  # the first sentence has 5 tokens, then padding
    padded = {"input_ids": ids, "attention_mask": mask}
    captured = capture(model, padded)
    sites = find_sites(captured.gm, path=captured.path)
    stats = collect_statistics(captured.gm, sites, [padded])
    query = next(s for s in sites if s.name.endswith("attention.self.query"))
    got = stats[query.name]
    assert got.count == 13  # 5 + 8 rows, not 16
    rows = []
    hook = model.encoder.layer[0].attention.self.query.register_forward_hook(
        lambda _m, args, _out: rows.append(args[0].detach())
    )
    with torch.no_grad():
        model(**padded)
    hook.remove()
    x = rows[0][mask.bool()]
    torch.testing.assert_close(got.moment, x.T @ x)


def test_calibration_note_says_what_was_masked() -> None:
    model = tiny_bert()
    ids = torch.randint(1, 96, (2, 8))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    gm = tfx.factorize(model, 0.6, example_inputs=batch, calibration=[batch], progress=False)
    assert any(
        "masked positions (padding) left out of the statistics: 25.0% of rows" in n
        for n in gm.tfx_plan.notes
    )


def test_calibration_mask_must_be_a_boolean_mask() -> None:
    model = MLP().eval()
    batches = [(torch.randn(4, 32),)]
    with pytest.raises(OptionError, match="calibration_mask returned Tensor"):
        tfx.factorize(
            model,
            0.5,
            example_inputs=batches[0],
            calibration=batches,
            progress=False,
            calibration_mask=lambda b: torch.ones(4),
        )


def test_embedding_rows_the_data_uses_are_kept_more_precise() -> None:
    """A table calibrated on lookups of a few rows keeps them closer than an uncalibrated one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(200, 32), nn.Linear(32, 8)).eval()
    used = torch.arange(20)
    batches = [(used[torch.randint(0, 20, (16, 12))],) for _ in range(4)]
    errors = {}
    for calibration in (None, batches):
        gm = tfx.factorize(
            model,
            0.6,
            example_inputs=batches[0],
            calibration=calibration,
            forms=("svd",),
            kinds=("embedding",),
            progress=False,
        )
        assert gm.tfx_plan.choice("0").form == "svd"
        with torch.no_grad():
            table = gm.get_submodule("0").weight.to_matrix()
            original = model[0].weight[used]
            errors[calibration is None] = float((table[used] - original).norm() / original.norm())
    assert errors[False] < 0.5 * errors[True]
    assert any("weighted by how often the data looks up each row" in n for n in gm.tfx_plan.notes)


def test_row_counts_skip_out_of_range_indices() -> None:
    from tfx.cost._whiten import RowCounts

    counts = RowCounts(5)
    counts.update(torch.tensor([0, 1, 1, 4]))
    assert counts.counts.tolist() == [1.0, 2.0, 0.0, 0.0, 1.0] and counts.count == 4
    counts.update(torch.tensor([7]))
    assert counts.unsupported


def test_sensitivity_ignores_padded_positions() -> None:
    """The same sentences padded to different lengths give the same sensitivities."""
    from tfx.passes import capture, find_sites
    from tfx.passes._calibrate import measure_sensitivity

    model = tiny_bert().double()
    ids = torch.randint(1, 96, (2, 6))
    results = []
    for pad in (0, 5):
        padded = torch.cat([ids, torch.zeros(2, pad, dtype=ids.dtype)], dim=1)
        mask = torch.cat(
            [torch.ones(2, 6, dtype=torch.long), torch.zeros(2, pad, dtype=torch.long)], dim=1
        )
        batch = {"input_ids": padded, "attention_mask": mask}
        captured = capture(model, batch)
        sites = find_sites(captured.gm, path=captured.path)
        results.append(measure_sensitivity(captured.gm, sites, batch, mask=mask.bool()))
    large = {name: value for name, value in results[0].items() if value > 1e-2}
    assert large  # sites whose error reaches the output
    for name, value in large.items():  # the noise draws differ (other shapes), the measure does not
        assert results[1][name] == pytest.approx(value, rel=0.2)  # unmasked: 33% apart here


def test_embedding_row_counts_leave_padding_out() -> None:
    from tfx.passes import capture, find_sites
    from tfx.passes._calibrate import collect_statistics

    model = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 4)).eval()
    ids = torch.tensor([[3, 4, 0, 0], [5, 0, 0, 0]])
    batch = {"ids": ids}

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(
            self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
        ) -> torch.Tensor:
            return self.net(ids)

    wrapped = Wrap().eval()
    batch = {"ids": ids, "attention_mask": (ids != 0).long()}
    captured = capture(wrapped, batch)
    sites = find_sites(captured.gm, path=captured.path)
    stats = collect_statistics(captured.gm, sites, [batch])
    counts = stats["net.0"]
    assert counts.count == 3 and counts.counts[0] == 0


def _linear_site(weight: torch.Tensor):  # noqa: ANN202 - test helper
    from tfx.cost._records import SiteInfo
    from tfx.passes._match import Site

    info = SiteInfo("layer", "linear", tuple(weight.shape), tokens=16)
    return Site(info, None, None, weight, None, "layer.weight")  # type: ignore[arg-type]


def _choice(rank: int, shape: tuple[int, int] = (96, 80)):  # noqa: ANN202 - test helper
    from tfx.cost._records import Choice

    (out, n_in), params = shape, rank * (1 + sum(shape))
    return Choice(
        "layer", "linear", shape, "svd", ((out,), (n_in,)), rank, out * n_in, params, 0, 0, 0.0
    )


@pytest.mark.parametrize("out", [320, 240], ids=["tall", "wide"])
@pytest.mark.parametrize("rank", [20, 200])
def test_whitened_svd_target_is_the_whitened_truncation_mapped_back(rank: int, out: int) -> None:
    """U (U^T W) with U the leading left subspace of W L equals [W L]_r L^-1, computed here
    with an eigendecomposition root (not the Cholesky factor) and a full SVD in float64."""
    from tfx.cost._whiten import InputStats

    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(out, 300, dtype=torch.float64, generator=gen)
    scales = torch.logspace(0, -2, 300, dtype=torch.float64)
    stats = InputStats(300)
    stats.update(torch.randn(1200, 300, dtype=torch.float64, generator=gen) * scales)
    target = _target(whitened_site(_linear_site(weight), _choice(rank, (out, 300)), stats))
    cov = stats.covariance()
    damped = cov + 1e-2 * cov.diagonal().mean() * torch.eye(300, dtype=torch.float64)
    values, vectors = torch.linalg.eigh(damped)
    root = vectors * values.sqrt()
    u, s, vh = torch.linalg.svd(weight @ root)
    expected = ((u[:, :rank] * s[:rank]) @ vh[:rank]) @ torch.linalg.inv(root)
    torch.testing.assert_close(target, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("shape", [(96, 80), (80, 96)], ids=["tall", "wide"])
def test_a_whitened_svd_layer_is_built_from_its_svd(monkeypatch, shape) -> None:  # noqa: ANN001
    """The layer of a calibrated low-rank site holds whitened_site's SVD as its factors: no
    second decomposition, no dense target, and its weight is the output-aware truncation."""
    from tfx.cost._whiten import InputStats
    from tfx.passes._decompose import decompose
    from tfx.tensors import _decompose

    calls = []
    real = _decompose.truncated_svd

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(_decompose, "truncated_svd", spy)
    out, n_in = shape
    weight = torch.randn(out, n_in)
    stats = InputStats(n_in)
    stats.update(torch.randn(400, n_in) * torch.logspace(0, -2, n_in))
    site = _linear_site(weight)
    layer = decompose(site, _choice(60, shape), stats)
    assert calls == []
    whitened = whitened_site(site, _choice(60, shape), stats)
    assert whitened.svd is not None and whitened.weight is site.weight
    torch.testing.assert_close(layer(torch.eye(n_in)).T, _target(whitened), rtol=1e-5, atol=1e-5)


def test_embedding_basis_spans_the_weighted_tables_leading_right_singular_vectors() -> None:
    from tfx.cost._whiten import RowCounts
    from tfx.passes._calibrate import embedding_basis

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(40, 12, dtype=torch.float64, generator=gen)
    counts = RowCounts(40)
    counts.update(torch.randint(0, 10, (200,), generator=gen))  # rows 10..39 never looked up
    basis = embedding_basis(weight, counts, 0.25)
    d = (counts.counts + counts.count / 40).sqrt()
    _, _, vh = torch.linalg.svd(d[:, None] * weight, full_matrices=False)
    assert basis.shape == (12, 3)
    torch.testing.assert_close(basis.T @ basis, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(basis @ basis.T, vh[:3].T @ vh[:3])


def test_embedding_sensitivity_is_the_effect_of_its_projected_lookups() -> None:
    """The word embedding's sensitivity: the model's relative output change when its lookups
    are projected as a rank-k factorization fitted to the batch's counts would, divided by the
    relative error of that projection (real positions only), computed here with a hook."""
    from tfx.passes._calibrate import calibrate

    model = tiny_bert().double()
    batch = bert_inputs(2, 8)
    batch["attention_mask"][1, 5:] = 0
    captured = capture(model, batch)
    sites = find_sites(captured.gm, path=captured.path)
    got = calibrate(captured.gm, sites, [batch], sensitivity=True).sensitivity
    name = "embeddings.word_embeddings"
    table = model.embeddings.word_embeddings.weight.detach()
    keep = batch["attention_mask"].bool()
    counts = torch.bincount(batch["input_ids"][keep], minlength=table.shape[0]).double()
    d = (counts + counts.sum() / table.shape[0]).sqrt()
    _, _, vh = torch.linalg.svd(d[:, None] * table, full_matrices=False)
    projector = vh[:8].T @ vh[:8]  # a quarter of the width, 32
    k = keep[..., None].double()
    cut: dict[str, float] = {}

    def project(module: nn.Module, args: object, out: torch.Tensor) -> torch.Tensor:
        removed = (out - out @ projector) * k
        cut["error"] = float(removed.square().sum() / (out * k).square().sum())
        return out - removed

    def outputs() -> list[torch.Tensor]:
        with torch.no_grad():
            result = model(**batch)
        return [result.last_hidden_state * k, result.pooler_output]

    reference = outputs()
    handle = model.embeddings.word_embeddings.register_forward_hook(project)
    try:
        changed = outputs()
    finally:
        handle.remove()
    change = sum(float((a - b).square().sum()) for a, b in zip(changed, reference, strict=True))
    norm = sum(float(r.square().sum()) for r in reference)
    expected = change / norm / cut["error"]
    assert expected > 0.1  # the projection reaches the output
    assert got[name] == pytest.approx(expected, rel=1e-9)


def test_embedding_probe_that_removes_nothing_falls_back_to_noise() -> None:
    """Only row 0 is looked up and it is the table's leading direction: the projection keeps
    every lookup whole, so the embedding is measured with noise, as without a basis."""
    from tfx.passes._calibrate import calibrate

    table = nn.Embedding(16, 16)
    with torch.no_grad():
        table.weight.copy_(torch.diag(torch.linspace(10, 1, 16)))
    model = nn.Sequential(table, nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)).double().eval()
    batch = (torch.zeros(3, 5, dtype=torch.long),)
    captured = capture(model, batch)
    sites = find_sites(captured.gm, path=captured.path)
    got = calibrate(captured.gm, sites, [batch], sensitivity=True).sensitivity
    noise = measure_sensitivity(captured.gm, sites, batch)
    assert got["0"] == noise["0"] and noise["0"] > 0
