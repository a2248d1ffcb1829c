"""tltorch 0.5 helpers that tfx's forms do not need themselves, kept for code that uses them.

* shapes: :func:`is_tensorized_shape`, :func:`tensorized_shape_to_shape`,
  :func:`validate_block_tt_rank` (tltorch's ``factorized_tensors.tensorized_matrices``);
* :class:`ComplexHandler`, the mixin that makes a form complex
  (tltorch's ``factorized_tensors.complex_factorized_tensors``);
* :class:`ParameterList` and :class:`ComplexFactorList` (tltorch's ``utils.parameter_list``).

They are re-exported by the tltorch-named modules ``tfx.factorized_tensors`` and ``tfx.utils``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .._errors import ShapeError
from . import _rank
from ._base import parse_tensorized_shape
from ._blocktt import BlockTT, _split, _what
from ._factor_list import FactorList

__all__ = [
    "is_tensorized_shape",
    "tensorized_shape_to_shape",
    "validate_block_tt_rank",
    "ComplexHandler",
    "ParameterList",
    "ComplexFactorList",
]


# ------------------------------------------------------------------ shapes
def is_tensorized_shape(shape: Sequence[Any]) -> bool:
    """Whether ``shape`` is a tensorized shape (has a tuple entry) rather than a plain one.

    Example:
        >>> is_tensorized_shape(((4, 3, 2), (5, 3, 2))), is_tensorized_shape((24, 30))
        (True, False)
    """
    return not all(isinstance(s, int) for s in shape)


def tensorized_shape_to_shape(tensorized_shape: Sequence[Any]) -> list[int]:
    """The matrix shape of a tensorized shape: one size per entry, as a list (as tltorch).

    Ints (batch modes, or the entries of a plain shape) are kept; tuples become their product.

    Raises:
        ShapeError: an entry that is neither an int nor a tuple of ints.

    Example:
        >>> tensorized_shape_to_shape((2, (4, 3, 2), (5, 3, 2)))
        [2, 24, 30]
    """
    out = []
    for entry in tensorized_shape:
        sizes = tuple(entry) if isinstance(entry, tuple | list | torch.Size) else (entry,)
        if not sizes or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes
        ):
            raise ShapeError(
                f"tensorized_shape={tensorized_shape!r}: entry {entry!r} is neither a size nor a "
                "tuple of sizes.\nFix: e.g. tensorized_shape=((4, 3, 2), (5, 3, 2))."
            )
        out.append(math.prod(sizes))
    return out


def validate_block_tt_rank(tensorized_shape: Sequence[Any], rank: Any) -> tuple[int, ...]:
    """The rank a :class:`~tfx.BlockTT` of ``tensorized_shape`` takes for the spec ``rank``.

    The same normalisation as ``BlockTT.new``: one rank per bond between the cores
    (boundary 1s included), each at most what the merged core sizes hold.

    Raises:
        RankError: a rank the shape cannot hold, or a malformed spec.
        ShapeError: a malformed tensorized shape.

    Example:
        >>> validate_block_tt_rank(((4, 3, 2), (5, 3, 2)), 4)
        (1, 4, 4, 1)
    """
    tshape = parse_tensorized_shape(tensorized_shape)
    _, entries = _split(tshape)
    return _rank.tt_rank(BlockTT._core_sizes(entries), rank, what=_what(tshape))


# ------------------------------------------------------------------ complex forms
class ComplexHandler:
    """Mixin making a form complex: its factors are stored as real ``(..., 2)`` Parameters.

    tfx's own ``Complex*`` forms are built this way in effect; subclass it first, as in
    tltorch, to make a complex variant of your own form.

    Example:
        >>> import torch, tfx
        >>> class MyComplexCP(ComplexHandler, tfx.CPTensor):
        ...     pass
        >>> MyComplexCP.new((3, 4), rank=2).to_tensor().dtype
        torch.complex64
    """

    _complex = True


# ------------------------------------------------------------------ lists
class ComplexFactorList(FactorList):
    """A :class:`~tfx.tensors._factor_list.FactorList` of complex factors stored as real pairs.

    Complex tensors are stored as ``torch.view_as_real`` (so every Parameter is real),
    and read back as complex views.

    Example:
        >>> import torch
        >>> factors = ComplexFactorList([torch.nn.Parameter(torch.ones(2, 3, dtype=torch.cfloat))])
        >>> factors[0].dtype, tuple(factors.factor_0.shape)
        (torch.complex64, (2, 3, 2))
    """

    @staticmethod
    def _real(factor: Any) -> Any:
        if isinstance(factor, torch.Tensor) and factor.is_complex():
            real = torch.view_as_real(
                factor.detach() if isinstance(factor, nn.Parameter) else factor
            )
            return nn.Parameter(real) if isinstance(factor, nn.Parameter) else real
        return factor

    def append(self, factor: Any) -> None:
        """Add ``factor`` at the end (complex tensors are stored as real pairs)."""
        super().append(self._real(factor))

    def __setitem__(self, index: int, factor: Any) -> None:
        super().__setitem__(index, self._real(factor))

    def _get(self, key: str) -> Any:
        value = super()._get(key)
        return torch.view_as_complex(value) if isinstance(value, torch.Tensor) else value


class ParameterList(nn.Module):
    """A list of Parameters registered as ``param_0``, ``param_1``, ... (tltorch's keys).

    Unlike ``torch.nn.ParameterList`` it supports ``insert``, ``pop`` and deletion; keys
    are never reused, so the state-dict keys of the remaining entries do not change.

    Example:
        >>> import torch
        >>> params = ParameterList([torch.nn.Parameter(torch.zeros(2))])
        >>> params.append(torch.nn.Parameter(torch.ones(3)))
        >>> len(params), sorted(params.state_dict())
        (2, ['param_0', 'param_1'])
    """

    def __init__(self, parameters: Iterable[nn.Parameter] | None = None) -> None:
        super().__init__()
        self.keys: list[str] = []
        self.counter = 0
        if parameters is not None:
            self.extend(parameters)

    def _unique_key(self) -> str:
        key = f"param_{self.counter}"
        self.counter += 1
        return key

    def append(self, parameter: nn.Parameter) -> None:
        """Add ``parameter`` at the end."""
        key = self._unique_key()
        self.register_parameter(key, parameter)
        self.keys.append(key)

    def insert(self, index: int, parameter: nn.Parameter) -> None:
        """Insert ``parameter`` before position ``index``."""
        key = self._unique_key()
        self.register_parameter(key, parameter)
        self.keys.insert(index, key)

    def extend(self, parameters: Iterable[nn.Parameter]) -> ParameterList:
        """Append every parameter of ``parameters``; returns self."""
        for parameter in parameters:
            self.append(parameter)
        return self

    def __iadd__(self, parameters: Iterable[nn.Parameter]) -> ParameterList:
        return self.extend(parameters)

    def pop(self, index: int = -1) -> nn.Parameter:
        """Remove and return the parameter at ``index``."""
        item = self[index]
        del self[index]
        return item  # type: ignore[no-any-return]

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return ParameterList([getattr(self, key) for key in self.keys[index]])
        try:
            return getattr(self, self.keys[index])
        except IndexError:
            raise IndexError(
                f"index {index} is out of range for a ParameterList of {len(self.keys)} parameters."
            ) from None

    def __setitem__(self, index: int, parameter: nn.Parameter) -> None:
        self.register_parameter(self.keys[index], parameter)

    def __delitem__(self, index: int) -> None:
        delattr(self, self.keys[index])
        del self.keys[index]

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[nn.Parameter]:
        return (getattr(self, key) for key in self.keys)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}: {tuple(getattr(self, k).shape)}" for k in self.keys)
