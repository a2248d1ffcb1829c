"""The structure of each factorized form: one public description layers and the cost model share.

A form's *spec* is the einsum equation that contracts its factors to the full tensor, the
factors' shapes in that equation's order, and so its parameter count. The tensors in
``tfx.tensors`` build their contraction plans from it, and the cost model (``tfx.cost``)
prices and counts candidates with it, so that what is planned is what is built.

Stage: core (no dependency on the layers, the passes or the cost model).
"""

from __future__ import annotations

import dataclasses
import math
import string
from collections.abc import Sequence
from typing import Any, Literal

from .._errors import OptionError, ShapeError, unknown_option

__all__ = [
    "FormSpec",
    "form_spec",
    "cp_equation",
    "tucker_equation",
    "tt_equation",
    "blocktt_equation",
]

SpecForm = Literal["cp", "tucker", "tt", "blocktt"]
_FORMS: tuple[str, ...] = ("cp", "tucker", "tt", "blocktt")


def cp_equation(order: int) -> str:
    """The CP reconstruction ``weights, factor_0, ... -> tensor``, e.g. ``'z,az,bz->ab'``.

    The weights are an operand of their own: the planner applies them where the intermediate
    is smallest (folding them into a factor would cost a multiply of a whole factor per call).
    """
    modes = string.ascii_letters.replace("z", "")[:order]
    return "z," + ",".join(f"{m}z" for m in modes) + "->" + modes


def tucker_equation(order: int) -> str:
    """The Tucker reconstruction ``core, factor_0, ... -> tensor``, e.g. ``'ab,ca,db->cd'``."""
    letters = string.ascii_letters
    ranks, modes = letters[:order], letters[order : 2 * order]
    factors = ",".join(f"{m}{r}" for m, r in zip(modes, ranks, strict=True))
    return f"{ranks},{factors}->{modes}"


def tt_equation(order: int) -> str:
    """A TT reconstruction with squeezed boundary cores, e.g. ``'Ab,bBc,cC->ABC'``."""
    modes, bonds = string.ascii_uppercase[:order], string.ascii_lowercase[: order + 1]
    if order == 1:
        return "A->A"
    terms = [f"{modes[0]}{bonds[1]}"]
    terms += [f"{bonds[k]}{modes[k]}{bonds[k + 1]}" for k in range(1, order - 1)]
    terms.append(f"{bonds[order - 1]}{modes[order - 1]}")
    return ",".join(terms) + "->" + modes


def blocktt_equation(n_batch: int, n_entries: int, d: int) -> str:
    """A BlockTT (TT-matrix) reconstruction of ``d`` cores over ``n_entries`` tensorized sides.

    Each core is ``(*batch, bond, side_0[k], ..., bond)``; the result is
    ``(*batch, *side_0, *side_1, ...)``; e.g. ``blocktt_equation(0, 2, 2)`` is
    ``'adfb,begc->defg'`` (letters in order: batch, bonds, then each side's modes).
    """
    letters = iter(string.ascii_letters)
    batch = "".join(next(letters) for _ in range(n_batch))
    bonds = [next(letters) for _ in range(d + 1)]
    modes = [[next(letters) for _ in range(d)] for _ in range(n_entries)]
    terms = [batch + bonds[k] + "".join(m[k] for m in modes) + bonds[k + 1] for k in range(d)]
    return ",".join(terms) + "->" + batch + "".join("".join(m) for m in modes)


@dataclasses.dataclass(frozen=True)
class FormSpec:
    """How a factorized form's factors contract to its full tensor.

    Attributes:
        form: ``"cp"``, ``"tucker"``, ``"tt"`` or ``"blocktt"``.
        shape: the full tensor's shape (for BlockTT: the batch, then each side's modes in
            turn, e.g. ``(4, 3, 5, 2)`` for rows ``(4, 3)`` and columns ``(5, 2)``).
        rank: the rank as the form states it (an int for CP, a tuple otherwise).
        equation: the einsum equation from the factors to the full tensor.
        operand_shapes: the factors' shapes, in the equation's order (CP: the weights first;
            TT: the boundary cores without their size-1 bond).

    Example:
        >>> spec = form_spec("tucker", (8, 6), (3, 2))
        >>> spec.equation, spec.operand_shapes, spec.n_params
        ('ab,ca,db->cd', ((3, 2), (8, 3), (6, 2)), 42)
    """

    form: str
    shape: tuple[int, ...]
    rank: Any
    equation: str
    operand_shapes: tuple[tuple[int, ...], ...]

    @property
    def n_params(self) -> int:
        """The number of parameters: the entries of every factor."""
        return sum(math.prod(s) for s in self.operand_shapes)


def form_spec(
    form: SpecForm,
    shape: Sequence[int] | Sequence[Sequence[int]],
    rank: int | Sequence[int],
    *,
    batch: Sequence[int] = (),
) -> FormSpec:
    """The :class:`FormSpec` of a factorized tensor.

    Args:
        form: ``"cp"``, ``"tucker"``, ``"tt"`` or ``"blocktt"``.
        shape: the tensor's shape; for ``"blocktt"`` its sides' modes, e.g.
            ``((4, 3), (5, 2))`` for a 12 x 10 matrix.
        rank: an int for CP; the core's shape for Tucker; the ``order + 1`` bonds (``1`` at
            both ends) for TT, and the ``d + 1`` bonds for BlockTT.
        batch: BlockTT only: leading batch dimensions every core has.

    Returns:
        The equation and the factors' shapes.

    Raises:
        OptionError: an unknown form, or ``batch`` for another form than BlockTT.
        ShapeError: a rank of the wrong length for the shape.

    Example:
        >>> form_spec("cp", (8, 6), 3).operand_shapes
        ((3,), (8, 3), (6, 3))
        >>> form_spec("tt", (4, 5, 6), (1, 2, 3, 1)).equation
        'Ab,bBc,cC->ABC'
    """
    if form not in _FORMS:
        raise unknown_option("form", form, _FORMS)
    if batch and form != "blocktt":
        raise OptionError(
            f"form_spec({form!r}, ..., batch={tuple(batch)}): only BlockTT cores carry batch "
            "dimensions.\nFix: leave batch out for this form."
        )
    if form == "blocktt":
        return _blocktt(tuple(tuple(int(n) for n in side) for side in shape), rank, batch)  # type: ignore[union-attr]
    dims = tuple(int(n) for n in shape)  # type: ignore[arg-type]
    if form == "cp":
        r = int(rank)  # type: ignore[arg-type]
        return FormSpec(form, dims, r, cp_equation(len(dims)), ((r,), *((n, r) for n in dims)))
    ranks = tuple(int(r) for r in rank)  # type: ignore[union-attr]
    if form == "tucker":
        _check_length(form, dims, ranks, len(dims))
        operands = (ranks, *zip(dims, ranks, strict=True))
        return FormSpec(form, dims, ranks, tucker_equation(len(dims)), operands)
    _check_length(form, dims, ranks, len(dims) + 1)
    return FormSpec(form, dims, ranks, tt_equation(len(dims)), _tt_operands(dims, ranks))


def _tt_operands(n: tuple[int, ...], r: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    if len(n) == 1:
        return ((n[0],),)
    middle = tuple((r[k], n[k], r[k + 1]) for k in range(1, len(n) - 1))
    return ((n[0], r[1]), *middle, (r[-2], n[-1]))


def _blocktt(sides: tuple[tuple[int, ...], ...], rank: Any, batch: Sequence[int]) -> FormSpec:
    d = len(sides[0])
    if any(len(side) != d for side in sides):
        raise ShapeError(
            f"form_spec('blocktt', {sides}, ...): every side needs the same number of modes "
            f"(one per core); got {[len(side) for side in sides]}.\n"
            "Fix: tensorize each side into as many factors (tfx.get_tensorized_shape)."
        )
    ranks = tuple(int(r) for r in rank)
    _check_length("blocktt", sides, ranks, d + 1)
    b = tuple(int(n) for n in batch)
    operands = tuple((*b, ranks[k], *(side[k] for side in sides), ranks[k + 1]) for k in range(d))
    shape = (*b, *(n for side in sides for n in side))
    return FormSpec("blocktt", shape, ranks, blocktt_equation(len(b), len(sides), d), operands)


def _check_length(form: str, shape: Any, ranks: tuple[int, ...], want: int) -> None:
    if len(ranks) != want:
        raise ShapeError(
            f"form_spec({form!r}, {shape}, {ranks}): a {form} rank of this shape has {want} "
            f"entries; got {len(ranks)}.\n"
            f"Fix: give {want} ranks"
            + (" (1 at both ends)." if form in ("tt", "blocktt") else " (one per mode).")
        )
