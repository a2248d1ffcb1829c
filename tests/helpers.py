"""Small helpers shared by the tensor tests: reconstructions, full ranks, formulas.

The formulas here are written out independently of tfx (from the definitions
of each form), so the tests compare tfx against them rather than against itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

import tfx
from tests.strategies import tensorized_entries, tt_bounds

__all__ = [
    "dense",
    "family",
    "is_complex_form",
    "full_rank",
    "expected_parameters",
    "random_input",
    "tensor_shape",
    "matrix_shape",
]


def dense(value: Any) -> torch.Tensor:
    """The dense value of a factorized result, a tensorized one as its matrix."""
    if isinstance(value, tfx.TensorizedTensor):
        return value.to_matrix()
    if isinstance(value, tfx.FactorizedTensor):
        return value.to_tensor()
    return value


def family(form: str) -> str:
    """``'dense'``, ``'cp'``, ``'tucker'``, ``'tt'`` or ``'blocktt'`` for a registered name."""
    name = form.lower().removeprefix("complex")
    return name


def is_complex_form(form: str) -> bool:
    """Whether ``form`` is a complex variant."""
    return form.lower().startswith("complex")


def tensor_shape(tensorized_shape: Sequence[Any]) -> tuple[int, ...]:
    """Every mode of a tensorized shape, flattened."""
    return tuple(s for e in tensorized_shape for s in (e if isinstance(e, tuple) else (e,)))


def matrix_shape(tensorized_shape: Sequence[Any]) -> tuple[int, ...]:
    """One size per entry of a tensorized shape."""
    return tuple(math.prod(e) if isinstance(e, tuple) else e for e in tensorized_shape)


def blocktt_core_sizes(tensorized_shape: Sequence[Any]) -> tuple[int, ...]:
    """Size of the k-th BlockTT core's modes: product of the k-th size of each tuple."""
    _, entries = tensorized_entries(tensorized_shape)
    return tuple(math.prod(sizes) for sizes in zip(*entries, strict=True))


def full_rank(form: str, shape: Sequence[Any], *, tensorized: bool = False) -> Any:
    """The rank at which ``form`` represents every tensor of ``shape`` exactly."""
    fam = family(form)
    modes = tensor_shape(shape) if tensorized else tuple(shape)
    if fam == "dense":
        return None
    if fam == "cp":
        return min(modes)  # exact for matrices (the SVD); callers use order 2 only
    if fam == "tucker":
        return modes
    if fam == "tt":
        return tt_bounds(modes)
    if fam == "blocktt":
        return tt_bounds(blocktt_core_sizes(shape))
    raise ValueError(form)


def expected_parameters(form: str, t: tfx.FactorizedTensor) -> int:
    """The parameter count of ``t`` from its form's formula (complex: doubled)."""
    fam = family(form)
    tensorized = isinstance(t, tfx.TensorizedTensor)
    modes = tensor_shape(t.tensorized_shape) if tensorized else tuple(t.shape)
    if fam == "dense":
        count = math.prod(modes)
    elif fam == "cp":
        count = t.rank * (1 + sum(modes))
    elif fam == "tucker":
        count = math.prod(t.rank) + sum(n * r for n, r in zip(modes, t.rank, strict=True))
    elif fam == "tt":
        r = t.rank
        count = sum(r[k] * n * r[k + 1] for k, n in enumerate(modes))
    elif fam == "blocktt":
        batch, _ = tensorized_entries(t.tensorized_shape)
        sizes = blocktt_core_sizes(t.tensorized_shape)
        r = t.rank
        count = math.prod(batch) * sum(r[k] * n * r[k + 1] for k, n in enumerate(sizes))
    else:
        raise ValueError(form)
    return 2 * count if is_complex_form(form) else count


def random_input(
    shape: Sequence[int], form: str, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """A random float64 (complex128 for complex forms) tensor of ``shape``."""
    if is_complex_form(form):
        return torch.randn(*shape, dtype=torch.complex128)
    return torch.randn(*shape, dtype=dtype)
