"""Whitening (activation-aware factorization) against direct float64 computations."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tfx.cost import candidates
from tfx.cost._records import SiteInfo
from tfx.cost._whiten import InputStats, Whitening, modes_product, relative_output_error
from tfx.tensors._decompose import truncated_svd


def _anisotropic(n: int, d: int, decay: float = 3.0, seed: int = 0) -> torch.Tensor:
    """Rows whose standard deviations are spread over ``decay`` decades, in a fixed random
    basis (the same for every ``seed``: one distribution, different samples)."""
    basis, _ = torch.linalg.qr(
        torch.randn(d, d, generator=torch.Generator().manual_seed(d), dtype=torch.float64)
    )
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d, generator=gen, dtype=torch.float64)
        * torch.logspace(0, -decay, d, dtype=torch.float64)
    ) @ basis.T


def test_stats_match_direct_second_moment() -> None:
    x = _anisotropic(300, 12)
    stats = InputStats(12)
    for chunk in x.split(70):
        stats.update(chunk)
    assert stats.count == 300
    torch.testing.assert_close(stats.covariance(), x.T @ x / 300, rtol=1e-12, atol=1e-14)
    diag = InputStats(12, full=False)
    diag.update(x)
    torch.testing.assert_close(diag.covariance(), (x * x).mean(0), rtol=1e-12, atol=1e-14)


def test_stats_reject_wrong_width_rows() -> None:
    stats = InputStats(5)
    stats.update(torch.randn(4, 6))
    assert stats.unsupported and stats.count == 0


@given(st.integers(1, 3).flatmap(lambda d: st.tuples(*[st.integers(2, 4)] * d)))
def test_whitening_is_a_square_root_and_inverts(col_shape: tuple[int, ...]) -> None:
    n = math.prod(col_shape)
    x = _anisotropic(4 * n + 8, n, decay=2.0)
    stats = InputStats(n)
    stats.update(x)
    w = torch.randn(7, n, dtype=torch.float64)
    for shape in (None, col_shape):
        white = stats.whitening(shape)
        # undo(apply(W)) == W
        torch.testing.assert_close(white.undo(white.apply(w)), w, rtol=1e-9, atol=1e-9)
        if shape is None or len(shape) == 1:
            # L L^T is the damped second moment
            cov = stats.covariance()
            damped = cov + 1e-2 * cov.diagonal().mean() * torch.eye(n, dtype=torch.float64)
            root = white.sqrt[0]
            torch.testing.assert_close(root @ root.T, damped, rtol=1e-9, atol=1e-12)


def test_modes_product_is_the_kronecker_product() -> None:
    mats = [torch.randn(s, s, dtype=torch.float64) for s in (2, 3, 4)]
    w = torch.randn(5, 24, dtype=torch.float64)
    kron = torch.kron(torch.kron(mats[0], mats[1]), mats[2])
    got = modes_product(w.reshape(5, 2, 3, 4), mats).reshape(5, 24)
    torch.testing.assert_close(got, w @ kron, rtol=1e-12, atol=1e-12)


def test_kronecker_factors_are_partial_traces() -> None:
    x = _anisotropic(200, 12)
    stats = InputStats(12)
    stats.update(x)
    cov = stats.covariance().reshape(3, 4, 3, 4)
    white = stats.whitening((3, 4))
    c0, c1 = torch.einsum("abcb->ac", cov), torch.einsum("abad->bd", cov)
    for root, c in zip(white.sqrt, (c0, c1), strict=False):
        damped = c + 1e-2 * c.diagonal().mean() * torch.eye(c.shape[0], dtype=torch.float64)
        torch.testing.assert_close(root @ root.T, damped, rtol=1e-9, atol=1e-12)


def test_svd_estimate_is_the_output_error_on_the_calibration_data() -> None:
    """For 'svd', the candidate's error is exactly the relative output error of the whitened
    truncation (measured against the damped second moment it whitens by)."""
    d_in, d_out = 48, 40
    x = _anisotropic(400, d_in)
    stats = InputStats(d_in)
    stats.update(x)
    weight = torch.randn(d_out, d_in, dtype=torch.float64)
    site = SiteInfo("layer", "linear", (d_out, d_in), tokens=16)
    options = [o for o in candidates(site, weight, forms=("svd",), stats=stats) if o.form == "svd"]
    white = stats.whitening()
    cov = white.sqrt[0] @ white.sqrt[0].T
    for option in options[:6]:
        u, s, vh = truncated_svd(white.apply(weight), option.rank, method="exact")
        approx = white.undo((u * s) @ vh)
        assert option.error == pytest.approx(
            relative_output_error(weight, approx, cov), rel=1e-6, abs=1e-9
        )


def test_whitened_svd_beats_plain_svd_on_output_error() -> None:
    """A layer with anisotropic inputs: at every rank, whitened SVD's output error on held-out
    inputs from the same distribution is below plain SVD's."""
    d_in, d_out = 64, 64
    calib, held = _anisotropic(2000, d_in, seed=1), _anisotropic(2000, d_in, seed=2)
    weight = torch.randn(d_out, d_in, dtype=torch.float64)
    stats = InputStats(d_in)
    stats.update(calib)
    white = stats.whitening()
    held_cov = held.T @ held / held.shape[0]
    for rank in (4, 8, 16, 32):
        u, s, vh = truncated_svd(weight, rank, method="exact")
        plain = relative_output_error(weight, (u * s) @ vh, held_cov)
        u, s, vh = truncated_svd(white.apply(weight), rank, method="exact")
        whitened = relative_output_error(weight, white.undo((u * s) @ vh), held_cov)
        assert whitened < 0.8 * plain, (
            rank,
            whitened,
            plain,
        )  # measured: 0.70x at rank 4, less above


def test_calibrated_candidates_keep_params_and_order() -> None:
    """Calibration changes errors, never parameter counts or the candidate set."""
    d_in, d_out = 64, 48
    stats = InputStats(d_in)
    stats.update(_anisotropic(500, d_in).float())
    weight = torch.randn(d_out, d_in)
    site = SiteInfo("layer", "linear", (d_out, d_in), tokens=16)
    plain = candidates(site, weight)
    calibrated = candidates(site, weight, stats=stats)
    assert sorted(o.key() + (o.params,) for o in plain) == sorted(
        o.key() + (o.params,) for o in calibrated
    )
    assert all(0.0 <= o.error <= 1.0 + 1e-9 for o in calibrated)
    assert any(
        abs(a.error - b.error) > 1e-3 for a in plain for b in calibrated if a.key() == b.key()
    )


def test_diagonal_whitening_scales_columns() -> None:
    white = Whitening.from_diagonal(
        torch.tensor([4.0, 1.0, 0.25], dtype=torch.float64), damping=0.0
    )
    w = torch.ones(2, 3, dtype=torch.float64)
    torch.testing.assert_close(
        white.apply(w), torch.tensor([[2.0, 1.0, 0.5]] * 2, dtype=torch.float64)
    )
    torch.testing.assert_close(white.undo(white.apply(w)), w)


def _eigen_root(cov: torch.Tensor, damping: float = 1e-2) -> torch.Tensor:
    """``Q diag(sqrt(lambda))`` of the damped moment: another square root than Cholesky's."""
    damped = cov + damping * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)
    values, vectors = torch.linalg.eigh(damped)
    return vectors * values.sqrt()


def test_cholesky_whitening_gives_the_eigen_roots_spectra_and_truncations() -> None:
    """Any L with L L^T = C gives the same whitened singular values and, mapped back, the same
    truncated SVD: the Cholesky factor stands in for the eigendecomposition's root."""
    d_in, d_out = 40, 30
    stats = InputStats(d_in)
    stats.update(_anisotropic(300, d_in))
    white = stats.whitening()
    assert white.inv is None  # a triangular factor: undone by solves
    torch.testing.assert_close(white.sqrt[0], white.sqrt[0].tril())
    root = _eigen_root(stats.covariance())
    weight = torch.randn(d_out, d_in, dtype=torch.float64)
    torch.testing.assert_close(
        torch.linalg.svdvals(white.apply(weight)), torch.linalg.svdvals(weight @ root)
    )
    for rank in (3, 10, 25):
        u, s, vh = truncated_svd(white.apply(weight), rank, method="exact")
        ours = white.undo((u * s) @ vh)
        u, s, vh = truncated_svd(weight @ root, rank, method="exact")
        theirs = ((u * s) @ vh) @ torch.linalg.inv(root)
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-10)


def test_whitening_falls_back_to_the_eigendecomposition_when_not_positive_definite() -> None:
    """A moment that damping leaves indefinite has no Cholesky factor: the eigendecomposition,
    its eigenvalues floored, still gives an invertible root (the behaviour before Cholesky)."""
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    values = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.1, -0.3], dtype=torch.float64)
    cov = (q * values) @ q.T
    white = Whitening.from_covariance([cov], damping=0.01)
    assert white.inv is not None
    scale = float(cov.diagonal().mean())
    floored = (values + 0.01 * scale).clamp_min(0.01 * scale * 1e-3)
    root = white.sqrt[0]
    torch.testing.assert_close(root @ root.T, (q * floored) @ q.T)
    w = torch.randn(5, 6, dtype=torch.float64)
    torch.testing.assert_close(white.undo(white.apply(w)), w)


def test_kronecker_whitening_mixes_cholesky_and_eigen_modes() -> None:
    """One column mode with a Cholesky factor, one without: each mode keeps its own inverse."""
    good = _anisotropic(100, 3).T @ _anisotropic(100, 3) / 100
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    indefinite = (q * torch.tensor([3.0, 1.0, 0.5, -0.4], dtype=torch.float64)) @ q.T
    white = Whitening.from_covariance([good, indefinite], damping=0.01)
    assert white.inv is not None and len(white.inv) == 2
    torch.testing.assert_close(white.sqrt[0], white.sqrt[0].tril())  # mode 1: Cholesky
    w = torch.randn(6, 12, dtype=torch.float64)
    torch.testing.assert_close(white.undo(white.apply(w)), w)


def test_sites_sharing_statistics_factor_their_moment_once(monkeypatch) -> None:  # noqa: ANN001
    """Q, K and V read one input: one InputStats, one Cholesky of its moment for all three
    (tall weights: their spectra whiten the n x n Gram); a wide weight's spectra need none
    (W C W^T from the moment)."""
    calls = []
    real = torch.linalg.cholesky_ex

    def counting(matrix: torch.Tensor, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(tuple(matrix.shape))
        return real(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", counting)
    stats = InputStats(48)
    stats.update(_anisotropic(200, 48).float())
    site = SiteInfo("q", "linear", (64, 48), tokens=16)
    for _ in range(3):
        candidates(site, torch.randn(64, 48), forms=("svd",), stats=stats)
    assert calls == [(48, 48)]
    wide = SiteInfo("o", "linear", (40, 48), tokens=16)
    candidates(wide, torch.randn(40, 48), forms=("svd",), stats=stats)
    assert calls == [(48, 48)]


def test_large_whitened_spectra_in_float32_match_float64() -> None:
    """Weights over 2**14 entries get their whitened spectra in float32: the candidates'
    errors stay within float32 noise of the float64 spectrum of W L."""
    d_in, d_out = 192, 160
    stats = InputStats(d_in)
    stats.update(_anisotropic(800, d_in, decay=2.0))
    weight = torch.randn(d_out, d_in)
    site = SiteInfo("layer", "linear", (d_out, d_in), tokens=16)
    options = [o for o in candidates(site, weight, forms=("svd",), stats=stats) if o.form == "svd"]
    s2 = torch.linalg.svdvals(stats.whitening().apply(weight.double())).square()
    for option in options:
        expected = math.sqrt(float(s2[option.rank :].sum() / s2.sum()))
        assert option.error == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("damping", [1e-2, 0.0])
def test_whitening_from_the_moment_equals_the_covariances(damping: float) -> None:
    """from_moment (in place, scaled after) gives L L^T = the damped covariance, as
    from_covariance does; a singular moment at damping 0 falls back to the eigenvalues."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(400, 30, dtype=torch.float64, generator=gen) * torch.linspace(0.1, 4, 30)
    if damping == 0.0:
        x[:, 7] = 0.0  # a direction the data never excites: not positive definite
    moment = x.T @ x
    cov = moment / 400
    got = Whitening.from_moment(moment, 400, damping)
    want = Whitening.from_covariance([cov], damping)
    damped = cov + damping * float(cov.diagonal().mean()) * torch.eye(30, dtype=torch.float64)
    for w in (got, want):
        root = w.sqrt[0]
        torch.testing.assert_close(root @ root.T, damped, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(moment, x.T @ x, rtol=0, atol=0)  # the moment is left as it was


# ------------------------------------------------ block-triangular products (half the work)
@pytest.mark.parametrize("n", [7, 256, 300, 777])
def test_gram_of_rows_is_the_full_gram_matrix(n: int) -> None:
    """The lower block triangle is summed and mirrored: every entry of ``W^T D^2 W``."""
    from tfx.cost._whiten import gram_of_rows

    gen = torch.Generator().manual_seed(n)
    weight = torch.randn(2 * n + 3, n, generator=gen, dtype=torch.float64)
    rows = torch.rand(2 * n + 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(gram_of_rows(weight), weight.T @ weight, rtol=1e-12, atol=1e-12)
    weighted = weight * rows[:, None]
    torch.testing.assert_close(
        gram_of_rows(weight, rows), weighted.T @ weighted, rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize(("out", "features"), [(5, 9), (300, 257), (600, 300), (257, 800)])
def test_whitened_gram_is_w_times_the_damped_covariance_times_w(out: int, features: int) -> None:
    gen = torch.Generator().manual_seed(out + features)
    x = torch.randn(3 * features, features, generator=gen, dtype=torch.float64)
    x = x @ torch.randn(features, features, generator=gen, dtype=torch.float64) / features**0.5
    stats = InputStats(features)
    stats.update(x)
    weight = torch.randn(out, features, generator=gen, dtype=torch.float64)
    moment = x.T @ x
    shift = 0.05 * float(moment.diagonal().mean())
    damped = moment + shift * torch.eye(features, dtype=torch.float64)
    expected = weight @ damped @ weight.T / x.shape[0]
    got = stats.whitened_gram(weight, damping=0.05)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10 * float(expected.abs().max()))
    assert torch.equal(got.tril(-256), got.triu(256).T)  # the mirrored blocks


@pytest.mark.parametrize("n", [6, 256, 300, 700])
def test_sandwich_is_l_transposed_g_l(n: int) -> None:
    """``L^T G L`` with the Cholesky factor's zero blocks skipped, and by the general path."""
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(2 * n, n, generator=gen, dtype=torch.float64)
    stats = InputStats(n)
    stats.update(x)
    whitening = stats.whitening()
    w = torch.randn(n + 5, n, generator=gen, dtype=torch.float64)
    gram = w.T @ w
    root = whitening.sqrt[0]
    assert torch.equal(root, root.tril())  # a Cholesky factor: the triangular path
    expected = root.T @ gram @ root
    scale = float(expected.abs().max())
    torch.testing.assert_close(whitening.sandwich(gram), expected, rtol=1e-11, atol=1e-11 * scale)
    diagonal = Whitening.from_diagonal(torch.rand(n, generator=gen, dtype=torch.float64) + 0.5)
    s = diagonal.sqrt[0]
    torch.testing.assert_close(diagonal.sandwich(gram), s[:, None] * gram * s[None, :])
    # in float32: the result keeps the Gram matrix's dtype
    assert whitening.sandwich(gram.float()).dtype == torch.float32


@pytest.mark.parametrize("n", [3, 256, 513])
def test_a_settled_moment_stays_packed_and_multiplies_packed(n: int) -> None:
    """Settled, a full moment keeps its lower block triangle only (about half the matrix);
    ``x @ C`` is taken from it directly, and ``moment`` unpacks a new copy at each access."""
    from tfx.cost._whiten import _times_packed

    gen = torch.Generator().manual_seed(n)
    rows = torch.randn(2 * n, n, generator=gen, dtype=torch.float64)
    stats = InputStats(n)
    stats.update(rows)
    stats.settle()
    full = rows.T @ rows
    assert stats.total is None and stats._settled is not None
    assert stats._settled.numel() <= n * n / 2 + 128 * n + 1
    first, second = stats.moment, stats.moment
    assert first is not second
    torch.testing.assert_close(first, full, rtol=1e-12, atol=1e-12 * float(full.abs().max()))
    x = torch.randn(7, n, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        _times_packed(x, stats._settled, n), x @ first, rtol=1e-12, atol=1e-9
    )
