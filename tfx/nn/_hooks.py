"""Tensor dropout and tensor lasso: forward hooks on factorized tensors.

A factorized tensor's ``forward()`` returns the tensor itself; a forward hook
may return a substitute, which is what the layer then uses. Both hooks here
return a view of the same form whose rank components are scaled:

* tensor dropout multiplies each rank component by a Bernoulli mask / (1 - p)
  (CP: the weights; Tucker: each mode's factor columns; TT and BlockTT: each
  inner bond), the masked form of dropping rank components;
* tensor lasso multiplies them by learnable gates and accumulates an L1
  penalty on the gates, so training drives unneeded components to zero.

They dispatch on the form (``isinstance``), so tensorized weights, complex
forms and user subclasses all work. Shapes never depend on the sampled
masks, so hooked tensors stay traceable and compile without graph breaks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._errors import OptionError
from ..tensors import (
    BlockTT,
    CPTensor,
    CPTensorized,
    FactorizedTensor,
    TTTensor,
    TTTensorized,
    TuckerTensor,
    TuckerTensorized,
)
from ..tensors._base import _lookup
from ..tensors._factor_list import FactorList

__all__ = [
    "TensorDropout",
    "tensor_dropout",
    "remove_tensor_dropout",
    "TensorLasso",
    "tensor_lasso",
    "remove_tensor_lasso",
]


def rank_sizes(tensor: FactorizedTensor) -> list[int]:
    """Sizes of the rank components a hook can scale (empty for dense forms)."""
    if isinstance(tensor, CPTensor):
        return [tensor.rank]
    if isinstance(tensor, TuckerTensor):
        return list(tensor.rank)
    if isinstance(tensor, (TTTensor, BlockTT)):
        return list(tensor.rank[1:-1])
    return []


def scaled(tensor: FactorizedTensor, scales: list[torch.Tensor | None]) -> FactorizedTensor:
    """A view of ``tensor`` with rank component ``k`` scaled by ``scales[k]`` (None: unscaled)."""
    if isinstance(tensor, CPTensor):
        weights, factors = tensor.decomposition
        if scales[0] is not None:
            weights = weights * scales[0]
        if isinstance(tensor, CPTensorized):
            return CPTensorized(weights, factors, tensor.tensorized_shape, tensor.rank)
        return CPTensor(weights, factors, tensor.shape, tensor.rank)
    if isinstance(tensor, TuckerTensor):
        core, factors = tensor.decomposition
        factors = [f if s is None else f * s for f, s in zip(factors, scales)]
        if isinstance(tensor, TuckerTensorized):
            return TuckerTensorized(core, factors, tensor.tensorized_shape, tensor.rank)
        return TuckerTensor(core, factors, tensor.shape, tensor.rank)
    if isinstance(tensor, (TTTensor, BlockTT)):
        cores = list(tensor.decomposition)
        for k, s in enumerate(scales):
            if s is not None:
                cores[k] = cores[k] * s
        if isinstance(tensor, BlockTT):
            return BlockTT(cores, tensor.tensorized_shape, tensor.rank)
        if isinstance(tensor, TTTensorized):
            return TTTensorized(cores, tensor.tensorized_shape, tensor.rank)
        return TTTensor(cores, tensor.shape, tensor.rank)
    return tensor


# ----------------------------------------------------------------------- dropout
class TensorDropout:
    """Forward hook applying tensor dropout to a factorized tensor (any form).

    Args:
        proba: probability of dropping each rank component, in [0, 1).
        min_dim: only components of rank > ``min_dim`` are dropped.
        min_values: at least this many components are kept.
        drop_test: also drop in eval mode.
    """

    def __init__(self, proba: float, min_dim: int = 1, min_values: int = 1, drop_test: bool = False) -> None:
        if not 0 <= proba < 1:
            raise OptionError(f"tensor dropout p={proba} must be in [0, 1).\nFix: e.g. p=0.1.")
        if min_values < 1:
            raise OptionError(f"min_values={min_values} must be >= 1.")
        self.proba, self.min_dim, self.min_values, self.drop_test = proba, min_dim, min_values, drop_test

    def _mask(self, size: int, like: torch.Tensor) -> torch.Tensor:
        keep = torch.bernoulli(torch.full((size,), 1 - self.proba, device=like.device, dtype=torch.float32))
        n_forced = min(self.min_values, size)
        forced = torch.zeros(size, device=like.device).index_fill_(0, torch.randperm(size, device=like.device)[:n_forced], 1.0)
        keep = torch.where(keep.sum() < n_forced, torch.maximum(keep, forced), keep)
        return (keep / (1 - self.proba)).to(like.dtype)  # a real mask cast to complex is fine too

    def __call__(self, module: nn.Module, inputs: Any, tensor: Any) -> Any:
        if not isinstance(tensor, FactorizedTensor) or not self.proba:
            return tensor
        if not (module.training or self.drop_test):
            return tensor
        like = next(iter(tensor.factors)) if hasattr(tensor, "factors") else None
        if like is None:
            return tensor
        masks = [self._mask(s, like) if s > self.min_dim else None for s in rank_sizes(tensor)]
        return scaled(tensor, masks)

    @classmethod
    def apply(cls, module: FactorizedTensor, proba: float, min_dim: int = 3, min_values: int = 1,
              drop_test: bool = False) -> FactorizedTensor:
        """Register tensor dropout on ``module``; returns it."""
        if not isinstance(module, FactorizedTensor):
            raise OptionError(f"tensor dropout applies to tfx factorized tensors, got {type(module).__name__}.")
        if any(isinstance(h, cls) for h in module._forward_hooks.values()):
            raise OptionError("tensor dropout is already applied to this tensor.\nFix: remove_tensor_dropout(tensor) first.")
        module.register_forward_hook(cls(proba, min_dim=min_dim, min_values=min_values, drop_test=drop_test))
        return module

    @classmethod
    def remove(cls, module: FactorizedTensor) -> FactorizedTensor:
        """Remove tensor dropout from ``module``; returns it."""
        for key in [k for k, h in module._forward_hooks.items() if isinstance(h, cls)]:
            del module._forward_hooks[key]
        return module


def tensor_dropout(factorized_tensor: FactorizedTensor, p: float = 0.0, min_dim: int = 3, min_values: int = 1,
                   drop_test: bool = False) -> FactorizedTensor:
    """Apply tensor dropout to a factorized tensor (e.g. ``layer.weight``); returns it.

    Example:
        >>> import tfx
        >>> layer = tfx.FactorizedLinear((4, 4), (4, 4), factorization="tucker", rank=0.5)
        >>> _ = tfx.tensor_dropout(layer.weight, p=0.5, min_dim=1)
    """
    return TensorDropout.apply(factorized_tensor, p, min_dim=min_dim, min_values=min_values, drop_test=drop_test)


def remove_tensor_dropout(factorized_tensor: FactorizedTensor) -> FactorizedTensor:
    """Remove tensor dropout from a factorized tensor; returns it."""
    return TensorDropout.remove(factorized_tensor)


# ------------------------------------------------------------------------- lasso
class TensorLasso:
    """Generalised tensor lasso: learnable gates on the rank components with an L1 penalty.

    Use: ``lasso = tfx.tensor_lasso(penalty=0.01)``; ``lasso.apply(layer.weight)``;
    after each forward add ``lasso.loss`` to the loss and call ``lasso.reset()``.

    Args:
        penalty: weight of the L1 penalty.
        clamp_weights: clamp gates to [-1, 1] before each use.
        threshold: gates with |g| below it are set to 0 before each use.
        normalize_loss: divide the penalty by the number of gate entries.
    """

    def __init__(self, penalty: float = 0.01, clamp_weights: bool = True, threshold: float = 1e-6,
                 normalize_loss: bool = True) -> None:
        self.penalty, self.clamp_weights, self.threshold, self.normalize_loss = penalty, clamp_weights, threshold, normalize_loss
        self.reset()

    def reset(self) -> None:
        """Zero the accumulated penalty (call after each optimisation step)."""
        self._loss: torch.Tensor | float = 0.0
        self.n_element = 0

    @property
    def loss(self) -> torch.Tensor | float:
        """The penalty accumulated since the last :meth:`reset`."""
        if self.normalize_loss and self.n_element:
            return self._loss / self.n_element
        return self._loss

    def __call__(self, module: nn.Module, inputs: Any, tensor: Any) -> Any:
        gates = getattr(module, "lasso_weights", None)
        if gates is None or not isinstance(tensor, FactorizedTensor):
            return tensor
        values = list(gates)
        if isinstance(values[0], torch.fx.Proxy):
            # fx tracing: in-place updates of parameters cannot be replayed by a graph, so the
            # clamp and threshold are applied out of place (the penalty is not tracked there).
            values = [self._filtered(g) for g in values]
        else:
            with torch.no_grad():
                for gate in values:
                    if self.clamp_weights:
                        gate.clamp_(-1, 1)
                    if self.threshold:
                        gate.masked_fill_(gate.abs() < self.threshold, 0.0)
        for gate in values:
            self.n_element += gate.numel()
            self._loss = self._loss + self.penalty * gate.abs().sum()
        indices = inputs[0] if inputs else None
        if indices is not None:
            # Stacked layers: forward(indices) returned an indexed tensor; gate the whole
            # tensor, then index it the same way.
            return scaled(module, values)[indices]  # type: ignore[arg-type]
        return scaled(tensor, values)

    def _filtered(self, gate: Any) -> Any:
        if self.clamp_weights:
            gate = gate.clamp(-1, 1)
        if self.threshold:
            gate = torch.where(gate.abs() < self.threshold, torch.zeros_like(gate), gate)
        return gate

    def apply(self, module: FactorizedTensor) -> FactorizedTensor:
        """Add gates (ones) to ``module`` and register the hook; returns it."""
        if not isinstance(module, FactorizedTensor):
            raise OptionError(f"tensor lasso applies to tfx factorized tensors, got {type(module).__name__}.")
        sizes = rank_sizes(module)
        if not sizes:
            raise OptionError(
                f"tensor lasso needs rank components to penalise; a {module._name} tensor has none.\n"
                "Fix: apply it to a CP, Tucker, TT or BlockTT tensor."
            )
        if hasattr(module, "lasso_weights"):
            raise OptionError("tensor lasso is already applied to this tensor.\nFix: remove_tensor_lasso(tensor) first.")
        first = next(iter(module.parameters()))
        dtype = first.dtype
        module.lasso_weights = FactorList([nn.Parameter(torch.ones(s, device=first.device, dtype=dtype)) for s in sizes])
        module.register_forward_hook(self)
        return module

    def set_weights(self, module: FactorizedTensor, value: float, clamp_weights: bool = True) -> None:
        """Set every gate of ``module`` to ``value`` (clamped to [-1, 1] by default)."""
        with torch.no_grad():
            for gate in module.lasso_weights:
                gate.fill_(max(-1.0, min(1.0, value)) if clamp_weights else value)

    def remove(self, module: FactorizedTensor) -> FactorizedTensor:
        """Remove this lasso's hook and gates from ``module``."""
        for key in [k for k, h in module._forward_hooks.items() if h is self]:
            del module._forward_hooks[key]
        if "lasso_weights" in module._modules:
            del module._modules["lasso_weights"]
        return module


def tensor_lasso(factorization: str = "cp", penalty: float = 0.01, clamp_weights: bool = True,
                 threshold: float = 1e-6, normalize_loss: bool = True) -> TensorLasso:
    """A tensor lasso regulariser (one class serves every form; ``factorization`` is validated).

    Example:
        >>> import torch, tfx
        >>> layer = tfx.FactorizedLinear((4, 4), (4, 4), factorization="cp", rank=6)
        >>> lasso = tfx.tensor_lasso(penalty=0.01)
        >>> _ = lasso.apply(layer.weight)
        >>> loss = layer(torch.randn(2, 16)).sum() + lasso.loss
    """
    from ..tensors import TensorizedTensor

    known = {**FactorizedTensor._factorizations, **TensorizedTensor._factorizations}
    _lookup(known, factorization, "tensor")
    return TensorLasso(penalty=penalty, clamp_weights=clamp_weights, threshold=threshold, normalize_loss=normalize_loss)


def remove_tensor_lasso(factorized_tensor: FactorizedTensor) -> FactorizedTensor:
    """Remove every tensor lasso (hooks and gates) from a factorized tensor; returns it."""
    for key in [k for k, h in factorized_tensor._forward_hooks.items() if isinstance(h, TensorLasso)]:
        del factorized_tensor._forward_hooks[key]
    if "lasso_weights" in factorized_tensor._modules:
        del factorized_tensor._modules["lasso_weights"]
    return factorized_tensor
