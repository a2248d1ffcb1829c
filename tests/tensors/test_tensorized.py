"""Tensorized tensors: shapes and their spellings, matrices, from_matrix."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given

import tfx
from tests.helpers import full_rank, random_input, tensor_shape
from tests.strategies import TENSORIZED_FORMS, tensorized_shapes

TSHAPE = (2, (2, 3), (3, 2))
NON_CP_TENSORIZED = [f for f in TENSORIZED_FORMS if f.removeprefix("Complex") != "CP"]


def _new(form: str, tshape: object = TSHAPE) -> tfx.TensorizedTensor:
    return tfx.TensorizedTensor.new(tshape, rank=0.5, factorization=form, dtype=torch.float64)


# ------------------------------------------------------------------ shapes
@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_tensorized_shape_is_the_matrix_shape(form: str) -> None:
    t = _new(form)
    assert (tuple(t.shape), t.ndim, tuple(t.tensor_shape)) == ((2, 6, 6), 3, (2, 2, 3, 3, 2))


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_nested_tensorized_shape_means_the_flat_one(form: str) -> None:
    assert _new(form, (2, ((2, 3), (3, 2)))).tensorized_shape == TSHAPE


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_tensorized_shape_accepts_lists(form: str) -> None:
    assert _new(form, [2, [2, 3], [3, 2]]).tensorized_shape == TSHAPE


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_three_tensorized_entries_give_a_three_way_matrix(form: str) -> None:
    t = _new(form, ((2, 3), (3, 2), (2, 2)))
    assert (tuple(t.shape), tuple(t.to_matrix().shape)) == ((6, 6, 4), (6, 6, 4))


# ------------------------------------------------------------------ matrices
@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_to_matrix_has_the_matrix_shape(form: str) -> None:
    assert tuple(_new(form).to_matrix().shape) == (2, 6, 6)


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_to_tensor_of_tensorized_has_the_full_tensor_shape(form: str) -> None:
    assert tuple(_new(form).to_tensor().shape) == (2, 2, 3, 3, 2)


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_to_matrix_groups_row_and_column_modes_row_major(form: str) -> None:
    t = _new(form)
    torch.testing.assert_close(t.to_matrix(), t.to_tensor().reshape(2, 6, 6))


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_torch_functions_see_the_matrix_of_a_tensorized_tensor(form: str) -> None:
    t = _new(form, ((2, 3), (3, 2)))
    x = random_input((7, 6), form)
    torch.testing.assert_close(torch.nn.functional.linear(x, t), x @ t.to_matrix().T)


# ------------------------------------------------------------------ from_matrix
@pytest.mark.parametrize("form", NON_CP_TENSORIZED)
@given(tshape=tensorized_shapes())
def test_from_matrix_full_rank_reproduces_matrix(form: str, tshape: tuple) -> None:
    *batch, rows, cols = tshape
    matrix = random_input((*batch, math.prod(rows), math.prod(cols)), form)
    rank = full_rank(form, tshape, tensorized=True) or "same"
    t = tfx.TensorizedTensor.from_matrix(matrix, rows, cols, rank=rank, factorization=form)
    torch.testing.assert_close(t.to_matrix(), matrix)


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_from_tensor_accepts_the_matrix_shape(form: str) -> None:
    tshape = ((4,), (5,)) if form.removeprefix("Complex") == "CP" else TSHAPE
    x = random_input(tensor_shape(tshape), form)
    rank = full_rank(form, tshape, tensorized=True) or "same"
    a = tfx.TensorizedTensor.from_tensor(x, tshape, rank=rank, factorization=form)
    b = tfx.TensorizedTensor.from_tensor(x.reshape(a.shape), tshape, rank=rank, factorization=form)
    torch.testing.assert_close(b.to_tensor(), a.to_tensor())


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_from_matrix_keeps_the_batch_modes(form: str) -> None:
    matrix = random_input((2, 6, 6), form)
    t = tfx.TensorizedTensor.from_matrix(matrix, (2, 3), (3, 2), rank=0.5, factorization=form)
    assert t.tensorized_shape == TSHAPE
