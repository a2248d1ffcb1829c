"""Small shared pieces of the concrete forms."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["Storage"]


class Storage:
    """Mixin: set a factor attribute that may be a Parameter, a view or an fx proxy."""

    _complex: bool = False

    def _store(self, name: str, value: Any) -> None:
        module: nn.Module = self  # type: ignore[assignment]
        module._parameters.pop(name, None)
        module.__dict__.pop(name, None)
        if isinstance(value, nn.Parameter):
            module.register_parameter(name, value)
        else:
            object.__setattr__(module, name, value)

    def _v(self, stored: Any) -> torch.Tensor:
        """The value of a stored factor (a complex view for complex forms)."""
        return torch.view_as_complex(stored) if self._complex else stored

    def _param_device_dtype(self) -> tuple[Any, torch.dtype]:
        module: nn.Module = self  # type: ignore[assignment]
        first = next(iter(module.parameters()), None)
        if first is None:
            return None, torch.get_default_dtype()
        return first.device, first.dtype
