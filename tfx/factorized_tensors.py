"""tltorch's ``tltorch.factorized_tensors``, under tfx: the factorized and tensorized forms.

``from tfx.factorized_tensors import CPTensor`` works as it does with tltorch. The
names tltorch defines in this package's modules are here at the package level
(``tensorized_matrices``' shape helpers, ``ComplexHandler``); tltorch's metaclass
``MetaFactorizedTensor`` is not: tfx registers forms without one (see the guide's
"Differences from tltorch"). tfx's tensorized TT forms are here too.
"""

from .tensors import (
    BlockTT,
    ComplexBlockTT,
    ComplexCPTensor,
    ComplexCPTensorized,
    ComplexDenseTensor,
    ComplexDenseTensorized,
    ComplexTTTensor,
    ComplexTTTensorized,
    ComplexTuckerTensor,
    ComplexTuckerTensorized,
    CPTensor,
    CPTensorized,
    DenseTensor,
    DenseTensorized,
    FactorizedTensor,
    TensorizedTensor,
    TTTensor,
    TTTensorized,
    TuckerTensor,
    TuckerTensorized,
    block_tt_init,
    cp_init,
    tensor_init,
    tt_init,
    tucker_init,
)
from .tensors._compat import (
    ComplexHandler,
    is_tensorized_shape,
    tensorized_shape_to_shape,
    validate_block_tt_rank,
)

__all__ = [
    "FactorizedTensor",
    "TensorizedTensor",
    "DenseTensor",
    "CPTensor",
    "TuckerTensor",
    "TTTensor",
    "DenseTensorized",
    "CPTensorized",
    "TuckerTensorized",
    "TTTensorized",
    "BlockTT",
    "ComplexDenseTensor",
    "ComplexCPTensor",
    "ComplexTuckerTensor",
    "ComplexTTTensor",
    "ComplexDenseTensorized",
    "ComplexCPTensorized",
    "ComplexTuckerTensorized",
    "ComplexTTTensorized",
    "ComplexBlockTT",
    "ComplexHandler",
    "tensor_init",
    "cp_init",
    "tucker_init",
    "tt_init",
    "block_tt_init",
    "is_tensorized_shape",
    "tensorized_shape_to_shape",
    "validate_block_tt_rank",
]
