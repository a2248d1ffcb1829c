"""Complex forms: factors stored as real (…, 2) parameters, reconstructions complex.

Storing real and imaginary parts in a trailing dimension of 2 keeps every
parameter real (float32 for ``cfloat``), so ``DistributedDataParallel`` and
optimisers that do not support complex parameters work; the values are
``torch.view_as_complex`` views, so the reconstruction is complex.
"""

from __future__ import annotations

from ._blocktt import BlockTT
from ._cp import CPTensor, CPTensorized
from ._dense import DenseTensor, DenseTensorized
from ._tt import TTTensor, TTTensorized
from ._tucker import TuckerTensor, TuckerTensorized

__all__ = [
    "ComplexDenseTensor",
    "ComplexCPTensor",
    "ComplexTuckerTensor",
    "ComplexTTTensor",
    "ComplexDenseTensorized",
    "ComplexCPTensorized",
    "ComplexTuckerTensorized",
    "ComplexBlockTT",
    "ComplexTTTensorized",
]


class ComplexDenseTensor(DenseTensor, name="ComplexDense"):
    """Complex dense tensor, stored as a real ``(*shape, 2)`` parameter."""

    _complex = True


class ComplexCPTensor(CPTensor, name="ComplexCP"):
    """Complex CP factorization with real storage."""

    _complex = True


class ComplexTuckerTensor(TuckerTensor, name="ComplexTucker"):
    """Complex Tucker factorization with real storage."""

    _complex = True


class ComplexTTTensor(TTTensor, name="ComplexTT"):
    """Complex tensor-train factorization with real storage."""

    _complex = True


class ComplexDenseTensorized(DenseTensorized, name="ComplexDense"):
    """Complex dense tensorized matrix with real storage."""

    _complex = True


class ComplexCPTensorized(CPTensorized, name="ComplexCP"):
    """Complex tensorized CP factorization with real storage."""

    _complex = True


class ComplexTuckerTensorized(TuckerTensorized, name="ComplexTucker"):
    """Complex tensorized Tucker factorization with real storage."""

    _complex = True


class ComplexBlockTT(BlockTT, name="ComplexBlockTT"):
    """Complex block tensor-train factorization with real storage."""

    _complex = True


class ComplexTTTensorized(TTTensorized, name="ComplexTT"):
    """Complex tensorized tensor-train factorization with real storage."""

    _complex = True
