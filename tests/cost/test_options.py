"""Candidates: params equal the emitted module's; the error is exact (svd) or an upper bound."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from tfx.cost import FORMS, Choice, SiteInfo, candidates, dense_option
from tfx.passes import build_layer, capture, find_sites

_DECOMPOSED = ("svd", "tucker", "tt", "blocktt")  # cp: fitted, and slow to emit; tested apart


# ------------------------------------------------------------------ sites
def _site(layer: nn.Module, x: torch.Tensor):
    """The (single) site of a one-layer float64 model, captured with shapes."""
    captured = capture(nn.Sequential(layer).double(), (x,))
    (site,) = find_sites(captured.gm, path=captured.path)
    return site


def linear_site(out: int, inp: int, bias: bool = True):
    return _site(nn.Linear(inp, out, bias=bias), torch.randn(3, inp, dtype=torch.float64))


def embedding_site(num: int, dim: int):
    return _site(nn.Embedding(num, dim), torch.randint(0, num, (2, 5)))


def conv_site(out: int, inp: int, kernel: tuple[int, ...], bias: bool = True):
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[len(kernel) - 1](inp, out, kernel, bias=bias)
    return _site(conv, torch.randn(1, inp, *(k + 2 for k in kernel), dtype=torch.float64))


_SIZES = st.sampled_from([2, 3, 4, 5, 6, 8, 9, 10, 12, 16, 18, 20, 24, 30, 32, 36, 48, 64])


@st.composite
def sites(draw: st.DrawFn, kind: str):
    """A factorizable float64 site of ``kind`` with a small random shape."""
    if kind == "conv":
        out, inp = draw(st.integers(2, 16)), draw(st.integers(2, 12))
        kernel = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
        assume(out * inp * math.prod(kernel) >= 256)
        site = conv_site(out, inp, kernel, bias=draw(st.booleans()))
    else:
        rows, cols = draw(_SIZES), draw(_SIZES)
        assume(rows * cols >= 256)
        site = (
            embedding_site(rows, cols)
            if kind == "embedding"
            else linear_site(rows, cols, draw(st.booleans()))
        )
    assert site.info.factorizable, site.info.reason
    return site


def _choice(site, option) -> Choice:
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
    )


def _emitted_params(site, option) -> int:
    layer = build_layer(site, _choice(site, option))
    bias = 0 if site.bias is None else site.bias.numel()
    return sum(p.numel() for p in layer.parameters()) - bias


def _emitted_error(site, option) -> float:
    weight = build_layer(site, _choice(site, option)).weight
    with torch.no_grad():
        dense = weight.to_matrix() if hasattr(weight, "to_matrix") else weight.to_tensor()
    return float((dense.reshape(site.weight.shape) - site.weight).norm() / site.weight.norm())


def _pick(draw: st.DrawFn, options, form: str):
    """One option of ``form``, drawn; None when the site has none."""
    of_form = [o for o in options if o.form == form]
    return draw(st.sampled_from(of_form)) if of_form else None


_CASES = [
    (kind, form)
    for kind in ("linear", "conv", "embedding")
    for form in _DECOMPOSED
    if not (kind == "conv" and form == "blocktt")
]
_SETTINGS = settings(
    max_examples=15, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)


def _drawn_option(data, kind, form):  # noqa: ANN001, ANN202 - hypothesis helper
    """A drawn site of ``kind`` and one of its ``form`` candidates (skipping sites without one)."""
    site = data.draw(sites(kind))
    option = _pick(data.draw, candidates(site.info, site.weight, forms=(form,)), form)
    assume(option is not None)
    return site, option


# ---------------------------------------------------------------- params
@pytest.mark.parametrize(("kind", "form"), _CASES)
@_SETTINGS
@given(data=st.data())
def test_candidates_params_equal_emitted_module(kind, form, data) -> None:
    site, option = _drawn_option(data, kind, form)
    assert option.params == _emitted_params(site, option)


@pytest.mark.parametrize(
    "make",
    [lambda: linear_site(36, 24), lambda: embedding_site(24, 36), lambda: conv_site(8, 6, (3, 3))],
    ids=["linear", "embedding", "conv"],
)
def test_candidates_cp_params_equal_emitted_module(make) -> None:
    site = make()
    cp = [o for o in candidates(site.info, site.weight, forms=("cp",)) if o.form == "cp"]
    assert cp, "no CP candidate for this site"
    assert [o.params for o in cp] == [_emitted_params(site, o) for o in cp]


# ----------------------------------------------------------------- error
@pytest.mark.parametrize("kind", ["linear", "conv", "embedding"])
@_SETTINGS
@given(data=st.data())
def test_candidates_svd_error_is_truncated_svd_error(kind, data) -> None:
    site = data.draw(sites(kind))
    matrix = site.weight.reshape(site.info.weight_shape[0], -1).double()
    s2 = torch.linalg.svdvals(matrix) ** 2
    svd = [o for o in candidates(site.info, site.weight, forms=("svd",)) if o.form == "svd"]
    assume(svd)  # a conv's 'svd' can be no smaller than dense, and is then dropped
    for option in svd:
        r = option.rank if kind != "conv" else option.rank[1]
        expected = math.sqrt(float(s2[r:].sum() / s2.sum()))
        torch.testing.assert_close(option.error, expected)


@pytest.mark.parametrize(("kind", "form"), _CASES)
@_SETTINGS
@given(data=st.data())
def test_candidates_error_bounds_emitted_error(kind, form, data) -> None:
    site, option = _drawn_option(data, kind, form)
    true = _emitted_error(site, option)
    # float64 rounding slack (assert_close's default rtol/atol); the bound is not loosened.
    assert true <= option.error * (1 + 1e-7) + 1e-7, (option, true)


@pytest.mark.parametrize("kind", ["linear", "embedding"])
def test_candidates_svd_error_equals_emitted_error(kind) -> None:
    site = linear_site(48, 20) if kind == "linear" else embedding_site(48, 20)
    for option in (
        o for o in candidates(site.info, site.weight, forms=("svd",)) if o.form == "svd"
    ):
        torch.testing.assert_close(_emitted_error(site, option), option.error)


# ------------------------------------------------------------ structure
def test_candidates_are_sorted_by_params_and_end_with_dense() -> None:
    site = linear_site(48, 32)
    options = candidates(site.info, site.weight)
    assert [o.params for o in options] == sorted(o.params for o in options)
    dense = dense_option(site.info, site.weight.element_size())  # float64: bytes of 8-byte elements
    assert [o for o in options if o.form == "dense"] == [dense]
    assert options[-1] == dense  # every other option is smaller


def test_candidates_are_smaller_than_dense_except_dense() -> None:
    site = conv_site(16, 8, (3, 3))
    options = candidates(site.info, site.weight)
    assert all(o.params < site.info.dense_params for o in options if o.form != "dense")


@pytest.mark.parametrize("form", FORMS)
def test_candidates_respect_forms(form) -> None:
    site = linear_site(36, 24)
    options = candidates(site.info, site.weight, forms=(form,))
    assert {o.form for o in options} == {"dense", form}


def test_candidates_of_a_dense_only_site_is_the_dense_option() -> None:
    info = SiteInfo("x", "linear", (32, 32), tokens=4, factorizable=False, reason="tiny")
    assert candidates(info, torch.randn(32, 32)) == [dense_option(info)]


def test_candidates_errors_lie_in_unit_interval_and_decrease_with_rank() -> None:
    site = linear_site(64, 48)
    svd = [o for o in candidates(site.info, site.weight, forms=("svd",)) if o.form == "svd"]
    errors = [o.error for o in sorted(svd, key=lambda o: o.rank)]
    assert all(0.0 <= e <= 1.0 for e in errors)
    assert errors == sorted(errors, reverse=True)


def test_candidates_ranks_are_multiples_of_eight_from_32() -> None:
    site = linear_site(64, 96)
    ranks = [o.rank for o in candidates(site.info, site.weight, forms=("svd",)) if o.form == "svd"]
    assert all(r % 8 == 0 for r in ranks if r >= 32)
    assert len(ranks) >= 5


def test_candidates_dense_flops_count_multiply_adds() -> None:
    site = linear_site(48, 32)
    assert dense_option(site.info).flops == 2 * 3 * 48 * 32
    emb = embedding_site(48, 32)
    assert dense_option(emb.info).flops == 0  # a gather: bytes, no arithmetic
    assert dense_option(emb.info, 8).bytes == 8 * 2 * 10 * 32  # read 10 rows of 32, write them


@pytest.mark.parametrize(
    ("n", "expected"), [(768, 768), (3072, 768 * 4), (1021, 1024), (1019, 1020), (97, 98), (40, 40)]
)
def test_padded_size_pads_only_awkward_sizes(n: int, expected: int) -> None:
    from tfx.cost._options import padded_size

    assert padded_size(n) == expected


def test_candidates_offer_padded_tensorizations_for_a_prime_size() -> None:
    site = SiteInfo("fc", "linear", (1019, 96), tokens=8)
    options = candidates(site, torch.randn(1019, 96), ("tt",))
    shapes = {o.tensorized_shape for o in options if o.form == "tt"}
    assert any(math.prod(rows) == 1020 for rows, _ in shapes)


def test_rank_grid_alignment_follows_the_hardware() -> None:
    """Multiples of 8 from 32 by default; multiples of 64 from 128 for half precision on CUDA
    (checked through the context the candidates set; no GPU needed)."""
    from tfx.cost._options import RANK_ALIGN, rank_alignment, rank_grid

    assert rank_alignment(torch.zeros(2, 2)) == 8
    assert rank_alignment(torch.zeros(2, 2, dtype=torch.bfloat16)) == 8  # CPU bf16: no tensor cores
    default = rank_grid(4096)
    assert all(r % 8 == 0 for r in default if r >= 32)
    token = RANK_ALIGN.set(64)
    try:
        half = rank_grid(4096)
    finally:
        RANK_ALIGN.reset(token)
    assert all(r % 64 == 0 for r in half if r >= 128) and any(r >= 128 for r in half)
    assert all(r % 8 == 0 for r in half if r >= 32)
    assert RANK_ALIGN.get() == 8


def test_map_sites_equals_the_loop_and_restores_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large sites side by side on threads, small ones (CP fits, time-boxed) in the calling
    thread: the options of the loop, in order (errors up to float rounding). The CP fits'
    time box is lifted: under load it cuts them at different iterations."""
    from tfx.cost import _options
    from tfx.cost._options import PARALLEL_MIN_NUMEL, map_sites

    monkeypatch.setattr(_options, "CP_SECONDS", 60.0)

    gen = torch.Generator().manual_seed(0)
    shapes = ((48, 48), (300, 256), (32, 48), (256, 288))
    sites = [
        (SiteInfo(f"s{k}", "linear", shape, tokens=8), torch.randn(*shape, generator=gen))
        for k, shape in enumerate(shapes)
    ]
    sizes = [w.numel() for _, w in sites]
    assert sum(size > PARALLEL_MIN_NUMEL for size in sizes) == 2

    def options(item: tuple[SiteInfo, torch.Tensor]) -> list[tuple]:
        return [(o.key(), o.params, o.error) for o in candidates(item[0], item[1])]

    threads = torch.get_num_threads()
    got = map_sites(options, sites, sizes, workers=2)
    assert torch.get_num_threads() == threads
    for ours, theirs in zip(got, [options(item) for item in sites], strict=True):
        assert [o[:2] for o in ours] == [o[:2] for o in theirs]
        assert [o[2] for o in ours] == pytest.approx([o[2] for o in theirs], rel=1e-9, abs=1e-12)


def test_map_sites_raises_the_first_error() -> None:
    from tfx.cost._options import map_sites

    def fail_on_two(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    with pytest.raises(ValueError, match="two"):
        map_sites(fail_on_two, [1, 2, 3], workers=2)
    assert map_sites(fail_on_two, [1, 3], workers=2) == [1, 3]
    assert map_sites(fail_on_two, [1, 3], [1, 10**6], workers=2) == [1, 3]


@pytest.mark.parametrize(
    "shape, split_at",
    [((4, 16, 8, 12), 2), ((8, 12, 4, 16), 2), ((6, 8, 6, 8), 2), ((12, 3, 3, 3), 1)],
)
def test_spectra_from_partial_traces_match_each_unfolding(
    shape: tuple[int, ...], split_at: int
) -> None:
    """Flat unfoldings and Tucker mode unfoldings whose small side lies in the weight's
    smaller side come from partial traces of its whole-side Gram: the same energies as the
    unfolding's own singular values (float64 weights: to rounding)."""
    from tfx.cost._options import Spectra

    rows = math.prod(shape[:split_at])
    weight = torch.randn(rows, math.prod(shape) // rows, dtype=torch.float64)
    spectra = Spectra(weight if split_at == 2 else weight.reshape(shape))
    tensor = weight.reshape(shape)
    cases = [(None, k) for k in range(1, len(shape))]
    cases += [((k, *[j for j in range(len(shape)) if j != k]), 1) for k in range(len(shape))]
    for perm, split in cases:
        unfolded = tensor if perm is None else tensor.permute(perm)
        matrix = unfolded.reshape(math.prod(unfolded.shape[:split]), -1)
        s2 = torch.linalg.svdvals(matrix).square()
        expected = [float(s2[r:].sum()) for r in range(len(s2) + 1)]
        got = spectra.tails(shape, perm, split)
        assert got[: len(expected)] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert spectra._sides  # the partial-trace route was taken


# --------------------------------------------------------------------------- spectra without copies
def test_tall_whitened_and_row_weighted_spectra_come_from_the_gram_exactly() -> None:
    """A tall weight's whitened (or row-weighted) low-rank spectrum, taken from its n x n Gram,
    equals the one measured on a whitened copy of the weight (float64: to rounding)."""
    from tfx.cost._options import Spectra, _row_weighted_spectra, _whitened_spectra
    from tfx.cost._whiten import InputStats, RowCounts

    gen = torch.Generator().manual_seed(5)
    w = torch.randn(90, 24, dtype=torch.float64, generator=gen)
    stats = InputStats(24)
    stats.update(torch.randn(200, 24, dtype=torch.float64, generator=gen) * torch.arange(1, 25))
    whitening = stats.whitening()
    for m in (w, w[:20]):  # tall: from L^T W^T W L; wide: from W C W^T
        got = _whitened_spectra(stats, m)
        want = Spectra(whitening.apply(m))
        shape = tuple(m.shape)
        assert got.tails(shape, None, 1) == pytest.approx(want.tails(shape, None, 1), rel=1e-9)
        assert got.norm2 == pytest.approx(want.norm2, rel=1e-12)
    counts = RowCounts(90)
    counts.update(torch.randint(0, 30, (500,), generator=gen))
    got = _row_weighted_spectra(counts, w)
    want = Spectra(counts.apply(w))
    assert got.tails((90, 24), None, 1) == pytest.approx(want.tails((90, 24), None, 1), rel=1e-9)
    with pytest.raises(RuntimeError, match="energies only"):
        got.tails((90, 4, 6), None, 2)  # another unfolding: needs the weight


def test_spectra_kept_for_refinement_hold_no_weight() -> None:
    """candidates(keep=) hands on spectra whose energies answer every svd rank, and no tensor
    of the weight's size: a plan does not keep a copy of each weight alive."""
    from tfx.cost._refine import svd_option

    site = SiteInfo("fc", "linear", (64, 48), tokens=8)
    keep: dict = {}
    options = candidates(site, torch.randn(64, 48), ("svd",), keep=keep)
    spectra = keep["svd"][0]
    assert spectra._weight is None and spectra._sides == {}
    low_rank = [o for o in options if o.form == "svd"]
    assert low_rank
    for option in low_rank:
        assert svd_option(keep["svd"], option.rank).error == pytest.approx(option.error)
