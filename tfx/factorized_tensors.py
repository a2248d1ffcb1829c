"""tltorch's ``tltorch.factorized_tensors``, under tfx: the factorized and tensorized forms.

``from tfx.factorized_tensors import CPTensor`` works as it does with tltorch. The
names tltorch defines in this package's modules are here at the package level
(``tensorized_matrices``' shape helpers, ``ComplexHandler``); tltorch's metaclass
``MetaFactorizedTensor`` is not: tfx registers forms without one (see the guide's
"Differences from tltorch"). tfx's tensorized TT forms, and the core's ``register`` /
``available`` / ``plan_einsum``, are here too: this module is :mod:`tfx.tensors` plus
tltorch's helpers.
"""

from .tensors import *  # noqa: F403 - tfx's tensor core is this module's content
from .tensors import __all__ as _core
from .tensors._compat import (
    ComplexHandler,
    is_tensorized_shape,
    tensorized_shape_to_shape,
    validate_block_tt_rank,
)

__all__ = [
    *_core,
    "ComplexHandler",
    "is_tensorized_shape",
    "tensorized_shape_to_shape",
    "validate_block_tt_rank",
]
