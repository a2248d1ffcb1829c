"""Decompose dense tensors: truncated SVD, ST-HOSVD, TT-SVD, block TT-SVD and CP-ALS.

Pure torch functions on tensors, no ``nn.Module``: the factorized tensor classes
call them from ``from_tensor`` / ``init_from_tensor``. Every function runs under
``torch.no_grad()``, accepts real or complex floating tensors, returns tensors of
the input's dtype and device (singular values and CP weights are real, as in
``torch.linalg.svd``), and checks ranks before doing any work.

Numerics, and why:

* Small problems are computed in float64 (complex128) and cast back; large ones
  in the input's dtype (at least float32: LAPACK has no half precision).
* A leading left singular basis of a matrix with one small side comes from the
  eigenvectors of the Gram matrix of that side: one GEMM and a small ``eigh``
  instead of an SVD of the whole matrix. The basis is orthonormal to working
  precision and the projection onto it is exact, so full-rank decompositions
  stay exact; only directions with singular values below about
  ``sqrt(eps) * s_max`` are blurred, and they carry negligible energy.
* Larger problems use a randomized range finder (Halko, Martinsson & Tropp,
  2011) with a fixed seed, so results are reproducible.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import torch
from torch import Tensor

from .._errors import OptionError, RankError, ShapeError, unknown_option

__all__ = [
    "truncated_svd",
    "svd_of_product",
    "leading_subspace",
    "gram_dtype",
    "singular_values",
    "hosvd",
    "tt_svd",
    "block_tt_svd",
    "cp_als",
]

_LOG = logging.getLogger(__name__)

SvdMethod = Literal["auto", "exact", "randomized"]
CpInit = Literal["svd", "random"]

# Work in float64 below these sizes: cheap there, and it buys 9 more digits.
_F64_NUMEL: Final = 2**20  # tensors (HOSVD, TT-SVD)
_CP_F64_NUMEL: Final = 1_000_000  # CP-ALS
_SVD_F64_FLOPS: Final = 2**27  # m * n * min(m, n) of an exact SVD
_GRAM_F64_MACS: Final = 2**26  # multiply-adds of a Gram matrix
# The Gram route is used when the small side has at most this many rows/columns.
_GRAM_MAX: Final = 1024
# leading_subspace: the Gram route up to this side (an eigh of 4096 still beats
# the SVD of a matrix with that small side).
_GRAM_SVD_MAX: Final = 4096
# Relative ridge added to CP's normal equations: keeps them solvable when the
# rank exceeds what the other factors can span, and moves the solution by ~1e-10.
_CP_RIDGE: Final = 1e-10
# Stop when the norm identity puts the squared residual below this fraction of
# ||x||^2: float64 rounding of the identity's terms is about this large.
_CP_FLOOR: Final = 64 * torch.finfo(torch.float64).eps

_MSG_NOT_FLOAT: Final = (
    "{fn} got a tensor of dtype {dtype}: decompositions need floating point or complex values.\n"
    "Fix: convert first, e.g. {fn}(tensor.float(), ...)."
)
_MSG_NDIM: Final = (
    "{fn} needs a tensor with at least {need} dimension(s); got shape {shape}.\n"
    "Fix: reshape it, e.g. tensor.reshape({example})."
)
_MSG_RANK: Final = (
    "{what}={value!r} is invalid: {why}, so it must be an int from 1 to {largest}.\nFix: {fix}"
)
_MSG_RANKS_LEN: Final = "ranks={ranks!r} has {got} entries, but {why} needs {need}.\nFix: {fix}"
_MSG_TT_BOUNDARY: Final = (
    "ranks={ranks!r} starts or ends with {value}, but the boundary ranks of a tensor train "
    "are always 1.\nFix: ranks={fixed!r}"
)
_MSG_MODES: Final = (
    "modes={modes!r} is invalid for a {ndim}-way tensor: {why}.\n"
    "Fix: pass distinct modes from {low} to {high}, e.g. modes={example!r}."
)
_MSG_MODE_SHAPES: Final = (
    "mode_shapes={shapes!r} does not fit a tensor of shape {shape}: {why}.\nFix: {fix}"
)
_MSG_CP_RANK: Final = (
    "rank={rank!r} is invalid: a CP rank counts rank-one terms, so it must be an int >= 1.\n"
    "Fix: cp_als(tensor, 1), or a larger int."
)
_LOG_TIME_LIMIT: Final = (
    "cp_als stopped at time_limit=%g s after %d sweeps (fit %.6f); "
    "pass time_limit=None to run to convergence"
)
_MSG_OPTION: Final = "{name}={value!r} is invalid: {why}.\nFix: {fix}"


# --------------------------------------------------------------------------- checks
def _check_tensor(tensor: Tensor, fn: str, min_ndim: int) -> None:
    if not (tensor.is_floating_point() or tensor.is_complex()):
        # A dtype problem is a TypeError, as in torch; none of tfx's ValueErrors fits.
        raise TypeError(_MSG_NOT_FLOAT.format(fn=fn, dtype=tensor.dtype))
    if tensor.numel() == 0:
        raise ShapeError(
            f"{fn} got an empty tensor of shape {tuple(tensor.shape)}: there is nothing to "
            "decompose.\nFix: skip empty tensors before calling it."
        )
    if tensor.ndim < min_ndim:
        example = ", ".join(["1"] * (min_ndim - tensor.ndim) + ["-1"])
        raise ShapeError(
            _MSG_NDIM.format(fn=fn, need=min_ndim, shape=tuple(tensor.shape), example=example)
        )


def _as_rank(value: object, what: str, why: str, largest: int, fix: str) -> int:
    """``value`` as an int in ``[1, largest]``, else a RankError saying why."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if 1 <= int(value) <= largest:
            return int(value)
    raise RankError(_MSG_RANK.format(what=what, value=value, why=why, largest=largest, fix=fix))


def _clip(value: object, largest: int) -> int:
    """A valid stand-in for a bad rank entry, for the fix in error messages."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return min(max(int(value), 1), largest)
    return largest


def _check_modes(modes: Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    if modes is None:
        return tuple(range(ndim))
    modes = tuple(modes)
    bad = [m for m in modes if not isinstance(m, numbers.Integral) or not -ndim <= int(m) < ndim]
    normal = tuple(int(m) % ndim for m in modes if m not in bad)
    why = ""
    if bad:
        why = f"{bad} out of range"
    elif len(set(normal)) < len(normal):
        why = "a mode is repeated"
    if why:
        example = tuple(sorted(set(normal))) or tuple(range(ndim))
        raise ShapeError(
            _MSG_MODES.format(
                modes=modes, ndim=ndim, why=why, low=-ndim, high=ndim - 1, example=example
            )
        )
    return normal


def _check_tt_ranks(
    ranks: Sequence[int], shape: tuple[int, ...], label: str, call: str
) -> tuple[int, ...]:
    """Validate TT ranks ``(1, r_1, ..., r_{d-1}, 1)`` against the unfolding bounds of ``shape``."""
    d = len(shape)
    bounds = [1] + [min(math.prod(shape[:k]), math.prod(shape[k:])) for k in range(1, d)] + [1]
    ranks = tuple(ranks)
    fixed = (
        tuple(_clip(r, b) for r, b in zip(ranks, bounds, strict=True))
        if len(ranks) == d + 1
        else tuple(bounds)
    )
    if len(ranks) != d + 1:
        why = f"{label} ({d} modes) with the boundary ones included"
        fix = f"{call.format(ranks=fixed)}  # full TT rank"
        raise ShapeError(
            _MSG_RANKS_LEN.format(ranks=ranks, got=len(ranks), why=why, need=d + 1, fix=fix)
        )
    for end in (ranks[0], ranks[-1]):
        if end != 1:
            raise RankError(
                _MSG_TT_BOUNDARY.format(ranks=ranks, value=end, fixed=(1, *fixed[1:-1], 1))
            )
    for k in range(1, d):
        left, right = math.prod(shape[:k]), math.prod(shape[k:])
        why = f"for {label}, the unfolding between modes {k - 1} and {k} is {left} x {right}"
        _as_rank(ranks[k], f"ranks[{k}]", why, bounds[k], call.format(ranks=fixed))
    return tuple(int(r) for r in ranks)


# --------------------------------------------------------------------------- helpers
def _work_dtype(dtype: torch.dtype, small: bool) -> torch.dtype:
    """The dtype to compute in: float64/complex128 when small, else at least float32."""
    if dtype.is_complex:
        return (
            torch.complex128 if small else (torch.complex64 if dtype == torch.complex32 else dtype)
        )
    return (
        torch.float64
        if small
        else (torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)
    )


def _real_dtype(dtype: torch.dtype) -> torch.dtype:
    return {
        torch.complex32: torch.float16,
        torch.complex64: torch.float32,
        torch.complex128: torch.float64,
    }.get(dtype, dtype)


def _generator(device: torch.device, seed: int | None) -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def _phase(u: Tensor) -> Tensor:
    """Unit factors that make the largest entry of each column of ``u`` real positive.

    Multiplying ``u`` by ``phase.conj()`` (and the matching rows of ``Vh`` by
    ``phase``) makes the output deterministic, whatever sign LAPACK picked.
    """
    if u.is_complex():
        where = u.abs().argmax(dim=-2, keepdim=True)
    else:  # the first largest |entry| is the first maximum or the first minimum: no |u| copy
        top, bottom = u.argmax(dim=-2, keepdim=True), u.argmin(dim=-2, keepdim=True)
        high, low = u.gather(-2, top).abs(), u.gather(-2, bottom).abs()
        where = torch.where((high > low) | ((high == low) & (top < bottom)), top, bottom)
    pivot = u.gather(-2, where)
    size = pivot.abs()
    return torch.where(size > 0, pivot / torch.where(size > 0, size, 1), torch.ones_like(pivot))


def _oversamples(rank: int) -> int:
    return max(10, rank // 10)


def _prefer_exact(m: int, n: int, width: int) -> bool:
    """Exact SVD for small matrices or wide sketches; randomized otherwise (measured crossover)."""
    k = min(m, n)
    return k <= 256 or 2 * width >= k


def _randomized_svd(
    a: Tensor, rank: int, width: int, n_power_iter: int, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Range finder with power iterations, re-orthonormalised by QR after every product."""
    gen = _generator(a.device, seed)
    omega = torch.randn(
        (*a.shape[:-2], a.shape[-1], width), generator=gen, dtype=a.dtype, device=a.device
    )
    q = torch.linalg.qr(a @ omega).Q
    for _ in range(n_power_iter):
        q = torch.linalg.qr(a.mH @ q).Q
        q = torch.linalg.qr(a @ q).Q
    # a ~ q q^H a = q (a^H q)^H; with a^H q = w r this is q r^H w^H: only an l x l SVD left.
    w, r = torch.linalg.qr(a.mH @ q)
    ub, s, vbh = torch.linalg.svd(r.mH)
    return q @ ub[..., :rank], s[..., :rank], vbh[..., :rank, :] @ w.mH


def _serial(fn: Callable[[Tensor], Any], matrix: Tensor) -> Any:
    """``fn(matrix)``, on one thread below 1024 x 1024.

    LAPACK's threaded eigensolvers are several times slower there on a loaded machine
    (``eigvalsh`` of 768 x 768: 0.04 s on one thread, 0.16-0.6 s on two), and gain little on
    an idle one.
    """
    threads = torch.get_num_threads()
    if matrix.shape[-1] >= 1024 or threads == 1:
        return fn(matrix)
    torch.set_num_threads(1)
    try:
        return fn(matrix)
    finally:
        torch.set_num_threads(threads)


def gram_dtype(dtype: torch.dtype, m: int, n: int) -> torch.dtype:
    """The dtype the Gram matrix of an ``m x n`` matrix of ``dtype`` is summed in.

    float64 while it costs at most ``2**26`` multiply-adds, else the matrix's own precision
    (at least float32): the rule :func:`leading_subspace` follows.
    """
    return _work_dtype(dtype, min(m, n) ** 2 * max(m, n) <= _GRAM_F64_MACS)


def _gram_basis(a: Tensor, r: int) -> Tensor:
    """Leading ``r`` left singular vectors of ``a`` from the Gram matrix of its smaller side."""
    m, n = a.shape
    b = a.to(gram_dtype(a.dtype, m, n))
    gram = b @ b.mH if m <= n else b.mH @ b
    vecs: Tensor = _serial(torch.linalg.eigh, gram.to(_work_dtype(a.dtype, True))).eigenvectors
    top = vecs[:, -r:].flip(-1)
    if m <= n:
        return top.to(a.dtype)
    # Tall: a v spans the leading left subspace; QR makes it orthonormal (also where s ~ 0).
    q: Tensor = torch.linalg.qr(b @ top.to(b.dtype)).Q
    return q.to(a.dtype)


def _complete_basis(u: Tensor, r: int, seed: int = 0) -> Tensor:
    """Extend orthonormal columns ``u`` (m x k) to ``r <= m`` orthonormal columns."""
    gen = _generator(u.device, seed)
    extra = torch.randn((u.shape[0], r - u.shape[1]), generator=gen, dtype=u.dtype, device=u.device)
    q = torch.linalg.qr(torch.cat([u, extra], dim=1)).Q
    return torch.cat([u, q[:, u.shape[1] :]], dim=1)


def _left_basis(a: Tensor, r: int) -> Tensor:
    """``r <= a.shape[0]`` orthonormal columns spanning the leading left singular subspace."""
    m, n = a.shape
    k = min(m, n)
    kr = min(r, k)
    width = min(kr + _oversamples(kr), k)
    if k <= _GRAM_MAX and (k <= 512 or k <= 4 * width):
        u = _gram_basis(a, kr)
    else:
        u = truncated_svd(a, kr)[0]
    u = _complete_basis(u, r) if r > kr else u
    return u * _phase(u).conj()


@torch.no_grad()
def leading_subspace(matrix: Tensor, rank: int) -> Tensor:
    """Orthonormal columns spanning a matrix's leading ``rank``-dimensional left subspace.

    That is ``U`` of its rank-``rank`` truncated SVD, up to a rotation.

    Where the smaller side is at most 4096, the subspace comes from the eigendecomposition of
    the float64 Gram matrix of that side: one GEMM and an ``eigh``, 2-3x cheaper than the SVD
    of a 768 x 3072 matrix, and exact (to float64 rounding, for singular values above about
    ``1e-8`` of the largest) at every rank, where :func:`truncated_svd` would take a
    randomized sketch for small ranks. The subspace, unlike a sketch, depends on the matrix
    only: ``a @ q`` for an orthogonal ``q`` has the same one. Larger matrices get
    :func:`truncated_svd`'s ``U``. ``a ~ u @ (u^H @ a)`` is then the truncation.

    Raises:
        RankError: ``rank`` is not an int in ``[1, min(m, n)]``.
        ShapeError: ``matrix`` is not a matrix.
    """
    _check_tensor(matrix, "leading_subspace", 2)
    if matrix.ndim != 2:
        raise ShapeError(
            f"leading_subspace needs a matrix; got shape {tuple(matrix.shape)}.\n"
            "Fix: call it on each matrix of the batch."
        )
    m, n = matrix.shape
    k = min(m, n)
    why = f"a {m} x {n} matrix has min({m}, {n}) = {k} singular values"
    rank = _as_rank(rank, "rank", why, k, f"leading_subspace(matrix, {_clip(rank, k)})")
    if k > _GRAM_SVD_MAX:
        return truncated_svd(matrix, rank)[0]
    a = matrix.detach().to(_work_dtype(matrix.dtype, True))
    return _gram_basis(a, rank).to(matrix.dtype)


def svd_of_product(u: Tensor, s: Tensor, right: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The SVD of ``u @ diag(s) @ right``: one QR and an ``r x r`` SVD.

    ``u`` has orthonormal columns (``m x r``), ``right`` is any ``r x n``; no ``m x n``
    matrix is decomposed. Singular vectors are sign-normalised as in :func:`truncated_svd`.
    """
    q, r = torch.linalg.qr(right.mH)  # right = r^H q^H
    ub, sb, vbh = torch.linalg.svd(s[:, None] * r.mH, full_matrices=False)  # = diag(s) r^H
    u, vh = u @ ub, vbh @ q.mH
    phase = _phase(u)
    return u.mul_(phase.conj()), sb, vh * phase.mT  # u is new: signed in place


# --------------------------------------------------------------------------- SVD
@torch.no_grad()
def truncated_svd(
    matrix: Tensor,
    rank: int,
    *,
    method: SvdMethod = "auto",
    n_oversamples: int | None = None,
    n_power_iter: int = 2,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``rank`` leading singular triplets of a matrix (or a batch of matrices).

    ``method="auto"`` runs ``torch.linalg.svd`` (in float64 when small) for
    matrices with a side of at most 256 or when the sketch would cover half the
    smaller side, and a seeded randomized SVD otherwise. Singular vectors are
    sign-normalised (largest entry of each column of ``U`` real positive).

    Args:
        matrix: a ``(..., m, n)`` real or complex tensor.
        rank: how many singular triplets to keep, ``1 <= rank <= min(m, n)``.
        method: ``"auto"``, ``"exact"`` or ``"randomized"``.
        n_oversamples: extra sketch columns for the randomized path
            (default ``max(10, rank // 10)``).
        n_power_iter: power iterations of the randomized path.
        seed: seed of the randomized path's test matrix.

    Returns:
        ``(U, S, Vh)`` of shapes ``(..., m, rank)``, ``(..., rank)`` and
        ``(..., rank, n)`` with ``matrix ~ U @ diag(S) @ Vh``; ``S`` is real
        and descending.

    Raises:
        RankError: ``rank`` is not an int in ``[1, min(m, n)]``.
        ShapeError: ``matrix`` has fewer than 2 dimensions.
        OptionError: unknown ``method`` or a negative sketch option.

    Example:
        >>> u, s, vh = truncated_svd(torch.randn(300, 200), 20)
        >>> u.shape, s.shape, vh.shape
        (torch.Size([300, 20]), torch.Size([20]), torch.Size([20, 200]))
    """
    _check_tensor(matrix, "truncated_svd", 2)
    m, n = matrix.shape[-2:]
    k = min(m, n)
    why = f"a {m} x {n} matrix has min({m}, {n}) = {k} singular values"
    rank = _as_rank(rank, "rank", why, k, f"truncated_svd(matrix, {_clip(rank, k)})")
    if method not in ("auto", "exact", "randomized"):
        raise unknown_option("method", method, ("auto", "exact", "randomized"))
    oversamples = _oversamples(rank) if n_oversamples is None else n_oversamples
    if oversamples < 0 or n_power_iter < 0:
        value = (
            ("n_oversamples", oversamples) if oversamples < 0 else ("n_power_iter", n_power_iter)
        )
        fix = f"truncated_svd(matrix, {rank}, {value[0]}=0)"
        raise OptionError(
            _MSG_OPTION.format(name=value[0], value=value[1], why="it must be >= 0", fix=fix)
        )
    width = min(rank + oversamples, k)
    exact = method == "exact" or (method == "auto" and _prefer_exact(m, n, width))
    a = matrix.detach().to(_work_dtype(matrix.dtype, exact and m * n * k <= _SVD_F64_FLOPS))
    if exact:
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        u, s, vh = u[..., :rank], s[..., :rank], vh[..., :rank, :]
    else:
        u, s, vh = _randomized_svd(a, rank, width, n_power_iter, seed)
    phase = _phase(u)
    u, vh = u * phase.conj(), vh * phase.mT
    return u.to(matrix.dtype), s.to(_real_dtype(matrix.dtype)), vh.to(matrix.dtype)


@torch.no_grad()
def singular_values(matrix: Tensor) -> Tensor:
    """All singular values of a matrix (or batch), descending, computed cheaply.

    Matrices with a side of at most 1024 that are not much wider than tall use
    ``torch.linalg.svdvals`` in float64 (exact to float64 rounding). Larger ones
    use the eigenvalues of the Gram matrix of the smaller side, which is several
    times faster than an SVD (4096 x 4096 float32: ~3 s against ~9 s on 2 cores)
    but resolves singular values only down to about ``sqrt(eps) * s_max`` of the
    working dtype (``3e-4 * s_max`` for float32): fine for energy-based rank
    selection, not for condition numbers.

    Args:
        matrix: a ``(..., m, n)`` real or complex tensor.

    Returns:
        A real ``(..., min(m, n))`` tensor, descending.

    Raises:
        ShapeError: ``matrix`` has fewer than 2 dimensions.
    """
    _check_tensor(matrix, "singular_values", 2)
    m, n = matrix.shape[-2:]
    k, big = min(m, n), max(m, n)
    out = _real_dtype(matrix.dtype)
    if k <= _GRAM_MAX and big <= 4 * k:
        exact: Tensor = torch.linalg.svdvals(matrix.detach().to(_work_dtype(matrix.dtype, True)))
        return exact.to(out)
    b = matrix.detach().to(_work_dtype(matrix.dtype, k * k * big <= _GRAM_F64_MACS))
    gram = b @ b.mH if m <= n else b.mH @ b
    evals = torch.linalg.eigvalsh(gram.to(_work_dtype(matrix.dtype, k <= _GRAM_MAX)))
    values: Tensor = evals.flip(-1).clamp(min=0).sqrt()
    return values.to(out)


# --------------------------------------------------------------------------- Tucker
@torch.no_grad()
def hosvd(
    tensor: Tensor, ranks: Sequence[int], *, modes: Sequence[int] | None = None
) -> tuple[Tensor, list[Tensor]]:
    """Sequentially truncated HOSVD (ST-HOSVD): a Tucker decomposition.

    For each mode in ``modes``, in order, the factor is the leading left singular
    basis of the current core's unfolding, and the core is projected onto it.
    Its squared error is at most the sum, over the truncated modes, of the
    squared singular values each unfolding of ``tensor`` discards, and it is
    exact (to rounding) at full rank. Bases come from the Gram matrix of the
    unfolding's smaller side when that side is at most 1024, else from
    :func:`truncated_svd` (randomized for small ranks, where the bound holds up
    to its small extra error).

    Args:
        tensor: a real or complex tensor.
        ranks: one rank per entry of ``modes``, ``1 <= ranks[i] <= tensor.shape[modes[i]]``.
        modes: the modes to factorize (default all); other modes keep their full
            size in the core and get no factor.

    Returns:
        ``(core, factors)``: ``factors[i]`` is ``(tensor.shape[modes[i]], ranks[i])``
        with orthonormal columns, and ``tensor ~ core x_{modes[i]} factors[i]``.

    Raises:
        ShapeError: ``len(ranks) != len(modes)``, or bad ``modes``.
        RankError: a rank outside ``[1, mode size]``.

    Example:
        >>> core, factors = hosvd(torch.randn(6, 7, 8), (3, 3, 3))
        >>> core.shape, [f.shape for f in factors]
        (torch.Size([3, 3, 3]), [torch.Size([6, 3]), torch.Size([7, 3]), torch.Size([8, 3])])
    """
    _check_tensor(tensor, "hosvd", 1)
    shape = tuple(tensor.shape)
    modes_t = _check_modes(modes, len(shape))
    ranks = tuple(ranks)
    sizes = tuple(shape[m] for m in modes_t)
    fixed = (
        tuple(_clip(r, s) for r, s in zip(ranks, sizes, strict=True))
        if len(ranks) == len(sizes)
        else sizes
    )
    call = (
        f"hosvd(tensor, ranks={fixed!r}" + ("" if modes is None else f", modes={modes_t!r}") + ")"
    )
    if len(ranks) != len(modes_t):
        why = f"a tensor of shape {shape} with modes={modes_t!r}"
        raise ShapeError(
            _MSG_RANKS_LEN.format(ranks=ranks, got=len(ranks), why=why, need=len(modes_t), fix=call)
        )
    checked = [
        _as_rank(r, f"ranks[{i}]", f"mode {m} of shape {shape} has size {shape[m]}", shape[m], call)
        for i, (r, m) in enumerate(zip(ranks, modes_t, strict=True))
    ]
    core = tensor.detach().to(_work_dtype(tensor.dtype, tensor.numel() <= _F64_NUMEL))
    factors = []
    for mode, r in zip(modes_t, checked, strict=True):
        unfolded = core.movedim(mode, 0)
        rest = unfolded.shape[1:]
        mat = unfolded.reshape(shape[mode], -1)
        u = _left_basis(mat, r)
        core = (u.mH @ mat).reshape(r, *rest).movedim(0, mode)
        factors.append(u.to(tensor.dtype))
    return core.to(tensor.dtype), factors


# --------------------------------------------------------------------------- tensor train
def _tt_sweep(tensor: Tensor, ranks: tuple[int, ...]) -> list[Tensor]:
    """TT-SVD of ``tensor`` at already validated ``ranks``, left to right."""
    shape = tuple(tensor.shape)
    rest = tensor.detach().to(_work_dtype(tensor.dtype, tensor.numel() <= _F64_NUMEL))
    cores = []
    for k in range(len(shape) - 1):
        rows, r = ranks[k] * shape[k], ranks[k + 1]
        mat = rest.reshape(rows, -1)
        u = _left_basis(mat, min(r, rows))
        rest = u.mH @ mat
        if r > rows:
            # Earlier truncation left fewer rows than this rank: pad with zeros (exact).
            u = torch.cat([u, u.new_zeros(rows, r - rows)], dim=1)
            rest = torch.cat([rest, rest.new_zeros(r - rows, rest.shape[1])], dim=0)
        cores.append(u.reshape(ranks[k], shape[k], r).to(tensor.dtype))
    cores.append(rest.reshape(ranks[-2], shape[-1], 1).to(tensor.dtype))
    return cores


@torch.no_grad()
def tt_svd(tensor: Tensor, ranks: Sequence[int]) -> list[Tensor]:
    """TT-SVD: a tensor train with left-orthonormal cores.

    The error is at most the square root of the sum, over the cuts, of the
    squared singular values each unfolding of ``tensor`` discards (so at most
    ``sqrt(ndim - 1)`` times the best TT approximation's), and exact (to
    rounding) at full TT rank. Where earlier truncation leaves fewer rows than
    a requested rank, the extra slices are zero. Each step's basis is computed
    as in :func:`hosvd`.

    Args:
        tensor: a real or complex tensor with ``d`` modes.
        ranks: ``(1, r_1, ..., r_{d-1}, 1)``, with
            ``r_k <= min(prod(shape[:k]), prod(shape[k:]))``.

    Returns:
        ``d`` cores of shapes ``(ranks[k], tensor.shape[k], ranks[k + 1])``.

    Raises:
        ShapeError: ``len(ranks) != tensor.ndim + 1``.
        RankError: a boundary rank other than 1, or a rank above its bound.

    Example:
        >>> [c.shape for c in tt_svd(torch.randn(4, 5, 6), (1, 3, 3, 1))]
        [torch.Size([1, 4, 3]), torch.Size([3, 5, 3]), torch.Size([3, 6, 1])]
    """
    _check_tensor(tensor, "tt_svd", 1)
    shape = tuple(tensor.shape)
    checked = _check_tt_ranks(
        ranks, shape, f"a TT of shape {shape}", "tt_svd(tensor, ranks={ranks!r})"
    )
    return _tt_sweep(tensor, checked)


@torch.no_grad()
def block_tt_svd(
    tensor: Tensor, mode_shapes: Sequence[Sequence[int]], ranks: Sequence[int]
) -> list[Tensor]:
    """Block TT (TT-matrix) decomposition of a tensorized matrix (or tensor).

    ``tensor`` has shape ``(*mode_shapes[0], *mode_shapes[1], ...)``; its modes
    are interleaved to ``(i_1, o_1, i_2, o_2, ...)``, each pair merged, and the
    result decomposed by :func:`tt_svd`.

    Args:
        tensor: a real or complex tensor.
        mode_shapes: one shape per group of modes, e.g. ``((4, 3, 2), (5, 3, 2))``
            for a 24 x 30 matrix; all of the same length ``d``.
        ranks: ``(1, r_1, ..., r_{d-1}, 1)``, bounded as in :func:`tt_svd` for
            the merged shape ``(prod_j mode_shapes[j][k] for k)``.

    Returns:
        ``d`` cores of shapes
        ``(ranks[k], mode_shapes[0][k], mode_shapes[1][k], ..., ranks[k + 1])``.

    Raises:
        ShapeError: mode shapes of different lengths, or not matching ``tensor``;
            ``len(ranks) != d + 1``.
        RankError: a boundary rank other than 1, or a rank above its bound.

    Example:
        >>> x = torch.randn(4, 3, 2, 5, 3, 2)
        >>> cores = block_tt_svd(x, ((4, 3, 2), (5, 3, 2)), (1, 4, 4, 1))
        >>> [c.shape for c in cores]
        [torch.Size([1, 4, 5, 4]), torch.Size([4, 3, 3, 4]), torch.Size([4, 2, 2, 1])]
    """
    _check_tensor(tensor, "block_tt_svd", 1)
    shape = tuple(tensor.shape)
    shapes = tuple(tuple(int(s) for s in group) for group in mode_shapes)
    lengths = {len(group) for group in shapes}
    if not shapes or len(lengths) != 1 or 0 in lengths:
        why = (
            f"the groups have lengths {sorted(lengths)}; they must all have the same length d >= 1"
        )
        fix = "pad shorter groups with 1s, e.g. mode_shapes=((4, 3, 2), (6, 5, 1))"
        raise ShapeError(_MSG_MODE_SHAPES.format(shapes=mode_shapes, shape=shape, why=why, fix=fix))
    flat = tuple(s for group in shapes for s in group)
    if flat != shape:
        why = f"the tensor must have shape {flat}"
        fix = f"tensor.reshape{flat}  # if it holds {math.prod(flat)} entries in this order"
        raise ShapeError(_MSG_MODE_SHAPES.format(shapes=mode_shapes, shape=shape, why=why, fix=fix))
    d = len(shapes[0])
    merged = tuple(math.prod(group[k] for group in shapes) for k in range(d))
    label = f"a block TT with mode_shapes={shapes!r} (merged shape {merged})"
    checked = _check_tt_ranks(
        ranks, merged, label, "block_tt_svd(tensor, mode_shapes, ranks={ranks!r})"
    )
    perm = [j * d + k for k in range(d) for j in range(len(shapes))]
    cores = _tt_sweep(tensor.permute(perm).reshape(merged), checked)
    return [
        c.reshape(checked[k], *(g[k] for g in shapes), checked[k + 1]) for k, c in enumerate(cores)
    ]


# --------------------------------------------------------------------------- CP
def _mttkrp(x: Tensor, factors: list[Tensor], mode: int) -> Tensor:
    """``x_(mode) @ conj(khatri_rao(other factors))``, contracting one mode at a time.

    The first contraction (with the largest other mode) is a GEMM; the rest are
    batched over the rank. No Khatri-Rao product is ever formed.
    """
    order = x.ndim
    others = sorted((k for k in range(order) if k != mode), key=lambda k: -x.shape[k])
    out: Tensor = torch.tensordot(x, factors[others[0]].conj(), dims=([others[0]], [0]))
    labels = [k for k in range(order) if k != others[0]] + [order]
    for k in others[1:]:
        kept = [label for label in labels if label != k]
        out = torch.einsum(out, labels, factors[k].conj(), [k, order], kept)
        labels = kept
    return out


def _hadamard(grams: list[Tensor], skip: int) -> Tensor:
    out = torch.ones_like(grams[0])
    for k, gram in enumerate(grams):
        if k != skip:
            out = out * gram
    return out


def _solve_normal(v: Tensor, mttkrp: Tensor, l2_reg: float) -> Tensor:
    """Solve ``a @ (v + ridge I)^T = mttkrp`` in float64, by Cholesky (pinv if that fails)."""
    wide = _work_dtype(v.dtype, True)
    v64, m64 = v.to(wide), mttkrp.to(wide)
    ridge = l2_reg + _CP_RIDGE * float(v64.diagonal().real.mean())
    v64 = v64 + ridge * torch.eye(v.shape[0], dtype=wide, device=v.device)
    chol, info = torch.linalg.cholesky_ex(v64)
    if int(info) == 0:
        return torch.cholesky_solve(m64.mT, chol).mT.to(mttkrp.dtype)
    pinv: Tensor = torch.linalg.pinv(v64, hermitian=True)
    return (m64 @ pinv.mT).to(mttkrp.dtype)


def _cp_init(x: Tensor, rank: int, init: str, gen: torch.Generator) -> list[Tensor]:
    """Unit-column factors: leading left singular vectors of each unfolding, or random."""
    factors = []
    for mode, size in enumerate(x.shape):
        if init == "svd":
            kept = min(rank, size)
            u = _left_basis(x.movedim(mode, 0).reshape(size, -1), kept)
        else:
            kept, u = 0, x.new_zeros(size, 0)
        extra = torch.randn((size, rank - kept), generator=gen, dtype=x.dtype, device=x.device)
        factors.append(
            torch.cat([u, extra / torch.linalg.vector_norm(extra, dim=0).clamp(min=1e-30)], dim=1)
        )
    return factors


def _cp_residual(x: Tensor, weights: Tensor, factors: list[Tensor]) -> float:
    """``||x - [[weights; factors]]||``, reconstructing in rank chunks no larger than ``x``."""
    last = factors[-1]
    chunk = max(1, last.shape[0])
    rec = torch.zeros_like(x)
    for start in range(0, weights.shape[0], chunk):
        cols = slice(start, start + chunk)
        part = factors[0][:, cols] * weights[cols]
        for factor in factors[1:-1]:
            part = (part.unsqueeze(-2) * factor[:, cols]).reshape(-1, part.shape[-1])
        rec += (part @ last[:, cols].mT).reshape(x.shape)
    return float(torch.linalg.vector_norm(x - rec))


def _als_sweep(
    x: Tensor, factors: list[Tensor], l2_reg: float, norm_sq: float
) -> tuple[Tensor, float]:
    """Update every factor once, in place; return the weights and the squared residual.

    The residual comes from the norm identity on the last mode's update, with
    ``<x, y> = re sum(raw * conj(mttkrp))`` and ``||y||^2 = re sum(v * raw^H raw)``.
    """
    grams = [f.mH @ f for f in factors]
    for mode in range(x.ndim):
        v = _hadamard(grams, mode)
        mttkrp = _mttkrp(x, factors, mode)
        raw = _solve_normal(v, mttkrp, l2_reg)
        weights = torch.linalg.vector_norm(raw, dim=0)
        factors[mode] = raw / torch.where(weights > 0, weights, 1)
        grams[mode] = factors[mode].mH @ factors[mode]
    inner = float((raw * mttkrp.conj()).sum().real)
    res_sq = norm_sq - 2 * inner + float((v * (raw.mH @ raw)).sum().real)
    return weights, max(res_sq, 0.0)


def _check_cp_options(
    n_iter_max: int, tol: float, time_limit: float | None, l2_reg: float, init: str
) -> None:
    if init not in ("svd", "random"):
        raise unknown_option("init", init, ("svd", "random"))
    checks = [
        ("n_iter_max", n_iter_max, n_iter_max >= 0, "100"),
        ("tol", tol, tol >= 0, "1e-8"),
        ("time_limit", time_limit, time_limit is None or time_limit >= 0, "None  # no limit"),
        ("l2_reg", l2_reg, l2_reg >= 0, "0.0"),
    ]
    for name, value, ok, good in checks:
        if not ok:
            why = "it must be >= 0" + (" or None" if name == "time_limit" else "")
            raise OptionError(
                _MSG_OPTION.format(
                    name=name, value=value, why=why, fix=f"cp_als(tensor, rank, {name}={good})"
                )
            )


@torch.no_grad()
def cp_als(
    tensor: Tensor,
    rank: int,
    *,
    n_iter_max: int = 100,
    tol: float = 1e-8,
    time_limit: float | None = 10.0,
    l2_reg: float = 0.0,
    init: CpInit = "svd",
    random_state: int | None = 0,
) -> tuple[Tensor, list[Tensor], float]:
    """CP decomposition by alternating least squares.

    Each sweep solves, mode by mode, the normal equations
    ``A_n (V_n + l2_reg I) = mttkrp`` with ``V_n`` the Hadamard product of the
    other factors' Gram matrices; the MTTKRP contracts the tensor one mode at a
    time, never forming a Khatri-Rao product. The fit is tracked with the norm
    identity ``||x - y||^2 = ||x||^2 - 2 <x, y> + ||y||^2`` (no reconstruction)
    and recomputed exactly once at the end. Tensors under 1e6 entries are
    processed in float64 (complex128). Stops when the fit changes by less than
    ``tol``, reaches float rounding, after ``n_iter_max`` sweeps, or once
    ``time_limit`` seconds have passed (logged at INFO level).

    Args:
        tensor: a real or complex tensor with at least 2 modes.
        rank: the CP rank, ``>= 1`` (may exceed the mode sizes).
        n_iter_max: the most ALS sweeps.
        tol: stop when the fit changes by less than this between sweeps.
        time_limit: seconds after which to stop with the current factors
            (checked after each sweep; the first sweep always runs), or None.
        l2_reg: ridge added to the normal equations.
        init: ``"svd"`` (leading left singular vectors of the unfoldings, padded
            with random unit columns when ``rank`` exceeds a mode size) or
            ``"random"``.
        random_state: seed for the random columns; None for a fresh seed.

    Returns:
        ``(weights, factors, fit)``: real ``(rank,)`` weights (the column norms),
        factors ``(tensor.shape[k], rank)`` with unit columns, and
        ``fit = 1 - ||tensor - reconstruction|| / ||tensor||``.

    Raises:
        ShapeError: ``tensor`` has fewer than 2 modes.
        RankError: ``rank`` is not an int >= 1.
        OptionError: an unknown ``init`` or a negative option.

    Example:
        >>> weights, factors, fit = cp_als(torch.randn(6, 7, 8), 5)
        >>> weights.shape, [f.shape for f in factors]
        (torch.Size([5]), [torch.Size([6, 5]), torch.Size([7, 5]), torch.Size([8, 5])])
    """
    start = time.perf_counter()
    _check_tensor(tensor, "cp_als", 2)
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
        raise RankError(_MSG_CP_RANK.format(rank=rank))
    _check_cp_options(n_iter_max, tol, time_limit, l2_reg, init)
    x = tensor.detach().to(_work_dtype(tensor.dtype, tensor.numel() <= _CP_F64_NUMEL))
    factors = _cp_init(x, int(rank), init, _generator(x.device, random_state))
    weights = torch.ones(int(rank), dtype=_real_dtype(x.dtype), device=x.device)
    norm_sq = float(torch.linalg.vector_norm(x)) ** 2
    if norm_sq == 0:
        return (
            torch.zeros_like(weights).to(_real_dtype(tensor.dtype)),
            [f.to(tensor.dtype) for f in factors],
            1.0,
        )
    fit_old = math.nan
    for sweep in range(1, n_iter_max + 1):
        weights, res_sq = _als_sweep(x, factors, l2_reg, norm_sq)
        fit = 1 - math.sqrt(res_sq / norm_sq)
        if abs(fit - fit_old) < tol or res_sq <= _CP_FLOOR * norm_sq:
            break
        fit_old = fit
        if time_limit is not None and time.perf_counter() - start > time_limit:
            _LOG.info(_LOG_TIME_LIMIT, time_limit, sweep, fit)
            break
    fit = 1 - _cp_residual(x, weights.to(x.dtype), factors) / math.sqrt(norm_sq)
    _LOG.debug("cp_als: rank %d, fit %.6f after %.3f s", rank, fit, time.perf_counter() - start)
    return weights.to(_real_dtype(tensor.dtype)), [f.to(tensor.dtype) for f in factors], fit
