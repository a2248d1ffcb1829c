"""tfx: make deep networks smaller and faster with tensor factorizations.

A drop-in for the TensorLy-Torch (tltorch 0.5) API: factorized and tensorized
tensors (Dense, CP, Tucker, TT, BlockTT and their complex variants), their
initialisers and :func:`get_tensorized_shape`, under tltorch's names and module
paths (``tfx.factorized_tensors``, ``tfx.factorized_layers``, ``tfx.tensor_hooks``,
``tfx.functional``, ``tfx.utils``).

Example:
    >>> import torch, tfx
    >>> w = tfx.TensorizedTensor.from_matrix(
    ...     torch.randn(64, 48), (4, 4, 4), (4, 4, 3), rank=0.3, factorization="blocktt"
    ... )
    >>> w.to_matrix().shape
    torch.Size([64, 48])
"""

# tltorch's module paths: tfx.factorized_layers, tfx.factorized_tensors, tfx.tensor_hooks,
# tfx.utils and tfx.init (tltorch.init is its factorized_tensors.init module).
from . import (
    cost,
    factorized_layers,
    factorized_tensors,
    functional,
    nn,
    passes,
    tensor_hooks,
    tensors,
    utils,
)
from ._api import factorize, load, plan, save
from ._backend import backend
from ._distill import distill
from ._errors import (
    BudgetError,
    ContractError,
    DistributedError,
    OptionError,
    PlanMismatchError,
    RankError,
    ShapeError,
    SiteError,
    TensorError,
    TfxError,
    TfxWarning,
    TraceError,
    UnsupportedSiteError,
)
from .cost import Budget, FactorizationPlan
from .nn import (
    TCL,
    TRL,
    CPDropout,
    CPLasso,
    FactorizedConv,
    FactorizedEmbedding,
    FactorizedLinear,
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
from .tensors import _init as init
from .tensors._tensorize import get_tensorized_shape

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "tensors",
    "cost",
    "passes",
    # tltorch's module paths
    "factorized_layers",
    "factorized_tensors",
    "tensor_hooks",
    "utils",
    "init",
    "factorize",
    "plan",
    "backend",
    "distill",
    "save",
    "load",
    "Budget",
    "FactorizationPlan",
    "functional",
    "nn",
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
    "get_tensorized_shape",
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
]
