"""Tests for tfx.tensors._decompose: exactness at full rank, truncation bounds, errors.

References are dense float64 computations (torch.linalg.svdvals, einsum
reconstructions) compared with torch.testing.assert_close's default tolerances.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.testing import assert_close

from tfx._errors import OptionError, RankError, ShapeError
from tfx.tensors._decompose import (
    block_tt_svd,
    cp_als,
    hosvd,
    leading_subspace,
    singular_values,
    svd_of_product,
    truncated_svd,
    tt_svd,
)

F64 = torch.float64


# --------------------------------------------------------------------------- references
def svd_dense(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
    return (u * s.to(u.dtype).unsqueeze(-2)) @ vh


def tucker_dense(
    core: torch.Tensor, factors: list[torch.Tensor], modes: tuple[int, ...]
) -> torch.Tensor:
    out = core
    for mode, factor in zip(modes, factors, strict=True):
        out = torch.movedim(torch.tensordot(factor, out, dims=([1], [mode])), 0, mode)
    return out


def tt_dense(cores: list[torch.Tensor]) -> torch.Tensor:
    out = cores[0]
    for core in cores[1:]:
        out = torch.tensordot(out, core, dims=([-1], [0]))
    return out.squeeze(0).squeeze(-1)


def cp_dense(weights: torch.Tensor, factors: list[torch.Tensor]) -> torch.Tensor:
    letters = "abcdefgh"[: len(factors)]
    equation = "r," + ",".join(f"{c}r" for c in letters) + "->" + letters
    return torch.einsum(equation, weights.to(factors[0].dtype), *factors)


def unfolding(x: torch.Tensor, mode: int) -> torch.Tensor:
    return x.movedim(mode, 0).reshape(x.shape[mode], -1)


def discarded_sq(matrix: torch.Tensor, rank: int) -> float:
    """Sum of the squared singular values a rank-``rank`` truncation drops."""
    return float(torch.linalg.svdvals(matrix)[rank:].square().sum())


def full_tt_ranks(shape: tuple[int, ...]) -> tuple[int, ...]:
    inner = (min(math.prod(shape[:k]), math.prod(shape[k:])) for k in range(1, len(shape)))
    return (1, *inner, 1)


def with_spectrum(m: int, n: int, spectrum: torch.Tensor, dtype: torch.dtype = F64) -> torch.Tensor:
    u, _ = torch.linalg.qr(torch.randn(m, len(spectrum), dtype=F64))
    v, _ = torch.linalg.qr(torch.randn(n, len(spectrum), dtype=F64))
    return ((u * spectrum) @ v.T).to(dtype)


def norm(x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x))


shapes_2d = st.tuples(st.integers(1, 12), st.integers(1, 12))
shapes_nd = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)


# --------------------------------------------------------------------------- truncated_svd
@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (40, 40), (2, 3, 6, 4)])
def test_truncated_svd_exact_reconstructs_at_full_rank(shape: tuple[int, ...]) -> None:
    a = torch.randn(shape, dtype=F64)
    u, s, vh = truncated_svd(a, min(shape[-2:]))
    assert_close(svd_dense(u, s, vh), a)


@pytest.mark.parametrize("method", ["auto", "randomized"])
def test_truncated_svd_randomized_reconstructs_exact_low_rank(method: str) -> None:
    a = torch.randn(400, 8, dtype=F64) @ torch.randn(8, 300, dtype=F64)
    u, s, vh = truncated_svd(a, 8, method=method)  # type: ignore[arg-type]
    assert_close(svd_dense(u, s, vh), a)


def test_truncated_svd_exact_error_equals_discarded_singular_values() -> None:
    a = torch.randn(60, 40, dtype=F64)
    u, s, vh = truncated_svd(a, 10)
    expected = math.sqrt(discarded_sq(a, 10))
    assert_close(norm(a - svd_dense(u, s, vh)), expected)
    assert_close(s, torch.linalg.svdvals(a)[:10])


@pytest.mark.parametrize("decay", ["power", "exponential"])
def test_truncated_svd_randomized_error_is_near_optimal(decay: str) -> None:
    i = torch.arange(500, dtype=F64)
    spectrum = (i + 1).pow(-1.0) if decay == "power" else 0.95**i
    a = with_spectrum(600, 500, spectrum)
    u, s, vh = truncated_svd(a, 30, method="randomized")
    best = math.sqrt(float(spectrum[30:].square().sum()))
    # Two power iterations: within 1% of the optimum on a 1/i spectrum (measured 0.1-0.2%);
    # the trailing kept singular values are the least accurate (measured up to 1.4% off).
    assert best <= norm(a - svd_dense(u, s, vh)) <= 1.01 * best
    assert_close(s, spectrum[:30], rtol=3e-2, atol=0.0)


@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_truncated_svd_returns_orthonormal_descending_triplets(method: str) -> None:
    a = torch.randn(300, 280, dtype=F64)
    u, s, vh = truncated_svd(a, 12, method=method)  # type: ignore[arg-type]
    assert_close(u.T @ u, torch.eye(12, dtype=F64))
    assert_close(vh @ vh.T, torch.eye(12, dtype=F64))
    assert bool((s[:-1] >= s[1:]).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_truncated_svd_keeps_dtype_and_shape(dtype: torch.dtype, method: str) -> None:
    a = torch.randn(3, 50, 30, dtype=dtype)
    u, s, vh = truncated_svd(a, 4, method=method)  # type: ignore[arg-type]
    assert (u.dtype, vh.dtype, s.dtype) == (dtype, dtype, torch.empty(0, dtype=dtype).real.dtype)
    assert (u.shape, s.shape, vh.shape) == ((3, 50, 4), (3, 4), (3, 4, 30))


def test_truncated_svd_complex_reconstructs_at_full_rank() -> None:
    a = torch.randn(9, 6, dtype=torch.complex128)
    assert_close(svd_dense(*truncated_svd(a, 6)), a)


def test_truncated_svd_is_deterministic_and_sign_normalised() -> None:
    a = torch.randn(400, 300)
    first, second = truncated_svd(a, 5), truncated_svd(a, 5)
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))
    largest = first[0].gather(0, first[0].abs().argmax(0, keepdim=True))
    assert bool((largest > 0).all())


def test_truncated_svd_does_not_track_gradients() -> None:
    u, s, vh = truncated_svd(torch.randn(6, 5, requires_grad=True), 2)
    assert not (u.requires_grad or s.requires_grad or vh.requires_grad)


@given(shapes_2d, st.data())
def test_truncated_svd_full_rank_property(shape: tuple[int, int], data: st.DataObject) -> None:
    a = torch.randn(shape, dtype=F64)
    method = data.draw(st.sampled_from(["exact", "randomized"]))
    assert_close(svd_dense(*truncated_svd(a, min(shape), method=method)), a)  # type: ignore[arg-type]


@pytest.mark.parametrize("rank", [0, 41, -3, 2.5, True])
def test_truncated_svd_raises_on_bad_rank(rank: object) -> None:
    with pytest.raises(
        RankError, match=r"rank=.* is invalid: a 40 x 50 matrix has min\(40, 50\) = 40"
    ):
        truncated_svd(torch.randn(40, 50), rank)  # type: ignore[arg-type]


def test_truncated_svd_raises_on_vector() -> None:
    with pytest.raises(ShapeError, match=r"at least 2 dimension\(s\); got shape \(5,\)"):
        truncated_svd(torch.randn(5), 1)


def test_truncated_svd_raises_on_unknown_method() -> None:
    with pytest.raises(OptionError, match="method='exat' is not registered. Did you mean 'exact'"):
        truncated_svd(torch.randn(5, 5), 1, method="exat")  # type: ignore[arg-type]


def test_truncated_svd_raises_on_negative_oversampling() -> None:
    with pytest.raises(OptionError, match="n_oversamples=-1 is invalid: it must be >= 0"):
        truncated_svd(torch.randn(5, 5), 1, n_oversamples=-1)


def test_truncated_svd_raises_on_integer_tensor() -> None:
    with pytest.raises(TypeError, match=r"(?s)dtype torch.int64.*tensor.float\(\)"):
        truncated_svd(torch.ones(3, 3, dtype=torch.int64), 1)


# --------------------------------------------------------------------------- singular_values
@pytest.mark.parametrize("shape", [(30, 20), (20, 30), (1200, 100), (100, 1200), (2, 7, 5)])
def test_singular_values_match_svdvals(shape: tuple[int, ...]) -> None:
    a = torch.randn(shape, dtype=F64)
    assert_close(singular_values(a), torch.linalg.svdvals(a))


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_singular_values_are_real_descending(dtype: torch.dtype) -> None:
    s = singular_values(torch.randn(1100, 40, dtype=dtype))
    assert s.dtype == torch.float32 and s.shape == (40,)
    assert bool((s[:-1] >= s[1:]).all())


# --------------------------------------------------------------------------- hosvd
@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 4, 5), (10, 2, 2), (6,)])
def test_hosvd_reconstructs_at_full_rank(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, dtype=F64)
    core, factors = hosvd(x, shape)
    assert_close(tucker_dense(core, factors, tuple(range(len(shape)))), x)


@given(shapes_nd)
def test_hosvd_full_rank_property(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, dtype=F64)
    core, factors = hosvd(x, shape)
    assert_close(tucker_dense(core, factors, tuple(range(len(shape)))), x)


def test_hosvd_factors_are_orthonormal() -> None:
    core, factors = hosvd(torch.randn(8, 9, 10, dtype=F64), (3, 4, 10))
    assert all(bool(torch.allclose(f.T @ f, torch.eye(f.shape[1], dtype=F64))) for f in factors)


def test_hosvd_error_within_st_hosvd_bounds() -> None:
    x = torch.randn(8, 9, 10, dtype=F64) + 3 * torch.randn(8, 1, 1, dtype=F64) * torch.randn(
        1, 9, 10, dtype=F64
    )
    ranks = (3, 4, 5)
    core, factors = hosvd(x, ranks)
    err_sq = norm(x - tucker_dense(core, factors, (0, 1, 2))) ** 2
    dropped = [discarded_sq(unfolding(x, k), r) for k, r in enumerate(ranks)]
    # Any rank-(3, 4, 5) Tucker errs by >= max(dropped); ST-HOSVD by <= sum(dropped) <= N * best.
    assert max(dropped) * (1 - 1e-12) <= err_sq <= sum(dropped) * (1 + 1e-12)


def test_hosvd_modes_subset_keeps_other_modes() -> None:
    x = torch.randn(4, 5, 6, dtype=F64)
    core, factors = hosvd(x, (6, 4), modes=(2, -3))
    assert core.shape == (4, 5, 6) and [f.shape for f in factors] == [(6, 6), (4, 4)]
    assert_close(tucker_dense(core, factors, (2, 0)), x)


def test_hosvd_truncated_modes_subset_shapes() -> None:
    core, factors = hosvd(torch.randn(4, 5, 6), (2,), modes=(1,))
    assert core.shape == (4, 2, 6) and [f.shape for f in factors] == [(5, 2)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
def test_hosvd_keeps_dtype(dtype: torch.dtype) -> None:
    core, factors = hosvd(torch.randn(4, 5, 6, dtype=dtype), (2, 3, 4))
    assert core.dtype == dtype and all(f.dtype == dtype for f in factors)
    assert core.shape == (2, 3, 4)


def test_hosvd_complex_reconstructs_at_full_rank() -> None:
    x = torch.randn(3, 4, 5, dtype=torch.complex128)
    core, factors = hosvd(x, (3, 4, 5))
    assert_close(tucker_dense(core, factors, (0, 1, 2)), x)


def test_hosvd_large_mode_uses_randomized_path_exactly_on_low_rank() -> None:
    x = (torch.randn(1500, 6, dtype=F64) @ torch.randn(6, 1400, dtype=F64)).reshape(1500, 20, 70)
    core, factors = hosvd(x, (6,), modes=(0,))
    assert_close(tucker_dense(core, factors, (0,)), x)


def test_hosvd_raises_on_rank_above_mode_size() -> None:
    match = (
        r"(?s)ranks\[1\]=9 is invalid: mode 1 of shape \(3, 4, 5\) has size 4"
        r".*from 1 to 4.*ranks=\(2, 4, 5\)"
    )
    with pytest.raises(RankError, match=match):
        hosvd(torch.randn(3, 4, 5), (2, 9, 5))


def test_hosvd_raises_on_zero_rank() -> None:
    with pytest.raises(RankError, match=r"ranks\[0\]=0 is invalid"):
        hosvd(torch.randn(3, 4, 5), (0, 2, 2))


def test_hosvd_raises_on_ranks_length() -> None:
    with pytest.raises(ShapeError, match=r"ranks=\(2, 2\) has 2 entries, but .* needs 3"):
        hosvd(torch.randn(3, 4, 5), (2, 2))


@pytest.mark.parametrize("modes", [(0, 3), (1, -2)])
def test_hosvd_raises_on_bad_modes(modes: tuple[int, int]) -> None:
    with pytest.raises(ShapeError, match=r"modes=.* is invalid for a 3-way tensor"):
        hosvd(torch.randn(3, 4, 5), (2, 2), modes=modes)


# --------------------------------------------------------------------------- tt_svd
@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (2, 2, 2, 2, 2), (5, 6), (7,)])
def test_tt_svd_reconstructs_at_full_rank(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, dtype=F64)
    assert_close(tt_dense(tt_svd(x, full_tt_ranks(shape))), x)


@given(shapes_nd)
def test_tt_svd_full_rank_property(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, dtype=F64)
    cores = tt_svd(x, full_tt_ranks(shape))
    assert [c.shape[1] for c in cores] == list(shape)
    assert_close(tt_dense(cores), x)


def test_tt_svd_cores_have_requested_shapes_and_are_left_orthonormal() -> None:
    ranks = (1, 3, 7, 4, 1)
    cores = tt_svd(torch.randn(3, 4, 5, 6, dtype=F64), ranks)
    assert [tuple(c.shape) for c in cores] == [(1, 3, 3), (3, 4, 7), (7, 5, 4), (4, 6, 1)]
    mats = [c.reshape(-1, c.shape[-1]) for c in cores[:-1]]
    assert all(bool(torch.allclose(m.T @ m, torch.eye(m.shape[1], dtype=F64))) for m in mats)


def test_tt_svd_error_within_tt_svd_bounds() -> None:
    shape, ranks = (4, 5, 6, 3), (1, 3, 8, 2, 1)
    x = torch.randn(shape, dtype=F64) + 2 * torch.randn(4, 5, 1, 1, dtype=F64) * torch.randn(
        1, 1, 6, 3, dtype=F64
    )
    err_sq = norm(x - tt_dense(tt_svd(x, ranks))) ** 2
    dropped = [
        discarded_sq(x.reshape(math.prod(shape[:k]), -1), ranks[k]) for k in range(1, len(shape))
    ]
    # Oseledets (2011): max(dropped) <= best^2 and err^2 <= sum(dropped) <= (d - 1) best^2.
    assert max(dropped) * (1 - 1e-12) <= err_sq <= sum(dropped) * (1 + 1e-12)


def test_tt_svd_pads_ranks_above_the_truncated_rows_with_zeros() -> None:
    x = torch.randn(4, 4, 4, 4, dtype=F64)
    padded = tt_svd(x, (1, 1, 16, 1, 1))
    assert [tuple(c.shape) for c in padded] == [(1, 4, 1), (1, 4, 16), (16, 4, 1), (1, 4, 1)]
    assert_close(tt_dense(padded), tt_dense(tt_svd(x, (1, 1, 4, 1, 1))))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
def test_tt_svd_keeps_dtype(dtype: torch.dtype) -> None:
    cores = tt_svd(torch.randn(3, 4, 5, dtype=dtype), (1, 2, 2, 1))
    assert all(c.dtype == dtype for c in cores)


def test_tt_svd_complex_reconstructs_at_full_rank() -> None:
    x = torch.randn(3, 4, 5, dtype=torch.complex128)
    assert_close(tt_dense(tt_svd(x, (1, 3, 5, 1))), x)


def test_tt_svd_large_unfolding_uses_randomized_path_exactly_on_low_rank() -> None:
    x = (torch.randn(1600, 5, dtype=F64) @ torch.randn(5, 1200, dtype=F64)).reshape(40, 40, 30, 40)
    assert_close(tt_dense(tt_svd(x, (1, 40, 5, 40, 1))), x)


def test_tt_svd_raises_on_rank_above_unfolding_bound() -> None:
    match = (
        r"(?s)ranks\[2\]=13 is invalid: .*between modes 1 and 2 is 12 x 30"
        r".*from 1 to 12.*ranks=\(1, 3, 12, 6, 1\)"
    )
    with pytest.raises(RankError, match=match):
        tt_svd(torch.randn(3, 4, 5, 6), (1, 3, 13, 6, 1))


def test_tt_svd_raises_on_boundary_rank() -> None:
    with pytest.raises(
        RankError, match=r"(?s)boundary ranks of a tensor train are always 1.*ranks=\(1, 2, 1\)"
    ):
        tt_svd(torch.randn(3, 4), (2, 2, 1))


def test_tt_svd_raises_on_ranks_length() -> None:
    with pytest.raises(
        ShapeError, match=r"ranks=\(1, 2, 1\) has 3 entries, but a TT of shape \(3, 4, 5\)"
    ):
        tt_svd(torch.randn(3, 4, 5), (1, 2, 1))


# --------------------------------------------------------------------------- block_tt_svd
def block_tt_dense(cores: list[torch.Tensor], groups: int) -> torch.Tensor:
    d = len(cores)
    flat = [c.reshape(c.shape[0], -1, c.shape[-1]) for c in cores]
    sizes = [s for c in cores for s in c.shape[1:-1]]
    out = tt_dense(flat).reshape(sizes)  # (i_1, o_1, i_2, o_2, ...)
    return out.permute([k * groups + j for j in range(groups) for k in range(d)])


@pytest.mark.parametrize(
    "mode_shapes",
    [((4, 3, 2), (5, 3, 2)), ((2, 3), (3, 2), (2, 2)), ((6,), (5,)), ((2, 2, 2, 2), (3, 1, 2, 1))],
)
def test_block_tt_svd_reconstructs_at_full_rank(mode_shapes: tuple[tuple[int, ...], ...]) -> None:
    shape = tuple(s for group in mode_shapes for s in group)
    merged = tuple(math.prod(g[k] for g in mode_shapes) for k in range(len(mode_shapes[0])))
    x = torch.randn(shape, dtype=F64)
    cores = block_tt_svd(x, mode_shapes, full_tt_ranks(merged))
    assert_close(block_tt_dense(cores, len(mode_shapes)), x)


def test_block_tt_svd_core_shapes_and_dtype() -> None:
    cores = block_tt_svd(torch.randn(4, 3, 2, 5, 3, 2), ((4, 3, 2), (5, 3, 2)), (1, 6, 4, 1))
    assert [tuple(c.shape) for c in cores] == [(1, 4, 5, 6), (6, 3, 3, 4), (4, 2, 2, 1)]
    assert all(c.dtype == torch.float32 for c in cores)


def test_block_tt_svd_matches_tt_svd_of_the_interleaved_tensor() -> None:
    x = torch.randn(4, 3, 5, 2, dtype=F64)
    cores = block_tt_svd(x, ((4, 3), (5, 2)), (1, 5, 1))
    reference = tt_svd(x.permute(0, 2, 1, 3).reshape(20, 6), (1, 5, 1))
    assert_close(cores[0].reshape(1, 20, 5), reference[0])


def test_block_tt_svd_raises_on_group_lengths() -> None:
    with pytest.raises(ShapeError, match=r"groups have lengths \[2, 3\]"):
        block_tt_svd(torch.randn(4, 3, 5, 3, 2), ((4, 3), (5, 3, 2)), (1, 2, 1))


def test_block_tt_svd_raises_on_tensor_shape() -> None:
    with pytest.raises(ShapeError, match=r"the tensor must have shape \(4, 3, 5, 2\)"):
        block_tt_svd(torch.randn(4, 3, 2, 5), ((4, 3), (5, 2)), (1, 2, 1))


def test_block_tt_svd_raises_on_rank_above_bound() -> None:
    match = r"ranks\[1\]=7 is invalid: for a block TT .*merged shape \(20, 6\).*from 1 to 6"
    with pytest.raises(RankError, match=match):
        block_tt_svd(torch.randn(4, 3, 5, 2), ((4, 3), (5, 2)), (1, 7, 1))


# --------------------------------------------------------------------------- cp_als
def random_cp(shape: tuple[int, ...], rank: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return cp_dense(
        torch.ones(rank, dtype=F64), [torch.randn(n, rank, dtype=F64) for n in shape]
    ).to(dtype)


@pytest.mark.parametrize("init", ["svd", "random"])
def test_cp_als_recovers_exact_low_rank_tensor(init: str) -> None:
    x = random_cp((8, 9, 10), 3)
    weights, factors, fit = cp_als(x, 3, init=init)  # type: ignore[arg-type]
    assert fit > 0.999
    assert_close(
        cp_dense(weights, factors), x, rtol=1e-5, atol=1e-5 * norm(x) / math.sqrt(x.numel())
    )


def test_cp_als_recovers_complex_low_rank_tensor() -> None:
    x = cp_dense(
        torch.ones(2, dtype=F64), [torch.randn(n, 2, dtype=torch.complex128) for n in (5, 6, 7)]
    )
    weights, factors, fit = cp_als(x, 2)
    assert fit > 0.999 and weights.dtype == F64 and factors[0].dtype == torch.complex128


def test_cp_als_fit_matches_reconstruction() -> None:
    x = torch.randn(6, 7, 8, dtype=F64)
    weights, factors, fit = cp_als(x, 4)
    assert_close(fit, 1 - norm(x - cp_dense(weights, factors)) / norm(x))


def test_cp_als_factors_have_unit_columns_and_nonnegative_weights() -> None:
    weights, factors, _ = cp_als(torch.randn(6, 7, 8, dtype=F64), 4)
    assert bool((weights >= 0).all())
    assert all(
        bool(torch.allclose(torch.linalg.vector_norm(f, dim=0), torch.ones(4, dtype=F64)))
        for f in factors
    )


@pytest.mark.parametrize("rank", [20, 25, 60])
def test_cp_als_matrix_at_rank_above_its_size_is_exact(rank: int) -> None:
    x = torch.randn(30, 20, dtype=F64)
    weights, factors, fit = cp_als(x, rank)
    assert fit > 1 - 1e-6 and [f.shape for f in factors] == [(30, rank), (20, rank)]


def test_cp_als_matrix_matches_truncated_svd_optimum() -> None:
    x = with_spectrum(40, 30, 0.7 ** torch.arange(30, dtype=F64))
    _, _, fit = cp_als(x, 3, tol=0.0, n_iter_max=200)
    assert_close(fit, 1 - math.sqrt(discarded_sq(x, 3)) / norm(x), rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cp_als_keeps_dtype_and_shapes(dtype: torch.dtype) -> None:
    weights, factors, fit = cp_als(torch.randn(4, 5, 6, 3, dtype=dtype), 7)
    assert weights.dtype == dtype and all(f.dtype == dtype for f in factors)
    assert weights.shape == (7,) and [tuple(f.shape) for f in factors] == [
        (4, 7),
        (5, 7),
        (6, 7),
        (3, 7),
    ]
    assert isinstance(fit, float) and 0.0 <= fit <= 1.0


def test_cp_als_stops_at_the_time_limit_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    x = torch.randn(12, 13, 14, dtype=F64)
    with caplog.at_level(logging.INFO, logger="tfx.tensors._decompose"):
        weights, factors, fit = cp_als(x, 10, time_limit=0.0, tol=0.0, n_iter_max=10_000)
    assert "time_limit=0 s after 1 sweeps" in caplog.text
    assert_close(fit, 1 - norm(x - cp_dense(weights, factors)) / norm(x))


def test_cp_als_is_deterministic_for_a_seed() -> None:
    x = torch.randn(5, 6, 7, dtype=F64)
    first, second = (
        cp_als(x, 9, init="random", random_state=3),
        cp_als(x, 9, init="random", random_state=3),
    )
    assert torch.equal(first[0], second[0]) and first[2] == second[2]


def test_cp_als_zero_tensor_gives_zero_weights() -> None:
    weights, factors, fit = cp_als(torch.zeros(3, 4, 5), 2)
    assert fit == 1.0 and not bool(weights.any())


def test_cp_als_l2_reg_shrinks_weights() -> None:
    x = random_cp((6, 7, 8), 2)
    plain, ridge = cp_als(x, 2)[0], cp_als(x, 2, l2_reg=50.0)[0]
    assert float(ridge.sum()) < float(plain.sum())


@pytest.mark.parametrize("rank", [0, -1, 1.5])
def test_cp_als_raises_on_bad_rank(rank: object) -> None:
    with pytest.raises(RankError, match=r"rank=.* is invalid: a CP rank counts rank-one terms"):
        cp_als(torch.randn(3, 4, 5), rank)  # type: ignore[arg-type]


def test_cp_als_raises_on_unknown_init() -> None:
    with pytest.raises(OptionError, match="init='svdd' is not registered. Did you mean 'svd'"):
        cp_als(torch.randn(3, 4), 2, init="svdd")  # type: ignore[arg-type]


def test_cp_als_raises_on_negative_tol() -> None:
    with pytest.raises(OptionError, match=r"(?s)tol=-1.0 is invalid: it must be >= 0.*tol=1e-8"):
        cp_als(torch.randn(3, 4), 2, tol=-1.0)


@pytest.mark.parametrize("fn", [cp_als, tt_svd, truncated_svd])
def test_decompositions_raise_on_empty_tensor(fn: object) -> None:
    with pytest.raises(ShapeError, match=r"empty tensor of shape \(0, 3\)"):
        fn(torch.randn(0, 3), 1)  # type: ignore[operator]


def test_cp_als_raises_on_vector() -> None:
    with pytest.raises(ShapeError, match=r"cp_als needs a tensor with at least 2 dimension"):
        cp_als(torch.randn(5), 1)


# --------------------------------------------------------------------------- SVD of a product, Gram
def test_svd_of_product_is_the_svd_of_the_product() -> None:
    u, _ = torch.linalg.qr(torch.randn(60, 8, dtype=F64))
    s = torch.linspace(3.0, 0.5, 8, dtype=F64)
    right = torch.randn(8, 45, dtype=F64)
    got_u, got_s, got_vh = svd_of_product(u, s, right)
    product = (u * s) @ right
    assert_close(svd_dense(got_u, got_s, got_vh), product)
    assert_close(got_u.T @ got_u, torch.eye(8, dtype=F64))
    assert_close(got_vh @ got_vh.T, torch.eye(8, dtype=F64))
    ref_u, ref_s, ref_vh = truncated_svd(product, 8, method="exact")
    assert_close(got_s, ref_s)
    assert_close(got_u, ref_u)  # the same sign convention
    assert_close(got_vh, ref_vh)


@pytest.mark.parametrize("shape", [(300, 700), (700, 300)])
def test_leading_subspace_from_the_gram_matches_the_exact_svd(shape: tuple[int, int]) -> None:
    """Where truncated_svd would run the full SVD (rank 200 of 300: the sketch would cover
    more than half), the Gram route gives the same subspace: the same projector."""
    a = with_spectrum(*shape, torch.logspace(0, -4, 300, dtype=F64))
    u = leading_subspace(a, 200)
    ref = truncated_svd(a, 200, method="exact")[0]
    assert_close(u.T @ u, torch.eye(200, dtype=F64))
    assert_close(u @ u.T, ref @ ref.T, rtol=1e-9, atol=1e-10)


def test_leading_subspace_is_exact_at_small_ranks_and_rotation_invariant() -> None:
    """Rank 20 of 500 (where truncated_svd sketches): the exact subspace, and the same one
    for the matrix times an orthogonal matrix (a whitening by another square root)."""
    a = with_spectrum(600, 500, torch.logspace(0, -3, 500, dtype=F64))
    u = leading_subspace(a, 20)
    ref = truncated_svd(a, 20, method="exact")[0]
    assert_close(u @ u.T, ref @ ref.T, rtol=1e-9, atol=1e-10)
    q, _ = torch.linalg.qr(torch.randn(500, 500, dtype=F64))
    rotated = leading_subspace(a @ q, 20)
    assert_close(rotated @ rotated.T, u @ u.T, rtol=1e-9, atol=1e-10)


def test_leading_subspace_raises_on_bad_rank() -> None:
    with pytest.raises(RankError, match=r"leading_subspace\(matrix, 5\)"):
        leading_subspace(torch.randn(5, 7), 6)


@given(
    st.lists(st.integers(-3, 3), min_size=12, max_size=12),
    st.sampled_from([(4, 3), (3, 4), (12, 1), (2, 6)]),
)
def test_phase_pivots_on_the_first_largest_magnitude(values: list[int], shape: tuple) -> None:
    """Real columns: the pivot (found from the maximum and minimum, with no |u| copy) is the
    first entry of largest magnitude, ties included, as ``u.abs().argmax`` finds it."""
    from tfx.tensors._decompose import _phase

    u = torch.tensor(values, dtype=torch.float64).reshape(shape)
    pivot = u.gather(0, u.abs().argmax(dim=0, keepdim=True))
    expected = torch.where(pivot != 0, pivot.sign(), torch.ones_like(pivot))
    assert torch.equal(_phase(u), expected)
