"""Passes as small objects with contracts, and the site context of the errors they raise.

Modelled on torch.fx's ``PassBase`` (``torch/fx/passes/infra/pass_base.py``): ``requires``
checks what a pass needs before it runs, ``call`` does the work, ``ensures`` checks what it
promises after. fx's passes take a ``GraphModule``; tfx's stages also work on the model's
own modules (module swap, ``emit='modules'``) and on records (sites, statistics, a plan), so
a tfx pass takes one :class:`Compilation` (what the stages of one ``tfx.factorize`` call
read and write) and fills in its part of it. A field read before the pass that sets it
raises :class:`ContractError` naming that pass, as fx's ``shape_prop`` accessors do.

An error raised while a pass works on one site is re-raised with that site, see
:func:`site_context`.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from torch import nn

from .._errors import ContractError, SiteError, TfxError

__all__ = [
    "Compilation",
    "Pass",
    "ContractError",
    "SiteError",
    "describe",
    "site_context",
]


def describe(site: Any, choice: Any = None) -> str:
    """``'name' (linear 384x1536, svd rank 152)``: a site, and the choice made for it."""
    info = site.info
    what = f"{info.kind} {'x'.join(str(n) for n in info.weight_shape)}"
    if choice is not None:
        rank = choice.rank
        if isinstance(rank, Sequence):
            rank = "(" + ", ".join(str(r) for r in rank) + ")"
        what += f", {choice.form}" + ("" if choice.form == "dense" else f" rank {rank}")
    return f"{info.name!r} ({what})"


@contextlib.contextmanager
def site_context(site: Any, choice: Any = None, *, doing: str = "factorizing") -> Iterator[None]:
    """Re-raise an error from the body with the site it was working on.

    The message becomes ``while factorizing 'name' (linear 384x1536, svd rank 152): <message>``.
    A :class:`~tfx.TfxError` keeps its class (the same object, its message prefixed); any other
    exception is raised as a :class:`SiteError` with the original chained. An error that already
    names a site (a nested context) passes unchanged.
    """
    try:
        yield
    except Exception as err:
        if getattr(err, "tfx_site", None) is not None:
            raise
        prefix = f"while {doing} {describe(site, choice)}"
        if isinstance(err, TfxError):
            first, *rest = err.args or ("",)
            err.args = (f"{prefix}: {first}", *rest)
            err.tfx_site = site.info.name  # type: ignore[attr-defined]
            raise
        wrapped = SiteError(f"{prefix}: {type(err).__name__}: {err}")
        wrapped.site = wrapped.tfx_site = site.info.name  # type: ignore[attr-defined]
        raise wrapped from err


_SETS: dict[str, str] = {
    "captured": "Capture",
    "sites": "Match",
    "emission": "Match",
    "plan": "the planner (tfx.cost.plan_graph)",
    "build": "the decompose stage (tfx.passes.Decomposer)",
    "result": "Rewrite",
}


@dataclasses.dataclass
class Compilation:
    """What the passes of one ``tfx.factorize`` call read and write.

    Attributes:
        model: the user's model (left untouched unless ``inplace``).
        example_inputs: positional (tuple) or keyword (dict) example inputs, or None.
        inplace: capture the model itself instead of a deep copy.
        ties: the model's tied parameter names, recorded before anything changed.
        captured: set by :class:`~tfx.passes.Capture` (dropped by
            :class:`~tfx.passes.Rewrite` once used).
        reference: the model's outputs on ``example_inputs``, recorded by
            :class:`~tfx.passes.Capture` before anything changed.
        sites: set by :class:`~tfx.passes.Match`, with ``emission`` (``'graph'`` / ``'modules'``).
        calibrated: set by :class:`~tfx.passes.Calibrate` (None without calibration data).
        priors: set by :class:`~tfx.passes.Calibrate` without calibration data: data-free
            input moments of the linear sites the graph explains (:func:`input_priors`).
        plan: set by the planner, or given.
        build: the layer builder of the decompose stage (:class:`~tfx.passes.Decomposer`).
        result: set by :class:`~tfx.passes.Rewrite`, finished by :class:`~tfx.passes.Emit`.
    """

    model: nn.Module
    example_inputs: Any = None
    inplace: bool = False
    ties: list[list[str]] = dataclasses.field(default_factory=list)
    captured: Any = None
    reference: Any = None
    sites: Any = None
    emission: Any = None
    calibrated: Any = None
    priors: Any = None
    plan: Any = None
    build: Any = None
    result: Any = None

    def need(self, name: str) -> Any:
        """The field ``name``, or :class:`ContractError` naming the pass that sets it."""
        value = getattr(self, name)
        if value is None:
            raise ContractError(
                f"{name!r} is not set: run {_SETS.get(name, 'the pass that sets it')} first."
            )
        return value


class Pass(abc.ABC):
    """A stage of ``tfx.factorize``: ``requires``, then ``call``, then ``ensures``.

    As ``torch.fx.passes.infra.pass_base.PassBase``, but on a :class:`Compilation` (a tfx
    stage may work on the model's own modules, where there is no graph to pass).
    """

    #: The fields of :class:`Compilation` the pass reads (checked by the default ``requires``).
    reads: ClassVar[tuple[str, ...]] = ()

    def __call__(self, state: Compilation) -> Compilation:
        """Check the preconditions, run the pass, check the postconditions."""
        self.requires(state)
        self.call(state)
        self.ensures(state)
        return state

    @abc.abstractmethod
    def call(self, state: Compilation) -> None:
        """Do the work: fill in this pass's fields of ``state``."""

    def requires(self, state: Compilation) -> None:
        """Check that ``state`` holds what the pass reads (by default: :attr:`reads` are set)."""
        for name in self.reads:
            state.need(name)

    def ensures(self, state: Compilation) -> None:  # noqa: B027 - optional, as in fx
        """Check what the pass promises on ``state``; raise if it does not hold."""
