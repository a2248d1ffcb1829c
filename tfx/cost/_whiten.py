"""Activation-aware factorization: whitening a weight by its layer's input statistics.

A layer ``y = W x`` whose weight is replaced by ``W'`` makes an output error whose mean
energy over the calibration inputs is ``tr((W - W') C (W - W')^T)`` with ``C = E[x x^T]``.
With ``C = L L^T`` that is ``|(W - W') L|_F^2``: the best rank-``r`` ``W'`` for the
*output* is the truncated SVD of ``W L`` mapped back, ``W' = [W L]_r L^{-1}`` (the
idea of SVD-LLM; ASVD is its diagonal special case), and the singular values of ``W L``
give the output error of every rank in closed form, as those of ``W`` give the weight error.

Tensorized forms (Tucker, TT, BlockTT over ``(row modes, column modes)``) keep their
structure under a column transform only if it is a Kronecker product ``L_1 x ... x L_d``
over the column modes: each ``L_k`` acts on one mode, so it folds into the factor or
core holding that mode. tfx approximates ``C`` by the Kronecker product of its partial
traces ``C_k`` (one small ``c_k x c_k`` matrix per column mode), whitens mode by mode,
decomposes, and maps back with ``L_k^{-1}``.

``C`` is damped, ``C + delta * mean(diag C) * I`` (:data:`DAMPING`), so directions the
calibration data never excites keep some weight and the inverse stays well conditioned.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._compensated import CompensatedSum

__all__ = [
    "RowCounts",
    "InputStats",
    "Whitening",
    "DAMPING",
    "CHUNK_ROWS",
    "gram_of_rows",
    "modes_product",
]

#: Relative damping of the second moment (a fraction of its mean eigenvalue).
DAMPING = float(__import__("os").environ.get("TFX_DAMPING", "1e-2"))


#: Rows of a weight processed at once where a weight-sized temporary would otherwise be made
#: (Gram matrices of vocabulary tables and heads): the float64 work stays a few rows wide.
CHUNK_ROWS = 4096


def gram_of_rows(weight: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """``W^T D^2 W`` (``D = diag(rows)``, or ``W^T W``), float64, accumulated a chunk at a time.

    In float32 where the product is large, as :func:`~tfx.tensors._decompose.leading_subspace`
    does; never a full-size copy of ``weight`` (the calibrated spectra and decompositions of
    vocabulary tables and LM heads go through it).

    Example:
        >>> w = torch.randn(10, 3, dtype=torch.float64)
        >>> torch.allclose(gram_of_rows(w), w.T @ w)
        True
    """
    from ..tensors._decompose import gram_dtype

    m, n = weight.shape
    dtype = gram_dtype(weight.dtype, m, n)
    # Its lower block triangle only (it is symmetric: half the multiply-adds), then mirrored.
    blocks, length = _tri_blocks(n)
    total = torch.zeros(length, dtype=dtype, device=weight.device)
    for start in range(0, m, CHUNK_ROWS):
        chunk = weight[start : start + CHUNK_ROWS].to(dtype)
        if rows is not None:
            chunk = chunk * rows[start : start + CHUNK_ROWS, None].to(chunk.device, dtype)
        for a, b, offset in blocks:
            total[offset : offset + (b - a) * b].view(b - a, b).addmm_(
                chunk[:, a:b].mT, chunk[:, :b]
            )
    return _unpack(total.double(), n)


#: Rows per block of a packed moment: its lower block triangle is stored as the row blocks
#: ``[a, b) x [0, b)``, so about half the matrix (plus half a block per row) is summed.
_TRI_BLOCK = 256


def _tri_blocks(n: int) -> tuple[list[tuple[int, int, int]], int]:
    """``([(a, b, offset), ...], length)`` of an ``n``-wide packed lower block triangle."""
    blocks, offset = [], 0
    for a in range(0, n, _TRI_BLOCK):
        b = min(a + _TRI_BLOCK, n)
        blocks.append((a, b, offset))
        offset += (b - a) * b
    return blocks, offset


def _times_packed(x: torch.Tensor, packed: torch.Tensor, n: int) -> torch.Tensor:
    """``x @ C`` for the symmetric ``n x n`` matrix ``C`` whose lower block triangle is ``packed``.

    Block row ``[a, b)`` of ``C`` (columns ``[0, b)``) gives ``x[:, a:b] C[a:b, :b]`` and,
    mirrored, ``x[:, :a] C[a:b, :a]^T``: every entry of ``C`` once, and no unpacked copy.
    """
    out = torch.zeros(x.shape[0], n, dtype=x.dtype, device=x.device)
    for a, b, offset in _tri_blocks(n)[0]:
        block = packed[offset : offset + (b - a) * b].view(b - a, b)
        out[:, :b].addmm_(x[:, a:b], block)
        if a:
            out[:, a:b].addmm_(x[:, :a], block[:, :a].mT)
    return out


def _pack(full: torch.Tensor) -> torch.Tensor:
    """A symmetric matrix's lower block triangle, packed."""
    blocks, _ = _tri_blocks(full.shape[0])
    return torch.cat([full[a:b, :b].reshape(-1) for a, b, _ in blocks])


def _unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The symmetric ``n x n`` matrix whose lower block triangle is ``packed``."""
    blocks, _ = _tri_blocks(n)
    out = torch.empty(n, n, dtype=packed.dtype, device=packed.device)
    for a, b, offset in blocks:
        out[a:b, :b] = packed[offset : offset + (b - a) * b].view(b - a, b)
    for a, b, _ in blocks:  # above the blocks: the mirror of what lies below them
        out[a:b, b:] = out[b:, a:b].mT
    return out


class InputStats:
    """Streaming second moment ``sum x x^T`` of a layer's input rows (float64).

    Args:
        features: the row width (``in_features``, or ``in_channels * prod(kernel)``).
        full: keep the full matrix; else its diagonal only (wide inputs).

    Example:
        >>> stats = InputStats(3)
        >>> stats.update(torch.eye(3))
        >>> stats.covariance().diagonal().tolist()
        [0.3333333333333333, 0.3333333333333333, 0.3333333333333333]
    """

    def __init__(self, features: int, full: bool = True) -> None:
        self.features = features
        self.full = full
        #: The running sum while rows are added (None before the first row and after
        #: :meth:`settle`): a compensated pair, so that the moment is the correctly rounded
        #: sum of the batches' terms whatever their order or sharding over processes.
        self.total: CompensatedSum | None = None
        #: The moment once settled: a full one as its packed lower block triangle (half the
        #: memory; unpacked only for the whitenings that need the matrix).
        self._settled: torch.Tensor | None = None
        self.count = 0
        self.unsupported = False
        self._whitening: dict[object, Whitening] = {}

    @classmethod
    def of_moment(cls, moment: torch.Tensor, count: int) -> InputStats:
        """Statistics whose moment is ``moment`` (a vector: its diagonal), over ``count`` rows.

        For moments known without data (:func:`tfx.passes.input_priors`) or kept elsewhere.

        Example:
            >>> stats = InputStats.of_moment(torch.eye(2, dtype=torch.float64), 1)
            >>> stats.covariance().tolist(), stats.full
            ([[1.0, 0.0], [0.0, 1.0]], True)
        """
        stats = cls(int(moment.shape[0]), full=moment.dim() == 2)
        stats._settled = _pack(moment.double()) if stats.full else moment.double()
        stats.count = count
        return stats

    def update(self, rows: torch.Tensor) -> None:
        """Add rows ``(n, features)``."""
        if rows.shape[-1] != self.features:
            self.unsupported = True
            return
        # GEMMs in the rows' precision (float32 for float32 models), accumulated in float64;
        # a full moment as its lower block triangle (it is symmetric): half the memory.
        x = rows.float() if rows.dtype in (torch.float16, torch.bfloat16) else rows
        running = self._running(x.device)
        if self.full:  # a block row at a time: no packed-sized temporary (66 MB at 5632 wide)
            for a, b, offset in _tri_blocks(self.features)[0]:
                running.add(x[:, a:b].mT @ x[:, :b], offset=offset)
        else:
            running.add((x * x).sum(0))
        self.count += rows.shape[0]
        self._whitening.clear()

    def _shape(self) -> tuple[int, ...]:
        """The running sum's shape: the packed lower block triangle, or the diagonal."""
        return (_tri_blocks(self.features)[1],) if self.full else (self.features,)

    def _running(self, device: torch.device) -> CompensatedSum:
        if self.total is None:
            self.total = CompensatedSum(self._shape(), device)
            if self._settled is not None:  # continue from the settled moment
                self.total.add(self._settled)
                self._settled = None
        return self.total

    @property
    def moment(self) -> torch.Tensor | None:
        """``sum x x^T`` in float64 (its diagonal when not ``full``); None before any row.

        A full moment is a new ``features x features`` tensor at every access.
        """
        packed = self._packed()
        if packed is None or not self.full:
            return packed
        return _unpack(packed, self.features)

    def _packed(self) -> torch.Tensor | None:
        """The moment's packed lower block triangle (the diagonal when not ``full``)."""
        return self.total.value() if self.total is not None else self._settled

    def settle(self) -> None:
        """Keep the moment as one float64 tensor (the running pair is let go).

        A full moment stays packed (half the matrix: 0.13 GB rather than 0.25 GB for a
        5632-wide input).
        """
        if self.total is not None:
            self._settled, self.total = self.total.collapse(), None

    def pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The moment as the pair ``(hi, lo)`` it is the sum of (``-0.0`` before any row).

        A full moment's pair holds its lower block triangle, packed (half the matrix).
        Another process's statistics take it with :meth:`merge`.
        """
        if self.total is not None:
            return self.total.hi, self.total.lo
        if self._settled is not None:  # read only: the settled moment itself
            return self._settled, torch.full_like(self._settled, -0.0)
        empty = torch.full(self._shape(), -0.0, dtype=torch.float64)
        return empty, empty.clone()

    def merge(self, hi: torch.Tensor, lo: torch.Tensor, count: int) -> None:
        """Add the rows of another accumulation, given by its :meth:`pair` and row count."""
        running = self._running(hi.device)
        running.merge(hi, lo)
        self.count += count
        self._whitening.clear()

    def covariance(self) -> torch.Tensor:
        """``E[x x^T]`` (a vector of its diagonal when not ``full``)."""
        moment = self.moment
        if moment is None or self.count == 0:
            raise ValueError("no calibration rows recorded")
        return moment.cpu() / self.count

    def whitened_gram(self, weight: torch.Tensor, damping: float = DAMPING) -> torch.Tensor:
        """``W C W^T`` (float64, ``out x out``) for a weight ``(out, features)``, ``C`` damped.

        The Gram matrix of the whitened weight ``W L`` on its row side: its eigenvalues are the
        squared whitened singular values and its eigenvectors the leading left subspace, with
        no whitening ``L`` (an ``n x n`` factorization) and no whitened copy of ``W``: what a
        wide weight (``out < features``, an MLP's down projection) needs. Computed a chunk of
        rows at a time from the moment itself.

        Example:
            >>> stats = InputStats(3)
            >>> stats.update(torch.eye(3, dtype=torch.float64))
            >>> stats.whitened_gram(torch.eye(3, dtype=torch.float64), damping=0.0).diagonal()
            tensor([0.3333, 0.3333, 0.3333], dtype=torch.float64)
        """
        packed = self._packed() if self.count else None
        if packed is None or not self.full:
            raise ValueError("whitened_gram needs the full moment of some calibration rows")
        packed = packed.to(weight.device)
        diagonal = sum(
            float(packed[offset : offset + (b - a) * b].view(b - a, b)[:, a:b].diagonal().sum())
            for a, b, offset in _tri_blocks(self.features)[0]
        )
        shift = damping * ((diagonal / self.features) or self.count)
        out = torch.empty(weight.shape[0], weight.shape[0], dtype=torch.float64)
        work = weight.detach().double()
        # W (C + shift I) W^T a block of rows at a time, from the packed moment (no unpacked
        # copy), its lower block triangle only (it is symmetric), then mirrored.
        blocks, _ = _tri_blocks(work.shape[0])
        for a, b, _ in blocks:
            rows = work[a:b]
            part = _times_packed(rows, packed, self.features).add_(rows, alpha=shift)
            out[a:b, :b] = (part @ work[:b].mT).cpu()
        for a, b, _ in blocks:
            out[a:b, b:] = out[b:, a:b].mT
        return out.div_(self.count)

    def drop_whitenings(self) -> None:
        """Forget the whitenings made so far (each as large as the moment); remade on demand."""
        self._whitening.clear()

    def whitening(
        self, col_shape: Sequence[int] | None = None, damping: float = DAMPING
    ) -> Whitening:
        """The whitening of the full input (``col_shape`` None), or Kronecker-factored.

        Kronecker-factored over ``col_shape`` when it has two or more modes.
        """
        key = (None if col_shape is None else tuple(col_shape), damping)
        if key not in self._whitening:
            if self.full and col_shape is not None and len(col_shape) > 1:
                # Partial traces of the moment, then scaled: no full-size copy of it.
                moment = self.moment if self.count else None
                if moment is None:
                    raise ValueError("no calibration rows recorded")
                traces = _partial_traces(moment.cpu(), tuple(col_shape))
                covs = [t / self.count for t in traces]
                self._whitening[key] = Whitening.from_covariance(covs, damping)
            elif not self.full:
                self._whitening[key] = Whitening.from_diagonal(self.covariance(), damping)
            else:
                moment = self.moment
                if moment is None or self.count == 0:
                    raise ValueError("no calibration rows recorded")
                # a new tensor (unpacked): factorized where it lies
                self._whitening[key] = Whitening.from_moment(
                    moment, self.count, damping, owned=True
                )
        return self._whitening[key]


def small_eig(fn: Callable[[torch.Tensor], Any], matrix: torch.Tensor, limit: int = 1024) -> Any:
    """``fn(matrix)`` (an eigensolver or a Cholesky factorization), threads chosen by size.

    On one thread when ``matrix`` is smaller than ``limit``: LAPACK's threaded path is 10-40x
    slower there on a loaded 2-core machine (0.75 ms vs 31 ms for ``eigvalsh`` at 128 x 128).
    """
    threads = torch.get_num_threads()
    if matrix.shape[0] >= limit or threads == 1:
        return fn(matrix)
    torch.set_num_threads(1)
    try:
        return fn(matrix)
    finally:
        torch.set_num_threads(threads)


def _partial_traces(cov: torch.Tensor, col_shape: tuple[int, ...]) -> list[torch.Tensor]:
    """``C_k``: the second moment of column mode ``k``, summed over the other modes' diagonals."""
    d = len(col_shape)
    tensor = cov.reshape(*col_shape, *col_shape)
    letters = "abcdefghijklmnopqrstuvwxyz"
    out = []
    for k in range(d):
        left = list(letters[:d])
        right = list(left)
        right[k] = letters[d]
        eq = "".join(left) + "".join(right) + "->" + left[k] + right[k]
        out.append(torch.einsum(eq, tensor))
    return out


@dataclasses.dataclass
class Whitening:
    """``L_k`` and ``L_k^{-1}`` per column mode (one mode: the full input; ``diagonal``: vectors).

    ``L_k`` is the lower Cholesky factor of the damped moment (any ``L`` with ``L L^T = C``
    gives the same whitened spectra and, mapped back, the same decompositions: ``W L Q`` for
    an orthogonal ``Q`` only rotates the columns). Cholesky is 5-10x cheaper than the
    eigendecomposition (3072 x 3072: 2 s vs 19 s on one loaded core) and its inverse is never
    formed for one mode: :meth:`undo` solves with the triangular factor. A moment that is
    not positive definite after damping (``damping=0``) falls back to the eigendecomposition.
    """

    sqrt: list[torch.Tensor]
    inv: list[torch.Tensor] | None = None  # None: solve with the triangular ``sqrt`` factors
    diagonal: bool = False

    @classmethod
    def from_covariance(cls, covs: Sequence[torch.Tensor], damping: float = DAMPING) -> Whitening:
        """From second moments (one per column mode), damped."""
        sqrt: list[torch.Tensor] = []
        inv: list[torch.Tensor | None] = []  # None: a Cholesky factor (inverted when needed)
        for cov in covs:
            damped = cov + cov.T  # symmetrized and damped in place: one n x n temporary
            damped.mul_(0.5)
            scale = float(damped.diagonal().mean()) or 1.0
            damped.diagonal().add_(damping * scale)
            root, info = small_eig(torch.linalg.cholesky_ex, damped)
            if int(info) == 0:
                sqrt.append(root)
                inv.append(None)
                continue
            values, vectors = small_eig(torch.linalg.eigh, damped)
            values = values.clamp_min(damping * scale * 1e-3)
            sqrt.append(vectors * values.sqrt())  # L = Q diag(sqrt(lambda)), L L^T = C
            inv.append((vectors / values.sqrt()).T)  # L^{-1} = diag(1 / sqrt(lambda)) Q^T
        if all(m is None for m in inv):
            return cls(sqrt)
        return cls(sqrt, [_inverse(r) if m is None else m for r, m in zip(sqrt, inv, strict=True)])

    @classmethod
    def from_moment(
        cls, moment: torch.Tensor, count: int, damping: float = DAMPING, *, owned: bool = False
    ) -> Whitening:
        """From the moment ``sum x x^T`` of ``count`` rows (one mode), damped.

        The same whitening as :meth:`from_covariance` of ``moment / count``, with one
        ``n x n`` temporary instead of three: the damped copy is factorized in place (its
        lower triangle: the moment is symmetric) and scaled by ``1 / sqrt(count)`` after.
        On a 5632-wide input that is 0.5 GB less at the peak. ``owned``: ``moment`` is the
        caller's to spend (a new tensor): it is factorized in its own memory, with no copy.
        """
        # Column-major (the transposed view of a copy: the same values, the moment being
        # symmetric): LAPACK factorizes it where it lies, with no second n x n copy.
        root = (moment.cpu() if owned else moment.cpu().clone()).mT
        diagonal = root.diagonal()
        diagonal.add_(damping * (float(diagonal.mean()) or 1.0))
        info = torch.empty((), dtype=torch.int32)
        small_eig(lambda a: torch.linalg.cholesky_ex(a, out=(a, info)), root)
        if int(info) != 0:  # not positive definite after damping (damping=0): eigenvalues
            return cls.from_covariance([moment.cpu() / count], damping)
        return cls([root.div_(math.sqrt(count))])

    @classmethod
    def from_diagonal(cls, diag: torch.Tensor, damping: float = DAMPING) -> Whitening:
        """From the diagonal of the second moment only (ASVD-style column scaling)."""
        scale = float(diag.mean()) or 1.0
        s = (diag + damping * scale).sqrt()
        return cls([s], [1 / s], diagonal=True)

    @property
    def kron_shape(self) -> tuple[int, ...] | None:
        """The column modes it factors over (None for a full or diagonal whitening)."""
        return (
            None if self.diagonal or len(self.sqrt) == 1 else tuple(m.shape[0] for m in self.sqrt)
        )

    def apply(self, matrix: torch.Tensor, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``W L`` for a weight matrix ``(rows, cols)``, computed in ``dtype``."""
        return self._product(matrix, self.sqrt, dtype)

    def sandwich(self, gram: torch.Tensor) -> torch.Tensor:
        """``L^T G L`` for a symmetric ``G`` (``cols x cols``): ``W L``'s Gram matrix from ``W``'s.

        With a Cholesky factor, only the blocks its triangle makes non-zero are multiplied and
        only the result's lower block triangle is computed (a third of the work of two dense
        products). Returned in ``gram``'s dtype.

        Example:
            >>> w = Whitening.from_moment(torch.tensor([[4.0, 2.0], [2.0, 5.0]]).double(), 1)
            >>> g = torch.tensor([[1.0, 0.5], [0.5, 2.0]]).double()
            >>> torch.allclose(w.sandwich(g), w.apply(w.apply(g).mT))
            True
        """
        if self.inv is None and len(self.sqrt) == 1 and not self.diagonal:
            return _triangular_sandwich(self.sqrt[0], gram)
        return self.apply(self.apply(gram).mT)

    def undo(self, matrix: torch.Tensor) -> torch.Tensor:
        """``M L^{-1}``: back from the whitened space."""
        if self.inv is None and len(self.sqrt) == 1:
            # One triangular solve, as cheap as the product (rows x cols^2), no inverse formed.
            work = matrix.double()
            root = self.sqrt[0].to(work.device)
            out = torch.linalg.solve_triangular(root, work, upper=False, left=False)
            return out.to(matrix.dtype)
        if self.inv is None:  # Kronecker modes: small, inverted once
            self.inv = [_inverse(root) for root in self.sqrt]
        return self._product(matrix, self.inv)

    def _product(
        self, matrix: torch.Tensor, mats: list[torch.Tensor], dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        work = matrix.to(dtype)
        mats = [m.to(work.device, dtype) for m in mats]
        if self.diagonal:
            out = work * mats[0]
        elif len(mats) == 1:
            out = work @ mats[0]
        else:
            out = modes_product(
                work.reshape(work.shape[0], *[m.shape[0] for m in mats]), mats
            ).reshape(work.shape)
        return out.to(matrix.dtype)


def _triangular_sandwich(root: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``L^T G L`` for a lower-triangular ``L`` and a symmetric ``G``, in ``gram``'s dtype.

    Column block ``[a, b)`` of ``G L`` reads rows ``a:`` of ``L`` only; row block ``[a, b)`` of
    ``L^T (G L)`` reads rows ``a:`` of ``G L``, and the result's upper blocks are mirrored.
    """
    n = gram.shape[0]
    work = gram.to(torch.float64)
    lower = root.to(work.device, torch.float64)
    blocks, _ = _tri_blocks(n)
    right = torch.empty_like(work)
    for a, b, _ in blocks:
        torch.mm(work[:, a:], lower[a:, a:b], out=right[:, a:b])
    out = torch.empty_like(work)
    for a, b, _ in blocks:
        out[a:b, :b] = lower[a:, a:b].mT @ right[a:, :b]
    del right
    for a, b, _ in blocks:
        out[a:b, b:] = out[b:, a:b].mT
    return out.to(gram.dtype)


def _inverse(root: torch.Tensor) -> torch.Tensor:
    """``L^{-1}`` of a lower-triangular (Cholesky) factor."""
    eye = torch.eye(root.shape[0], dtype=root.dtype, device=root.device)
    return torch.linalg.solve_triangular(root, eye, upper=False)


def modes_product(tensor: torch.Tensor, mats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Contract mode ``1 + k`` of ``tensor`` with ``mats[k]``'s first index.

    ``tensor`` is ``(rows, c_1, ..., c_d)``.

    On the flattened columns this is right-multiplication by ``mats[0] x ... x mats[d-1]``
    (Kronecker, row-major), one small GEMM per mode.
    """
    out = tensor
    for k, mat in enumerate(mats):
        out = torch.movedim(torch.tensordot(out, mat, dims=([1 + k], [0])), -1, 1 + k)
    return out


def relative_output_error(weight: torch.Tensor, approx: torch.Tensor, cov: torch.Tensor) -> float:
    """``sqrt(tr(E C E^T) / tr(W C W^T))`` with ``E = W - approx``.

    The relative output error on the calibration data.
    """
    w, e = (
        weight.double().reshape(weight.shape[0], -1),
        (weight - approx).double().reshape(weight.shape[0], -1),
    )
    cov = cov.double()
    if cov.dim() == 1:
        num, den = float((e * e * cov).sum()), float((w * w * cov).sum())
    else:
        num, den = float(((e @ cov) * e).sum()), float(((w @ cov) * w).sum())
    return math.sqrt(max(num, 0.0) / den) if den > 0 else 0.0


class RowCounts:
    """How often each row of an embedding table is looked up in the calibration data.

    The table is then factorized for the lookups the data makes: rows are weighted by
    ``sqrt(count + alpha)`` (``alpha`` the mean count, so a row the data never uses still
    weighs as an average one), the weighted table ``D W`` is decomposed and ``D^-1`` maps it
    back; errors are frequency-weighted relative errors.

    Example:
        >>> counts = RowCounts(4)
        >>> counts.update(torch.tensor([[0, 0, 3]]))
        >>> counts.scales().tolist()[0] > counts.scales().tolist()[1]
        True
    """

    full = False  # no column whitening: tensorized candidates keep weight errors

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.counts = torch.zeros(rows, dtype=torch.float64)
        self.count = 0
        self.unsupported = False

    def update(self, indices: torch.Tensor) -> None:
        """Add the looked-up row indices of one batch."""
        flat = indices.detach().reshape(-1).long().cpu()
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.rows):
            self.unsupported = True
            return
        self.counts += torch.bincount(flat, minlength=self.rows).double()
        self.count += flat.numel()

    def merge(self, counts: torch.Tensor, count: int) -> None:
        """Add another accumulation's ``counts`` and lookup ``count`` (whole numbers: exact)."""
        self.counts += counts.to(self.counts.device, torch.float64)
        self.count += count

    def scales(self) -> torch.Tensor:
        """The row weights ``sqrt(count + mean count)``."""
        return (self.counts + self.count / self.rows).sqrt()

    def apply(self, matrix: torch.Tensor) -> torch.Tensor:
        """``D W``."""
        return matrix * self.scales().to(matrix.device, matrix.dtype)[:, None]

    def undo(self, matrix: torch.Tensor) -> torch.Tensor:
        """``D^-1 W``."""
        return matrix / self.scales().to(matrix.device, matrix.dtype)[:, None]
