"""tfx.functional embedding lookups against rows of the reconstructed table."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tfx
from tests.nn._helpers import TENSORIZED_FORMS
from tfx.functional import factorized_embedding, gather_rows

F64 = torch.float64


def _table(form: str, shape: tuple = ((2, 3, 4), (2, 2, 3))) -> tfx.TensorizedTensor:
    return tfx.TensorizedTensor.new(shape, rank=0.6, factorization=form, dtype=F64)


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_gather_rows_matches_rows_of_the_matrix(form: str) -> None:
    table = _table(form)
    index = torch.tensor([0, 23, 5, 5, 17])
    torch.testing.assert_close(gather_rows(table, index), table.to_matrix()[index])


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_gather_rows_with_uneven_row_and_column_modes(form: str) -> None:
    table = _table(form, ((4, 6), (5, 1)))
    index = torch.arange(24)
    torch.testing.assert_close(gather_rows(table, index), table.to_matrix())


@pytest.mark.parametrize("padding_idx", [None, 5])
@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_factorized_embedding_matches_rows_of_the_table(form: str, padding_idx: int | None) -> None:
    table = _table(form)
    index = torch.tensor([[0, 5, 23], [7, 5, 1]])
    expected = table.to_matrix()[index]
    if padding_idx is not None:
        expected = torch.where(
            (index == padding_idx).unsqueeze(-1), torch.zeros_like(expected), expected
        )
    torch.testing.assert_close(factorized_embedding(index, table, padding_idx), expected)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_factorized_embedding_accepts_cpu_index_dtypes(dtype: torch.dtype) -> None:
    table = _table("BlockTT")
    index = torch.tensor([[3, 22], [0, 9]], dtype=dtype)
    torch.testing.assert_close(factorized_embedding(index, table), table.to_matrix()[index.long()])


def test_factorized_embedding_with_a_tensor_table_is_f_embedding() -> None:
    table = torch.randn(24, 12, dtype=F64)
    index = torch.tensor([[0, 5, 23], [7, 5, 1]])
    torch.testing.assert_close(factorized_embedding(index, table, 5), F.embedding(index, table, 5))


def test_factorized_embedding_padding_rows_get_no_gradient() -> None:
    table = _table("TT")
    index = torch.tensor([5, 5, 2])
    factorized_embedding(index, table, padding_idx=5)[:2].sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in table.parameters())
