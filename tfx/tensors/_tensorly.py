"""tensorly interop: conversions both ways, and tensorly's decompositions as an option.

* :func:`to_tensorly` turns a tfx factorized tensor into tensorly's type for the
  same form: ``CPTensor`` -> ``tensorly.cp_tensor.CPTensor``, ``TuckerTensor`` ->
  ``tensorly.tucker_tensor.TuckerTensor``, ``TTTensor`` -> ``tensorly.tt_tensor.TTTensor``,
  ``BlockTT`` -> ``tensorly.tt_matrix.TTMatrix``, a dense form -> its tensor. Tensorized
  CP, Tucker and TT forms become the tensorly type of their full tensor (``tensor_shape``).
* :func:`from_tensorly` goes the other way (tensorly objects, their ``(weights, factors)``
  style tuples, torch tensors or NumPy arrays), copying the values into new Parameters.
* :func:`decompose` runs a tensorly decomposition (``parafac``, ``tucker``,
  ``tensor_train``, ``tensor_train_matrix``, any other of ``tensorly.decomposition`` by
  name, or a callable) at a rank normalised by tfx's rules, and converts the result.

tfx never changes tensorly's global backend. tensorly is imported on first use, and
every call into it runs inside ``tensorly.backend_context("pytorch", local_threadsafe=True)``,
which sets the backend for the calling thread only and restores it on exit.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Final

import numpy as np
import torch

from .._errors import OptionError, ShapeError, TensorError, unknown_option
from . import _rank
from ._base import (
    FactorizedTensor,
    TensorizedTensor,
    decomposition_input,
    parse_tensorized_shape,
    tensor_shape_of,
    to_storage,
)
from ._blocktt import BlockTT, _what
from ._cp import CPTensor, CPTensorized
from ._dense import DenseTensor, DenseTensorized
from ._tt import TTTensor, TTTensorized
from ._tucker import TuckerTensor, TuckerTensorized

__all__ = ["pytorch_backend", "to_tensorly", "from_tensorly", "decompose", "decomposition_names"]

# The tfx families, most specific first (TTTensorized is a TTTensor, etc.), and the
# (plain, tensorized) class each one builds when the caller names only a root class.
_FAMILIES: Final = (
    ("blocktt", BlockTT, (BlockTT, BlockTT)),
    ("tt", TTTensor, (TTTensor, TTTensorized)),
    ("tucker", TuckerTensor, (TuckerTensor, TuckerTensorized)),
    ("cp", CPTensor, (CPTensor, CPTensorized)),
    ("dense", DenseTensor, (DenseTensor, DenseTensorized)),
)
# family -> (tensorly's type, the tensorly decomposition that makes it, the tuple it is built from)
_TENSORLY: Final = {
    "cp": ("tensorly.cp_tensor.CPTensor", "parafac", "a (weights, factors) tuple"),
    "tucker": ("tensorly.tucker_tensor.TuckerTensor", "tucker", "a (core, factors) tuple"),
    "tt": ("tensorly.tt_tensor.TTTensor", "tensor_train", "a list of (rank, size, rank) cores"),
    "blocktt": (
        "tensorly.tt_matrix.TTMatrix",
        "tensor_train_matrix",
        "a list of (rank, rows, cols, rank) cores",
    ),
    "dense": ("a tensor", "", "a tensor or NumPy array"),
}


def _tensorly_types() -> dict[str, type]:
    """Tensorly's factorized types by family (imported on first use)."""
    from tensorly.cp_tensor import CPTensor as TlCP
    from tensorly.tt_matrix import TTMatrix
    from tensorly.tt_tensor import TTTensor as TlTT
    from tensorly.tucker_tensor import TuckerTensor as TlTucker

    return {"cp": TlCP, "tucker": TlTucker, "tt": TlTT, "blocktt": TTMatrix}


_MSG_WRONG_KIND: Final = """cannot convert {got} into a tfx {target}: the forms differ.
  A {target} is built from {expected}.
Fix: tfx.FactorizedTensor.from_tensorly(value) picks the tfx form matching the value, e.g. \
{got} -> tfx.{suggestion}."""

_MSG_NEEDS_SHAPE: Final = """{cls}.from_tensorly(value) needs the tensorized shape: a \
{kind} of shape {shape} can be tensorized in several ways.
Fix: {cls}.from_tensorly(value, tensorized_shape=((4, 3, 2), (5, 3, 2))) with entries \
whose sizes, flattened, are {shape}."""

_MSG_SHAPE_MISMATCH: Final = """tensorized_shape={tshape!r} does not fit the tensorly value: \
its modes, flattened, are {flat}, the value's shape is {shape}.
Fix: pass a tensorized shape whose sizes, flattened, equal {shape}."""

_MSG_BAD_VALUE: Final = """{what} is not a valid {kind}: {reason}
Fix: pass a tensorly {kind} (e.g. the result of tensorly.decomposition.{maker}) or \
{tuple_form}."""

_MSG_TTM_LAYOUT: Final = """{what} has no tensorly counterpart: tensorly's TTMatrix is one \
matrix whose rows and columns are tensorized (tensorized_shape=(rows, cols)), \
this BlockTT has tensorized shape {tshape}.
Fix: convert one matrix at a time, e.g. tfx.BlockTT(..) per layer, or use to_tensor() \
for the dense values."""

_MSG_DENSE: Final = """decomposition={decomposition!r} was given for a dense form: a dense \
tensor is stored as it is, there is nothing to decompose.
Fix: drop decomposition=, or pick a factorized form, e.g. factorization='cp'."""

_MSG_NOT_CALLABLE: Final = """decomposition={decomposition!r} is neither a callable nor the \
name of a tensorly decomposition.
Fix: decomposition=tensorly.decomposition.parafac, or a name such as 'parafac', \
'tucker', 'tensor_train'."""

_MSG_FAILED: Final = """decomposition {name} failed on a tensor of shape {shape} at rank \
{rank!r}: {err}
Fix: check the decomposition's keyword arguments ({kwargs}), or let tfx decompose \
(drop decomposition=)."""


# --------------------------------------------------------------------------- backend
@contextlib.contextmanager
def pytorch_backend() -> Iterator[Any]:
    """Run tensorly with its PyTorch backend, for this thread only; yields ``tensorly``.

    The global backend, and the backend other threads see, stay what they were.

    Example:
        >>> import tensorly
        >>> before = tensorly.get_backend()
        >>> with pytorch_backend() as tl:
        ...     tl.get_backend()
        'pytorch'
        >>> tensorly.get_backend() == before
        True
    """
    import tensorly as tl  # lazily: importing tfx must not import (or configure) tensorly

    with tl.backend_context("pytorch", local_threadsafe=True):
        yield tl


# --------------------------------------------------------------------------- helpers
def _family(cls: type) -> str | None:
    """The family name of a tfx class (``'cp'``, ...), or None for the abstract roots."""
    for name, base, _ in _FAMILIES:
        if issubclass(cls, base):
            return name
    return None


def _tensor(value: Any, what: str) -> torch.Tensor:
    """A torch tensor from a tensor or a NumPy array (copied)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray) or np.isscalar(value):
        return torch.from_numpy(np.array(value))
    raise TensorError(
        f"{what} is a {type(value).__name__}, not a tensor.\n"
        "Fix: pass torch tensors or NumPy arrays (tensorly's PyTorch or NumPy backend)."
    )


def _tensorly_kind(value: Any) -> str | None:
    """The family of a tensorly factorized object or a dense array, or None for anything else."""
    for kind, tl_type in _tensorly_types().items():
        if isinstance(value, tl_type):
            return kind
    if isinstance(value, torch.Tensor | np.ndarray):
        return "dense"
    return None


def _raw_kind(value: Any) -> str | None:
    """The family a plain tuple/list spells: (weights, factors), (core, factors), cores."""
    if isinstance(value, tuple | list) and len(value) == 2 and isinstance(value[1], tuple | list):
        first = value[0]
        if first is None or getattr(first, "ndim", None) == 1:
            return "cp"
        return "tucker"
    if isinstance(value, tuple | list) and value:
        ndims = {getattr(v, "ndim", None) for v in value}
        if ndims == {3}:
            return "tt"
        if ndims == {4}:
            return "blocktt"
    return None


def _validated(kind: str, parts: Any, what: str) -> Any:
    """Tensorly's own object for ``parts`` (torch tensors), validated by tensorly."""
    try:
        with pytorch_backend():
            return _tensorly_types()[kind](parts)
    except (ValueError, IndexError, TypeError) as err:
        full_name, maker, tuple_form = _TENSORLY[kind]
        raise ShapeError(
            _MSG_BAD_VALUE.format(
                what=what,
                kind=full_name.rsplit(".", 1)[-1],
                reason=err,
                maker=maker,
                tuple_form=tuple_form,
            )
        ) from None


def _torch_parts(kind: str, value: Any) -> Any:
    """The value's arrays as torch tensors, in tensorly's layout for ``kind``."""
    if kind == "dense":
        return _tensor(value, "the tensor")
    if kind == "cp":
        weights, factors = (value.weights, value.factors) if hasattr(value, "weights") else value
        factors = [_tensor(f, f"factor {i}") for i, f in enumerate(factors)]
        if weights is None:
            weights = torch.ones(
                factors[0].shape[1], dtype=factors[0].dtype, device=factors[0].device
            )
        return _tensor(weights, "the weights"), factors
    if kind == "tucker":
        core, factors = (value.core, value.factors) if hasattr(value, "core") else value
        return _tensor(core, "the core"), [_tensor(f, f"factor {i}") for i, f in enumerate(factors)]
    cores = value.factors if hasattr(value, "factors") else value
    return [_tensor(c, f"core {i}") for i, c in enumerate(cores)]


def _value_shape(kind: str, parts: Any) -> tuple[int, ...]:
    """The full tensor shape the parts describe (rows then columns for a TT-matrix)."""
    if kind == "dense":
        return tuple(parts.shape)
    if kind in ("cp", "tucker"):
        return tuple(int(f.shape[0]) for f in parts[1])
    if kind == "tt":
        return tuple(int(c.shape[1]) for c in parts)
    return (*(int(c.shape[1]) for c in parts), *(int(c.shape[2]) for c in parts))


def _tensorized_shape(cls: type, kind: str, parts: Any, tensorized_shape: Any) -> tuple[Any, ...]:
    """The tensorized shape to build ``cls`` with, checked against the parts."""
    shape = _value_shape(kind, parts)
    if tensorized_shape is None:
        if kind != "blocktt":
            raise ShapeError(
                _MSG_NEEDS_SHAPE.format(cls=cls.__name__, kind=_TENSORLY[kind][0], shape=shape)
            )
        half = len(shape) // 2
        return (shape[:half], shape[half:])
    tshape = parse_tensorized_shape(tensorized_shape)
    flat = tensor_shape_of(tshape)
    if flat != shape:
        raise ShapeError(
            _MSG_SHAPE_MISMATCH.format(tshape=tensorized_shape, flat=flat, shape=shape)
        )
    if kind == "blocktt" and tshape != (shape[: len(shape) // 2], shape[len(shape) // 2 :]):
        raise ShapeError(
            _MSG_SHAPE_MISMATCH.format(
                tshape=tensorized_shape,
                flat=flat,
                shape=f"rows {shape[: len(shape) // 2]} x columns " f"{shape[len(shape) // 2:]}",
            )
        )
    return tshape


def _target(cls: type, kind: str, tensorized_shape: Any) -> type:
    """The concrete tfx class to build for a value of family ``kind``."""
    family = _family(cls)
    if family is None:  # FactorizedTensor / TensorizedTensor: pick the matching form
        plain, tensorized = next(classes for name, _, classes in _FAMILIES if name == kind)
        wants_tensorized = issubclass(cls, TensorizedTensor) or tensorized_shape is not None
        return tensorized if wants_tensorized else plain
    if family != kind:
        suggestion = next(classes for name, _, classes in _FAMILIES if name == kind)[0].__name__
        raise OptionError(
            _MSG_WRONG_KIND.format(
                got=_TENSORLY[kind][0],
                target=cls.__name__,
                expected=_TENSORLY[family][0],
                suggestion=f"{suggestion}.from_tensorly(value)",
            )
        )
    return cls


def _storage(tensor: torch.Tensor, cls: type) -> torch.nn.Parameter:
    if tensor.is_complex() and not cls._complex:  # type: ignore[attr-defined]
        raise TensorError(
            f"cannot store complex values ({tensor.dtype}) in a real {cls.__name__}.\n"
            "Fix: use the complex form, e.g. "
            f"tfx.Complex{cls.__name__.replace('Tensorized', 'Tensor')}.from_tensorly(value)."
        )
    return to_storage(tensor, cls._complex)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- conversions
def from_tensorly(cls: type, value: Any, tensorized_shape: Any = None) -> FactorizedTensor:
    """Build a tfx factorized tensor of class ``cls`` from a tensorly value (copied).

    Args:
        cls: a tfx form (``tfx.CPTensor``, ...) or a root (``FactorizedTensor``,
            ``TensorizedTensor``), which picks the form matching the value.
        value: a tensorly ``CPTensor``, ``TuckerTensor``, ``TTTensor`` or ``TTMatrix``,
            the matching tuple (``(weights, factors)``, ``(core, factors)``, a list of
            cores), or a dense tensor / NumPy array for the dense forms.
        tensorized_shape: for tensorized forms, the shape to regroup the value's modes
            into; a ``TTMatrix`` gives its own (rows, columns).

    Returns:
        A new factorized tensor whose factors are Parameters holding copies of the values.

    Raises:
        OptionError: the value is of another form than ``cls``.
        ShapeError: the value is malformed, or does not fit ``tensorized_shape``.
        TensorError: complex values for a real form, or values that are not arrays.
    """
    kind = _tensorly_kind(value) or _raw_kind(value)
    if kind is None:
        raise TensorError(
            f"cannot convert a {type(value).__name__} with from_tensorly: it is not a tensorly "
            "CPTensor, TuckerTensor, TTTensor or TTMatrix, nor a tensor.\n"
            "Fix: pass e.g. tensorly.decomposition.parafac(tensor, rank) or (weights, factors)."
        )
    target = _target(cls, kind, tensorized_shape)
    parts = _torch_parts(kind, value)
    if kind != "dense":
        _validated(kind, parts, f"the {type(value).__name__}")
    tensorized = issubclass(target, TensorizedTensor)
    tshape = _tensorized_shape(target, kind, parts, tensorized_shape) if tensorized else None
    shape = tshape if tensorized else _value_shape(kind, parts)
    if kind == "dense":
        data = parts.reshape(tensor_shape_of(tshape)) if tshape is not None else parts
        return target(_storage(data, target), shape)  # type: ignore[no-any-return]
    if kind == "cp":
        weights, factors = parts
        return target(  # type: ignore[no-any-return]
            _storage(weights, target),
            [_storage(f, target) for f in factors],
            shape,
            int(weights.shape[0]),
        )
    if kind == "tucker":
        core, factors = parts
        return target(  # type: ignore[no-any-return]
            _storage(core, target), [_storage(f, target) for f in factors], shape, tuple(core.shape)
        )
    rank = (*(int(c.shape[0]) for c in parts), int(parts[-1].shape[-1]))
    return target([_storage(c, target) for c in parts], shape, rank)  # type: ignore[no-any-return]


def to_tensorly(tensor: FactorizedTensor) -> Any:
    """The tensorly object for ``tensor``, sharing its factors (no copy, autograd kept).

    Args:
        tensor: a tfx factorized tensor.

    Returns:
        A tensorly ``CPTensor``, ``TuckerTensor``, ``TTTensor`` or ``TTMatrix`` (for a
        ``BlockTT`` of one matrix) of torch tensors; a dense form gives its tensor.
        Tensorized CP, Tucker and TT forms give the tensorly type of their full tensor,
        of shape ``tensor_shape``. Complex forms give complex factors.

    Raises:
        ShapeError: a ``BlockTT`` with batch modes or more than two tensorized modes.
        OptionError: a form tensorly has no type for.
    """
    kind = _family(type(tensor))
    if kind == "dense":
        return tensor.to_tensor()
    if kind == "blocktt":
        if tensor.batch_shape or len(tensor.entries) != 2:  # type: ignore[attr-defined]
            raise ShapeError(
                _MSG_TTM_LAYOUT.format(what=type(tensor).__name__, tshape=tensor.tensorized_shape)  # type: ignore[attr-defined]
            )
        return _validated("blocktt", list(tensor.decomposition), type(tensor).__name__)
    if kind == "tt":
        return _validated("tt", list(tensor.decomposition), type(tensor).__name__)
    if kind in ("cp", "tucker"):
        first, factors = tensor.decomposition
        if kind == "tucker" and len(factors) < 2:
            raise ShapeError(
                f"a {type(tensor).__name__} of shape {tuple(tensor.shape)} has no "
                "tensorly counterpart: tensorly's TuckerTensor has at least two modes.\n"
                "Fix: for one mode, the Tucker form is a matrix product: tensor.to_tensor()."
            )
        return _validated(kind, (first, list(factors)), type(tensor).__name__)
    raise OptionError(
        f"{type(tensor).__name__} has no tensorly counterpart: tensorly has CP, Tucker, TT and "
        "TT-matrix types.\nFix: use to_tensor() for the dense values."
    )


# --------------------------------------------------------------------------- decompositions
def decomposition_names() -> list[str]:
    """The decompositions of ``tensorly.decomposition`` that can be named, e.g. ``'parafac'``."""
    import tensorly.decomposition as tld

    return sorted(
        n for n in dir(tld) if not n.startswith("_") and inspect.isfunction(getattr(tld, n))
    )


def _resolve(decomposition: Any) -> tuple[Callable[..., Any], str]:
    """The callable and a printable name for a ``decomposition=`` argument."""
    if isinstance(decomposition, str):
        import tensorly.decomposition as tld

        names = decomposition_names()
        key = decomposition.lower().replace("-", "_")
        if key not in names:
            raise unknown_option(
                "decomposition",
                decomposition,
                names,
                hint="Or pass any callable(tensor, rank=..., **kwargs) returning a tensorly type.",
            )
        return getattr(tld, key), f"tensorly.decomposition.{key}"
    if callable(decomposition):
        name = getattr(decomposition, "__qualname__", None) or repr(decomposition)
        return decomposition, name
    raise OptionError(_MSG_NOT_CALLABLE.format(decomposition=decomposition))


def _rank_for(
    kind: str, shape: tuple[int, ...], tshape: Any, rank: Any, kwargs: dict[str, Any]
) -> Any:
    """Tfx's normalised rank for ``shape``, in the spelling tensorly takes (a list for tuples)."""
    if kind == "cp":
        return _rank.cp_rank(shape, rank)
    if kind == "tucker":
        return list(
            _rank.tucker_rank(shape, rank, fixed_modes=kwargs.pop("fixed_rank_modes", None))
        )
    if kind == "tt":
        return list(_rank.tt_rank(shape, rank))
    sizes = BlockTT._core_sizes(tshape)
    return list(_rank.tt_rank(sizes, rank, what=_what(tshape)))


def decompose(
    form: type,
    tensor: torch.Tensor,
    rank: Any,
    decomposition: Any,
    tensorized_shape: Any = None,
    **kwargs: Any,
) -> FactorizedTensor:
    """Decompose ``tensor`` into ``form`` with a tensorly decomposition.

    The rank is normalised by tfx's rules (int, tuple, ``'same'`` or a fraction; never
    above what the shape holds), the decomposition runs in
    ``tensorly.backend_context("pytorch")`` on the calling thread, and the result is
    converted with :func:`from_tensorly` and cast to the tensor's dtype and device.

    Args:
        form: the tfx class to build, e.g. ``CPTensor`` or ``BlockTT``.
        tensor: the dense tensor (for tensorized forms, of shape ``tensor_shape`` or the
            matrix shape).
        rank: a tfx rank spec.
        decomposition: a callable ``(tensor, rank=..., **kwargs)`` returning a tensorly
            object, or the name of a function of ``tensorly.decomposition``; ``True``
            picks the usual one for the form (``parafac``, ``tucker``, ``tensor_train``,
            ``tensor_train_matrix``).
        tensorized_shape: the tensorized shape, for tensorized forms.
        **kwargs: passed to the decomposition (``fixed_rank_modes`` is read by tfx for Tucker).

    Returns:
        The factorized tensor.

    Raises:
        OptionError: an unknown decomposition name, or a dense form.
        RankError: a rank the shape cannot hold.
        ShapeError: a BlockTT layout tensorly's TT-matrix cannot hold, or a result of
            another shape.
        TensorError: the decomposition failed, or returned another form.
    """
    kind = _family(form)
    if kind in (None, "dense"):
        raise OptionError(_MSG_DENSE.format(decomposition=decomposition))
    if decomposition is True:
        decomposition = _TENSORLY[kind][1]  # type: ignore[index]
    fn, name = _resolve(decomposition)
    tensor = decomposition_input(tensor, form._complex)  # type: ignore[attr-defined]
    tshape = None
    if issubclass(form, TensorizedTensor):
        if tensorized_shape is None:
            raise ShapeError(
                f"{form.__name__}: decomposing into a tensorized form needs its tensorized shape.\n"
                f"Fix: tfx.TensorizedTensor.from_tensor(tensor, ((4, 3, 2), (5, 3, 2)), rank, "
                f"factorization={form._name!r}, decomposition=...)."  # type: ignore[attr-defined]
            )
        tshape = parse_tensorized_shape(tensorized_shape)
        if kind == "blocktt" and (
            len(tshape) != 2 or not all(isinstance(e, tuple) for e in tshape)
        ):
            raise ShapeError(_MSG_TTM_LAYOUT.format(what="This BlockTT", tshape=tshape))
    shape = tensor_shape_of(tshape) if tshape is not None else tuple(tensor.shape)
    tensor = tensor.reshape(shape)
    rank_arg = _rank_for(kind, shape, tshape, rank, kwargs)  # type: ignore[arg-type]
    try:
        with pytorch_backend():
            result = fn(tensor, rank=rank_arg, **kwargs)
    except (ValueError, TypeError, RuntimeError, IndexError) as err:
        raise TensorError(
            _MSG_FAILED.format(
                name=name, shape=shape, rank=rank_arg, err=err, kwargs=sorted(kwargs) or "none"
            )
        ) from err
    if isinstance(result, tuple) and result and _tensorly_kind(result[0]) not in (None, "dense"):
        result = result[0]  # (decomposition, errors) from return_errors=True
    out = from_tensorly(form, result, tshape)
    if tshape is None and tuple(out.shape) != shape:
        raise ShapeError(
            f"{name} returned a tensor of shape {tuple(out.shape)} for an input of shape {shape}.\n"
            "Fix: pass a decomposition that keeps the tensor's shape."
        )
    return out.to(device=tensor.device, dtype=_real_dtype(tensor))


def _real_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The storage dtype for ``tensor`` (complex forms store real pairs)."""
    return tensor.real.dtype if tensor.is_complex() else tensor.dtype
