"""Embedding lookups that rebuild only the rows they look up.

The table ``W`` (num_embeddings x embedding_dim) is a tensorized matrix whose
row modes tensorize ``num_embeddings``. A lookup unravels each index into its
row-mode digits, gathers the matching slices of the row factors, and
contracts them with the column factors: the work is proportional to the
number of indices, never to the table. Everything is torch ops on the
index tensor (no numpy, no Python loop over indices), so CUDA indices,
``torch.compile(fullgraph=True)`` and ``torch.export`` work.
"""

from __future__ import annotations

import math

import torch

from .._errors import ShapeError
from ..tensors import BlockTT, CPTensorized, TensorizedTensor, TTTensorized, TuckerTensorized
from ..tensors._contract import plan_einsum
from ._planning import batch_bucket, is_tracing, traced_batch

__all__ = ["factorized_embedding", "gather_rows"]


def _digits(index: torch.Tensor, sizes: tuple[int, ...]) -> list[torch.Tensor]:
    out = []
    stride = math.prod(sizes)
    for size in sizes:
        stride //= size
        out.append(torch.div(index, stride, rounding_mode="floor") % size)
    return out


def _batch(index: torch.Tensor) -> int:
    return traced_batch() if is_tracing(index) else batch_bucket(index.numel())


def _gather_cp(weight: CPTensorized, index: torch.Tensor, rows: tuple[int, ...]) -> torch.Tensor:
    weights, factors = weight.decomposition
    n_rows = len(rows)
    merged = weights
    for digit, factor in zip(_digits(index, rows), factors[:n_rows], strict=False):
        merged = merged * factor[digit]
    cols = factors[n_rows:]
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXY"[: len(cols)]
    equation = "nz," + ",".join(f"{c}z" for c in letters) + "->n" + letters
    plan = plan_einsum(
        equation,
        (_batch(index), weight.rank),
        *((s, weight.rank) for s in weight.tensor_shape[n_rows:]),
    )
    return plan(merged, *cols)


def _gather_tucker(
    weight: TuckerTensorized, index: torch.Tensor, rows: tuple[int, ...]
) -> torch.Tensor:
    core, factors = weight.decomposition
    n_rows = len(rows)
    merged = None
    for digit, factor in zip(_digits(index, rows), factors[:n_rows], strict=False):
        row = factor[digit]
        merged = row if merged is None else (merged.unsqueeze(-1) * row.unsqueeze(-2)).flatten(-2)
    row_rank = math.prod(weight.rank[:n_rows])
    col_ranks = weight.rank[n_rows:]
    core = core.reshape((row_rank, *col_ranks))
    cols = factors[n_rows:]
    ranks = "abcdefghijkl"[: len(cols)]
    letters = "ABCDEFGHIJKL"[: len(cols)]
    equation = (
        "nz,z"
        + ranks
        + ","
        + ",".join(f"{c}{r}" for c, r in zip(letters, ranks, strict=False))
        + "->n"
        + letters
    )
    shapes = [
        (_batch(index), row_rank),
        (row_rank, *col_ranks),
        *zip(weight.tensor_shape[n_rows:], col_ranks, strict=False),
    ]
    return plan_einsum(equation, *shapes)(merged, core, *cols)


def _gather_blocktt(weight: BlockTT, index: torch.Tensor, rows: tuple[int, ...]) -> torch.Tensor:
    # core k: (r_k, i_k, o_k, r_{k+1}); gather i_k per index -> (n, r_k, o_k, r_{k+1}), then chain.
    out = None
    cols, rank = weight.tensorized_shape[1], weight.rank  # static sizes: fx-traceable
    width = 0
    for k, (digit, core) in enumerate(
        zip(_digits(index, rows), weight.decomposition, strict=False)
    ):
        piece = core[:, digit].movedim(1, 0)  # (n, r_k, o_k, r_{k+1})
        if out is None:
            out, width = piece[:, 0], cols[0]  # (n, o_0, r_1)
        else:  # nar,nrbs->nabs as one batched GEMM (no einsum parsing per call)
            out = torch.bmm(out, piece.reshape(-1, rank[k], cols[k] * rank[k + 1])).reshape(
                -1, width * cols[k], rank[k + 1]
            )
            width *= cols[k]
    return out[..., 0]  # type: ignore[index]


def _gather_tt(weight: TTTensorized, index: torch.Tensor, rows: tuple[int, ...]) -> torch.Tensor:
    cores = weight.decomposition
    n_rows = len(rows)
    chain = None  # (n, r)
    for digit, core in zip(_digits(index, rows), cores[:n_rows], strict=False):
        piece = core[:, digit].movedim(1, 0)  # (n, r_k, r_{k+1})
        chain = (
            piece[:, 0] if chain is None else torch.bmm(chain.unsqueeze(1), piece)[:, 0]
        )  # nr,nrs->ns
    out = chain.unsqueeze(1)  # (n, 1, r)
    width = 1
    for k, core in enumerate(cores[n_rows:], start=n_rows):  # nar,rbs->nabs as one GEMM
        r, b, s = weight.rank[k], weight.tensor_shape[k], weight.rank[k + 1]  # static: fx-traceable
        out = torch.mm(out.reshape(-1, r), core.reshape(r, b * s)).reshape(-1, width * b, s)
        width *= b
    return out[..., 0]


def gather_rows(weight: TensorizedTensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``weight.to_matrix()[index]`` of a tensorized matrix.

    Built from the factors of those rows only.

    Args:
        weight: a single tensorized matrix (no batch modes), tensorized shape ``(rows, cols)``.
        index: a 1-D long tensor of row indices.

    Returns:
        ``(len(index), n_columns)``.
    """
    if len(weight.tensorized_shape) != 2 or not all(
        isinstance(e, tuple) for e in weight.tensorized_shape
    ):
        raise ShapeError(
            "gather_rows needs a tensorized matrix (rows, cols), "
            f"got tensorized_shape={weight.tensorized_shape}.\n"
            "Fix: index stacked tables first, e.g. weight[layer]."
        )
    rows = weight.tensorized_shape[0]
    n_cols = weight.shape[1]
    if isinstance(weight, BlockTT):
        out = _gather_blocktt(weight, index, rows)
    elif isinstance(weight, CPTensorized):
        out = _gather_cp(weight, index, rows)
    elif isinstance(weight, TuckerTensorized):
        out = _gather_tucker(weight, index, rows)
    elif isinstance(weight, TTTensorized):
        out = _gather_tt(weight, index, rows)
    else:  # dense (or a user form): index the matrix
        out = weight.to_matrix()[index]
    return out.reshape(-1, n_cols)


def factorized_embedding(
    input: torch.Tensor, weight: TensorizedTensor | torch.Tensor, padding_idx: int | None = None
) -> torch.Tensor:
    """``F.embedding`` for a factorized table: rows rebuilt from the looked-up factors only.

    Args:
        input: indices of any shape.
        weight: the table, a tensorized matrix ``(num_embeddings, embedding_dim)`` or a tensor.
        padding_idx: rows at this index give zeros and no gradient.

    Returns:
        ``(*input.shape, embedding_dim)``.

    Example:
        >>> import torch, tfx
        >>> from tfx.functional import factorized_embedding
        >>> table = tfx.TensorizedTensor.new(
        ...     ((10, 10, 10), (4, 4, 4)), rank=8, factorization="blocktt"
        ... )
        >>> factorized_embedding(torch.tensor([[1, 999]]), table).shape
        torch.Size([1, 2, 64])
    """
    if isinstance(weight, torch.Tensor):
        return torch.nn.functional.embedding(input, weight, padding_idx)
    flat = input.reshape(-1)
    rows = gather_rows(weight, flat)
    if padding_idx is not None:
        rows = rows * (flat != padding_idx).unsqueeze(-1).to(rows.dtype)
    return rows.reshape(input.shape + (weight.shape[-1],))
