"""CP (CANDECOMP/PARAFAC) tensors: a weighted sum of ``rank`` rank-one tensors."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from . import _decompose, _rank
from ._base import (
    FactorizedTensor,
    TensorizedTensor,
    check_shape,
    decomposition_input,
    matrix_shape_of,
    mode_length,
    new_parameter,
    parse_tensorized_shape,
    tensor_shape_of,
    to_storage,
    unravel,
)
from ._contract import plan_einsum
from ._factor_list import FactorList
from ._forms_common import Storage
from ._spec import form_spec

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["CPTensor", "CPTensorized"]

logger = logging.getLogger(__name__)


def _cp_decompose(
    tensor: torch.Tensor, rank: int, **kwargs: Any
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    if tensor.ndim == 2 and rank <= min(tensor.shape) and not kwargs:
        # A CP decomposition of a matrix is its truncated SVD: exact and optimal.
        u, s, vh = _decompose.truncated_svd(tensor, rank)
        return s, [u, vh.transpose(0, 1)]  # M = U S Vh: the second factor is Vh^T (no conj)
    weights, factors, fit = _decompose.cp_als(tensor, rank, **kwargs)
    logger.info("CP rank %d of a %s tensor: fit %.4f", rank, tuple(tensor.shape), fit)
    return weights, list(factors)


class CPTensor(Storage, FactorizedTensor, name="CP"):
    """CP factorization: ``sum_r weights[r] * factors[0][:, r] o factors[1][:, r] o ...``.

    Args:
        weights: the ``(rank,)`` weights.
        factors: one ``(shape[k], rank)`` factor per mode.
        shape: optional, inferred from the factors.
        rank: optional, inferred from the factors.

    Example:
        >>> import torch, tfx
        >>> t = tfx.CPTensor.from_tensor(torch.randn(6, 7, 8), rank=5)
        >>> t.rank, t.shape
        (5, (6, 7, 8))
    """

    weights: torch.Tensor
    factors: FactorList

    def __init__(
        self,
        weights: Any,
        factors: Sequence[Any],
        shape: Sequence[int] | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__()
        self.shape = tuple(shape) if shape is not None else tuple(int(f.shape[0]) for f in factors)
        self.rank = int(rank) if rank is not None else int(weights.shape[0])
        self._store("weights", weights)
        self.factors = FactorList(factors)
        self._build()

    def _build(self) -> None:
        self.order = len(self._mode_sizes())
        spec = form_spec("cp", self._mode_sizes(), self.rank)
        self._plan = plan_einsum(spec.equation, *spec.operand_shapes)

    def _mode_sizes(self) -> tuple[int, ...]:
        return self.shape

    # ----------------------------------------------------------------- builders
    @classmethod
    def new(  # type: ignore[override]
        cls,
        shape: Sequence[int],
        rank: Any = "same",
        device: Any = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> CPTensor:
        """A new CP tensor with factors initialised (std 1 reconstruction by default)."""
        shape = check_shape(shape, "CPTensor.new")
        rank = _rank.cp_rank(shape, rank)
        weights = new_parameter((rank,), device=device, dtype=dtype, complex_form=cls._complex)
        factors = [
            new_parameter((s, rank), device=device, dtype=dtype, complex_form=cls._complex)
            for s in shape
        ]
        return cls(weights, factors, shape, rank).normal_(0, 1)

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor, rank: Any = "same", **kwargs: Any) -> CPTensor:  # type: ignore[override]
        """Decompose ``tensor`` (CP-ALS; the SVD for matrices). Keeps dtype and device."""
        tensor = decomposition_input(tensor, cls._complex)
        shape = tuple(tensor.shape)
        rank = _rank.cp_rank(shape, rank)
        weights, factors = _cp_decompose(tensor, rank, **kwargs)
        return cls(
            to_storage(weights, cls._complex),
            [to_storage(f, cls._complex) for f in factors],
            shape,
            rank,
        )

    def init_from_tensor(
        self, tensor: torch.Tensor, l2_reg: float = 1e-5, **kwargs: Any
    ) -> CPTensor:
        """Decompose ``tensor`` at this tensor's rank, in place (CP-ALS)."""
        tensor = decomposition_input(tensor, self._complex).reshape(self._mode_sizes())
        device, dtype = self._param_device_dtype()
        if tensor.ndim == 2 and not kwargs:
            weights, factors = _cp_decompose(tensor, self.rank)
        else:
            weights, factors = _cp_decompose(tensor, self.rank, l2_reg=l2_reg, **kwargs)
        self._store("weights", to_storage(weights.to(device), self._complex))
        self.factors = FactorList([to_storage(f.to(device), self._complex) for f in factors])
        return self

    # ----------------------------------------------------------------- values
    @property
    def decomposition(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(weights, factors)``, complex views for complex forms."""
        return self._v(self.weights), [self._v(f) for f in self.factors]

    def contraction(self) -> tuple[str, list[torch.Tensor]]:
        """The reconstruction as ``(einsum equation, operands)``, output modes ``tensor_shape``."""
        return self._plan.equation, [self._v(self.weights), *[self._v(f) for f in self.factors]]

    def to_tensor(self) -> torch.Tensor:
        """Reconstruct the full tensor (no Khatri-Rao product larger than the result)."""
        return self._plan(*self.contraction()[1])

    @torch.no_grad()
    def normal_(self, mean: float = 0.0, std: float = 1.0) -> Self:
        """Weights 1, factors N(0, (std / sqrt(rank)) ** (1 / order)): entries get std ``std``."""
        self._check_mean(mean)
        factor_std = (std / math.sqrt(self.rank)) ** (1.0 / self.order)
        self.weights.data.fill_(0)
        (self.weights.data.select(-1, 0) if self._complex else self.weights.data).fill_(1)
        for factor in self.factors:
            factor.data.normal_(0, factor_std / (math.sqrt(2) if self._complex else 1))
        self._match_std(std)
        return self

    def _scale_(self, factor: float) -> None:
        self.weights.data.mul_(factor)

    def transduct(
        self, new_dim: int, mode: int = 0, new_factor: torch.Tensor | None = None
    ) -> CPTensor:
        """Insert a mode of size ``new_dim`` at ``mode``; the tensor is replicated along it."""
        device, dtype = self._param_device_dtype()
        if new_factor is None:
            new_factor = torch.ones(
                new_dim, self.rank, device=device, dtype=torch.complex64 if self._complex else dtype
            )
        factors = list(self.factors)
        factors.insert(mode, to_storage(new_factor.to(device), self._complex))
        self.factors = FactorList(factors)
        self.shape = (*self.shape[:mode], new_dim, *self.shape[mode:])
        self._build()
        return self

    # ----------------------------------------------------------------- indexing
    def _index(self, modes: list[Any]) -> Any:
        weights = self._v(self.weights)
        factors = []
        shape = []
        for index, factor, size in zip(modes, self.factors, self.shape, strict=False):
            factor = self._v(factor)
            if isinstance(index, int):
                weights = weights * factor[index]
            else:
                factors.append(
                    factor[index.to(factor.device) if isinstance(index, torch.Tensor) else index]
                )
                shape.append(mode_length(index, size))
        if not factors:
            return weights.sum()
        return _plain_cp(weights, factors, tuple(shape), self.rank)


class CPTensorized(CPTensor, TensorizedTensor, name="CP"):
    """CP factorization of a tensorized matrix: one factor per mode of ``tensor_shape``.

    Example:
        >>> import tfx
        >>> w = tfx.CPTensorized.new(((4, 3, 2), (5, 3, 2)), rank=10)
        >>> w.to_matrix().shape, w[3].shape
        (torch.Size([24, 30]), (30,))
    """

    def __init__(
        self,
        weights: Any,
        factors: Sequence[Any],
        tensorized_shape: Sequence[Any],
        rank: int | None = None,
    ) -> None:
        self.tensorized_shape = parse_tensorized_shape(tensorized_shape)
        self.tensor_shape = tensor_shape_of(self.tensorized_shape)
        super().__init__(weights, factors, matrix_shape_of(self.tensorized_shape), rank)

    def _mode_sizes(self) -> tuple[int, ...]:
        return self.tensor_shape

    @classmethod
    def new(  # type: ignore[override]
        cls,
        tensorized_shape: Sequence[Any],
        rank: Any = "same",
        device: Any = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> CPTensorized:
        """A new tensorized CP tensor, initialised."""
        tshape = parse_tensorized_shape(tensorized_shape)
        full = tensor_shape_of(tshape)
        rank = _rank.cp_rank(full, rank)
        weights = new_parameter((rank,), device=device, dtype=dtype, complex_form=cls._complex)
        factors = [
            new_parameter((s, rank), device=device, dtype=dtype, complex_form=cls._complex)
            for s in full
        ]
        return cls(weights, factors, tshape, rank).normal_(0, 1)

    @classmethod
    def from_tensor(  # type: ignore[override]
        cls,
        tensor: torch.Tensor,
        tensorized_shape: Sequence[Any],
        rank: Any = "same",
        **kwargs: Any,
    ) -> CPTensorized:
        """Decompose a tensor of shape ``tensor_shape`` (or the matrix shape)."""
        tshape = parse_tensorized_shape(tensorized_shape)
        full = tensor_shape_of(tshape)
        tensor = decomposition_input(tensor, cls._complex).reshape(full)
        rank = _rank.cp_rank(full, rank)
        weights, factors = _cp_decompose(tensor, rank, **kwargs)
        return cls(
            to_storage(weights, cls._complex),
            [to_storage(f, cls._complex) for f in factors],
            tshape,
            rank,
        )

    def transduct(
        self, new_dim: int, mode: int = 0, new_factor: torch.Tensor | None = None
    ) -> CPTensorized:
        """Insert a batch mode of size ``new_dim`` before entry ``mode`` of the tensorized shape."""
        return self._insert_batch_mode(new_dim, mode, new_factor, super().transduct)  # type: ignore[no-any-return]

    def _index(self, modes: list[Any]) -> Any:
        weights = self._v(self.weights)
        stored = [self._v(f) for f in self.factors]
        factors: list[torch.Tensor] = []
        tshape: list[Any] = []
        for index, entry in zip(modes, self.tensorized_shape, strict=False):
            n = len(entry) if isinstance(entry, tuple) else 1
            group, stored = stored[:n], stored[n:]
            if isinstance(entry, tuple) and index == slice(None):
                factors.extend(group)
                tshape.append(entry)
                continue
            sizes = entry if isinstance(entry, tuple) else (entry,)
            # Rows of the Khatri-Rao product of the group, for the selected indices only.
            merged: Any = None
            for sub, factor in zip(unravel(index, sizes, group[0].device), group, strict=False):
                row = factor[sub]
                merged = row if merged is None else merged * row
            if isinstance(index, int):
                weights = weights * merged
            else:
                factors.append(merged)
                tshape.append(mode_length(index, math.prod(sizes)))
        if not factors:
            return weights.sum()
        if not any(isinstance(e, tuple) for e in tshape):
            return _plain_cp(weights, factors, tuple(tshape), self.rank)
        out = CPTensorized.__new__(CPTensorized)
        CPTensorized.__init__(out, weights, factors, tuple(tshape), self.rank)
        return out


def _plain_cp(weights: Any, factors: list[Any], shape: tuple[int, ...], rank: int) -> CPTensor:
    """A real-valued CP view (values already complex where the source was)."""
    return CPTensor(weights, factors, shape, rank)
