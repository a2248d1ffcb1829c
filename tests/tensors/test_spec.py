"""``tfx.tensors.form_spec``: the public structure of each form, against the tensors themselves.

The spec is what the cost model prices and counts; the tensors build their contraction plans
from it. Here, for tensors drawn by Hypothesis: the spec's operand shapes are the tensor's
factor shapes (TT boundary cores squeezed), its parameter count is the tensor's, and
``torch.einsum(spec.equation, *factors)`` in float64 is the tensor's dense reconstruction.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tfx
from tfx import OptionError, ShapeError
from tfx.tensors import FormSpec, form_spec

from ..strategies import shapes, tensorized_shapes

F64 = torch.float64


def _params(tensor: torch.nn.Module) -> int:
    return sum(p.numel() for p in tensor.parameters())


@given(shape=shapes(min_order=2, max_order=4), fraction=st.floats(0.1, 1.0))
def test_cp_spec_is_the_cp_tensor(shape: tuple[int, ...], fraction: float) -> None:
    tensor = tfx.CPTensor.new(shape, rank=fraction, dtype=F64)
    spec = form_spec("cp", shape, tensor.rank)
    operands = [tensor.weights, *tensor.factors]
    assert spec.operand_shapes == tuple(tuple(t.shape) for t in operands)
    assert spec.n_params == _params(tensor)
    torch.testing.assert_close(torch.einsum(spec.equation, *operands), tensor.to_tensor())


@given(shape=shapes(min_order=2, max_order=4), fraction=st.floats(0.1, 1.0))
def test_tucker_spec_is_the_tucker_tensor(shape: tuple[int, ...], fraction: float) -> None:
    tensor = tfx.TuckerTensor.new(shape, rank=fraction, dtype=F64)
    spec = form_spec("tucker", shape, tensor.rank)
    operands = [tensor.core, *tensor.factors]
    assert spec.operand_shapes == tuple(tuple(t.shape) for t in operands)
    assert spec.n_params == _params(tensor)
    torch.testing.assert_close(torch.einsum(spec.equation, *operands), tensor.to_tensor())


@given(shape=shapes(min_order=1, max_order=4), fraction=st.floats(0.1, 1.0))
def test_tt_spec_is_the_tt_tensor_with_squeezed_boundary_cores(
    shape: tuple[int, ...], fraction: float
) -> None:
    tensor = tfx.TTTensor.new(shape, rank=fraction, dtype=F64)
    spec = form_spec("tt", shape, tensor.rank)
    cores = list(tensor.factors)
    if len(cores) == 1:
        operands = [cores[0].reshape(shape)]
    else:
        operands = [cores[0][0], *cores[1:-1], cores[-1][..., 0]]
    assert spec.operand_shapes == tuple(tuple(t.shape) for t in operands)
    assert spec.n_params == _params(tensor)
    torch.testing.assert_close(torch.einsum(spec.equation, *operands), tensor.to_tensor())


@given(tshape=tensorized_shapes(), fraction=st.floats(0.1, 1.0))
def test_blocktt_spec_is_the_blocktt_tensor(tshape: tuple, fraction: float) -> None:
    tensor = tfx.BlockTT.new(tshape, rank=fraction, dtype=F64)
    spec = form_spec("blocktt", tensor.entries, tensor.rank, batch=tensor.batch_shape)
    assert spec.operand_shapes == tuple(tuple(t.shape) for t in tensor.factors)
    assert spec.n_params == _params(tensor)
    full = torch.einsum(spec.equation, *tensor.factors)
    assert full.shape == (*tensor.batch_shape, *(n for side in tensor.entries for n in side))
    torch.testing.assert_close(full.reshape(tensor.shape), tensor.to_matrix())


def test_spec_example_and_fields() -> None:
    spec = form_spec("tucker", (8, 6), (3, 2))
    assert isinstance(spec, FormSpec)
    assert (spec.form, spec.shape, spec.rank) == ("tucker", (8, 6), (3, 2))
    assert spec.n_params == 3 * 2 + 8 * 3 + 6 * 2 == math.prod((3, 2)) + 24 + 12


def test_unknown_form_wrong_rank_length_and_batch_are_explained() -> None:
    with pytest.raises(OptionError, match="form"):
        form_spec("svd", (4, 4), 2)  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match=r"has 3 entries; got 2"):
        form_spec("tt", (4, 4), (1, 1))
    with pytest.raises(ShapeError, match="one per mode"):
        form_spec("tucker", (4, 4, 4), (2, 2))
    with pytest.raises(OptionError, match="only BlockTT"):
        form_spec("cp", (4, 4), 2, batch=(3,))
    with pytest.raises(ShapeError, match="same number of modes"):
        form_spec("blocktt", ((2, 2), (4,)), (1, 2, 1))
