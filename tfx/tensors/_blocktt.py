"""Block tensor-train (TT-matrix / MPO) tensorized matrices.

A ``BlockTT`` with tensorized shape ``(*batch, rows, cols)`` where
``rows = (i_1, ..., i_d)`` and ``cols = (o_1, ..., o_d)`` stores ``d`` cores
of shape ``(*batch, r_k, i_k, o_k, r_{k+1})``: the k-th core carries the k-th
row and column mode. Batch modes (stacked layers) are independent BlockTTs,
stored as leading dims of every core. Any number of tensorized modes of the
same length works, not only rows and columns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .._errors import ShapeError
from . import _decompose, _rank
from ._base import (
    TensorizedTensor,
    decomposition_input,
    matrix_shape_of,
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
from ._tt import tt_init_std

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["BlockTT"]


def _split(
    tensorized_shape: tuple[Any, ...],
) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """(batch sizes, tensorized entries); batch modes must lead, entries share a length."""
    batch = tuple(e for e in tensorized_shape if isinstance(e, int))
    entries = tuple(e for e in tensorized_shape if isinstance(e, tuple))
    if tensorized_shape[: len(batch)] != batch:
        raise ShapeError(
            f"BlockTT tensorized_shape={tensorized_shape}: batch modes (ints) must come first.\n"
            "Fix: e.g. (n_layers, (4, 3, 2), (5, 3, 2))."
        )
    if len({len(e) for e in entries}) != 1:
        lengths = [len(e) for e in entries]
        raise ShapeError(
            f"BlockTT tensorized_shape={tensorized_shape}: every tensorized mode needs the same "
            f"number of factors (one per core), got {lengths}.\n"
            "Fix: pad the shorter ones with 1s, e.g. (6, 5) -> (6, 5, 1), or use "
            "tfx.get_tensorized_shape(in_features, out_features) which pairs them."
        )
    return batch, entries


def _what(tensorized_shape: tuple[Any, ...]) -> str:
    sizes = BlockTT._core_sizes(_split(tensorized_shape)[1])
    return f"BlockTT of tensorized shape {tensorized_shape} (cores of merged sizes {sizes})"


class BlockTT(Storage, TensorizedTensor, name="BlockTT"):
    """Block tensor-train factorization of a tensorized matrix (a TT-matrix).

    Args:
        factors: the cores, ``(*batch, rank[k], rows[k], cols[k], rank[k + 1])``.
        tensorized_shape: e.g. ``((4, 3, 2), (5, 3, 2))`` or ``(n, (4, 3, 2), (5, 3, 2))``.
        rank: optional, inferred from the cores.

    Example:
        >>> import tfx
        >>> w = tfx.BlockTT.new(((4, 3, 2), (5, 3, 2)), rank=4)
        >>> w.rank, [tuple(f.shape) for f in w.factors]
        ((1, 4, 4, 1), [(1, 4, 5, 4), (4, 3, 3, 4), (4, 2, 2, 1)])
    """

    factors: FactorList

    def __init__(
        self,
        factors: Sequence[Any],
        tensorized_shape: Sequence[Any],
        rank: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.tensorized_shape = parse_tensorized_shape(tensorized_shape)
        self.tensor_shape = tensor_shape_of(self.tensorized_shape)
        self.shape = matrix_shape_of(self.tensorized_shape)
        self.batch_shape, self.entries = _split(self.tensorized_shape)
        if rank is None:
            nb = len(self.batch_shape)
            rank = (*(int(f.shape[nb]) for f in factors), 1)
        self.rank = tuple(rank)
        self.factors = FactorList(factors)
        self._build()

    def _build(self) -> None:
        self.order = len(self.tensor_shape)
        spec = form_spec("blocktt", self.entries, self.rank, batch=self.batch_shape)
        self._plan = plan_einsum(spec.equation, *spec.operand_shapes)

    @staticmethod
    def _core_sizes(entries: tuple[tuple[int, ...], ...]) -> tuple[int, ...]:
        return tuple(math.prod(sizes) for sizes in zip(*entries, strict=False))

    @classmethod
    def new(  # type: ignore[override]
        cls,
        tensorized_shape: Sequence[Any],
        rank: Any = "same",
        device: Any = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> BlockTT:
        """A new BlockTT, initialised (std 1 reconstruction by default)."""
        tshape = parse_tensorized_shape(tensorized_shape)
        batch, entries = _split(tshape)
        rank = _rank.tt_rank(cls._core_sizes(entries), rank, what=_what(tshape))
        factors = [
            new_parameter(
                (*batch, rank[k], *(e[k] for e in entries), rank[k + 1]),
                device=device,
                dtype=dtype,
                complex_form=cls._complex,
            )
            for k in range(len(entries[0]))
        ]
        return cls(factors, tshape, rank).normal_(0, 1)

    @classmethod
    def from_tensor(  # type: ignore[override]
        cls,
        tensor: torch.Tensor,
        tensorized_shape: Sequence[Any],
        rank: Any = "same",
        **kwargs: Any,
    ) -> BlockTT:
        """Decompose a tensor of shape ``tensor_shape`` (or the matrix shape) by block TT-SVD."""
        tshape = parse_tensorized_shape(tensorized_shape)
        batch, entries = _split(tshape)
        tensor = decomposition_input(tensor, cls._complex)
        rank = _rank.tt_rank(cls._core_sizes(entries), rank, what=_what(tshape))
        cores = _decompose_batched(tensor, batch, entries, rank, **kwargs)
        return cls([to_storage(c, cls._complex) for c in cores], tshape, rank)

    def init_from_tensor(self, tensor: torch.Tensor, **kwargs: Any) -> BlockTT:
        """Decompose ``tensor`` at this rank, in place."""
        tensor = decomposition_input(tensor, self._complex)
        device, _ = self._param_device_dtype()
        cores = _decompose_batched(tensor, self.batch_shape, self.entries, self.rank, **kwargs)
        self.factors = FactorList([to_storage(c.to(device), self._complex) for c in cores])
        return self

    @property
    def decomposition(self) -> list[torch.Tensor]:
        """The cores, complex views for complex forms."""
        return [self._v(f) for f in self.factors]

    def contraction(self) -> tuple[str, list[torch.Tensor]]:
        """The reconstruction as ``(einsum equation, operands)``, output modes ``tensor_shape``."""
        return self._plan.equation, [self._v(f) for f in self.factors]

    def to_tensor(self) -> torch.Tensor:
        """The full tensor, shape ``tensor_shape`` = (*batch, *rows, *cols)."""
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
    ) -> BlockTT:
        """Insert a batch mode of size ``new_dim`` at ``mode`` (<= number of batch modes)."""
        if not 0 <= mode <= len(self.batch_shape):
            raise ShapeError(
                f"BlockTT.transduct(mode={mode}): new modes of a BlockTT are batch modes, which "
                f"lead; mode must be in [0, {len(self.batch_shape)}]."
            )
        cores = []
        for f in self.factors:
            data = f.data.unsqueeze(mode)
            expand = [-1] * data.ndim
            expand[mode] = new_dim
            cores.append(torch.nn.Parameter(data.expand(*expand).contiguous()))
        self.factors = FactorList(cores)
        self.tensorized_shape = (
            *self.tensorized_shape[:mode],
            new_dim,
            *self.tensorized_shape[mode:],
        )
        self.tensor_shape = tensor_shape_of(self.tensorized_shape)
        self.shape = matrix_shape_of(self.tensorized_shape)
        self.batch_shape, self.entries = _split(self.tensorized_shape)
        self._build()
        return self

    def _index(self, modes: list[Any]) -> Any:
        nb = len(self.batch_shape)
        entry_index = modes[nb:]
        if any(not isinstance(i, int) and i != slice(None) for i in entry_index):
            # Selecting several rows of a tensorized mode breaks the product
            # structure the cores rely on: answer with the dense slice.
            value = self.to_matrix()
            return value[
                tuple(i.to(value.device) if isinstance(i, torch.Tensor) else i for i in modes)
            ]
        cores = [self._v(f) for f in self.factors]
        batch: list[int] = []
        for axis in reversed(range(nb)):  # index batch dims right to left so positions stay valid
            index = modes[axis]
            selector = [slice(None)] * axis + [
                index.to(cores[0].device) if isinstance(index, torch.Tensor) else index
            ]
            cores = [c[tuple(selector)] for c in cores]
            if not isinstance(index, int):
                batch.insert(0, int(cores[0].shape[axis]))
        offset = len(batch) + 1  # first mode axis of a core: after batch dims and the left bond
        entries = []
        dropped = 0
        for e, (index, entry) in enumerate(zip(entry_index, self.entries, strict=False)):
            if isinstance(index, int):
                subs = unravel(index, entry, None)
                cores = [
                    c.select(offset + e - dropped, int(s))
                    for c, s in zip(cores, subs, strict=False)
                ]
                dropped += 1
            else:
                entries.append(entry)
        if not entries:
            out = cores[0]
            for c in cores[1:]:
                out = out @ c
            return out[..., 0, 0]
        return BlockTT(cores, (*batch, *entries), self.rank)


def _decompose_batched(
    tensor: torch.Tensor,
    batch: tuple[int, ...],
    entries: tuple[tuple[int, ...], ...],
    rank: Sequence[int],
    **kwargs: Any,
) -> list[torch.Tensor]:
    """Block TT-SVD of each batch element; cores stacked along leading batch dims."""
    full = (*batch, *(s for e in entries for s in e))
    tensor = tensor.reshape(full)
    flat = tensor.reshape(-1, *full[len(batch) :])
    per_item = [_decompose.block_tt_svd(t, entries, rank, **kwargs) for t in flat]
    return [
        torch.stack([cores[k] for cores in per_item]).reshape(*batch, *per_item[0][k].shape)
        for k in range(len(per_item[0]))
    ]
