"""Initialisers: factors set so the reconstruction is N(0, std) in distribution.

tltorch's TT and BlockTT initialisers are off by orders of magnitude and its
``cp_init`` crashes; here each form's ``normal_`` derives the factor std from
the form's structure (see each form), and these functions check the form and
call it.
"""

from __future__ import annotations

from typing import TypeVar

import torch

from .._errors import OptionError
from ._base import FactorizedTensor
from ._blocktt import BlockTT
from ._cp import CPTensor
from ._tt import TTTensor
from ._tucker import TuckerTensor

__all__ = ["tensor_init", "cp_init", "tucker_init", "tt_init", "block_tt_init"]

T = TypeVar("T")


def tensor_init(tensor: T, std: float = 0.02) -> T:
    """Initialise any factorized tensor (or plain tensor) so its entries are N(0, std).

    Example:
        >>> import tfx
        >>> w = tfx.tensor_init(tfx.FactorizedTensor.new((64, 64, 64), 0.1, "tt"), std=0.02)
        >>> round(float(w.to_tensor().detach().std()), 2)
        0.02
    """
    if isinstance(tensor, FactorizedTensor):
        return tensor.normal_(0, std)
    if isinstance(tensor, torch.Tensor):
        with torch.no_grad():
            tensor.normal_(0, std)
        return tensor
    raise OptionError(
        f"tensor_init got {type(tensor).__name__}: it initialises tfx factorized tensors and "
        "torch tensors.\nFix: pass e.g. layer.weight."
    )


def _checked(tensor: object, form: type, name: str) -> None:
    if not isinstance(tensor, form):
        raise OptionError(
            f"{name} initialises {form.__name__} instances, got {type(tensor).__name__}.\n"
            "Fix: use tfx.tensor_init(tensor, std), which picks the right initialiser."
        )


def cp_init(cp_tensor: CPTensor, std: float = 0.02) -> CPTensor:
    """Initialise a CP tensor (or tensorized CP) so its reconstruction is N(0, std)."""
    _checked(cp_tensor, CPTensor, "cp_init")
    return cp_tensor.normal_(0, std)


def tucker_init(tucker_tensor: TuckerTensor, std: float = 0.02) -> TuckerTensor:
    """Initialise a Tucker tensor (or tensorized Tucker) so its reconstruction is N(0, std)."""
    _checked(tucker_tensor, TuckerTensor, "tucker_init")
    return tucker_tensor.normal_(0, std)


def tt_init(tt_tensor: TTTensor, std: float = 0.02) -> TTTensor:
    """Initialise a TT tensor so its reconstruction is N(0, std)."""
    _checked(tt_tensor, TTTensor, "tt_init")
    return tt_tensor.normal_(0, std)


def block_tt_init(block_tt: BlockTT, std: float = 0.02) -> BlockTT:
    """Initialise a BlockTT so its reconstruction is N(0, std)."""
    _checked(block_tt, BlockTT, "block_tt_init")
    return block_tt.normal_(0, std)
