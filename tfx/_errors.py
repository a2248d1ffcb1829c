"""The tfx exception tree.

Every user mistake raises a :class:`TfxError` subclass that is also a builtin
exception, so existing ``except ValueError`` blocks keep working::

    TfxError(Exception)
    ├─ TraceError(TfxError, RuntimeError)        model cannot be traced or shape-propagated
    ├─ UnsupportedSiteError(TfxError, ValueError)
    ├─ ShapeError(TfxError, ValueError)          no valid tensorization, shapes that do not fit
    ├─ RankError(TfxError, ValueError)           rank invalid for shape
    ├─ BudgetError(TfxError, ValueError)         budget malformed or unreachable
    ├─ OptionError(TfxError, ValueError)         unknown factorization/strategy name or keyword
    ├─ TensorError(TfxError, ValueError)         values tfx cannot factorize (int dtype, NaN/Inf)
    ├─ PlanMismatchError(TfxError, RuntimeError) plan does not fit this graph
    ├─ DistributedError(TfxError, RuntimeError)  a rank failed (distributed=): every rank raises
    ├─ SiteError(TfxError, RuntimeError)         another error while a pass worked on one site
    └─ ContractError(TfxError, RuntimeError)     a pass's requires/ensures broken (a tfx bug)
    TfxWarning(UserWarning)

Messages say what failed (quoting the user's value), why (with the computed
numbers) and how to fix it (as code where possible).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "TfxError",
    "TraceError",
    "UnsupportedSiteError",
    "ShapeError",
    "RankError",
    "BudgetError",
    "OptionError",
    "PlanMismatchError",
    "TensorError",
    "DistributedError",
    "SiteError",
    "ContractError",
    "TfxWarning",
    "unknown_option",
]


class TfxError(Exception):
    """Base class of every error tfx raises on user input."""


class TraceError(TfxError, RuntimeError):
    """The model cannot be captured (traced or exported) or shape-propagated."""


class UnsupportedSiteError(TfxError, ValueError):
    """A layer cannot be factorized in the requested way."""


class ShapeError(TfxError, ValueError):
    """A shape is invalid: no valid tensorization, or shapes that do not fit together."""


class RankError(TfxError, ValueError):
    """A rank is malformed or larger than the shape allows."""


class BudgetError(TfxError, ValueError):
    """A budget is malformed or cannot be reached."""


class OptionError(TfxError, ValueError):
    """An unknown option name: factorization, strategy, implementation, keyword."""


class TensorError(TfxError, ValueError):
    """A tensor's values or dtype cannot be factorized.

    An integer dtype, NaN or Inf values, or complex values into a real form.
    """


class PlanMismatchError(TfxError, RuntimeError):
    """A saved plan does not fit the model it is applied to."""


class DistributedError(TfxError, RuntimeError):
    """A rank of a distributed ``tfx.factorize`` failed: every rank raises this, naming it.

    ``rank`` is the failing rank (the first one, when several failed); the message holds its
    error, and on that rank the error is chained as ``__cause__``.
    """

    rank: int | None = None


class SiteError(TfxError, RuntimeError):
    """An error that is not tfx's own, raised while a pass worked on one site.

    The message names the site (and its choice); the original error is chained as
    ``__cause__``. A :class:`~tfx.TfxError` raised there keeps its class instead.
    """

    site: str | None = None


class ContractError(TfxError, RuntimeError):
    """A pass's ``requires`` or ``ensures`` does not hold: a bug in tfx (please report it).

    E.g. a pass read what an earlier pass sets, and that pass has not run.
    """


class TfxWarning(UserWarning):
    """A harmless adjustment or a caveat the user should know about."""


def unknown_option(
    what: str, value: object, valid: Iterable[str], *, hint: str = ""
) -> OptionError:
    """Build an :class:`OptionError` naming the closest valid option.

    Args:
        what: the option's name, e.g. ``"factorization"``.
        value: what the user passed.
        valid: the accepted spellings.
        hint: an extra sentence on how to extend the options.

    Returns:
        The error, to be raised by the caller.
    """
    valid = sorted(set(valid))
    close = difflib.get_close_matches(
        str(value).lower(), [v.lower() for v in valid], n=1, cutoff=0.5
    )
    lowered = {v.lower(): v for v in valid}
    did_you_mean = f" Did you mean {lowered[close[0]]!r}?" if close else ""
    listing = ", ".join(repr(v) for v in valid)
    return OptionError(
        f"{what}={value!r} is not registered.{did_you_mean}\n"
        f"Available: {listing}.{(' ' + hint) if hint else ''}"
    )
