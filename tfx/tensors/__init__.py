"""The factorized tensor core: tltorch-compatible factorized and tensorized tensors."""

from ._base import FactorizedTensor, TensorizedTensor, available, register
from ._blocktt import BlockTT
from ._complex import (
    ComplexBlockTT,
    ComplexCPTensor,
    ComplexCPTensorized,
    ComplexDenseTensor,
    ComplexDenseTensorized,
    ComplexTTTensor,
    ComplexTTTensorized,
    ComplexTuckerTensor,
    ComplexTuckerTensorized,
)
from ._contract import ContractionPlan, plan_einsum
from ._cp import CPTensor, CPTensorized
from ._dense import DenseTensor, DenseTensorized
from ._init import block_tt_init, cp_init, tensor_init, tt_init, tucker_init
from ._spec import FormSpec, form_spec
from ._tt import TTTensor, TTTensorized
from ._tucker import TuckerTensor, TuckerTensorized

__all__ = [
    "FactorizedTensor",
    "TensorizedTensor",
    "DenseTensor",
    "CPTensor",
    "TuckerTensor",
    "TTTensor",
    "TTTensorized",
    "DenseTensorized",
    "CPTensorized",
    "TuckerTensorized",
    "BlockTT",
    "ComplexDenseTensor",
    "ComplexCPTensor",
    "ComplexTuckerTensor",
    "ComplexTTTensor",
    "ComplexTTTensorized",
    "ComplexDenseTensorized",
    "ComplexCPTensorized",
    "ComplexTuckerTensorized",
    "ComplexBlockTT",
    "tensor_init",
    "cp_init",
    "tucker_init",
    "tt_init",
    "block_tt_init",
    "register",
    "available",
    "ContractionPlan",
    "plan_einsum",
    "FormSpec",
    "form_spec",
]
