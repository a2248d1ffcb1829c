"""Tensor dropout and tensor lasso: forward hooks on factorized tensors (tltorch 0.5's API).

A factorized tensor's ``forward()`` returns the tensor itself; a forward hook
may return a substitute, which is what the layer then uses. The rank
components a hook acts on are CP's weights, each Tucker mode's factor columns
(and core slices), and each inner bond of a TT or BlockTT.

* **Tensor dropout** drops rank components at random while training. As in
  tltorch, the substitute has a *smaller rank* (the dropped components are
  removed, so the training step is cheaper): ``implementation="reduce"``.
  Under ``torch.fx`` / ``torch.jit`` tracing, ``torch.compile`` or
  ``torch.export``, a rank that depends on random draws cannot be a graph's
  static shape, so the dropped components are zeroed instead, at full rank:
  ``implementation="mask"``. ``"auto"`` (the default) picks ``"reduce"`` in
  eager mode and ``"mask"`` while tracing or compiling. With the same random
  state both give the same tensor.
* **Tensor lasso** multiplies the rank components by learnable gates and
  accumulates an L1 penalty on them, so training drives unneeded components to
  zero. ``CPLasso``, ``TuckerLasso`` and ``TTLasso`` are tltorch's classes;
  ``tensor_lasso(factorization=...)`` picks one.

Both dispatch on the form (``isinstance``), so tensorized weights, complex
forms and user subclasses all work.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar, cast, get_args

import torch
from torch import nn

from .._errors import OptionError, TfxWarning, unknown_option
from .._types import DropoutImplementation
from ..tensors import (
    BlockTT,
    CPTensor,
    CPTensorized,
    FactorizedTensor,
    TensorizedTensor,
    TTTensor,
    TTTensorized,
    TuckerTensor,
    TuckerTensorized,
)
from ..tensors._base import lookup_form

__all__ = [
    "TensorDropout",
    "CPDropout",
    "TuckerDropout",
    "TTDropout",
    "tensor_dropout",
    "remove_tensor_dropout",
    "TensorLasso",
    "CPLasso",
    "TuckerLasso",
    "TTLasso",
    "tensor_lasso",
    "remove_tensor_lasso",
]

_IMPLEMENTATIONS = get_args(DropoutImplementation)


# ------------------------------------------------------------------ rank components
def rank_sizes(tensor: FactorizedTensor) -> list[int]:
    """Sizes of the rank components a hook acts on (empty for dense forms)."""
    if isinstance(tensor, CPTensor):
        return [tensor.rank]
    if isinstance(tensor, TuckerTensor):
        return list(tensor.rank)
    if isinstance(tensor, TTTensor | BlockTT):
        return list(tensor.rank[1:-1])
    return []


def _same_form(tensor: FactorizedTensor, parts: Any, rank: Any) -> FactorizedTensor:
    """A tensor of ``tensor``'s (real-storage) form from new decomposition ``parts``."""
    if isinstance(tensor, CPTensor):
        weights, factors = parts
        if isinstance(tensor, CPTensorized):
            return CPTensorized(weights, factors, tensor.tensorized_shape, rank)
        return CPTensor(weights, factors, tensor.shape, rank)
    if isinstance(tensor, TuckerTensor):
        core, factors = parts
        if isinstance(tensor, TuckerTensorized):
            return TuckerTensorized(core, factors, tensor.tensorized_shape, rank)
        return TuckerTensor(core, factors, tensor.shape, rank)
    if isinstance(tensor, BlockTT):
        return BlockTT(parts, tensor.tensorized_shape, rank)
    if isinstance(tensor, TTTensorized):
        return TTTensorized(parts, tensor.tensorized_shape, rank)
    return TTTensor(parts, tensor.shape, rank)


def scaled(tensor: FactorizedTensor, scales: list[torch.Tensor | None]) -> FactorizedTensor:
    """A view of ``tensor`` with rank component ``k`` scaled by ``scales[k]`` (None: unscaled)."""
    if isinstance(tensor, CPTensor):
        weights, factors = tensor.decomposition
        weights = weights if scales[0] is None else weights * scales[0]
        return _same_form(tensor, (weights, factors), tensor.rank)
    if isinstance(tensor, TuckerTensor):
        core, factors = tensor.decomposition
        factors = [f if s is None else f * s for f, s in zip(factors, scales, strict=False)]
        return _same_form(tensor, (core, factors), tensor.rank)
    if isinstance(tensor, TTTensor | BlockTT):
        cores = list(tensor.decomposition)
        for k, s in enumerate(scales):
            if s is not None:
                cores[k] = cores[k] * s
        return _same_form(tensor, cores, tensor.rank)
    return tensor


def reduced(
    tensor: FactorizedTensor, kept: list[torch.Tensor | None], scale: float
) -> FactorizedTensor:
    """``tensor`` with only the rank components ``kept[k]`` (None: all), times ``scale``."""
    if isinstance(tensor, CPTensor):
        weights, factors = tensor.decomposition
        if kept[0] is not None:
            weights, factors = weights[kept[0]], [f[:, kept[0]] for f in factors]
        return _same_form(tensor, (weights * scale, factors), int(weights.shape[0]))
    if isinstance(tensor, TuckerTensor):
        core, factors = tensor.decomposition
        for mode, index in enumerate(kept):
            if index is not None:
                core, factors[mode] = core.index_select(mode, index), factors[mode][:, index]
        return _same_form(tensor, (core * scale, factors), tuple(int(f.shape[1]) for f in factors))
    cores = list(tensor.decomposition)
    for bond, index in enumerate(kept, start=1):  # bond k joins cores k - 1 and k
        if index is not None:
            cores[bond - 1] = cores[bond - 1].index_select(-1, index)
            cores[bond] = cores[bond].index_select(0, index)
    cores[0] = cores[0] * scale
    return _same_form(tensor, cores, (1, *(int(c.shape[-1]) for c in cores[:-1]), 1))


def _tracing(like: Any) -> bool:
    """Whether a graph is being captured (fx, jit, dynamo, export): shapes must stay static."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return bool(
        isinstance(like, torch.fx.Proxy)
        or torch.compiler.is_compiling()
        or exporting()
        or torch.jit.is_tracing()
        # the flag itself: torch's is_fx_tracing() logs a warning on its first call
        or getattr(torch.fx._symbolic_trace, "_is_fx_tracing_flag", False)
    )


# ------------------------------------------------------------------------- dropout
class TensorDropout:
    """Forward hook applying tensor dropout to a factorized tensor (any form with a rank).

    In training mode (or in eval mode with ``drop_test=True``), each rank
    component of size ``> min_dim`` (CP: the rank; Tucker: each mode's rank;
    TT / BlockTT: each inner bond) is kept with probability ``1 - proba``; if
    fewer than ``min_values`` are kept, ``min_values`` components drawn at random
    are kept as well. In training mode the tensor is then scaled by
    ``1 / (1 - proba)`` per sampled rank dimension, so that its expectation is
    the tensor; in eval mode (``drop_test=True``) it is not scaled, as in tltorch.

    Args:
        proba: probability of dropping each rank component, in [0, 1).
        min_dim: only rank dimensions of size > ``min_dim`` are sampled.
        min_values: at least this many components are kept per sampled dimension.
        drop_test: also drop in eval mode.
        implementation: ``"reduce"`` returns a tensor of smaller rank (the
            dropped components removed, as tltorch does; each new combination
            of ranks plans its contractions once, so on small layers ``"mask"``
            can be faster); ``"mask"`` zeroes them at full rank (static
            shapes); ``"auto"`` uses ``"mask"`` while tracing or compiling
            (``torch.fx``, ``torch.jit``, ``torch.compile``, ``torch.export``)
            and ``"reduce"`` otherwise.

    Raises:
        OptionError: ``proba`` outside [0, 1), ``min_values < 1`` or an unknown
            ``implementation``.

    Example:
        >>> import torch, tfx
        >>> t = tfx.TuckerTensor.new((8, 9, 10), rank=(7, 8, 9))
        >>> _ = tfx.TensorDropout.apply(t, 0.999, min_dim=1)
        >>> t.train()().rank
        (1, 1, 1)
    """

    _forms: ClassVar[tuple[type, ...]] = (FactorizedTensor,)
    _form_name: ClassVar[str] = ""

    def __init__(
        self,
        proba: float,
        min_dim: int = 1,
        min_values: int = 1,
        drop_test: bool = False,
        *,
        implementation: DropoutImplementation = "auto",
    ) -> None:
        if not 0 <= proba < 1:
            raise OptionError(f"tensor dropout p={proba} must be in [0, 1).\nFix: e.g. p=0.1.")
        if min_values < 1:
            raise OptionError(f"min_values={min_values} must be >= 1.\nFix: e.g. min_values=1.")
        if implementation not in _IMPLEMENTATIONS:
            raise unknown_option("tensor dropout implementation", implementation, _IMPLEMENTATIONS)
        self.proba, self.min_dim, self.min_values, self.drop_test = (
            proba,
            min_dim,
            min_values,
            drop_test,
        )
        self.implementation = implementation

    def _keep(self, size: int, like: torch.Tensor) -> torch.Tensor:
        """A 0/1 mask of the kept components (branch-free, so fx and compile can trace it)."""
        keep = torch.bernoulli(
            torch.full((size,), 1 - self.proba, device=like.device, dtype=torch.float32)
        )
        n_forced = min(self.min_values, size)
        chosen = torch.randperm(size, device=like.device)[:n_forced]
        forced = torch.zeros(size, device=like.device).index_fill_(0, chosen, 1.0)
        return torch.where(keep.sum() < n_forced, torch.maximum(keep, forced), keep)

    def __call__(self, module: nn.Module, inputs: Any, tensor: Any) -> Any:
        return self._apply_tensor_dropout(tensor, training=module.training)

    def _apply_tensor_dropout(self, tensor: Any, training: bool = True) -> Any:
        """``tensor`` with components dropped (tltorch's name for the hook's work)."""
        if (
            not isinstance(tensor, FactorizedTensor)
            or not self.proba
            or not (training or self.drop_test)
        ):
            return tensor
        sizes = rank_sizes(tensor)
        if not sizes or not hasattr(tensor, "factors"):
            return tensor
        like = next(iter(cast(Any, tensor).factors))
        keeps = [self._keep(s, like) if s > self.min_dim else None for s in sizes]
        if all(k is None for k in keeps):
            return tensor
        scale = 1.0 / (1 - self.proba) if training else 1.0
        mask = self.implementation == "mask" or (self.implementation == "auto" and _tracing(like))
        if mask:
            return scaled(
                tensor, [None if k is None else (k * scale).to(like.dtype) for k in keeps]
            )
        kept = [None if k is None else k.nonzero().squeeze(1) for k in keeps]
        n_sampled = sum(k is not None for k in keeps)
        return reduced(tensor, kept, scale**n_sampled)

    @classmethod
    def apply(
        cls,
        module: FactorizedTensor,
        proba: float,
        min_dim: int = 3,
        min_values: int = 1,
        drop_test: bool = False,
        *,
        implementation: DropoutImplementation = "auto",
    ) -> FactorizedTensor:
        """Register tensor dropout on ``module``; returns it.

        Raises:
            OptionError: ``module`` is not a factorized tensor (of this class's
                forms, for :class:`CPDropout`, ...) or already has tensor dropout.
        """
        if not isinstance(module, FactorizedTensor):
            raise OptionError(
                f"tensor dropout applies to tfx factorized tensors, got {type(module).__name__}."
            )
        if not isinstance(module, cls._forms):
            raise OptionError(
                f"{cls.__name__} applies to {cls._form_name} "
                f"tensors, got a {module._name} tensor.\n"
                "Fix: tfx.tensor_dropout(tensor, p=...), which serves every form."
            )
        if any(isinstance(h, TensorDropout) for h in module._forward_hooks.values()):
            raise OptionError(
                "tensor dropout is already applied to this tensor.\n"
                "Fix: remove_tensor_dropout(tensor) first."
            )
        hook = cls(
            proba,
            min_dim=min_dim,
            min_values=min_values,
            drop_test=drop_test,
            implementation=implementation,
        )
        module.register_forward_hook(hook)
        return module

    @classmethod
    def remove(cls, module: FactorizedTensor) -> FactorizedTensor:
        """Remove tensor dropout from ``module``; returns it.

        Raises:
            OptionError: ``module`` has no tensor dropout (tltorch raises a ValueError too).
        """
        keys = [k for k, h in module._forward_hooks.items() if isinstance(h, TensorDropout)]
        if not keys:
            raise OptionError(
                f"{type(module).__name__} has no tensor dropout to remove.\n"
                "Fix: apply it first with tfx.tensor_dropout(tensor, p=...)."
            )
        for key in keys:
            del module._forward_hooks[key]
        return module


class CPDropout(TensorDropout):
    """Tensor dropout restricted to CP tensors (tltorch's class): drops rank-one terms.

    Example:
        >>> import tfx
        >>> t = tfx.nn.CPDropout.apply(tfx.CPTensor.new((3, 4, 5), rank=6), 0.999, min_dim=1)
        >>> t.train()().rank
        1
    """

    _forms = (CPTensor,)
    _form_name = "CP"


class TuckerDropout(TensorDropout):
    """Tensor dropout restricted to Tucker tensors (tltorch's class).

    It drops each mode's components.
    """

    _forms = (TuckerTensor,)
    _form_name = "Tucker"


class TTDropout(TensorDropout):
    """Tensor dropout restricted to TT (and BlockTT) tensors (tltorch's class).

    It drops bond components.
    """

    _forms = (TTTensor, BlockTT)
    _form_name = "TT"


def tensor_dropout(
    factorized_tensor: FactorizedTensor,
    p: float = 0.0,
    min_dim: int = 3,
    min_values: int = 1,
    drop_test: bool = False,
    *,
    implementation: DropoutImplementation = "auto",
) -> FactorizedTensor:
    """Apply tensor dropout to a factorized tensor (e.g. ``layer.weight``); returns it.

    See :class:`TensorDropout`: in eager training each forward uses a tensor
    of smaller rank (tltorch's semantics); under tracing or compilation the
    dropped components are zeroed at full rank instead.

    Args:
        factorized_tensor: the tensor to hook.
        p: dropout probability, in [0, 1).
        min_dim: only rank dimensions of size > ``min_dim`` are sampled.
        min_values: at least this many components are kept.
        drop_test: also drop in eval mode (without rescaling).
        implementation: ``"auto"``, ``"reduce"`` or ``"mask"``.

    Returns:
        ``factorized_tensor``, with the hook registered.

    Example:
        >>> import tfx
        >>> layer = tfx.FactorizedLinear((4, 4), (4, 4), factorization="tucker", rank=(3, 3, 3, 3))
        >>> _ = tfx.tensor_dropout(layer.weight, p=0.5, min_dim=1)
        >>> all(r <= 3 for r in layer.weight().rank)
        True
    """
    return TensorDropout.apply(
        factorized_tensor,
        p,
        min_dim=min_dim,
        min_values=min_values,
        drop_test=drop_test,
        implementation=implementation,
    )


def remove_tensor_dropout(factorized_tensor: FactorizedTensor) -> FactorizedTensor:
    """Remove tensor dropout from a factorized tensor; returns it.

    Raises:
        OptionError: the tensor has no tensor dropout.
    """
    return TensorDropout.remove(factorized_tensor)


# --------------------------------------------------------------------------- lasso
class _Gates(nn.Module):
    """The gates of one tensor, with tltorch's state-dict keys (``param_0``, ``param_1``, ...)."""

    def __init__(self, gates: list[nn.Parameter]) -> None:
        super().__init__()
        for k, gate in enumerate(gates):
            self.register_parameter(f"param_{k}", gate)
        self._n = len(gates)

    def __getitem__(self, index: int) -> Any:
        return getattr(self, f"param_{range(self._n)[index]}")

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Any]:
        return (self[k] for k in range(self._n))


def _gates_of(module: nn.Module) -> list[Any]:
    gates = getattr(module, "lasso_weights", None)
    if gates is None:
        return []
    return [gates] if isinstance(gates, torch.Tensor | torch.fx.Proxy) else list(gates)


class TensorLasso:
    """Generalised tensor lasso: learnable gates on the rank components, with an L1 penalty.

    ``lasso.apply(tensor)`` adds gates (ones) to the tensor, as its
    ``lasso_weights`` parameters, and a forward hook that multiplies each rank
    component by its gate. At each forward the gates are clamped to [-1, 1]
    (``clamp_weights``) and those ``<= threshold`` are set to 0 (as tltorch's
    ``F.threshold`` does: negative gates too), in place, and
    ``penalty * sum(|gates|)`` is added to :attr:`loss`. Add ``lasso.loss`` to
    the training loss and call :meth:`reset` after each step.

    This base class serves every form with rank components (CP, Tucker, TT,
    BlockTT, tensorized and complex ones); :class:`CPLasso`,
    :class:`TuckerLasso` and :class:`TTLasso` are tltorch's per-form classes.

    Args:
        penalty: weight of the L1 penalty.
        clamp_weights: clamp gates to [-1, 1] before each use.
        threshold: gates ``<= threshold`` are set to 0 before each use.
        normalize_loss: divide the penalty by the number of gates.

    Example:
        >>> import torch, tfx
        >>> layer = tfx.FactorizedLinear((4, 4), (4, 4), factorization="cp", rank=6)
        >>> lasso = tfx.TensorLasso(penalty=0.01)
        >>> _ = lasso.apply(layer.weight)
        >>> loss = layer(torch.randn(2, 16)).sum() + lasso.loss
    """

    _forms: ClassVar[tuple[type, ...]] = (CPTensor, TuckerTensor, TTTensor, BlockTT)
    _form_name: ClassVar[str] = ""

    def __init__(
        self,
        penalty: float = 0.01,
        clamp_weights: bool = True,
        threshold: float = 1e-6,
        normalize_loss: bool = True,
    ) -> None:
        self.penalty, self.clamp_weights, self.threshold, self.normalize_loss = (
            penalty,
            clamp_weights,
            threshold,
            normalize_loss,
        )
        self.reset()

    def reset(self) -> None:
        """Zero the accumulated penalty (call after each optimisation step)."""
        self._loss: torch.Tensor | float = 0.0
        self.n_element = 0

    @property
    def loss(self) -> torch.Tensor | float:
        """The penalty accumulated since the last :meth:`reset` (0, with a warning, if none)."""
        if self.n_element == 0:
            warnings.warn(
                "lasso.loss is 0: no tensor with this lasso ran forward since the last "
                "reset() (or the model runs as a traced graph, which does not record it).\n"
                "Fix: read the loss after the forward pass; "
                "apply the lasso with lasso.apply(tensor).",
                TfxWarning,
                stacklevel=2,
            )
            return 0.0
        return self._loss / self.n_element if self.normalize_loss else self._loss

    def __call__(self, module: nn.Module, inputs: Any, tensor: Any) -> Any:
        gates = _gates_of(module)
        if not gates or not isinstance(tensor, FactorizedTensor):
            return tensor
        if isinstance(gates[0], torch.fx.Proxy):
            # fx tracing: in-place updates of parameters cannot be replayed by a graph, so the
            # clamp and threshold are applied out of place, and the penalty (a side effect) is
            # not tracked: a traced graph gates the tensor but does not add to lasso.loss.
            gates = [self._filtered(g) for g in gates]
        else:
            with torch.no_grad():
                for gate in gates:
                    if self.clamp_weights:
                        gate.clamp_(-1, 1)
                    if self.threshold:
                        gate.masked_fill_(gate <= self.threshold, 0.0)
            for gate in gates:
                self.n_element += math.prod(gate.shape)
                self._loss = self._loss + self.penalty * gate.abs().sum()
        indices = inputs[0] if inputs else None
        if indices is not None:
            # Stacked layers: forward(indices) returned an indexed tensor; gate the whole
            # tensor, then index it the same way.
            return self.apply_lasso(module, gates)[indices]  # type: ignore[arg-type]
        return self.apply_lasso(tensor, gates)

    def _filtered(self, gate: Any) -> Any:
        if self.clamp_weights:
            gate = gate.clamp(-1, 1)
        if self.threshold:
            gate = torch.where(gate <= self.threshold, torch.zeros_like(gate), gate)
        return gate

    def apply_lasso(self, tensor: FactorizedTensor, lasso_weights: Any) -> FactorizedTensor:
        """``tensor`` with each rank component multiplied by its gate in ``lasso_weights``."""
        return scaled(tensor, list(lasso_weights))

    def apply(self, module: FactorizedTensor) -> FactorizedTensor:
        """Add gates (ones) to ``module`` and register the hook, before any other hook; returns it.

        The lasso runs before tensor dropout whatever the order of application, so
        that dropout (which may reduce the rank) sees the gated tensor.

        Raises:
            OptionError: ``module`` is not a factorized tensor of this lasso's forms,
                has no rank components, or already has a lasso.
        """
        if not isinstance(module, FactorizedTensor):
            raise OptionError(
                f"tensor lasso applies to tfx factorized tensors, got {type(module).__name__}."
            )
        sizes = rank_sizes(module)
        if not sizes:
            raise OptionError(
                "tensor lasso needs rank components to "
                f"penalise; a {module._name} tensor has none.\n"
                "Fix: apply it to a CP, Tucker, TT or BlockTT tensor."
            )
        if not isinstance(module, self._forms):
            raise OptionError(
                f"{type(self).__name__} applies to {self._form_name} "
                f"tensors, got a {module._name} tensor.\n"
                f"Fix: tfx.tensor_lasso(factorization={module._name.lower()!r}), "
                "or tfx.TensorLasso(...) for any form."
            )
        if hasattr(module, "lasso_weights"):
            raise OptionError(
                "tensor lasso is already applied to this tensor.\n"
                "Fix: remove_tensor_lasso(tensor) first."
            )
        first = next(iter(module.parameters()))
        # tltorch's parameter shapes: CP one (rank,) vector, Tucker (rank[k],) per mode,
        # TT (1, 1, rank[k]) per inner bond.
        lead = (1, 1) if isinstance(module, TTTensor | BlockTT) else ()
        gates = [
            nn.Parameter(torch.ones((*lead, s), device=first.device, dtype=first.dtype))
            for s in sizes
        ]
        module.lasso_weights = gates[0] if isinstance(module, CPTensor) else _Gates(gates)
        module.register_forward_hook(self, prepend=True)
        return module

    def set_weights(
        self, module: FactorizedTensor, value: float, clamp_weights: bool = False
    ) -> None:
        """Fill every gate of ``module`` with ``value``, clamped to [-1, 1] if ``clamp_weights``."""
        with torch.no_grad():
            for gate in _gates_of(module):
                gate.fill_(max(-1.0, min(1.0, value)) if clamp_weights else value)

    def remove(self, module: FactorizedTensor) -> FactorizedTensor:
        """Remove this lasso's hook and the gates from ``module``; returns it."""
        for key in [k for k, h in module._forward_hooks.items() if h is self]:
            del module._forward_hooks[key]
        _drop_gates(module)
        return module

    @classmethod
    def from_factorization(
        cls,
        factorization: FactorizedTensor,
        penalty: float = 0.01,
        clamp_weights: bool = True,
        threshold: float = 1e-6,
        normalize_loss: bool = True,
    ) -> TensorLasso:
        """The lasso class for the form of the tensor ``factorization`` (tltorch's constructor)."""
        lasso_cls = _lasso_class(type(factorization), type(factorization).__name__)
        return lasso_cls(
            penalty=penalty,
            clamp_weights=clamp_weights,
            threshold=threshold,
            normalize_loss=normalize_loss,
        )

    @classmethod
    def from_factorization_name(
        cls,
        factorization_name: str,
        penalty: float = 0.01,
        clamp_weights: bool = True,
        threshold: float = 1e-6,
        normalize_loss: bool = True,
    ) -> TensorLasso:
        """The lasso class for a form name.

        Names: ``'cp'``, ``'tucker'``, ``'tt'``... or tltorch's ``'CPTensor'``.
        """
        form = _form_class(factorization_name)
        lasso_cls = _lasso_class(form, factorization_name)
        return lasso_cls(
            penalty=penalty,
            clamp_weights=clamp_weights,
            threshold=threshold,
            normalize_loss=normalize_loss,
        )


class CPLasso(TensorLasso):
    """Tensor lasso on CP tensors: one gate per rank-one term, multiplying the CP weights.

    The gates are one ``(rank,)`` parameter, ``tensor.lasso_weights``, as in
    tltorch. (tltorch 0.5's ``CPLasso`` penalises the gates without using them
    in the forward pass; here they gate the weights, as for the other forms.)

    Example:
        >>> import tfx
        >>> t = tfx.CPTensor.new((3, 4, 5), rank=6)
        >>> _ = tfx.nn.CPLasso(penalty=0.1).apply(t)
        >>> tuple(t.lasso_weights.shape)
        (6,)
    """

    _forms = (CPTensor,)
    _form_name = "CP"


class TuckerLasso(TensorLasso):
    """Tensor lasso on Tucker tensors: one gate vector per mode, on that mode's factor columns.

    Example:
        >>> import tfx
        >>> t = tfx.TuckerTensor.new((3, 4, 5), rank=(2, 3, 4))
        >>> _ = tfx.nn.TuckerLasso().apply(t)
        >>> [tuple(g.shape) for g in t.lasso_weights]
        [(2,), (3,), (4,)]
    """

    _forms = (TuckerTensor,)
    _form_name = "Tucker"


class TTLasso(TensorLasso):
    """Tensor lasso on TT (and BlockTT) tensors: one gate vector per inner bond.

    Gates are ``(1, 1, rank[k])`` parameters, as in tltorch, multiplying the
    last mode of core ``k - 1``.

    Example:
        >>> import tfx
        >>> t = tfx.TTTensor.new((3, 4, 5), rank=(1, 2, 3, 1))
        >>> _ = tfx.nn.TTLasso().apply(t)
        >>> [tuple(g.shape) for g in t.lasso_weights]
        [(1, 1, 2), (1, 1, 3)]
    """

    _forms = (TTTensor, BlockTT)
    _form_name = "TT"


def _form_class(name: str) -> type:
    """The form registered as ``name``; tltorch's class names (``'TuckerTensor'``) too."""
    if not isinstance(name, str):
        raise OptionError(f"factorization={name!r} must be a name such as 'cp', 'tucker', 'tt'.")
    key = name.lower()
    if key.endswith("tensorized") and key != "tensorized":
        return lookup_form(
            TensorizedTensor._factorizations, key[: -len("tensorized")], "tensorized tensor"
        )
    if key.endswith("tensor") and key != "tensor":
        key = key[: -len("tensor")]
    known = {**FactorizedTensor._factorizations, **TensorizedTensor._factorizations}
    return lookup_form(known, key, "tensor")


def _lasso_class(form: type, name: str) -> type[TensorLasso]:
    for lasso_cls in (CPLasso, TuckerLasso, TTLasso):
        if issubclass(form, lasso_cls._forms):
            return lasso_cls
    raise OptionError(
        f"factorization={name!r} has no rank components for a tensor lasso to penalise.\n"
        "Fix: use a CP, Tucker, TT or BlockTT factorization, e.g. tensor_lasso(factorization='cp')."
    )


def _drop_gates(module: nn.Module) -> None:
    module._modules.pop("lasso_weights", None)
    module._parameters.pop("lasso_weights", None)


def tensor_lasso(
    factorization: str = "CP",
    penalty: float = 0.01,
    clamp_weights: bool = True,
    threshold: float = 1e-6,
    normalize_loss: bool = True,
) -> TensorLasso:
    """A tensor lasso for a form: :class:`CPLasso`, :class:`TuckerLasso` or :class:`TTLasso`.

    Args:
        factorization: a form name, case-insensitive (``'cp'``, ``'tucker'``,
            ``'tt'``, ``'blocktt'``, complex and tensorized variants).
        penalty: weight of the L1 penalty.
        clamp_weights: clamp gates to [-1, 1] before each use.
        threshold: gates ``<= threshold`` are set to 0 before each use.
        normalize_loss: divide the penalty by the number of gates.

    Returns:
        The regulariser; apply it to tensors with ``lasso.apply(tensor)``.

    Raises:
        OptionError: an unknown name, or a form without rank components (dense).

    Example:
        >>> import torch, tfx
        >>> layer = tfx.FactorizedLinear((4, 4), (4, 4), factorization="cp", rank=6)
        >>> lasso = tfx.tensor_lasso(factorization="cp", penalty=0.01)
        >>> _ = lasso.apply(layer.weight)
        >>> loss = layer(torch.randn(2, 16)).sum() + lasso.loss
        >>> type(lasso).__name__
        'CPLasso'
    """
    return TensorLasso.from_factorization_name(
        factorization,
        penalty=penalty,
        clamp_weights=clamp_weights,
        threshold=threshold,
        normalize_loss=normalize_loss,
    )


def remove_tensor_lasso(factorized_tensor: FactorizedTensor) -> FactorizedTensor:
    """Remove every tensor lasso (hooks and gates) from a factorized tensor; returns it.

    Raises:
        OptionError: the tensor has no tensor lasso (tltorch raises a ValueError too).
    """
    keys = [k for k, h in factorized_tensor._forward_hooks.items() if isinstance(h, TensorLasso)]
    if not keys and not hasattr(factorized_tensor, "lasso_weights"):
        raise OptionError(
            f"{type(factorized_tensor).__name__} has no tensor lasso to remove.\n"
            "Fix: apply one first with tfx.tensor_lasso(...).apply(tensor)."
        )
    for key in keys:
        del factorized_tensor._forward_hooks[key]
    _drop_gates(factorized_tensor)
    return factorized_tensor
