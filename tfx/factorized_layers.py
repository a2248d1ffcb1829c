"""tltorch's ``tltorch.factorized_layers``, under tfx: the factorized layers and their helpers.

``from tfx.factorized_layers import FactorizedLinear`` works as it does with tltorch.
The names tltorch defines in this package's modules are here at the package level:
``factorized_convolution``'s kernel-layout helpers and the ``SubFactorized*`` classes
(one layer of a stacked layer, ``layer[i]``; tfx has one class for all three).
"""

from .functional._kernel import (
    factorization_shape_to_kernel_shape,
    kernel_shape_to_factorization_shape,
    kernel_to_tensor,
    tensor_to_kernel,
)
from .nn import TCL, TRL, FactorizedConv, FactorizedEmbedding, FactorizedLinear
from .nn._common import SubLayer as SubFactorizedConv
from .nn._common import SubLayer as SubFactorizedEmbedding
from .nn._common import SubLayer as SubFactorizedLinear

__all__ = [
    "FactorizedConv",
    "FactorizedEmbedding",
    "FactorizedLinear",
    "TCL",
    "TRL",
    "SubFactorizedConv",
    "SubFactorizedEmbedding",
    "SubFactorizedLinear",
    "kernel_shape_to_factorization_shape",
    "factorization_shape_to_kernel_shape",
    "kernel_to_tensor",
    "tensor_to_kernel",
]
