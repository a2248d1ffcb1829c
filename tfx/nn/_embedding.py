"""FactorizedEmbedding: an embedding table in tensorized, factorized form."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, get_args

import torch
from torch import nn

from .._errors import OptionError, ShapeError, UnsupportedSiteError
from .._types import Implementation
from ..functional import factorized_embedding
from ..functional._planning import is_tracing, traced_batch
from ..tensors import TensorizedTensor
from ._common import as_shape, check_implementation, select_layer
from ._linear import _tensorized_features

__all__ = ["FactorizedEmbedding"]

IMPLEMENTATIONS = get_args(Implementation)


class FactorizedEmbedding(nn.Module):
    """A drop-in for ``nn.Embedding`` whose table is factorized; lookups never build the table.

    Args:
        num_embeddings, embedding_dim: the table's size.
        auto_tensorize: tensorize both sizes with :func:`tfx.get_tensorized_shape`.
        n_tensorized_modes: order of the tensorization.
        tensorized_num_embeddings, tensorized_embedding_dim: explicit tensorizations.
        factorization: ``'blocktt'`` (default), ``'cp'``, ``'tucker'``, ``'tt'``, ``'dense'``,
            complex
            variants, or a ready ``TensorizedTensor`` of tensorized shape ``(rows, cols)``.
        rank: int, tuple, ``'same'`` or float.
        n_layers: number of stacked tables sharing one factorization.
        device, dtype: of the parameters.
        padding_idx: rows at this index are zeros and get no gradient.
        implementation: ``'factorized'`` (rows from their factors), ``'reconstructed'``
            (rebuild the table, then index) or ``'auto'`` (cheaper by FLOPs).

    Example:
        >>> import torch, tfx
        >>> emb = tfx.FactorizedEmbedding(30522, 768, rank=16)
        >>> emb(torch.tensor([[101, 2054, 102]])).shape
        torch.Size([1, 3, 768])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        auto_tensorize: bool = True,
        n_tensorized_modes: int = 3,
        tensorized_num_embeddings: Sequence[int] | None = None,
        tensorized_embedding_dim: Sequence[int] | None = None,
        factorization: str | TensorizedTensor = "blocktt",
        rank: Any = 8,
        n_layers: int = 1,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        padding_idx: int | None = None,
        implementation: Implementation = "factorized",
    ) -> None:
        super().__init__()
        rows, cols = _tensorized_features(
            num_embeddings,
            embedding_dim,
            auto_tensorize,
            n_tensorized_modes,
            tensorized_num_embeddings,
            tensorized_embedding_dim,
            False,
        )
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.tensorized_num_embeddings, self.tensorized_embedding_dim = (
            as_shape(rows, "rows"),
            as_shape(cols, "cols"),
        )
        self.n_layers = n_layers
        self.implementation = check_implementation(implementation, IMPLEMENTATIONS)
        if padding_idx is not None and not -num_embeddings <= padding_idx < num_embeddings:
            raise ShapeError(
                f"padding_idx={padding_idx} is outside [-{num_embeddings}, {num_embeddings})."
            )
        self.padding_idx = None if padding_idx is None else padding_idx % num_embeddings
        batch = (n_layers,) if n_layers > 1 else ()
        self.tensor_shape = (*batch, self.tensorized_num_embeddings, self.tensorized_embedding_dim)
        self.weight_shape = (*batch, num_embeddings, embedding_dim)
        if isinstance(factorization, TensorizedTensor):
            if tuple(factorization.tensorized_shape) != self.tensor_shape:
                raise ShapeError(
                    f"the given table has tensorized_shape={factorization.tensorized_shape}, "
                    f"but this layer needs {self.tensor_shape}."
                )
            self.factorization = factorization._name
            self.weight = factorization
        else:
            self.factorization = factorization
            self.weight = TensorizedTensor.new(
                self.tensor_shape,
                rank=rank,
                factorization=factorization,
                device=device,
                dtype=dtype,
            )
            self.reset_parameters()
        self.rank = self.weight.rank

    def reset_parameters(self) -> None:
        """Entries N(0, 1 / sqrt(3 num_embeddings)), as in tltorch (after Yin et al.)."""
        with torch.no_grad():
            self.weight.normal_(0, 1.0 / math.sqrt(3 * self.num_embeddings))

    def forward(self, input: torch.Tensor, indices: int = 0) -> torch.Tensor:
        """Embeddings of ``input`` (any shape of indices) from table ``indices``."""
        select_layer(self.n_layers, indices)
        weight = self.weight() if self.n_layers == 1 else self.weight(indices)
        if self._reconstruct(input, weight):
            table = weight.to_matrix()
            out: torch.Tensor = table[input]  # plain indexing: F.embedding has no complex autograd
            if self.padding_idx is not None:
                out = out * (input != self.padding_idx).unsqueeze(-1).to(out.dtype)
            return out
        gathered: torch.Tensor = factorized_embedding(input, weight, self.padding_idx)
        return gathered

    def _reconstruct(self, input: torch.Tensor, weight: Any) -> bool:
        if self.implementation != "auto":
            return self.implementation == "reconstructed"
        n = traced_batch() if is_tracing(input) else input.numel()
        # Rebuilding the table costs its plan; gathering costs about plan / rows per row.
        per_row = weight._plan.flops / max(self.num_embeddings, 1) * 4
        rebuild: bool = n * per_row > weight._plan.flops
        return rebuild

    @classmethod
    def from_embedding(
        cls,
        embedding_layer: nn.Embedding,
        rank: Any = 8,
        factorization: str = "blocktt",
        n_tensorized_modes: int = 2,
        decompose_weights: bool = True,
        auto_tensorize: bool = True,
        decomposition_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> FactorizedEmbedding:
        """Factorize an ``nn.Embedding`` (``padding_idx`` honoured; dtype and device kept).

        ``n_tensorized_modes`` defaults to 2, as in tltorch (the constructor's default is 3).
        """
        return cls.from_embedding_list(
            [embedding_layer],
            rank=rank,
            factorization=factorization,
            n_tensorized_modes=n_tensorized_modes,
            decompose_weights=decompose_weights,
            auto_tensorize=auto_tensorize,
            decomposition_kwargs=decomposition_kwargs,
            _single=True,
            **kwargs,
        )

    @classmethod
    def from_embedding_list(
        cls,
        embedding_layer_list: Sequence[nn.Embedding],
        rank: Any = 8,
        factorization: str = "blocktt",
        n_tensorized_modes: int = 2,
        decompose_weights: bool = True,
        auto_tensorize: bool = True,
        decomposition_kwargs: dict[str, Any] | None = None,
        _single: bool = False,
        **kwargs: Any,
    ) -> FactorizedEmbedding:
        """One stacked layer jointly factorizing same-shaped embeddings.

        ``n_tensorized_modes`` is 2 by default, as in tltorch.
        """
        first = embedding_layer_list[0]
        for emb in embedding_layer_list:
            _check_embedding(emb)
            if emb.weight.shape != first.weight.shape or emb.padding_idx != first.padding_idx:
                raise ShapeError(
                    "from_embedding_list needs embeddings of one shape and padding_idx."
                )
        n, d = first.weight.shape
        layer = cls(
            n,
            d,
            auto_tensorize=auto_tensorize,
            n_tensorized_modes=n_tensorized_modes,
            factorization=factorization,
            rank=rank,
            n_layers=1 if _single else len(embedding_layer_list),
            device=first.weight.device,
            dtype=first.weight.dtype,
            padding_idx=first.padding_idx,
            **kwargs,
        )
        if decompose_weights:
            tables = torch.stack([e.weight.detach() for e in embedding_layer_list])
            tables = tables[0] if _single else tables
            layer.weight.init_from_tensor(
                tables.reshape(layer.weight.tensor_shape), **(decomposition_kwargs or {})
            )
        return layer

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings} {self.tensorized_num_embeddings}, {self.embedding_dim} "
            f"{self.tensorized_embedding_dim}, weight={self.weight._name}, rank={self.rank}, "
            f"padding_idx={self.padding_idx}, n_layers={self.n_layers}"
        )


def _check_embedding(embedding: nn.Module) -> None:
    if not isinstance(embedding, nn.Embedding):
        raise UnsupportedSiteError(
            f"from_embedding needs an nn.Embedding, got {type(embedding).__name__}."
        )
    if embedding.max_norm is not None:
        raise UnsupportedSiteError(
            f"nn.Embedding(max_norm={embedding.max_norm}) renormalises "
            "looked-up rows in place, which a factorized table cannot do.\n"
            "Fix: leave this embedding dense, or drop max_norm first."
        )
    if embedding.scale_grad_by_freq or embedding.sparse:
        raise OptionError(
            "nn.Embedding with scale_grad_by_freq=True or "
            "sparse=True has no factorized equivalent.\n"
            "Fix: leave this embedding dense."
        )
