"""tltorch's ``tltorch.tensor_hooks``, under tfx: tensor dropout and tensor lasso.

``from tfx.tensor_hooks import tensor_dropout`` works as it does with tltorch. The
hooks are tfx's (:mod:`tfx.nn`); the per-form classes (``CPDropout``, ``CPLasso``, ...)
are here too, as tltorch keeps them in ``tensor_hooks._tensor_dropout`` and ``_tensor_lasso``.
"""

from .nn import (
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

__all__ = [
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
