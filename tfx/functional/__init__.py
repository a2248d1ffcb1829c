"""Pure, traceable contractions with factorized weights (planned once per shape, replayed).

Every function here takes tfx factorized tensors (or plain tensors) and is a
straight sequence of torch calls: ``torch.fx`` records it, ``torch.compile``
traces it without graph breaks, and no contraction path is searched per call.
"""

from ._conv import conv_flops, convolve, cp_conv, cp_conv_mobilenet, tt_conv, tucker_conv
from ._embedding import factorized_embedding, gather_rows
from ._linear import factorized_linear, linear_blocktt, linear_cp, linear_flops, linear_tt, linear_tucker
from ._regression import factorized_tensordot, tcl, tensor_regression, trl

__all__ = [
    "factorized_linear",
    "linear_cp",
    "linear_tucker",
    "linear_tt",
    "linear_blocktt",
    "linear_flops",
    "convolve",
    "cp_conv",
    "cp_conv_mobilenet",
    "tucker_conv",
    "tt_conv",
    "conv_flops",
    "factorized_embedding",
    "gather_rows",
    "tensor_regression",
    "trl",
    "tcl",
    "factorized_tensordot",
]
