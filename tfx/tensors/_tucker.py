"""Tucker tensors: a small core multiplied by one factor matrix per mode."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from . import _decompose, _rank
from ._base import (
    FactorizedTensor,
    ShapeError,
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

__all__ = ["TuckerTensor", "TuckerTensorized"]


def _padded_hosvd(
    tensor: torch.Tensor, rank: Sequence[int], **kwargs: Any
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """HOSVD at ``rank``, padding the modes whose rank exceeds their size.

    A mode of size ``s`` holds at most ``s`` components, so it is decomposed at
    ``s`` (its factor is then a full orthonormal basis) and the ``rank - s``
    extra components are appended: their core slices are zero, so the
    reconstruction is exactly the HOSVD's, and their factor columns repeat the
    basis columns, so they are not dead weight: training moves the zero core
    slices (a gradient reaches them through the non-zero columns).
    """
    modes = kwargs.get("modes")
    modes = range(tensor.ndim) if modes is None else [m % tensor.ndim for m in modes]
    sizes = [int(tensor.shape[m]) for m in modes]
    fit = [min(int(r), s) for r, s in zip(rank, sizes, strict=False)]
    core, factors = _decompose.hosvd(tensor, fit, **kwargs)
    for k, (mode, r, f) in enumerate(zip(modes, rank, fit, strict=False)):
        if r > f:
            repeat = torch.arange(r - f, device=factors[k].device) % f
            factors[k] = torch.cat([factors[k], factors[k][:, repeat]], dim=1)
            extra = list(core.shape)
            extra[mode] = r - f
            core = torch.cat([core, core.new_zeros(extra)], dim=mode)
    return core, factors


def _contract_mode(core: torch.Tensor, vector: torch.Tensor, mode: int) -> torch.Tensor:
    """Contract ``core`` with ``vector`` along ``mode`` (the mode disappears)."""
    out: torch.Tensor = torch.tensordot(vector, core, dims=([0], [mode]))
    return out


class TuckerTensor(Storage, FactorizedTensor, name="Tucker"):
    """Tucker factorization: ``core x_0 factors[0] x_1 factors[1] ...``.

    Ranks follow tltorch 0.5: an int is that rank on every mode, even a mode
    smaller than it (``TuckerTensor.new((6, 2, 4, 5), rank=3)`` has rank
    ``(3, 3, 3, 3)``); such over-complete factors are legitimate for training
    from scratch. Decompositions (:meth:`from_tensor`, :meth:`init_from_tensor`
    and the layers' ``from_linear`` / ``from_conv`` / ``from_embedding``) keep
    that shape and stay exact: a mode whose rank exceeds its size is
    decomposed at its size, and the extra components get zero core slices (and
    factor columns repeating the mode's basis, so training can use them).

    Args:
        core: the core tensor, of shape ``rank``.
        factors: one ``(shape[k], rank[k])`` factor per mode.
        shape: optional, inferred from the factors.
        rank: optional, inferred from the factors.

    Example:
        >>> import torch, tfx
        >>> t = tfx.TuckerTensor.from_tensor(torch.randn(6, 7, 8), rank=(3, 3, 3))
        >>> t.rank
        (3, 3, 3)
    """

    core: torch.Tensor
    factors: FactorList

    def __init__(
        self,
        core: Any,
        factors: Sequence[Any],
        shape: Sequence[int] | None = None,
        rank: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.shape = tuple(shape) if shape is not None else tuple(int(f.shape[0]) for f in factors)
        self.rank = tuple(rank) if rank is not None else tuple(int(f.shape[1]) for f in factors)
        self._store("core", core)
        self.factors = FactorList(factors)
        self._build()

    def _mode_sizes(self) -> tuple[int, ...]:
        return self.shape

    def _build(self) -> None:
        sizes = self._mode_sizes()
        self.order = len(sizes)
        spec = form_spec("tucker", sizes, self.rank)
        self._plan = plan_einsum(spec.equation, *spec.operand_shapes)

    @classmethod
    def new(  # type: ignore[override]
        cls,
        shape: Sequence[int],
        rank: Any = "same",
        fixed_rank_modes: Sequence[int] | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> TuckerTensor:
        """A new Tucker tensor, initialised (std 1 reconstruction by default).

        The rank is tltorch's, over-complete ones included: an int is that rank on
        every mode (modes in ``fixed_rank_modes`` keep their size), a tuple is
        taken as given, a fraction is tltorch's solution.

        Example:
            >>> import tfx
            >>> tfx.TuckerTensor.new((6, 2, 4, 5), rank=3).rank
            (3, 3, 3, 3)
        """
        shape = check_shape(shape, "TuckerTensor.new")
        rank = _rank.tucker_rank(shape, rank, fixed_modes=fixed_rank_modes, overcomplete=True)
        core = new_parameter(rank, device=device, dtype=dtype, complex_form=cls._complex)
        factors = [
            new_parameter((s, r), device=device, dtype=dtype, complex_form=cls._complex)
            for s, r in zip(shape, rank, strict=False)
        ]
        return cls(core, factors, shape, rank).normal_(0, 1)

    @classmethod
    def from_tensor(  # type: ignore[override]
        cls,
        tensor: torch.Tensor,
        rank: Any = "same",
        fixed_rank_modes: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> TuckerTensor:
        """Decompose ``tensor`` by (sequentially truncated) HOSVD. Keeps dtype and device.

        The rank is normalised as in :meth:`new` (tltorch's ranks). A rank above a
        mode's size gives tltorch's over-complete shape with an exact
        reconstruction: the mode is decomposed at its size and the extra
        components have zero core slices.

        Example:
            >>> import torch, tfx
            >>> x = torch.randn(6, 2, 4, 5, dtype=torch.float64)
            >>> t = tfx.TuckerTensor.from_tensor(x, rank=(6, 3, 4, 5))
            >>> t.rank, torch.allclose(t.to_tensor(), x)
            ((6, 3, 4, 5), True)
        """
        tensor = decomposition_input(tensor, cls._complex)
        shape = tuple(tensor.shape)
        rank = _rank.tucker_rank(shape, rank, fixed_modes=fixed_rank_modes, overcomplete=True)
        core, factors = _padded_hosvd(tensor, rank, **kwargs)
        return cls(
            to_storage(core, cls._complex),
            [to_storage(f, cls._complex) for f in factors],
            shape,
            rank,
        )

    def init_from_tensor(
        self,
        tensor: torch.Tensor,
        unsqueezed_modes: Sequence[int] | None = None,
        unsqueezed_init: str | float = "average",
        **kwargs: Any,
    ) -> TuckerTensor:
        """Decompose ``tensor`` at this rank, in place.

        A rank above a mode's size is filled as in :meth:`from_tensor`: exact,
        the extra components with zero core slices.

        Args:
            tensor: the tensor, of this tensor's shape, or with the
                ``unsqueezed_modes`` left out.
            unsqueezed_modes: modes (of rank 1) that ``tensor`` does not have;
                their factors are constant columns, so the result contracted
                with an input equals ``tensor`` contracted with the input
                averaged over those modes (``'average'``: 1 / size) or scaled by
                ``unsqueezed_init`` (a float).
            unsqueezed_init: ``'average'`` or a float.
            **kwargs: passed to the decomposition.
        """
        sizes = self._mode_sizes()
        tensor = decomposition_input(tensor, self._complex)
        unsqueezed = sorted({m % self.order for m in (unsqueezed_modes or ())})
        kept = [m for m in range(self.order) if m not in unsqueezed]
        bad = [m for m in unsqueezed if self.rank[m] != 1]
        expected = tuple(sizes[m] for m in kept)
        if bad or tuple(tensor.shape) != expected:
            raise ShapeError(
                f"init_from_tensor(unsqueezed_modes={unsqueezed_modes}) needs a tensor of shape "
                f"{expected} and rank 1 on the unsqueezed modes; got a tensor of shape "
                f"{tuple(tensor.shape)} and rank {self.rank}.\n"
                "Fix: build the Tucker tensor with rank 1 on those modes, and pass the tensor "
                "without them."
            )
        core, factors = _padded_hosvd(tensor, [self.rank[m] for m in kept], **kwargs)
        device, _ = self._param_device_dtype()
        for m in unsqueezed:
            scale = 1.0 / sizes[m] if unsqueezed_init == "average" else float(unsqueezed_init)
            factors.insert(
                m, torch.full((sizes[m], 1), scale, dtype=core.dtype, device=core.device)
            )
            core = core.unsqueeze(m)
        self._store("core", to_storage(core.to(device), self._complex))
        self.factors = FactorList([to_storage(f.to(device), self._complex) for f in factors])
        return self

    @property
    def decomposition(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(core, factors)``, complex views for complex forms."""
        return self._v(self.core), [self._v(f) for f in self.factors]

    def contraction(self) -> tuple[str, list[torch.Tensor]]:
        """The reconstruction as ``(einsum equation, operands)``, output modes ``tensor_shape``."""
        return self._plan.equation, [self._v(self.core), *[self._v(f) for f in self.factors]]

    def to_tensor(self) -> torch.Tensor:
        """Reconstruct the full tensor."""
        return self._plan(*self.contraction()[1])

    @torch.no_grad()
    def normal_(self, mean: float = 0.0, std: float = 1.0) -> Self:
        """Core and factors N(0, s) with s = (std / sqrt(prod(rank))) ** (1 / (order + 1))."""
        self._check_mean(mean)
        s = (std / math.sqrt(math.prod(self.rank))) ** (1.0 / (self.order + 1))
        s /= math.sqrt(2) if self._complex else 1.0
        self.core.data.normal_(0, s)
        for factor in self.factors:
            factor.data.normal_(0, s)
        self._match_std(std)
        return self

    def _scale_(self, factor: float) -> None:
        self.core.data.mul_(factor)

    def transduct(
        self, new_dim: int, mode: int = 0, new_factor: torch.Tensor | None = None
    ) -> TuckerTensor:
        """Insert a mode of size ``new_dim`` (rank 1) at ``mode``, replicating the tensor there."""
        device, dtype = self._param_device_dtype()
        if new_factor is None:
            new_factor = torch.ones(new_dim, 1, device=device, dtype=dtype)
        factors = list(self.factors)
        factors.insert(mode, to_storage(new_factor.to(device), self._complex))
        core = self.core.data.unsqueeze(mode)
        self._store("core", torch.nn.Parameter(core.contiguous()))
        self.factors = FactorList(factors)
        self.shape = (*self.shape[:mode], new_dim, *self.shape[mode:])
        self.rank = (*self.rank[:mode], 1, *self.rank[mode:])
        self._build()
        return self

    def _index(self, modes: list[Any]) -> Any:
        core = self._v(self.core)
        factors, shape, rank = [], [], []
        dropped = 0
        for k, (index, factor, size) in enumerate(
            zip(modes, self.factors, self.shape, strict=False)
        ):
            factor = self._v(factor)
            if isinstance(index, int):
                core = _contract_mode(core, factor[index], k - dropped)
                dropped += 1
            else:
                factors.append(
                    factor[index.to(factor.device) if isinstance(index, torch.Tensor) else index]
                )
                shape.append(mode_length(index, size))
                rank.append(self.rank[k])
        if not factors:
            return core
        return TuckerTensor(core, factors, tuple(shape), tuple(rank))


class TuckerTensorized(TuckerTensor, TensorizedTensor, name="Tucker"):
    """Tucker factorization of a tensorized matrix: one factor per mode of ``tensor_shape``.

    Example:
        >>> import tfx
        >>> w = tfx.TuckerTensorized.new(((4, 3, 2), (5, 3, 2)), rank=0.5)
        >>> w[:, [1, 7]].shape
        (24, 2)
    """

    def __init__(
        self,
        core: Any,
        factors: Sequence[Any],
        tensorized_shape: Sequence[Any],
        rank: Sequence[int] | None = None,
    ) -> None:
        self.tensorized_shape = parse_tensorized_shape(tensorized_shape)
        self.tensor_shape = tensor_shape_of(self.tensorized_shape)
        super().__init__(core, factors, matrix_shape_of(self.tensorized_shape), rank)

    def _mode_sizes(self) -> tuple[int, ...]:
        return self.tensor_shape

    @classmethod
    def new(  # type: ignore[override]
        cls,
        tensorized_shape: Sequence[Any],
        rank: Any = "same",
        fixed_rank_modes: Sequence[int] | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> TuckerTensorized:
        """A new tensorized Tucker tensor, initialised; ranks as in :meth:`TuckerTensor.new`.

        Example:
            >>> import tfx
            >>> tfx.TuckerTensorized.new(((5, 8, 25), (2, 4, 4)), rank=8).rank
            (8, 8, 8, 8, 8, 8)
        """
        tshape = parse_tensorized_shape(tensorized_shape)
        full = tensor_shape_of(tshape)
        rank = _rank.tucker_rank(full, rank, fixed_modes=fixed_rank_modes, overcomplete=True)
        core = new_parameter(rank, device=device, dtype=dtype, complex_form=cls._complex)
        factors = [
            new_parameter((s, r), device=device, dtype=dtype, complex_form=cls._complex)
            for s, r in zip(full, rank, strict=False)
        ]
        return cls(core, factors, tshape, rank).normal_(0, 1)

    @classmethod
    def from_tensor(  # type: ignore[override]
        cls,
        tensor: torch.Tensor,
        tensorized_shape: Sequence[Any],
        rank: Any = "same",
        **kwargs: Any,
    ) -> TuckerTensorized:
        """Decompose a tensor of shape ``tensor_shape`` (or the matrix shape) by HOSVD.

        Ranks as in :meth:`TuckerTensor.from_tensor`: a rank above a mode's size
        keeps tltorch's over-complete shape, with an exact reconstruction.
        """
        tshape = parse_tensorized_shape(tensorized_shape)
        full = tensor_shape_of(tshape)
        tensor = decomposition_input(tensor, cls._complex).reshape(full)
        fixed = kwargs.pop("fixed_rank_modes", None)
        rank = _rank.tucker_rank(full, rank, fixed_modes=fixed, overcomplete=True)
        core, factors = _padded_hosvd(tensor, rank, **kwargs)
        return cls(
            to_storage(core, cls._complex),
            [to_storage(f, cls._complex) for f in factors],
            tshape,
            rank,
        )

    def transduct(
        self, new_dim: int, mode: int = 0, new_factor: torch.Tensor | None = None
    ) -> TuckerTensorized:
        """Insert a batch mode of size ``new_dim`` before entry ``mode`` of the tensorized shape."""
        return self._insert_batch_mode(new_dim, mode, new_factor, super().transduct)  # type: ignore[no-any-return]

    def _index(self, modes: list[Any]) -> Any:
        core = self._v(self.core)
        stored = [self._v(f) for f in self.factors]
        ranks = list(self.rank)
        factors: list[torch.Tensor] = []
        new_rank: list[int] = []
        tshape: list[Any] = []
        axis = 0  # position in the current core of the first mode of this entry
        core_shape = list(self.rank)  # static, so fx-traced indexing needs no tensor shapes
        for index, entry in zip(modes, self.tensorized_shape, strict=False):
            n = len(entry) if isinstance(entry, tuple) else 1
            group, stored = stored[:n], stored[n:]
            group_rank, ranks = ranks[:n], ranks[n:]
            if isinstance(entry, tuple) and index == slice(None):
                factors.extend(group)
                new_rank.extend(group_rank)
                tshape.append(entry)
                axis += n
                continue
            sizes = entry if isinstance(entry, tuple) else (entry,)
            # Rows of the Kronecker product of the group's factors, for the selected rows only;
            # the group's core modes merge into one.
            merged: Any = None
            for sub, factor in zip(unravel(index, sizes, group[0].device), group, strict=False):
                row = factor[sub]
                if merged is None:
                    merged = row
                else:
                    merged = (merged.unsqueeze(-1) * row.unsqueeze(-2)).flatten(-2)
            width = math.prod(group_rank)
            core_shape[axis : axis + n] = [width]
            core = core.reshape(core_shape)
            if isinstance(index, int):
                core = _contract_mode(core, merged, axis)
                del core_shape[axis]
            else:
                factors.append(merged)
                new_rank.append(width)
                tshape.append(mode_length(index, math.prod(sizes)))
                axis += 1
        if not factors:
            return core
        if not any(isinstance(e, tuple) for e in tshape):
            return TuckerTensor(core, factors, tuple(tshape), tuple(new_rank))
        return TuckerTensorized(core, factors, tuple(tshape), tuple(new_rank))
