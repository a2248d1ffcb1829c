"""The records the compiler's stages pass along: pure data, JSON-friendly.

``SiteInfo`` describes one layer (what the cost model needs: shapes and
numbers, no modules); ``Option`` is one way to store its weight; ``Choice``
is the option picked for a site, as it appears in a plan.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["SiteInfo", "Option", "Choice"]


@dataclasses.dataclass(frozen=True)
class SiteInfo:
    """One factorizable layer, as shapes and numbers.

    Attributes:
        name: the original module's qualified name (``encoder.layer.0.attention.self.query``).
        kind: ``'linear'``, ``'conv'`` or ``'embedding'``.
        weight_shape: ``(out, in)`` for linear, ``(out, in // groups, *kernel)`` for conv,
            ``(num_embeddings, dim)`` for embedding.
        tokens: rows the layer processes per forward (batch x positions; for conv,
            batch x output positions; for embedding, looked-up indices).
        has_bias: whether the layer adds a bias.
        factorizable: False when the site must stay dense.
        reason: why it stays dense, when it does.
        path: how the site was captured (``'symbolic_trace'``, ``'export'``, ``'module_swap'``).
        in_tokens: for conv, batch x input positions (0: unknown, taken as ``tokens``);
            the pointwise steps CP and Tucker run before striding see this many.
    """

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    tokens: int = 1
    has_bias: bool = False
    factorizable: bool = True
    reason: str = ""
    path: str = "symbolic_trace"
    in_tokens: int = 0

    @property
    def dense_params(self) -> int:
        """Parameters of the dense weight (bias excluded)."""
        n = 1
        for s in self.weight_shape:
            n *= s
        return n


@dataclasses.dataclass(frozen=True)
class Option:
    """One candidate for a site: a form, a tensorized shape, a rank, and what it costs.

    ``params`` is exact (equal to the emitted weight's parameter count);
    ``error`` is the relative Frobenius error of the weight (from spectra: exact
    for ``'svd'``, an upper bound for Tucker/TT/BlockTT, fitted for CP).
    ``flops`` and ``bytes`` are those of the cheaper contraction order for the
    site's ``tokens``, named by ``order``: ``'factors'`` (the input contracted with
    the factors), ``'reconstruct'`` (rebuild the weight, then the dense layer), or
    ``'dense'`` (see ``tfx.cost._flops`` for the conventions). ``steps`` counts its
    kernels; ``seconds`` is its estimated time on a :class:`~tfx.cost.DeviceProfile`
    (0 when priced without one).
    """

    form: str
    tensorized_shape: Any
    rank: Any
    params: int
    flops: int
    error: float
    bytes: int = 0
    order: str = "factors"
    steps: int = 0
    seconds: float = 0.0

    def key(self) -> tuple[Any, ...]:
        """A hashable identity."""
        return (self.form, repr(self.tensorized_shape), repr(self.rank))


@dataclasses.dataclass
class Choice:
    """The option chosen for one site, as a row of the plan.

    ``order`` is the contraction order the emitted layer runs (``'factors'`` or
    ``'reconstruct'``; ``'auto'`` in plans saved before it was recorded: the layer
    then decides by itself). ``bytes_before`` / ``bytes_after`` estimate memory
    traffic (0 in plans saved before they were recorded). ``group`` names the shared input
    basis a site's factors use with its siblings (None: its own factors).
    """

    site: str
    kind: str
    weight_shape: tuple[int, ...]
    form: str
    tensorized_shape: Any
    rank: Any
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    error: float
    path: str = "symbolic_trace"
    reason: str = ""
    sensitivity: float | None = None
    tokens: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    order: str = "auto"
    seconds_before: float = 0.0
    seconds_after: float = 0.0
    group: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Choice:
        """Inverse of :meth:`to_dict` (tuples restored)."""
        data = dict(data)
        data["weight_shape"] = tuple(data["weight_shape"])
        data["tensorized_shape"] = _tuplify(data["tensorized_shape"])
        data["rank"] = _tuplify(data["rank"])
        return cls(**data)


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value
