"""Indexing a factorized tensor equals indexing its dense reconstruction, on every form."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tfx
from tests.helpers import dense, matrix_shape
from tests.strategies import PLAIN_FORMS, TENSORIZED_FORMS, indices, shapes, tensorized_shapes

SHAPE = (3, 4, 5)
TSHAPE = (2, (2, 3), (3, 2))  # matrix shape (2, 6, 6)


def _plain(form: str, shape: tuple[int, ...]) -> tfx.FactorizedTensor:
    return tfx.FactorizedTensor.new(shape, rank=0.5, factorization=form, dtype=torch.float64)


def _tensorized(form: str, tshape: tuple) -> tfx.TensorizedTensor:
    return tfx.TensorizedTensor.new(tshape, rank=0.5, factorization=form, dtype=torch.float64)


def _check(t: tfx.FactorizedTensor, index: Any) -> None:
    expected = dense(t)[index]
    torch.testing.assert_close(dense(t[index]), expected)


# ------------------------------------------------------------------ properties
@pytest.mark.parametrize("form", PLAIN_FORMS)
@given(data=st.data(), shape=shapes())
def test_indexing_matches_dense_indexing(
    form: str, data: st.DataObject, shape: tuple[int, ...]
) -> None:
    _check(_plain(form, shape), data.draw(indices(shape), label="index"))


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
@given(data=st.data(), tshape=tensorized_shapes(batch=True, max_length=2))
def test_tensorized_indexing_matches_dense_indexing(
    form: str, data: st.DataObject, tshape: tuple
) -> None:
    _check(_tensorized(form, tshape), data.draw(indices(matrix_shape(tshape)), label="index"))


@pytest.mark.parametrize("form", PLAIN_FORMS)
@given(data=st.data(), shape=shapes(min_order=2))
def test_indexing_with_two_advanced_indices_matches_dense(
    form: str, data: st.DataObject, shape: tuple[int, ...]
) -> None:
    _check(_plain(form, shape), data.draw(indices(shape, max_advanced=2), label="index"))


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
@given(data=st.data(), tshape=tensorized_shapes(batch=True, max_length=2))
def test_tensorized_indexing_with_two_advanced_indices_matches_dense(
    form: str, data: st.DataObject, tshape: tuple
) -> None:
    _check(
        _tensorized(form, tshape),
        data.draw(indices(matrix_shape(tshape), max_advanced=2), label="index"),
    )


# ------------------------------------------------------------------ named cases
CASES = {
    "int": 1,
    "negative-int": -1,
    "slice-step": slice(None, None, 2),
    "slice-bounds-step": slice(1, 3, 2),
    "negative-slice-bounds": slice(-2, None),
    "list": [2, 0],
    "negative-list": [-1, 0, 1],
    "index-tensor": torch.tensor([1, 0, 1]),
    "bool-mask": torch.tensor([True, False, True]),
    "ellipsis-last": (Ellipsis, 1),
    "ellipsis-middle": (0, Ellipsis, slice(None, None, 2)),
    "mixed": (slice(1, None), [0, 3], -2),
    "int-then-tensor": (-1, slice(None), torch.tensor([4, 0])),
    "two-lists": ([0, 2], [1, 3]),
    "two-lists-split": ([0, 2], slice(None), [1, 3]),
    "scalar": (2, 3, 4),
    "scalar-tensor-index": torch.tensor(1),
    "none": (None, 1),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_indexing_named_case_matches_dense(form: str, case: str) -> None:
    _check(_plain(form, SHAPE), CASES[case])


TENSORIZED_CASES = {
    "batch-int": 1,
    "row-int": (slice(None), 4),
    "row-negative-int": (0, -1),
    "row-slice-step": (slice(None), slice(None, None, 2)),
    "col-list": (Ellipsis, [5, 0, 2]),
    "col-tensor": (1, slice(None), torch.tensor([3, 3])),
    "col-mask": (Ellipsis, torch.tensor([True, False, False, True, True, False])),
    "scalar": (1, 2, 3),
    "row-slice-col-int": (slice(None), slice(1, 5), 2),
    "two-lists": (slice(None), [0, 1], [2, 3]),
}


@pytest.mark.parametrize("case", list(TENSORIZED_CASES))
@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_tensorized_indexing_named_case_matches_dense(form: str, case: str) -> None:
    _check(_tensorized(form, TSHAPE), TENSORIZED_CASES[case])


@pytest.mark.parametrize("form", [f for f in PLAIN_FORMS if "Dense" not in f])
def test_indexing_with_basic_indices_stays_factorized(form: str) -> None:
    assert isinstance(_plain(form, SHAPE)[1, :, 1:3], tfx.FactorizedTensor)


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_indexing_with_a_numpy_integer_matches_dense(form: str) -> None:
    _check(_plain(form, SHAPE), (np.int64(2), slice(None), np.int64(-1)))


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_indexing_with_a_numpy_array_matches_dense(form: str) -> None:
    _check(_plain(form, SHAPE), np.array([2, 0]))


# ------------------------------------------------------------------ gradients
def _assert_every_parameter_gets_a_gradient(t: tfx.FactorizedTensor, index: Any) -> None:
    dense(t[index]).abs().sum().backward()
    missing = [
        name
        for name, p in t.named_parameters()
        if p.grad is None or not bool(p.grad.abs().sum() > 0)
    ]
    assert missing == []


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_indexing_propagates_gradients_to_every_factor(form: str) -> None:
    _assert_every_parameter_gets_a_gradient(_plain(form, SHAPE), (1, slice(None), [0, 2]))


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_tensorized_indexing_propagates_gradients_to_every_factor(form: str) -> None:
    _assert_every_parameter_gets_a_gradient(_tensorized(form, TSHAPE), (0, 2))


# ------------------------------------------------------------------ empty selections
@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_tensorized_indexing_empty_batch_slice_matches_dense(form: str) -> None:
    _check(_tensorized(form, TSHAPE), slice(0, 0))


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_tensorized_indexing_empty_row_slice_matches_dense(form: str) -> None:
    _check(_tensorized(form, TSHAPE), (slice(None), slice(3, 1)))


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_indexing_empty_slice_matches_dense(form: str) -> None:
    _check(_plain(form, SHAPE), (slice(None), slice(3, 1)))
