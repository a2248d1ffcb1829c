"""An ordered list of factors that keeps views as views.

``nn.ParameterList`` turns every tensor into a new leaf ``Parameter``, which
would cut the autograd graph of an indexed factorized tensor. ``FactorList``
registers real ``Parameter`` objects and keeps anything else (slices of
parameters, fx proxies while tracing) as a plain attribute, so indexing a
factorized tensor stays differentiable and traceable.

State-dict keys are ``factor_0``, ``factor_1``, ..., the names tltorch uses,
so tltorch checkpoints load as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["FactorList"]


class FactorList(nn.Module):
    """Ordered factors: Parameters are registered, other tensors are kept as views."""

    def __init__(self, factors: Iterable[Any] = ()) -> None:
        super().__init__()
        self._views: dict[str, Any] = {}
        self._keys: list[str] = []
        for factor in factors:
            self.append(factor)

    def append(self, factor: Any) -> None:
        """Add ``factor`` at the end."""
        key = f"factor_{len(self._keys)}"
        if isinstance(factor, nn.Parameter):
            self.register_parameter(key, factor)
        else:
            self._views[key] = factor
        self._keys.append(key)

    def _get(self, key: str) -> Any:
        if key in self._views:
            return self._views[key]
        return getattr(self, key)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self._get(k) for k in self._keys[index]]
        return self._get(self._keys[index])

    def __setitem__(self, index: int, factor: Any) -> None:
        key = self._keys[index]
        self._views.pop(key, None)
        if key in self._parameters:
            del self._parameters[key]
        if isinstance(factor, nn.Parameter):
            self.register_parameter(key, factor)
        else:
            self._views[key] = factor

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[Any]:
        return (self._get(k) for k in self._keys)

    def _apply(self, fn: Any, recurse: bool = True) -> FactorList:  # noqa: D102
        super()._apply(fn, recurse)
        self._views = {
            k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in self._views.items()
        }
        return self

    def extra_repr(self) -> str:
        return ", ".join(f"{k}: {tuple(self._get(k).shape)}" for k in self._keys)
