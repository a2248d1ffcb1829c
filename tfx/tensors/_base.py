"""The factorized tensor base classes and the registry of forms by name.

``FactorizedTensor`` (a tensor of any order) and ``TensorizedTensor`` (a
matrix, or a batch of matrices, whose rows and columns are themselves
tensorized) are ``nn.Module`` s that own their factors as ``Parameter`` s.
Each form registers itself under its tltorch name (``class CPTensor(
FactorizedTensor, name="CP")``); ``FactorizedTensor.new(shape, rank,
factorization="cp")`` looks the name up case-insensitively. There is no
metaclass: a plain ``__init_subclass__`` fills two dicts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast, overload

import torch
from torch import nn

from .._errors import OptionError, ShapeError, TensorError, unknown_option

if TYPE_CHECKING:
    from typing_extensions import Self

    from ._contract import ContractionPlan

__all__ = [
    "FactorizedTensor",
    "TensorizedTensor",
    "register",
    "available",
    "parse_tensorized_shape",
]

_REGISTRY_HINT = "Add your own with tfx.tensors.register(name, cls)."


def lookup_form(
    registry: dict[str, type[FactorizedTensor]], factorization: str, what: str
) -> type[FactorizedTensor]:
    if not isinstance(factorization, str):
        raise OptionError(
            f"factorization={factorization!r} must be a name such as 'cp', 'tucker', 'tt'."
        )
    key = factorization.lower().replace("-", "").replace("_", "")
    try:
        return registry[key]
    except KeyError:
        names = [cls._name for cls in registry.values()]
        raise unknown_option(
            f"{what} factorization", factorization, names, hint=_REGISTRY_HINT
        ) from None


class FactorizedTensor(nn.Module):
    """A tensor stored in factorized form; calling it returns itself.

    Build one with :meth:`new` (random, initialised) or :meth:`from_tensor`
    (decomposed from a dense tensor), naming the form case-insensitively:
    ``"Dense"``, ``"CP"``, ``"Tucker"``, ``"TT"``, or a ``"Complex..."`` variant.

    Example:
        >>> import tfx
        >>> t = tfx.FactorizedTensor.new((8, 9, 10), rank=0.5, factorization="cp")
        >>> t.to_tensor().shape
        torch.Size([8, 9, 10])
        >>> t[1, :, 2:4].to_tensor().shape
        torch.Size([9, 2])
    """

    _factorizations: ClassVar[dict[str, type[FactorizedTensor]]] = {}
    _name: ClassVar[str] = ""
    _tensorized: ClassVar[bool] = False

    shape: tuple[int, ...]
    rank: Any
    _plan: ContractionPlan

    if TYPE_CHECKING:  # every form defines it; declared here for the type checker only

        def contraction(self) -> tuple[str, list[torch.Tensor]]: ...

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls._name = name
            root = TensorizedTensor if cls._tensorized else FactorizedTensor
            root._factorizations[name.lower()] = cls

    # ----------------------------------------------------------------- builders
    @classmethod
    def new(
        cls, shape: Sequence[int], rank: Any = "same", factorization: str = "Tucker", **kwargs: Any
    ) -> FactorizedTensor:
        """A new factorized tensor of ``shape``, initialised so its reconstruction is N(0, 1).

        Args:
            shape: the full tensor's shape.
            rank: int, tuple, ``'same'`` or a float fraction of the dense parameters.
            factorization: the form's name, case-insensitive.
            **kwargs: ``device``, ``dtype`` and form-specific options.
        """
        form = lookup_form(cls._factorizations, factorization, "tensor")
        return form.new(shape, rank, **kwargs)

    @classmethod
    def from_tensor(
        cls, tensor: torch.Tensor, rank: Any = "same", factorization: str = "CP", **kwargs: Any
    ) -> FactorizedTensor:
        """Decompose a dense ``tensor`` into the named form (dtype and device kept).

        Args:
            tensor: the dense tensor.
            rank: int, tuple, ``'same'`` or a float fraction of the dense parameters.
            factorization: the form's name, case-insensitive.
            **kwargs: passed to the decomposition. ``decomposition=`` runs a tensorly
                decomposition instead of tfx's: a callable such as
                ``tensorly.decomposition.parafac``, a name such as ``"tucker"``, or
                ``True`` for the form's usual one (tensorly's global backend is left
                as it is).

        Example:
            >>> import torch, tfx
            >>> t = torch.randn(4, 5, 6, dtype=torch.float64)
            >>> tfx.FactorizedTensor.from_tensor(
            ...     t, rank=(2, 3, 3), factorization="tucker", decomposition="tucker"
            ... ).rank
            (2, 3, 3)
        """
        form = lookup_form(cls._factorizations, factorization, "tensor")
        decomposition = kwargs.pop("decomposition", None)
        if decomposition is not None and decomposition is not False:
            from ._tensorly import decompose

            return decompose(form, tensor, rank, decomposition, **kwargs)
        return form.from_tensor(tensor, rank, **kwargs)

    # ------------------------------------------------------------ the interface
    @property
    def decomposition(self) -> Any:
        """The factors as tensorly expects them (complex views for complex forms)."""
        raise NotImplementedError

    def to_tensor(self) -> torch.Tensor:
        """Reconstruct the full tensor."""
        raise NotImplementedError

    def init_from_tensor(self, tensor: torch.Tensor, **kwargs: Any) -> FactorizedTensor:
        """Decompose ``tensor`` into this tensor's form and rank, in place; returns self."""
        raise NotImplementedError

    def normal_(self, mean: float = 0.0, std: float = 1.0) -> Self:
        """Initialise the factors so the reconstruction has mean 0 and std ``std``."""
        raise NotImplementedError

    def transduct(
        self, new_dim: int, mode: int = 0, new_factor: torch.Tensor | None = None
    ) -> FactorizedTensor:
        """Insert a new mode of size ``new_dim`` at ``mode``, replicating the tensor along it."""
        raise NotImplementedError

    def forward(self, indices: Any = None) -> Any:
        """Return the tensor itself (or ``self[indices]``) so forward hooks can substitute it."""
        if indices is None:
            return self
        return self[indices]

    # ---------------------------------------------------------- tensor-likeness
    @property
    def name(self) -> str:
        """The form's registered name, e.g. ``'CP'``."""
        return self._name

    @property
    def ndim(self) -> int:
        """Number of dimensions of the (matricized, for tensorized forms) tensor."""
        return len(self.shape)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the dense tensor (of its factors; complex forms: the complex dtype).

        As code written for a dense ``weight`` reads it (``layer.weight.dtype``).
        """
        first: torch.Tensor | None = next(iter(self.parameters()), None)
        if first is None:
            first = next(iter(self.buffers()), None)
        if first is None:
            return torch.get_default_dtype()
        if getattr(self, "_complex", False) and not first.is_complex():
            return torch.complex64 if first.dtype == torch.float32 else torch.complex128
        return first.dtype

    @property
    def device(self) -> torch.device:
        """The device of the factors."""
        first: torch.Tensor | None = next(iter(self.parameters()), None)
        if first is None:
            first = next(iter(self.buffers()), None)
        return first.device if first is not None else torch.device("cpu")

    def dim(self) -> int:
        """Same as :attr:`ndim`."""
        return len(self.shape)

    def size(self, index: int | None = None) -> Any:
        """The shape, or one of its sizes."""
        return self.shape if index is None else self.shape[index]

    def numel(self) -> int:
        """Number of entries of the full tensor."""
        return math.prod(self.shape)

    @property
    def n_parameters(self) -> int:
        """Number of stored scalars (a complex entry counts as two)."""
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def _match_std(self, std: float) -> None:
        """Rescale so the reconstruction's (zero-mean) std is exactly ``std``.

        A random factorized tensor's sample std fluctuates around the std its
        factor variances target (low-rank entries are correlated); measuring it
        through the factors and rescaling removes that draw-to-draw spread.
        """
        n = math.prod(getattr(self, "tensor_shape", self.shape))
        actual = math.sqrt(float(squared_norm(self)) / n)
        if actual > 0 and math.isfinite(actual):
            self._scale_(std / actual)

    def _scale_(self, factor: float) -> None:
        """Multiply the reconstruction by ``factor`` in place (per form)."""
        raise NotImplementedError

    def _check_mean(self, mean: float) -> None:
        if mean != 0:
            raise OptionError(
                f"normal_(mean={mean}) is only exact for dense tensors: a {self._name} "
                "reconstruction is a sum of products of factors, so its mean is 0.\n"
                "Fix: use mean=0, or add a constant bias outside the factorized weight."
            )

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        # torch.* functions called on a factorized tensor see its reconstruction,
        # so e.g. F.linear(x, factorized_weight) works as in tltorch.
        kwargs = kwargs or {}
        args = [a.to_matrix() if isinstance(a, TensorizedTensor) else a for a in args]
        args = [a.to_tensor() if isinstance(a, FactorizedTensor) else a for a in args]
        return func(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.shape)}, rank={self.rank}"

    def __getitem__(self, index: Any) -> Any:
        modes = normalise_index(index, self.shape)
        if modes is None or _selects_nothing(modes, self.shape):
            return self.to_tensor()[index]
        return self._index(modes)

    def _index(self, modes: list[Any]) -> Any:
        """Index mode by mode; ``modes`` holds one int, slice or 1-D index tensor per mode."""
        raise NotImplementedError

    # ------------------------------------------------------------------ tensorly
    @classmethod
    def from_tensorly(cls, value: Any, tensorized_shape: Sequence[Any] | None = None) -> Any:
        """Build this form from a tensorly value, copying it into new Parameters.

        Called on a root class (``FactorizedTensor``, ``TensorizedTensor``), the form
        matching the value is picked: a tensorly ``CPTensor`` gives a ``CPTensor``, a
        ``TuckerTensor`` a ``TuckerTensor``, a ``TTTensor`` a ``TTTensor``, a ``TTMatrix``
        a ``BlockTT``, a tensor or NumPy array a ``DenseTensor``.

        Args:
            value: a tensorly ``CPTensor``, ``TuckerTensor``, ``TTTensor``, ``TTMatrix``,
                the matching tuple (``(weights, factors)``, ``(core, factors)``, a list of
                cores) or a dense tensor; torch tensors or NumPy arrays.
            tensorized_shape: for tensorized forms, how to group the value's modes
                (a ``TTMatrix`` carries its own rows and columns).

        Example:
            >>> import torch, tfx
            >>> from tensorly.cp_tensor import CPTensor
            >>> cp = CPTensor((torch.ones(2), [torch.randn(3, 2), torch.randn(4, 2)]))
            >>> tfx.CPTensor.from_tensorly(cp).shape
            (3, 4)
        """
        from ._tensorly import from_tensorly

        return from_tensorly(cls, value, tensorized_shape)

    def to_tensorly(self) -> Any:
        """This tensor as tensorly's type for the form, sharing the factors (autograd kept).

        CP, Tucker and TT forms give tensorly's ``CPTensor``, ``TuckerTensor`` and
        ``TTTensor`` (tensorized ones over ``tensor_shape``), a ``BlockTT`` of one matrix a
        ``TTMatrix``, a dense form its tensor.

        Example:
            >>> import tfx
            >>> type(tfx.TTTensor.new((3, 4, 5), rank=2).to_tensorly()).__name__
            'TTTensor'
        """
        from ._tensorly import to_tensorly

        return to_tensorly(self)


class TensorizedTensor(FactorizedTensor):
    """A matrix (or batch of matrices) whose rows and columns are tensorized.

    ``tensorized_shape`` mixes ints (batch modes, e.g. stacked layers) and
    tuples (tensorized modes): ``(4, (4, 3, 2), (5, 3, 2))`` is 4 matrices of
    24 x 30 whose rows are (4, 3, 2) and columns (5, 3, 2). The nested spelling
    ``(4, ((4, 3, 2), (5, 3, 2)))`` means the same. ``shape`` is the matrix
    shape ``(4, 24, 30)`` and :meth:`to_matrix` returns it; :meth:`to_tensor`
    returns the full tensor of shape ``tensor_shape`` ``(4, 4, 3, 2, 5, 3, 2)``.

    Example:
        >>> import tfx
        >>> w = tfx.TensorizedTensor.new(((4, 3, 2), (5, 3, 2)), rank=0.5, factorization="blocktt")
        >>> w.to_matrix().shape
        torch.Size([24, 30])
    """

    _factorizations: ClassVar[dict[str, type[FactorizedTensor]]] = {}
    _tensorized: ClassVar[bool] = True

    tensorized_shape: tuple[Any, ...]
    tensor_shape: tuple[int, ...]

    @classmethod
    def new(  # type: ignore[override]
        cls,
        tensorized_shape: Sequence[Any],
        rank: Any = "same",
        factorization: str = "CP",
        **kwargs: Any,
    ) -> TensorizedTensor:
        """A new tensorized tensor, initialised.

        Args:
            tensorized_shape: e.g. ``((4, 3, 2), (5, 3, 2))`` or
                ``(n_layers, (4, 3, 2), (5, 3, 2))``.
            rank: int, tuple, ``'same'`` or a float fraction of the dense parameters.
            factorization: ``"CP"``, ``"Tucker"``, ``"BlockTT"``, ``"Dense"`` or a complex variant.
            **kwargs: ``device``, ``dtype``.
        """
        form = cast(
            "type[TensorizedTensor]", lookup_form(cls._factorizations, factorization, "tensorized")
        )
        return form.new(tensorized_shape, rank, **kwargs)

    @classmethod
    def from_tensor(  # type: ignore[override]
        cls,
        tensor: torch.Tensor,
        tensorized_shape: Sequence[Any],
        rank: Any = "same",
        factorization: str = "CP",
        **kwargs: Any,
    ) -> TensorizedTensor:
        """Decompose a tensor of shape ``tensor_shape`` (or the matrix shape) into the named form.

        ``decomposition=`` (a callable or a name from ``tensorly.decomposition``) runs a
        tensorly decomposition instead of tfx's, as in :meth:`FactorizedTensor.from_tensor`.
        """
        form = cast(
            "type[TensorizedTensor]", lookup_form(cls._factorizations, factorization, "tensorized")
        )
        decomposition = kwargs.pop("decomposition", None)
        if decomposition is not None and decomposition is not False:
            from ._tensorly import decompose

            tensorized = decompose(form, tensor, rank, decomposition, tensorized_shape, **kwargs)
            return cast(TensorizedTensor, tensorized)
        return form.from_tensor(tensor, tensorized_shape, rank, **kwargs)

    @classmethod
    def from_matrix(
        cls,
        matrix: torch.Tensor,
        tensorized_row_shape: Sequence[int],
        tensorized_column_shape: Sequence[int],
        rank: Any = "same",
        factorization: str = "CP",
        **kwargs: Any,
    ) -> TensorizedTensor:
        """Decompose a matrix (or a batch of matrices, leading dims) into a tensorized form.

        Example:
            >>> import torch, tfx
            >>> m = torch.randn(24, 30)
            >>> w = tfx.TensorizedTensor.from_matrix(
            ...     m, (4, 3, 2), (5, 3, 2), rank=1.0, factorization="blocktt"
            ... )
            >>> w.to_matrix().shape
            torch.Size([24, 30])
        """
        rows, cols = tuple(tensorized_row_shape), tuple(tensorized_column_shape)
        batch = tuple(matrix.shape[:-2])
        if matrix.ndim < 2 or matrix.shape[-2:] != (math.prod(rows), math.prod(cols)):
            raise ShapeError(
                f"from_matrix got a matrix of shape {tuple(matrix.shape)}, but the tensorized "
                f"shapes {rows} x {cols} describe {math.prod(rows)} x {math.prod(cols)} matrices.\n"
                "Fix: pass tensorized shapes whose products equal the matrix's last two sizes, "
                "e.g. from tfx.get_tensorized_shape(in_features, out_features)."
            )
        return cls.from_tensor(matrix, (*batch, rows, cols), rank, factorization, **kwargs)

    def to_matrix(self) -> torch.Tensor:
        """The reconstruction as a (batch of) matrix: shape ``self.shape``."""
        return self.to_tensor().reshape(self.shape)

    def init_from_matrix(self, matrix: torch.Tensor, **kwargs: Any) -> TensorizedTensor:
        """Decompose ``matrix`` (shape ``self.shape``) into this form, in place."""
        return self.init_from_tensor(matrix.reshape(self.tensor_shape), **kwargs)  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"tensorized_shape={self.tensorized_shape}, rank={self.rank}"

    def _insert_batch_mode(
        self, new_dim: int, mode: int, new_factor: Any, flat_transduct: Any
    ) -> Any:
        """``transduct`` for tensorized forms: a batch mode before entry ``mode``.

        ``flat_transduct`` is the plain form's ``transduct`` (``super().transduct``), which
        inserts a mode among the tensor's modes. It runs with ``shape`` set to the old
        ``tensor_shape`` and ``tensor_shape`` already the new one, so the contraction it
        rebuilds is planned over the new modes.
        """
        tshape = (*self.tensorized_shape[:mode], new_dim, *self.tensorized_shape[mode:])
        position = len(tensor_shape_of(self.tensorized_shape[:mode]))
        self.shape = self.tensor_shape
        self.tensorized_shape, self.tensor_shape = tshape, tensor_shape_of(tshape)
        flat_transduct(new_dim, position, new_factor)
        self.shape = matrix_shape_of(tshape)
        return self

    def __getitem__(self, index: Any) -> Any:
        modes = normalise_index(index, self.shape)
        if modes is None or _selects_nothing(modes, self.shape):
            return self.to_matrix()[index]
        return self._index(modes)


def register(name: str, cls: type, *, tensorized: bool | None = None) -> None:
    """Register a user-defined form under ``name`` (case-insensitive).

    Args:
        name: the name passed as ``factorization=``.
        cls: a ``FactorizedTensor`` or ``TensorizedTensor`` subclass.
        tensorized: which registry; defaults to what ``cls`` is.
    """
    if not (isinstance(cls, type) and issubclass(cls, FactorizedTensor)):
        raise OptionError(f"register({name!r}, {cls!r}): cls must subclass tfx.FactorizedTensor.")
    if tensorized is None:
        tensorized = issubclass(cls, TensorizedTensor)
    root = TensorizedTensor if tensorized else FactorizedTensor
    root._factorizations[name.lower()] = cls


def available(*, tensorized: bool = False) -> list[str]:
    """The registered form names, e.g. ``['CP', 'ComplexCP', ...]``."""
    root = TensorizedTensor if tensorized else FactorizedTensor
    return sorted({cls._name for cls in root._factorizations.values()})


# ------------------------------------------------------------------ shapes
def _size_or_error(value: Any, tensorized_shape: Any) -> int:
    try:
        return as_size(value)
    except TypeError:
        raise ShapeError(
            f"tensorized_shape={tensorized_shape!r}: {value!r} is not an integer size.\n"
            "Fix: e.g. tensorized_shape=((4, 3, 2), (5, 3, 2))."
        ) from None


def parse_tensorized_shape(tensorized_shape: Sequence[Any]) -> tuple[Any, ...]:
    """Canonical flat form of a tensorized shape: ints (batch modes) then tuples.

    ``(4, ((4, 3, 2), (5, 3, 2)))`` and ``(4, (4, 3, 2), (5, 3, 2))`` both give
    the latter; lists are accepted anywhere.

    Raises:
        ShapeError: for an empty shape, non-positive sizes, or tuples of mixed lengths
            where a single product is needed.
    """
    out: list[Any] = []
    for entry in tensorized_shape:
        if isinstance(entry, int) and not isinstance(entry, bool):
            out.append(entry)
        elif (
            isinstance(entry, tuple | list | torch.Size)
            and entry
            and all(isinstance(e, tuple | list) for e in entry)
        ):
            groups: list[Any] = list(entry)  # tuples of ints, as checked just above
            out.extend(tuple(_size_or_error(x, tensorized_shape) for x in e) for e in groups)
        elif isinstance(entry, tuple | list | torch.Size) and entry:
            out.append(tuple(_size_or_error(x, tensorized_shape) for x in entry))
        else:
            raise ShapeError(
                f"tensorized_shape={tensorized_shape!r}: entry {entry!r} is neither an int "
                "(batch mode) nor a non-empty tuple of ints (tensorized mode).\n"
                "Fix: e.g. tensorized_shape=((4, 3, 2), (5, 3, 2)) for a 24 x 30 matrix."
            )
    flat = [s for e in out for s in (e if isinstance(e, tuple) else (e,))]
    if not out or any(s < 1 for s in flat):
        raise ShapeError(
            f"tensorized_shape={tensorized_shape!r} must be non-empty with sizes >= 1."
        )
    if not any(isinstance(e, tuple) for e in out):
        raise ShapeError(
            f"tensorized_shape={tensorized_shape!r} has no tensorized mode (a tuple).\n"
            "Fix: use FactorizedTensor for plain tensors, or group modes: ((4, 3, 2), (5, 3, 2))."
        )
    return tuple(out)


def tensor_shape_of(tensorized_shape: Sequence[Any]) -> tuple[int, ...]:
    """The full tensor's shape: every mode of a tensorized shape, flattened."""
    return tuple(s for e in tensorized_shape for s in (e if isinstance(e, tuple) else (e,)))


def matrix_shape_of(tensorized_shape: Sequence[Any]) -> tuple[int, ...]:
    """The matricized shape: one size per entry of a tensorized shape."""
    return tuple(math.prod(e) if isinstance(e, tuple) else e for e in tensorized_shape)


def as_size(value: Any) -> int:
    """An integer size: ints and integer scalars (numpy, torch) only; never truncates floats."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{value!r} is not an integer")
    return int(value.__index__())


def check_shape(shape: Sequence[int], what: str) -> tuple[int, ...]:
    """Validate a plain tensor shape and return it as a tuple of ints."""
    try:
        out = tuple(as_size(s) for s in shape)
    except (TypeError, ValueError):
        raise ShapeError(f"{what}: shape={shape!r} is not a sequence of ints.") from None
    if not out or any(s < 1 for s in out):
        raise ShapeError(f"{what}: shape={shape!r} must be non-empty with every size >= 1.")
    return out


# ------------------------------------------------------------------ indexing
def _index_tensor(index: Any, size: int) -> torch.Tensor | None:
    """A 1-D long index tensor for a list/tensor index, or None when it is not 1-D."""
    if isinstance(index, torch.Tensor):
        tensor = index
    else:
        tensor = torch.as_tensor(index)
    if tensor.dtype == torch.bool:
        if tensor.ndim != 1 or tensor.shape[0] != size:
            return None
        return tensor.nonzero().squeeze(1)
    if tensor.ndim != 1 or tensor.is_floating_point() or tensor.is_complex():
        return None
    tensor = tensor.long()
    if tensor.numel() and not torch.compiler.is_compiling():
        # Bounds are checked like dense indexing does; negative entries wrap.
        low, high = int(tensor.min()), int(tensor.max())
        if low < -size or high >= size:
            raise IndexError(
                f"index {high if high >= size else low} is out of bounds for size {size}"
            )
    return torch.where(tensor < 0, tensor + size, tensor)


def normalise_index(index: Any, shape: Sequence[int]) -> list[Any] | None:
    """One entry per mode: an int, a slice, or a 1-D long tensor; None for the general case.

    The general case (several list/tensor indices, which torch broadcasts
    together, multi-dimensional index tensors, ``None``) is answered by
    indexing the dense reconstruction instead.
    """
    items = list(index) if isinstance(index, tuple) else [index]
    n_ellipsis = sum(i is Ellipsis for i in items)
    if n_ellipsis > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if any(i is None for i in items):
        return None
    n_explicit = sum(i is not Ellipsis for i in items)
    if n_explicit > len(shape):
        raise IndexError(
            f"too many indices for tensor of dimension {len(shape)} (got {n_explicit})"
        )
    if n_ellipsis:  # identity tests: `in` would compare arrays elementwise
        at = next(k for k, i in enumerate(items) if i is Ellipsis)
        items[at : at + 1] = [slice(None)] * (len(shape) - n_explicit)
    items += [slice(None)] * (len(shape) - len(items))
    modes: list[Any] = []
    n_advanced = 0
    for item, size in zip(items, shape, strict=False):
        if isinstance(item, bool):
            return None
        if isinstance(item, int) or (
            isinstance(item, torch.Tensor) and item.ndim == 0 and not item.dtype == torch.bool
        ):
            value = int(item)
            if not -size <= value < size:
                raise IndexError(f"index {value} is out of bounds for dimension with size {size}")
            modes.append(value % size)
        elif isinstance(item, slice):
            modes.append(item)
        else:
            tensor = _index_tensor(item, size)
            n_advanced += 1
            if tensor is None or n_advanced > 1:
                return None
            modes.append(tensor)
    return modes


def _selects_nothing(modes: list[Any], shape: Sequence[int]) -> bool:
    """Whether an index leaves an empty mode (answered densely: forms have no empty factors)."""
    return any(mode_length(i, s) == 0 for i, s in zip(modes, shape, strict=False))


def slice_length(index: slice, size: int) -> int:
    """Number of entries a slice keeps from a mode of ``size``."""
    return len(range(*index.indices(size)))


@overload
def mode_length(index: int, size: int) -> None: ...
@overload
def mode_length(index: slice | torch.Tensor | Sequence[int], size: int) -> int: ...
def mode_length(index: Any, size: int) -> int | None:
    """Size of a mode after indexing; None when an int drops it."""
    if isinstance(index, int):
        return None
    if isinstance(index, slice):
        return slice_length(index, size)
    return int(index.shape[0])


# ------------------------------------------------------------------ storage helpers
def storage_dtype(dtype: torch.dtype | None, complex_form: bool) -> torch.dtype:
    """The dtype factors are stored in: real for complex forms (cfloat -> float32)."""
    dtype = dtype or torch.get_default_dtype()
    if complex_form and dtype.is_complex:
        return dtype.to_real()
    return dtype


def new_parameter(
    shape: Sequence[int], *, device: Any, dtype: torch.dtype | None, complex_form: bool
) -> nn.Parameter:
    """An uninitialised factor; complex forms store (real, imag) in a trailing dim of 2."""
    shape = (*shape, 2) if complex_form else tuple(shape)
    return nn.Parameter(torch.empty(shape, device=device, dtype=storage_dtype(dtype, complex_form)))


def to_storage(tensor: torch.Tensor, complex_form: bool) -> nn.Parameter:
    """Wrap a decomposition result as a Parameter in this form's storage layout."""
    tensor = tensor.detach()
    if complex_form:
        if not tensor.is_complex():
            tensor = torch.complex(tensor, torch.zeros_like(tensor))
        tensor = torch.view_as_real(tensor.resolve_conj())
    return nn.Parameter(tensor.contiguous())


def decomposition_input(tensor: torch.Tensor, complex_form: bool) -> torch.Tensor:
    """Validate a tensor to decompose: floating (or complex), finite."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        raise TensorError(
            f"cannot decompose a tensor of dtype {tensor.dtype}: factorizations need floating "
            "point values.\nFix: tensor.float() (or .double()) first."
        )
    if tensor.is_complex() and not complex_form:
        raise TensorError(
            f"cannot decompose a complex tensor ({tensor.dtype}) into a real form.\n"
            "Fix: use a complex form, e.g. factorization='ComplexCP'."
        )
    if not bool(torch.isfinite(tensor).all()):
        raise TensorError(
            "cannot decompose a tensor containing NaN or Inf values.\n"
            "Fix: check where the tensor comes from (torch.isfinite(tensor).all())."
        )
    return tensor.detach()


_EINSUM_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def squared_norm(tensor: FactorizedTensor) -> torch.Tensor:
    """``||T||_F^2`` of a factorized tensor, contracted through two copies of its factors.

    The reconstruction is never built: the modes of both copies are shared
    and the bonds renamed, and the contraction is planned like any other.
    """
    from ._contract import plan_einsum

    equation, operands = tensor.contraction()
    shapes = tensor._plan.shapes
    lhs, out = equation.split("->")
    bonds = sorted(set(lhs) - set(out) - {","})
    free = [c for c in _EINSUM_LETTERS if c not in lhs]
    if len(free) < len(bonds):  # more than 52 letters: rebuild instead (rare, tiny bonds)
        full = tensor.to_tensor()
        return (full.abs() ** 2).sum() if full.is_complex() else (full * full).sum()
    rename = dict(zip(bonds, free, strict=False))
    twin = "".join(rename.get(c, c) for c in lhs)
    plan = plan_einsum(f"{lhs},{twin}->", *shapes, *shapes)
    value = plan(*operands, *[o.conj() for o in operands])
    return value.real if value.is_complex() else value


def unravel(index: Any, shape: Sequence[int], device: Any) -> list[Any]:
    """Per-mode indices of a flat ``index`` (int, slice or 1-D tensor) into row-major ``shape``."""
    size = math.prod(shape)
    if isinstance(index, slice):
        index = torch.arange(size, device=device)[index]
    elif isinstance(index, torch.Tensor):
        index = index.to(device)
    out = []
    stride = size
    for s in shape:
        stride //= s
        out.append((index // stride) % s)
    return out
