"""tltorch's module path ``tltorch.functional.convolution``: the convolution functions, re-exported.

``tfx.functional.convolution.cp_conv`` is ``tfx.functional.cp_conv``; the module
exists so that tltorch code reaching them through this path keeps working.
"""

from ._conv import (
    convNd,
    convolve,
    cp_conv,
    cp_conv_mobilenet,
    general_conv1d,
    general_conv1d_,
    tt_conv,
    tucker_conv,
)

__all__ = [
    "convolve",
    "convNd",
    "general_conv1d",
    "general_conv1d_",
    "cp_conv",
    "cp_conv_mobilenet",
    "tucker_conv",
    "tt_conv",
]
