"""Factorized layers (tltorch-compatible) and tensor hooks."""

from ._conv import FactorizedConv
from ._embedding import FactorizedEmbedding
from ._hooks import (
    CPDropout,
    CPLasso,
    TensorDropout,
    TensorLasso,
    TTDropout,
    TTLasso,
    TuckerDropout,
    TuckerLasso,
    remove_tensor_dropout,
    remove_tensor_lasso,
    tensor_dropout,
    tensor_lasso,
)
from ._linear import FactorizedLinear
from ._regression import TCL, TRL

__all__ = [
    "FactorizedLinear",
    "FactorizedConv",
    "FactorizedEmbedding",
    "TRL",
    "TCL",
    "TensorDropout",
    "CPDropout",
    "TuckerDropout",
    "TTDropout",
    "tensor_dropout",
    "remove_tensor_dropout",
    "TensorLasso",
    "CPLasso",
    "TuckerLasso",
    "TTLasso",
    "tensor_lasso",
    "remove_tensor_lasso",
]
