"""tensorly interop: conversions both ways, tensorly's decompositions, and its backend left alone.

References are tensorly's own reconstructions and decompositions, run in float64 and
compared with torch.testing.assert_close's default tolerances; round trips are exact.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tensorly
import torch
from hypothesis import given
from hypothesis import strategies as st
from tensorly.cp_tensor import CPTensor as TlCP
from tensorly.decomposition import parafac, tensor_train, tensor_train_matrix, tucker
from tensorly.tt_matrix import TTMatrix
from tensorly.tt_tensor import TTTensor as TlTT
from tensorly.tucker_tensor import TuckerTensor as TlTucker
from torch.testing import assert_close

import tfx
from tests.strategies import shapes, tensorized_shapes, tt_ranks, tucker_ranks
from tfx.tensors._tensorly import pytorch_backend

F64 = torch.float64
PLAIN = {"cp": tfx.CPTensor, "tucker": tfx.TuckerTensor, "tt": tfx.TTTensor}
TENSORIZED = {
    "cp-tensorized": tfx.CPTensorized,
    "tucker-tensorized": tfx.TuckerTensorized,
    "tt-tensorized": tfx.TTTensorized,
    "blocktt": tfx.BlockTT,
}
COMPLEX = {
    "complex-cp": tfx.ComplexCPTensor,
    "complex-tt": tfx.ComplexTTTensor,
    "complex-blocktt": tfx.ComplexBlockTT,
}
FORMS = {**PLAIN, **TENSORIZED, **COMPLEX}


# --------------------------------------------------------------------------- helpers
def random_tensor(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def multilinear(ranks: tuple[int, ...]) -> tuple[int, ...]:
    """Lower Tucker ranks until each is at most the product of the others (else tensorly warns)."""
    out = list(ranks)
    changed = True
    while changed:
        changed = False
        for k, r in enumerate(out):
            bound = math.prod(out[:k] + out[k + 1 :])
            if r > bound:
                out[k], changed = bound, True
    return tuple(out)


def draw_form(data: st.DataObject, kind: str) -> tfx.FactorizedTensor:
    """A random float64 tfx tensor of form ``kind``, small shapes."""
    cls = FORMS[kind]
    if issubclass(cls, tfx.TensorizedTensor):
        rows, cols = data.draw(tensorized_shapes(batch=False, max_length=3, max_size=3))
        if issubclass(cls, tfx.BlockTT):
            rank: Any = data.draw(tt_ranks([r * c for r, c in zip(rows, cols, strict=False)]))
        elif issubclass(cls, tfx.TTTensor):
            rank = data.draw(tt_ranks((*rows, *cols)))
        elif issubclass(cls, tfx.TuckerTensor):
            rank = data.draw(tucker_ranks((*rows, *cols)))
        else:
            rank = data.draw(st.integers(1, 4))
        return cls.new((rows, cols), rank=rank, dtype=F64)
    # tensorly's TuckerTensor has at least two modes.
    shape = data.draw(
        shapes(min_order=2 if issubclass(cls, tfx.TuckerTensor) else 1, max_order=4, max_size=5)
    )
    if issubclass(cls, tfx.TTTensor):
        rank = data.draw(tt_ranks(shape))
    elif issubclass(cls, tfx.TuckerTensor):
        rank = data.draw(tucker_ranks(shape))
    else:
        rank = data.draw(st.integers(1, 4))
    return cls.new(shape, rank=rank, dtype=F64)


def tensorly_dense(value: Any) -> torch.Tensor:
    with pytorch_backend():
        return value.to_tensor()


def parts(value: Any) -> list[torch.Tensor]:
    """Every array of a tensorly object, flattened to one list."""
    if isinstance(value, TlCP):
        return [value.weights, *value.factors]
    if isinstance(value, TlTucker):
        return [value.core, *value.factors]
    return list(value.factors)


def tensorized_shape(tensor: tfx.FactorizedTensor) -> Any:
    return tensor.tensorized_shape if isinstance(tensor, tfx.TensorizedTensor) else None


# --------------------------------------------------------------------------- conversions
@pytest.mark.parametrize("kind", sorted(FORMS))
@given(data=st.data())
def test_to_tensorly_reconstructs_like_tfx_and_round_trips_exactly(
    kind: str, data: st.DataObject
) -> None:
    tensor = draw_form(data, kind)
    value = tensor.to_tensorly()
    with torch.no_grad():
        assert_close(tensorly_dense(value), tensor.to_tensor())
    back = type(tensor).from_tensorly(value, tensorized_shape(tensor))
    assert type(back) is type(tensor)
    assert (back.shape, back.rank) == (tensor.shape, tensor.rank)
    assert all(
        torch.equal(a, b) for a, b in zip(back.parameters(), tensor.parameters(), strict=True)
    )
    if kind in PLAIN:  # the root class picks the form
        assert type(tfx.FactorizedTensor.from_tensorly(value)) is PLAIN[kind]


@st.composite
def tensorly_values(draw: st.DrawFn, kind: str) -> Any:
    """A tensorly object of random float64 torch factors."""
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)

    def rand(*size: int) -> torch.Tensor:
        return torch.randn(size, generator=gen, dtype=F64)

    if kind == "ttm":
        rows, cols = draw(tensorized_shapes(batch=False, max_length=3, max_size=3))
        rank = draw(tt_ranks([r * c for r, c in zip(rows, cols, strict=False)]))
        factors = [rand(rank[k], rows[k], cols[k], rank[k + 1]) for k in range(len(rows))]
        with pytorch_backend():
            return TTMatrix(factors)
    shape = draw(shapes(min_order=2 if kind == "tucker" else 1, max_order=4, max_size=5))
    with pytorch_backend():
        if kind == "cp":
            r = draw(st.integers(1, 4))
            return TlCP((rand(r), [rand(s, r) for s in shape]))
        if kind == "tucker":
            rank = draw(tucker_ranks(shape))
            return TlTucker((rand(*rank), [rand(s, r) for s, r in zip(shape, rank, strict=False)]))
        rank = draw(tt_ranks(shape))
        return TlTT([rand(rank[k], s, rank[k + 1]) for k, s in enumerate(shape)])


@pytest.mark.parametrize("kind", ["cp", "tucker", "tt", "ttm"])
@given(data=st.data())
def test_round_trip_from_tensorly_is_exact(kind: str, data: st.DataObject) -> None:
    value = data.draw(tensorly_values(kind))
    back = tfx.FactorizedTensor.from_tensorly(value).to_tensorly()
    assert type(back) is type(value)
    assert all(torch.equal(a, b) for a, b in zip(parts(back), parts(value), strict=True))


def test_from_tensorly_reads_numpy_backed_values() -> None:
    rng = np.random.default_rng(0)
    weights, factors = rng.standard_normal(3), [rng.standard_normal((s, 3)) for s in (4, 5, 2)]
    with tensorly.backend_context("numpy", local_threadsafe=True):
        value = TlCP((weights, factors))
    tensor = tfx.CPTensor.from_tensorly(value)
    assert tensor.weights.dtype == F64
    assert all(
        torch.equal(f, torch.from_numpy(g)) for f, g in zip(tensor.factors, factors, strict=True)
    )


def test_from_tensorly_copies_the_values() -> None:
    value = tfx.TTTensor.new((3, 4), rank=2, dtype=F64).to_tensorly()
    tensor = tfx.TTTensor.from_tensorly(value)
    with torch.no_grad():
        tensor.factors[0].add_(1)
    assert not torch.equal(tensor.factors[0], value.factors[0])


def test_to_tensorly_shares_factors_and_keeps_autograd() -> None:
    tensor = tfx.CPTensor.new((3, 4), rank=2, dtype=F64)
    tensorly_dense(tensor.to_tensorly()).sum().backward()
    assert tensor.weights.grad is not None


def test_tensorized_from_tensorly_regroups_modes() -> None:
    value = tfx.CPTensor.new((4, 3, 5, 2), rank=3, dtype=F64).to_tensorly()
    tensor = tfx.TensorizedTensor.from_tensorly(value, tensorized_shape=((4, 3), (5, 2)))
    assert type(tensor) is tfx.CPTensorized and tensor.shape == (12, 10)


def test_complex_form_from_real_tensorly_values() -> None:
    value = tfx.TTTensor.new((3, 4), rank=2, dtype=F64).to_tensorly()
    tensor = tfx.ComplexTTTensor.from_tensorly(value)
    assert_close(tensor.to_tensor(), tensorly_dense(value).to(torch.complex128))


def test_dense_forms_convert_to_and_from_plain_tensors() -> None:
    values = random_tensor(0, (3, 4))
    tensor = tfx.FactorizedTensor.from_tensorly(values)
    assert type(tensor) is tfx.DenseTensor and torch.equal(tensor.to_tensorly(), values)


# --------------------------------------------------------------------------- decompositions
@given(
    shape=shapes(min_order=2, max_order=4, max_size=5), seed=st.integers(0, 2**16), data=st.data()
)
def test_tt_svd_agrees_with_tensorly_tensor_train(
    shape: tuple[int, ...], seed: int, data: st.DataObject
) -> None:
    tensor, rank = random_tensor(seed, shape), data.draw(tt_ranks(shape))
    with pytorch_backend():
        expected = tensor_train(tensor, list(rank)).to_tensor()
    assert_close(tfx.TTTensor.from_tensor(tensor, rank=rank).to_tensor(), expected)


@given(
    shape=tensorized_shapes(batch=False, max_length=3, max_size=3),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_block_tt_agrees_with_tensorly_tensor_train_matrix(
    shape: Any, seed: int, data: st.DataObject
) -> None:
    rows, cols = shape
    rank = data.draw(tt_ranks([r * c for r, c in zip(rows, cols, strict=False)]))
    tensor = random_tensor(seed, (*rows, *cols))
    with pytorch_backend():
        expected = tensor_train_matrix(tensor, list(rank)).to_tensor()
    assert_close(tfx.BlockTT.from_tensor(tensor, (rows, cols), rank=rank).to_tensor(), expected)


@given(
    shape=shapes(min_order=2, max_order=4, max_size=5), seed=st.integers(0, 2**16), data=st.data()
)
def test_tucker_error_is_within_the_hosvd_bound_of_tensorly_tucker(
    shape: tuple[int, ...], seed: int, data: st.DataObject
) -> None:
    # tfx runs a truncated HOSVD, tensorly HOOI (which is at least as good as the best
    # approximation is bad): ||T - T_hosvd|| <= sqrt(order) * ||T - T_best||.
    tensor, rank = random_tensor(seed, shape), multilinear(data.draw(tucker_ranks(shape)))
    with pytorch_backend():
        tensorly_error = torch.linalg.vector_norm(tensor - tucker(tensor, list(rank)).to_tensor())
    tfx_error = torch.linalg.vector_norm(
        tensor - tfx.TuckerTensor.from_tensor(tensor, rank=rank).to_tensor()
    )
    assert tfx_error <= math.sqrt(len(shape)) * tensorly_error + 1e-10 * torch.linalg.vector_norm(
        tensor
    )


@given(shape=shapes(min_order=2, max_order=4, max_size=5), seed=st.integers(0, 2**16))
def test_cp_of_a_rank_one_tensor_agrees_with_tensorly_parafac(
    shape: tuple[int, ...], seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    vectors = [torch.randn(s, generator=gen, dtype=F64) for s in shape]
    tensor = vectors[0]
    for v in vectors[1:]:
        tensor = torch.tensordot(tensor, v, dims=0)
    with pytorch_backend():
        expected = parafac(tensor, 1).to_tensor()
    assert_close(tfx.CPTensor.from_tensor(tensor, rank=1).to_tensor(), expected)


@st.composite
def decomposition_cases(draw: st.DrawFn) -> tuple[str, Any, Callable[..., Any], torch.Tensor, Any]:
    """(factorization, decomposition= as name or callable, tensorly function, tensor, rank)."""
    factorization, name, fn = draw(
        st.sampled_from(
            [
                ("cp", "parafac", parafac),
                ("tucker", "tucker", tucker),
                ("tt", "tensor_train", tensor_train),
            ]
        )
    )
    shape = draw(shapes(min_order=2, max_order=4, min_size=2, max_size=5))
    tensor = random_tensor(draw(st.integers(0, 2**16)), shape)
    if factorization == "cp":
        rank: Any = draw(st.integers(1, min(shape)))  # within the SVD initialisation: deterministic
    elif factorization == "tucker":
        rank = multilinear(draw(tucker_ranks(shape)))
    else:
        rank = draw(st.one_of(tt_ranks(shape), st.floats(0.1, 1.0), st.just("same")))
    return factorization, draw(st.sampled_from([name, fn])), fn, tensor, rank


@given(case=decomposition_cases())
def test_decomposition_option_matches_calling_tensorly(
    case: tuple[str, Any, Callable[..., Any], torch.Tensor, Any],
) -> None:
    factorization, decomposition, fn, tensor, rank = case
    result = tfx.FactorizedTensor.from_tensor(
        tensor, rank=rank, factorization=factorization, decomposition=decomposition
    )
    tensorly_rank = result.rank if isinstance(result.rank, int) else list(result.rank)
    with pytorch_backend():
        expected = fn(tensor, rank=tensorly_rank).to_tensor()
    assert isinstance(result, PLAIN[factorization])
    assert_close(result.to_tensor(), expected)


@pytest.mark.parametrize("rank", [0.5, "same", 3])
def test_decomposition_option_normalises_rank_like_tfx(rank: Any) -> None:
    tensor = random_tensor(0, (4, 5, 6))
    via_tensorly = tfx.FactorizedTensor.from_tensor(
        tensor, rank=rank, factorization="tt", decomposition="tensor_train"
    )
    assert via_tensorly.rank == tfx.TTTensor.from_tensor(tensor, rank=rank).rank


def test_decomposition_option_for_block_tt_matches_tensor_train_matrix() -> None:
    matrix = random_tensor(1, (6, 20))
    tensor = tfx.TensorizedTensor.from_matrix(
        matrix,
        (2, 3),
        (4, 5),
        rank=(1, 3, 1),
        factorization="blocktt",
        decomposition="tensor_train_matrix",
    )
    with pytorch_backend():
        expected = tensor_train_matrix(matrix.reshape(2, 3, 4, 5), [1, 3, 1]).to_matrix()
    assert type(tensor) is tfx.BlockTT
    assert_close(tensor.to_matrix(), expected)


@pytest.mark.parametrize("factorization", ["cp", "tucker", "tt"])
def test_decomposition_true_uses_the_forms_tensorly_decomposition(factorization: str) -> None:
    tensor = random_tensor(2, (3, 4, 5))
    result = tfx.FactorizedTensor.from_tensor(
        tensor,
        rank=(1, 3, 3, 1) if factorization == "tt" else 2,
        factorization=factorization,
        decomposition=True,
    )
    assert isinstance(result, PLAIN[factorization])


def test_decomposition_option_keeps_dtype() -> None:
    tensor = random_tensor(3, (3, 4, 5)).float()
    result = tfx.FactorizedTensor.from_tensor(
        tensor, rank=2, factorization="cp", decomposition="parafac"
    )
    assert result.weights.dtype == torch.float32


def test_decomposition_returning_errors_keeps_the_decomposition() -> None:
    tensor = random_tensor(4, (3, 4, 5))
    result = tfx.FactorizedTensor.from_tensor(
        tensor, rank=2, factorization="cp", decomposition="parafac", return_errors=True
    )
    assert isinstance(result, tfx.CPTensor)


# --------------------------------------------------------------------------- tensorly's backend
def test_tensorly_global_backend_is_unchanged_by_conversions_and_decompositions() -> None:
    before = tensorly.get_backend()
    tensor = random_tensor(5, (3, 4, 5))
    for factorization in ("cp", "tucker", "tt"):
        result = tfx.FactorizedTensor.from_tensor(
            tensor, rank=2, factorization=factorization, decomposition=True
        )
        tfx.FactorizedTensor.from_tensorly(result.to_tensorly())
    assert tensorly.get_backend() == before


def test_other_threads_see_the_global_backend_while_tfx_runs_tensorly() -> None:
    before = tensorly.get_backend()
    seen: dict[str, str] = {}

    def spying_tensor_train(tensor: torch.Tensor, rank: Any) -> Any:
        seen["caller"] = tensorly.get_backend()
        other = threading.Thread(target=lambda: seen.__setitem__("other", tensorly.get_backend()))
        other.start()
        other.join()
        return tensor_train(tensor, rank)

    tfx.FactorizedTensor.from_tensor(
        random_tensor(6, (3, 4)), rank=2, factorization="tt", decomposition=spying_tensor_train
    )
    assert seen == {"caller": "pytorch", "other": before}


# --------------------------------------------------------------------------- errors
def test_from_tensorly_raises_for_another_form() -> None:
    value = tfx.TuckerTensor.new((3, 4), rank=2, dtype=F64).to_tensorly()
    with pytest.raises(
        tfx.OptionError, match=r"the forms differ(.|\n)*TuckerTensor\.from_tensorly"
    ):
        tfx.CPTensor.from_tensorly(value)


def test_from_tensorly_raises_without_a_tensorized_shape() -> None:
    value = tfx.CPTensor.new((4, 6), rank=2, dtype=F64).to_tensorly()
    with pytest.raises(tfx.ShapeError, match=r"needs the tensorized shape"):
        tfx.CPTensorized.from_tensorly(value)


def test_from_tensorly_raises_for_a_tensorized_shape_that_does_not_fit() -> None:
    value = tfx.CPTensor.new((4, 6), rank=2, dtype=F64).to_tensorly()
    with pytest.raises(tfx.ShapeError, match=r"does not fit(.|\n)*\(4, 6\)"):
        tfx.CPTensorized.from_tensorly(value, tensorized_shape=((2, 2), (3, 3)))


def test_from_tensorly_raises_for_malformed_factors() -> None:
    with pytest.raises(tfx.ShapeError, match=r"not a valid CPTensor"):
        tfx.CPTensor.from_tensorly((torch.ones(2), [torch.ones(3, 2), torch.ones(4, 3)]))


def test_from_tensorly_raises_for_complex_values_in_a_real_form() -> None:
    value = tfx.ComplexCPTensor.new((3, 4), rank=2).to_tensorly()
    with pytest.raises(tfx.TensorError, match=r"complex values(.|\n)*ComplexCPTensor"):
        tfx.CPTensor.from_tensorly(value)


def test_from_tensorly_raises_for_values_it_does_not_know() -> None:
    with pytest.raises(tfx.TensorError, match=r"not a tensorly"):
        tfx.FactorizedTensor.from_tensorly("cp")


def test_to_tensorly_raises_for_a_one_mode_tucker_tensor() -> None:
    with pytest.raises(tfx.ShapeError, match=r"at least two modes"):
        tfx.TuckerTensor.new((4,), rank=2).to_tensorly()


def test_to_tensorly_raises_for_a_stacked_block_tt() -> None:
    with pytest.raises(tfx.ShapeError, match=r"no tensorly counterpart"):
        tfx.BlockTT.new((2, (2, 3), (3, 2)), rank=2).to_tensorly()


def test_unknown_decomposition_name_suggests_the_closest() -> None:
    with pytest.raises(tfx.OptionError, match=r"Did you mean 'parafac'"):
        tfx.FactorizedTensor.from_tensor(
            random_tensor(0, (3, 4, 5)), rank=2, factorization="cp", decomposition="parafca"
        )


def test_decomposition_must_be_a_name_or_a_callable() -> None:
    with pytest.raises(tfx.OptionError, match=r"neither a callable nor the name"):
        tfx.FactorizedTensor.from_tensor(
            random_tensor(0, (3, 4)), rank=2, factorization="cp", decomposition=3
        )


def test_decomposition_of_a_dense_form_raises() -> None:
    with pytest.raises(tfx.OptionError, match=r"nothing to decompose"):
        tfx.FactorizedTensor.from_tensor(
            random_tensor(0, (3, 4)), factorization="dense", decomposition="parafac"
        )


def test_decomposition_returning_another_form_raises() -> None:
    def cp_instead(tensor: torch.Tensor, rank: Any) -> Any:
        return parafac(tensor, 2)

    with pytest.raises(tfx.OptionError, match=r"the forms differ"):
        tfx.FactorizedTensor.from_tensor(
            random_tensor(0, (3, 4, 5)), rank=2, factorization="tucker", decomposition=cp_instead
        )


def test_failing_decomposition_raises_with_its_reason() -> None:
    with pytest.raises(
        tfx.TensorError, match=r"tensorly\.decomposition\.parafac failed(.|\n)*no_such_option"
    ):
        tfx.FactorizedTensor.from_tensor(
            random_tensor(0, (3, 4, 5)),
            rank=2,
            factorization="cp",
            decomposition="parafac",
            no_such_option=1,
        )


def test_decomposition_option_rejects_ranks_the_tensor_cannot_hold() -> None:
    with pytest.raises(tfx.RankError, match=r"largest valid rank is \(5, 4, 3, 3\)"):
        tfx.FactorizedTensor.from_tensor(
            random_tensor(0, (5, 4, 3, 3)), rank=30, factorization="tucker", decomposition="tucker"
        )
