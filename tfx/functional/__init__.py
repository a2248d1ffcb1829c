"""Pure, traceable contractions with factorized weights (planned once per shape, replayed).

Every function here takes tfx factorized tensors (or plain tensors) and is a
straight sequence of torch calls: ``torch.fx`` records it, ``torch.compile``
traces it without graph breaks, and no contraction path is searched per call.
Every function of tltorch 0.5's ``tltorch.functional`` is here under its name
and signature (tltorch keeps some in submodules; ``convolution`` and ``linear``
exist here as those paths too).
"""

from . import convolution as convolution
from . import linear as linear
from ._conv import (
    conv_flops,
    convNd,
    convolve,
    cp_conv,
    cp_conv_mobilenet,
    general_conv1d,
    tt_conv,
    tucker_conv,
)
from ._embedding import factorized_embedding, gather_rows
from ._linear import (
    factorized_linear,
    linear_blocktt,
    linear_cp,
    linear_flops,
    linear_tt,
    linear_tucker,
)
from ._regression import (
    factorized_tensordot,
    tcl,
    tensor_dot_cp,
    tensor_dot_tucker,
    tensor_regression,
    trl,
    tucker_trl,
)

__all__ = [
    "factorized_linear",
    "linear_cp",
    "linear_tucker",
    "linear_tt",
    "linear_blocktt",
    "linear_flops",
    "convolve",
    "convNd",
    "general_conv1d",
    "cp_conv",
    "cp_conv_mobilenet",
    "tucker_conv",
    "tt_conv",
    "conv_flops",
    "factorized_embedding",
    "gather_rows",
    "tensor_regression",
    "trl",
    "tucker_trl",
    "tcl",
    "factorized_tensordot",
    "tensor_dot_tucker",
    "tensor_dot_cp",
]
