"""Tensor-train (matrix product state) tensors: a chain of 3-way cores."""

from __future__ import annotations

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
from ._spec import form_spec, tt_equation

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["TTTensor", "TTTensorized", "tt_equation", "tt_init_std"]


def tt_init_std(std: float, rank: Sequence[int]) -> float:
    """Std of each core entry so a TT reconstruction has std ``std``.

    An entry is a sum over prod(inner ranks) paths of products of N core
    entries, so its variance is prod(inner ranks) * s**(2N).
    """
    order = len(rank) - 1
    paths = math.prod(rank[1:-1])
    scale: float = (std**2 / paths) ** (1.0 / (2 * order))
    return scale


def _padded_tt_svd(tensor: torch.Tensor, rank: Sequence[int]) -> list[torch.Tensor]:
    """TT-SVD at ``rank``, padding the bonds whose rank exceeds their bound.

    Bond ``k`` holds at most ``min(prod(shape[:k]), prod(shape[k:]))``
    components, so it is decomposed at that bound and the extra components are
    appended: their rows of core ``k`` are zero, so the reconstruction is exactly
    the TT-SVD's, and their columns of core ``k - 1`` repeat existing ones, so a
    gradient reaches the zero rows and training can use them.
    """
    bounds = _rank.tt_rank_bounds(tuple(tensor.shape))
    fit = tuple(min(int(r), b) for r, b in zip(rank, bounds, strict=False))
    cores = _decompose.tt_svd(tensor, fit)
    for k in range(1, len(fit) - 1):
        extra = int(rank[k]) - fit[k]
        if extra > 0:
            left, right = cores[k - 1], cores[k]
            repeat = torch.arange(extra, device=left.device) % fit[k]
            cores[k - 1] = torch.cat([left, left[..., repeat]], dim=-1)
            cores[k] = torch.cat([right, right.new_zeros((extra, *right.shape[1:]))], dim=0)
    return cores


class TTTensor(Storage, FactorizedTensor, name="TT"):
    """Tensor-train factorization: cores of shape ``(rank[k], shape[k], rank[k + 1])``.

    :meth:`new` takes tltorch's ranks, over-complete ones included (an int is
    every inner bond: ``TTTensor.new((2, 3, 4), rank=5).rank == (1, 5, 5, 1)``),
    as tltorch does for tensors trained from scratch. :meth:`from_tensor` takes
    an int as the largest bond rank (``(1, 2, 4, 1)`` there, as tltorch's
    ``tensor_train`` gives) and raises :class:`~tfx.RankError` for a tuple above
    the bounds. :meth:`init_from_tensor` keeps this tensor's rank, padding bonds
    above their bound with components that reconstruct to zero.

    Example:
        >>> import torch, tfx
        >>> t = tfx.TTTensor.from_tensor(torch.randn(4, 5, 6), rank=(1, 3, 3, 1))
        >>> [tuple(f.shape) for f in t.factors]
        [(1, 4, 3), (3, 5, 3), (3, 6, 1)]
    """

    factors: FactorList

    def __init__(
        self,
        factors: Sequence[Any],
        shape: Sequence[int] | None = None,
        rank: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.shape = tuple(shape) if shape is not None else tuple(int(f.shape[1]) for f in factors)
        if rank is None:
            rank = (*(int(f.shape[0]) for f in factors), 1)
        self.rank = tuple(rank)
        self.factors = FactorList(factors)
        self._build()

    def _build(self) -> None:
        self.order = len(self.shape)
        spec = form_spec("tt", self.shape, self.rank)
        self._plan = plan_einsum(spec.equation, *spec.operand_shapes)

    @classmethod
    def new(  # type: ignore[override]
        cls,
        shape: Sequence[int],
        rank: Any = "same",
        device: Any = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> TTTensor:
        """A new TT tensor, initialised (std 1 reconstruction by default).

        The rank is tltorch's (tensorly's ``validate_tt_rank``), over-complete
        bonds included: an int is every inner bond, a fraction tltorch's solution.
        """
        shape = check_shape(shape, "TTTensor.new")
        rank = _rank.tt_rank(shape, rank, overcomplete=True)
        factors = [
            new_parameter(
                (rank[k], s, rank[k + 1]), device=device, dtype=dtype, complex_form=cls._complex
            )
            for k, s in enumerate(shape)
        ]
        return cls(factors, shape, rank).normal_(0, 1)

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor, rank: Any = "same", **kwargs: Any) -> TTTensor:  # type: ignore[override]
        """Decompose ``tensor`` by TT-SVD. Keeps dtype and device.

        An int is the largest bond rank and a fraction is bounded, as tltorch's
        ``tensor_train`` truncates them; a tuple above a bond's bound raises
        :class:`~tfx.RankError`.
        """
        tensor = decomposition_input(tensor, cls._complex)
        shape = tuple(tensor.shape)
        rank = _rank.tt_rank(shape, rank)
        factors = _decompose.tt_svd(tensor, rank, **kwargs)
        return cls([to_storage(f, cls._complex) for f in factors], shape, rank)

    def init_from_tensor(self, tensor: torch.Tensor, **kwargs: Any) -> TTTensor:
        """Decompose ``tensor`` at this rank, in place (TT-SVD).

        The rank is kept: bonds above their bound (an over-complete tensor from
        :meth:`new`) are padded with components that reconstruct to zero, so the
        result is exact where the bound allows. tltorch 0.5 shrinks the rank
        instead.
        """
        tensor = decomposition_input(tensor, self._complex).reshape(self.shape)
        device, _ = self._param_device_dtype()
        factors = _padded_tt_svd(tensor, self.rank, **kwargs)
        self.factors = FactorList([to_storage(f.to(device), self._complex) for f in factors])
        return self

    @property
    def decomposition(self) -> list[torch.Tensor]:
        """The cores, complex views for complex forms."""
        return [self._v(f) for f in self.factors]

    def contraction(self) -> tuple[str, list[torch.Tensor]]:
        """The reconstruction as ``(einsum equation, operands)``; output modes are the tensor's."""
        cores = [self._v(f) for f in self.factors]
        if len(cores) == 1:
            return self._plan.equation, [cores[0][0, :, 0]]
        return self._plan.equation, [cores[0][0], *cores[1:-1], cores[-1][..., 0]]

    def to_tensor(self) -> torch.Tensor:
        """Reconstruct the full tensor."""
        return self._plan(*self.contraction()[1])

    @torch.no_grad()
    def normal_(self, mean: float = 0.0, std: float = 1.0) -> Self:
        """Cores N(0, s) with s chosen so the reconstruction has std ``std``."""
        self._check_mean(mean)
        s = tt_init_std(std, self.rank) / (math.sqrt(2) if self._complex else 1.0)
        for factor in self.factors:
            factor.data.normal_(0, s)
        self._match_std(std)
        return self

    def _scale_(self, factor: float) -> None:
        per_core = abs(factor) ** (1.0 / len(self.factors))
        for i, core in enumerate(self.factors):
            core.data.mul_(per_core if i or factor >= 0 else -per_core)

    def transduct(
        self, new_dim: int, mode: int = 0, new_factor: torch.Tensor | None = None
    ) -> TTTensor:
        """Insert a mode of size ``new_dim`` at ``mode``: an identity core replicates the tensor."""
        device, dtype = self._param_device_dtype()
        bond = self.rank[mode]
        if new_factor is None:
            eye = torch.eye(bond, device=device, dtype=dtype)
            new_factor = eye.unsqueeze(1).expand(bond, new_dim, bond)
        factors = list(self.factors)
        factors.insert(mode, to_storage(new_factor.to(device), self._complex))
        self.factors = FactorList(factors)
        self.shape = (*self.shape[:mode], new_dim, *self.shape[mode:])
        self.rank = (*self.rank[: mode + 1], *self.rank[mode:])
        self._build()
        return self

    def _index(self, modes: list[Any]) -> Any:
        cores: list[torch.Tensor] = []
        shape: list[int] = []
        rank = [1]
        pending = None  # a (rank[-1], r) matrix waiting to be absorbed into the next kept core
        for k, (index, factor) in enumerate(zip(modes, self.factors, strict=False)):
            core = self._v(factor)
            if pending is not None:
                core = torch.tensordot(pending, core, dims=([1], [0]))
            if isinstance(index, int):
                pending = core[:, index, :]
                continue
            pending = None
            cores.append(
                core[:, index.to(core.device) if isinstance(index, torch.Tensor) else index, :]
            )
            shape.append(mode_length(index, self.shape[k]))
            rank.append(self.rank[k + 1])
        if not cores:
            return pending[0, 0]  # type: ignore[index]
        if pending is not None:
            cores[-1] = torch.tensordot(cores[-1], pending, dims=([2], [0]))
            rank[-1] = 1
        return TTTensor(cores, tuple(shape), tuple(rank))


class TTTensorized(TTTensor, TensorizedTensor, name="TT"):
    """Tensor-train factorization of a tensorized matrix, over the modes of ``tensor_shape``.

    The chain runs through the batch modes, then the row modes, then the
    column modes, so the bond between the last row mode and the first
    column mode is the rank of the matrix itself.

    Example:
        >>> import tfx
        >>> w = tfx.TensorizedTensor.new(((4, 3, 2), (5, 3, 2)), rank=0.5, factorization="tt")
        >>> w.to_matrix().shape
        torch.Size([24, 30])
    """

    def __init__(
        self,
        factors: Sequence[Any],
        tensorized_shape: Sequence[Any],
        rank: Sequence[int] | None = None,
    ) -> None:
        self.tensorized_shape = parse_tensorized_shape(tensorized_shape)
        self.tensor_shape = tensor_shape_of(self.tensorized_shape)
        super().__init__(factors, self.tensor_shape, rank)
        self.shape = matrix_shape_of(self.tensorized_shape)

    def _build(self) -> None:
        # The TT chain runs over tensor_shape, not over the matrix shape.
        shape, self.shape = self.shape, self.tensor_shape
        try:
            super()._build()
        finally:
            self.shape = shape

    @classmethod
    def new(  # type: ignore[override]
        cls,
        tensorized_shape: Sequence[Any],
        rank: Any = "same",
        device: Any = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> TTTensorized:
        """A new tensorized TT tensor, initialised; ranks as in :meth:`TTTensor.new`."""
        tshape = parse_tensorized_shape(tensorized_shape)
        full = tensor_shape_of(tshape)
        rank = _rank.tt_rank(full, rank, overcomplete=True)
        factors = [
            new_parameter(
                (rank[k], s, rank[k + 1]), device=device, dtype=dtype, complex_form=cls._complex
            )
            for k, s in enumerate(full)
        ]
        return cls(factors, tshape, rank).normal_(0, 1)

    @classmethod
    def from_tensor(  # type: ignore[override]
        cls,
        tensor: torch.Tensor,
        tensorized_shape: Sequence[Any],
        rank: Any = "same",
        **kwargs: Any,
    ) -> TTTensorized:
        """Decompose a tensor of shape ``tensor_shape`` (or the matrix shape) by TT-SVD."""
        tshape = parse_tensorized_shape(tensorized_shape)
        full = tensor_shape_of(tshape)
        tensor = decomposition_input(tensor, cls._complex).reshape(full)
        rank = _rank.tt_rank(full, rank)
        factors = _decompose.tt_svd(tensor, rank, **kwargs)
        return cls([to_storage(f, cls._complex) for f in factors], tshape, rank)

    def init_from_tensor(self, tensor: torch.Tensor, **kwargs: Any) -> TTTensorized:
        """Decompose ``tensor`` at this rank, in place (TT-SVD; over-complete bonds padded)."""
        tensor = decomposition_input(tensor, self._complex).reshape(self.tensor_shape)
        device, _ = self._param_device_dtype()
        factors = _padded_tt_svd(tensor, self.rank, **kwargs)
        self.factors = FactorList([to_storage(f.to(device), self._complex) for f in factors])
        return self

    def transduct(
        self, new_dim: int, mode: int = 0, new_factor: torch.Tensor | None = None
    ) -> TTTensorized:
        """Insert a batch mode of size ``new_dim`` before entry ``mode`` of the tensorized shape."""
        return self._insert_batch_mode(new_dim, mode, new_factor, super().transduct)  # type: ignore[no-any-return]

    def _index(self, modes: list[Any]) -> Any:
        flat: list[Any] = []
        tshape: list[Any] = []
        for index, entry in zip(modes, self.tensorized_shape, strict=False):
            if not isinstance(entry, tuple):
                flat.append(index)
                if not isinstance(index, int):
                    tshape.append(mode_length(index, entry))
            elif index == slice(None):
                flat.extend([slice(None)] * len(entry))
                tshape.append(entry)
            elif isinstance(index, int):
                flat.extend(int(i) for i in unravel(index, entry, None))
            else:
                # Several rows of a tensorized mode: no TT structure survives.
                value = self.to_matrix()
                return value[
                    tuple(i.to(value.device) if isinstance(i, torch.Tensor) else i for i in modes)
                ]
        shape, self.shape = self.shape, self.tensor_shape
        try:
            result = TTTensor._index(self, flat)
        finally:
            self.shape = shape
        if not isinstance(result, TTTensor) or not any(isinstance(e, tuple) for e in tshape):
            return result
        return TTTensorized(list(result.factors), tuple(tshape), result.rank)
