"""Dense "factorizations": a plain tensor behind the factorized-tensor interface."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

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
)
from ._contract import plan_einsum
from ._forms_common import Storage

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["DenseTensor", "DenseTensorized"]


def _moved(index: Any, tensor: torch.Tensor) -> Any:
    return index.to(tensor.device) if isinstance(index, torch.Tensor) else index


class DenseTensor(Storage, FactorizedTensor, name="Dense"):
    """A dense tensor with the factorized-tensor interface (``rank`` is None).

    Example:
        >>> import torch, tfx
        >>> t = tfx.DenseTensor.from_tensor(torch.arange(6.0).reshape(2, 3))
        >>> t[1, 2]
        tensor(5., grad_fn=<SelectBackward0>)
    """

    tensor: torch.Tensor

    def __init__(self, tensor: Any, shape: Sequence[int] | None = None, rank: Any = None) -> None:
        super().__init__()
        if shape is None:  # read the tensor's shape only when not given (fx proxies have none)
            shape = tuple(tensor.shape[:-1]) if self._complex else tuple(tensor.shape)
        self.shape = tuple(shape)
        self.rank = None
        self._store("tensor", tensor)
        self._build()

    def _build(self) -> None:
        self.order = len(self.shape)
        shape = self._stored_shape()
        letters = "abcdefghijklmnopqrstuvwxy"[: len(shape)]
        self._plan = plan_einsum(f"{letters}->{letters}", shape)

    @classmethod
    def new(  # type: ignore[override]
        cls,
        shape: Sequence[int],
        rank: Any = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> DenseTensor:
        """A new dense tensor with N(0, 1) entries."""
        shape = check_shape(shape, "DenseTensor.new")
        return cls(
            new_parameter(shape, device=device, dtype=dtype, complex_form=cls._complex), shape
        ).normal_(0, 1)

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor, rank: Any = "same", **kwargs: Any) -> DenseTensor:  # type: ignore[override]
        """Wrap a copy of ``tensor``."""
        tensor = decomposition_input(tensor, cls._complex)
        return cls(to_storage(tensor.clone(), cls._complex), tuple(tensor.shape))

    def init_from_tensor(self, tensor: torch.Tensor, **kwargs: Any) -> DenseTensor:
        """Copy ``tensor`` into this tensor, in place."""
        tensor = decomposition_input(tensor, self._complex)
        device, _ = self._param_device_dtype()
        self._store(
            "tensor",
            to_storage(tensor.clone().reshape(self._stored_shape()).to(device), self._complex),
        )
        return self

    def _stored_shape(self) -> tuple[int, ...]:
        return self.shape

    @property
    def decomposition(self) -> torch.Tensor:
        """The tensor itself."""
        return self._v(self.tensor)

    def contraction(self) -> tuple[str, list[torch.Tensor]]:
        """The reconstruction as ``(einsum equation, operands)``: the identity on the tensor."""
        return self._plan.equation, [self._v(self.tensor)]

    def to_tensor(self) -> torch.Tensor:
        """The tensor itself."""
        return self._v(self.tensor)

    @torch.no_grad()
    def normal_(self, mean: float = 0.0, std: float = 1.0) -> Self:
        """Entries N(mean, std) (complex: real and imaginary parts each carry half the variance)."""
        if self._complex:
            self.tensor.data.normal_(0, std / math.sqrt(2))
            self.tensor.data.select(-1, 0).add_(mean)
        else:
            self.tensor.data.normal_(mean, std)
        return self

    def transduct(
        self, new_dim: int, mode: int = 0, new_factor: torch.Tensor | None = None
    ) -> DenseTensor:
        """Insert a mode of size ``new_dim`` at ``mode``, replicating the tensor along it."""
        data = self.tensor.data.unsqueeze(mode)
        expand = [-1] * data.ndim
        expand[mode] = new_dim
        self._store("tensor", torch.nn.Parameter(data.expand(*expand).contiguous()))
        self.shape = (*self.shape[:mode], new_dim, *self.shape[mode:])
        self._build()
        return self

    def _index(self, modes: list[Any]) -> Any:
        value = self.to_tensor()
        result = value[tuple(_moved(i, value) for i in modes)]
        shape = [mode_length(i, s) for i, s in zip(modes, self.shape, strict=False)]
        shape = [s for s in shape if s is not None]
        if not shape:
            return result
        return DenseTensor(result, tuple(shape))


class DenseTensorized(DenseTensor, TensorizedTensor, name="Dense"):
    """A dense tensorized matrix: the tensor stored with shape ``tensor_shape``.

    Example:
        >>> import tfx
        >>> w = tfx.DenseTensorized.new(((4, 3), (5, 2)))
        >>> w[2].shape, w.to_matrix().shape
        ((10,), torch.Size([12, 10]))
    """

    def __init__(self, tensor: Any, tensorized_shape: Sequence[Any], rank: Any = None) -> None:
        self.tensorized_shape = parse_tensorized_shape(tensorized_shape)
        self.tensor_shape = tensor_shape_of(self.tensorized_shape)
        super().__init__(tensor, matrix_shape_of(self.tensorized_shape))

    def _stored_shape(self) -> tuple[int, ...]:
        return self.tensor_shape

    @classmethod
    def new(  # type: ignore[override]
        cls,
        tensorized_shape: Sequence[Any],
        rank: Any = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> DenseTensorized:
        """A new dense tensorized matrix with N(0, 1) entries."""
        tshape = parse_tensorized_shape(tensorized_shape)
        full = tensor_shape_of(tshape)
        return cls(
            new_parameter(full, device=device, dtype=dtype, complex_form=cls._complex), tshape
        ).normal_(0, 1)

    @classmethod
    def from_tensor(  # type: ignore[override]
        cls, tensor: torch.Tensor, tensorized_shape: Sequence[Any], rank: Any = None, **kwargs: Any
    ) -> DenseTensorized:
        """Wrap a copy of ``tensor`` (shape ``tensor_shape`` or the matrix shape)."""
        tshape = parse_tensorized_shape(tensorized_shape)
        tensor = decomposition_input(tensor, cls._complex).reshape(tensor_shape_of(tshape))
        return cls(to_storage(tensor.clone(), cls._complex), tshape)

    def transduct(
        self, new_dim: int, mode: int = 0, new_factor: torch.Tensor | None = None
    ) -> DenseTensorized:
        """Insert a batch mode of size ``new_dim`` before entry ``mode`` of the tensorized shape."""
        return self._insert_batch_mode(new_dim, mode, new_factor, super().transduct)  # type: ignore[no-any-return]

    def _index(self, modes: list[Any]) -> Any:
        # Merge the modes of every tensorized entry that is indexed (not ':'),
        # index the merged view, and keep the other entries tensorized.
        view_shape: list[int] = []
        view_index: list[Any] = []
        tshape: list[Any] = []
        for index, entry in zip(modes, self.tensorized_shape, strict=False):
            if isinstance(entry, tuple) and index == slice(None):
                view_shape.extend(entry)
                view_index.extend([slice(None)] * len(entry))
                tshape.append(entry)
                continue
            size = math.prod(entry) if isinstance(entry, tuple) else entry
            view_shape.append(size)
            view_index.append(index)
            length = mode_length(index, size)
            if length is not None:
                tshape.append(length)
        value = self.to_tensor().reshape(view_shape)
        result = value[tuple(_moved(i, value) for i in view_index)]
        if not tshape:
            return result
        if not any(isinstance(e, tuple) for e in tshape):
            return DenseTensor(result, tuple(tshape))
        return DenseTensorized(result, tuple(tshape))
