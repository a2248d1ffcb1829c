"""tltorch's ``tltorch.utils``, under tfx: tensorized shapes, integer helpers, factor lists.

A dense ``in_features x out_features`` weight is tensorized by writing each size
as a product of ``order`` factors, e.g. ``768 -> (4, 12, 16)``. This module holds

- :func:`get_tensorized_shape`, tltorch 0.5's ``tltorch.utils.get_tensorized_shape``
  with the same results wherever tltorch tensorizes, and a :class:`~tfx._errors.TfxWarning`
  (instead of a silent lower order) where a size cannot be split;
- :func:`tensorizations` and :func:`balanced_tensorization`, the full search space
  the cost model picks from;
- tltorch's integer helpers :func:`factorize` and :func:`merge_ints`, and its factor
  lists ``FactorList``, ``ParameterList`` and ``ComplexFactorList``, so ``tltorch.utils``
  code runs on ``tfx.utils``.

All of them live with the tensor core (``tfx/tensors/_tensorize.py`` and the factor
list modules); this module re-exports them at tltorch's path.
"""

from .tensors._compat import ComplexFactorList, ParameterList
from .tensors._factor_list import FactorList
from .tensors._tensorize import (
    balanced_tensorization,
    factorize,
    get_tensorized_shape,
    merge_ints,
    tensorizations,
)

__all__ = [
    "get_tensorized_shape",
    "tensorizations",
    "balanced_tensorization",
    "factorize",
    "merge_ints",
    "FactorList",
    "ParameterList",
    "ComplexFactorList",
]
