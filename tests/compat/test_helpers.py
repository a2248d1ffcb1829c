"""tltorch 0.5's helpers kept for tltorch code: kernel layouts, shapes, lists, integer helpers.

Expected values are tltorch 0.5's results for the same inputs (checked once against
tltorch, kept here as data).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tfx
from tests.strategies import shapes
from tfx.factorized_layers import (
    SubFactorizedConv,
    SubFactorizedEmbedding,
    SubFactorizedLinear,
    factorization_shape_to_kernel_shape,
    kernel_shape_to_factorization_shape,
    kernel_to_tensor,
    tensor_to_kernel,
)
from tfx.factorized_tensors import (
    ComplexHandler,
    is_tensorized_shape,
    tensorized_shape_to_shape,
    validate_block_tt_rank,
)
from tfx.utils import ComplexFactorList, FactorList, ParameterList, factorize, merge_ints


# --------------------------------------------------------------------------- kernel layouts
@pytest.mark.parametrize(
    ("factorization", "kernel_shape", "expected"),
    [
        ("tt", (16, 8, 3, 3), (8, 3, 3, 16)),
        ("TT", (4, 2, 5), (2, 5, 4)),
        ("cp", (16, 8, 3, 3), (16, 8, 3, 3)),
        ("tucker", (7, 3, 2, 2, 2), (7, 3, 2, 2, 2)),
        ("ComplexTT", (16, 8, 3, 3), (16, 8, 3, 3)),  # tltorch moves modes for 'tt' only
    ],
)
def test_kernel_shape_to_factorization_shape_matches_tltorch(
    factorization: str, kernel_shape: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    assert kernel_shape_to_factorization_shape(factorization, kernel_shape) == expected
    assert factorization_shape_to_kernel_shape(factorization, expected) == kernel_shape


@pytest.mark.parametrize("factorization", ["tt", "cp", "tucker"])
@given(shape=shapes(min_order=2, max_order=5, max_size=4))
def test_kernel_to_tensor_and_back_is_the_identity(
    factorization: str, shape: tuple[int, ...]
) -> None:
    kernel = torch.randn(shape, dtype=torch.float64)
    tensor = kernel_to_tensor(factorization, kernel)
    assert tuple(tensor.shape) == kernel_shape_to_factorization_shape(factorization, shape)
    assert torch.equal(tensor_to_kernel(factorization, tensor), kernel)


def test_tt_kernel_moves_the_output_channels_last() -> None:
    kernel = torch.randn(5, 3, 2, 2)
    assert torch.equal(kernel_to_tensor("tt", kernel)[:, :, :, 4], kernel[4])


def test_kernel_helpers_raise_for_a_factorization_that_is_not_a_name() -> None:
    with pytest.raises(tfx.OptionError, match=r"must be a factorization name(.|\n)*weight\.name"):
        kernel_to_tensor(tfx.CPTensor, torch.zeros(2, 2))  # type: ignore[arg-type]


def test_kernel_helpers_raise_for_a_tt_kernel_without_channels() -> None:
    with pytest.raises(tfx.ShapeError, match=r"order 1(.|\n)*\(out_channels, in_channels, 3, 3\)"):
        kernel_shape_to_factorization_shape("tt", (16,))


# --------------------------------------------------------------------------- shapes
@pytest.mark.parametrize(
    ("shape", "tensorized", "matrix"),
    [
        (((4, 3), (5, 2)), True, [12, 10]),
        ((2, (4, 3), (5, 2)), True, [2, 12, 10]),
        ((3, 4), False, [3, 4]),
        ([[2, 2], [3, 3]], True, [4, 9]),
    ],
)
def test_tensorized_shape_helpers_match_tltorch(
    shape: Any, tensorized: bool, matrix: list[int]
) -> None:
    assert is_tensorized_shape(shape) is tensorized
    assert tensorized_shape_to_shape(shape) == matrix


def test_tensorized_shape_to_shape_raises_for_a_bad_entry() -> None:
    with pytest.raises(tfx.ShapeError, match=r"entry 'a' is neither a size"):
        tensorized_shape_to_shape(((4, 3), "a"))


@pytest.mark.parametrize(
    ("rank", "expected"),
    [(4, (1, 4, 4, 1)), (0.5, (1, 7, 3, 1)), ((1, 3, 2, 1), (1, 3, 2, 1))],
)
def test_validate_block_tt_rank_matches_tltorch_and_block_tt(
    rank: Any, expected: tuple[int, ...]
) -> None:
    shape = ((4, 3, 2), (5, 3, 2))
    assert validate_block_tt_rank(shape, rank) == expected == tfx.BlockTT.new(shape, rank=rank).rank


# -------------------------------------------------------------------------- complex forms and lists
def test_complex_handler_makes_a_form_complex() -> None:
    class MyComplexTT(ComplexHandler, tfx.TTTensor):
        pass

    tensor = MyComplexTT.new((3, 4), rank=2)
    assert tensor.to_tensor().is_complex() and not any(p.is_complex() for p in tensor.parameters())


def test_complex_factor_list_stores_real_pairs_and_reads_complex() -> None:
    values = torch.randn(2, 3, dtype=torch.complex128)
    factors = ComplexFactorList([torch.nn.Parameter(values.clone())])
    assert isinstance(factors, FactorList)
    assert factors[0].dtype == torch.complex128 and factors.factor_0.shape == (2, 3, 2)
    assert torch.equal(factors[0], values)


def test_parameter_list_keeps_keys_through_insert_and_pop() -> None:
    params = ParameterList([torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(2))])
    params.insert(0, torch.nn.Parameter(torch.zeros(3)))
    popped = params.pop(1)
    assert popped.shape == (1,)
    assert [p.shape[0] for p in params] == [3, 2]
    assert list(params.state_dict()) == ["param_1", "param_2"]


def test_parameter_list_index_out_of_range_raises_index_error() -> None:
    with pytest.raises(IndexError, match=r"index 2 is out of range"):
        ParameterList([torch.nn.Parameter(torch.zeros(1))])[2]


def test_sub_factorized_classes_are_what_indexing_a_stack_returns() -> None:
    layer = tfx.FactorizedLinear(6, 4, n_layers=2, factorization="cp", rank=2)
    assert SubFactorizedLinear is SubFactorizedConv is SubFactorizedEmbedding
    assert isinstance(layer[1], SubFactorizedLinear)


# --------------------------------------------------------------------------- integer helpers
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((12,), (2, 2, 3)),
        ((12, 3), (3, 4)),
        ((64, 2, 2), (2, 2, 16)),
        ((97,), (97,)),
        ((8, 3), (8,)),
        ((1,), (1,)),
        ((768, 2, 0), (768,)),
    ],
)
def test_factorize_matches_tltorch(args: tuple[int, ...], expected: tuple[int, ...]) -> None:
    assert factorize(*args) == expected


@given(value=st.integers(1, 5000), min_value=st.integers(1, 6))
def test_factorize_multiplies_back(value: int, min_value: int) -> None:
    parts = factorize(value, min_value)
    product = 1
    for p in parts:
        product *= p
    assert product == value


def test_factorize_rejects_a_non_integer() -> None:
    with pytest.raises(tfx.ShapeError, match=r"value=2.5 is not a valid integer to factorize"):
        factorize(2.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "size", "expected"),
    [((2, 2, 3, 5), 2, (5, 12)), ([3, 2], 3, (2, 3)), ([5], 2, [5])],
)
def test_merge_ints_matches_tltorch(values: Any, size: int, expected: Any) -> None:
    assert merge_ints(values, size) == expected
