"""Every registered form: decomposition at full rank, parameter counts, the tltorch interface."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tfx
from tests.helpers import (
    blocktt_core_sizes,
    expected_parameters,
    family,
    full_rank,
    is_complex_form,
    random_input,
    tensor_shape,
)
from tests.strategies import (
    PLAIN_FORMS,
    TENSORIZED_FORMS,
    form_names,
    matrix_shapes,
    rank_specs,
    shapes,
    tensorized_shapes,
)

NON_CP_PLAIN = [f for f in PLAIN_FORMS if family(f) != "cp"]
CP_PLAIN = [f for f in PLAIN_FORMS if family(f) == "cp"]
NON_CP_TENSORIZED = [f for f in TENSORIZED_FORMS if family(f) != "cp"]
CP_TENSORIZED = [f for f in TENSORIZED_FORMS if family(f) == "cp"]

PLAIN_SHAPE = (3, 4, 5)
TENSORIZED_SHAPE = (2, (2, 3), (3, 2))


# ------------------------------------------------------------- full-rank decompositions
@pytest.mark.parametrize("form", NON_CP_PLAIN)
@given(shape=shapes())
def test_from_tensor_full_rank_reproduces_input(form: str, shape: tuple[int, ...]) -> None:
    x = random_input(shape, form)
    rank = full_rank(form, shape) or "same"
    t = tfx.FactorizedTensor.from_tensor(x, rank=rank, factorization=form)
    torch.testing.assert_close(t.to_tensor(), x)


@pytest.mark.parametrize("form", CP_PLAIN)
@given(shape=matrix_shapes())
def test_from_tensor_cp_of_matrix_full_rank_reproduces_input(
    form: str, shape: tuple[int, int]
) -> None:
    x = random_input(shape, form)
    t = tfx.FactorizedTensor.from_tensor(x, rank=min(shape), factorization=form)
    torch.testing.assert_close(t.to_tensor(), x)


@pytest.mark.parametrize("form", NON_CP_TENSORIZED)
@given(tshape=tensorized_shapes())
def test_tensorized_from_tensor_full_rank_reproduces_input(form: str, tshape: tuple) -> None:
    x = random_input(tensor_shape(tshape), form)
    rank = full_rank(form, tshape, tensorized=True) or "same"
    t = tfx.TensorizedTensor.from_tensor(x, tshape, rank=rank, factorization=form)
    torch.testing.assert_close(t.to_tensor(), x)


@pytest.mark.parametrize("form", CP_TENSORIZED)
@given(tshape=tensorized_shapes(batch=False, max_length=1, max_size=6))
def test_tensorized_cp_of_matrix_full_rank_reproduces_input(form: str, tshape: tuple) -> None:
    x = random_input(tensor_shape(tshape), form)
    t = tfx.TensorizedTensor.from_tensor(
        x, tshape, rank=min(tensor_shape(tshape)), factorization=form
    )
    torch.testing.assert_close(t.to_tensor(), x)


def _exact_cp(shape: tuple[int, ...], rank: int, dtype: torch.dtype) -> torch.Tensor:
    factors = [torch.randn(s, rank, dtype=dtype) for s in shape]
    letters = "abcdef"[: len(shape)]
    return torch.einsum(",".join(f"{m}z" for m in letters) + "->" + letters, *factors)


@pytest.mark.parametrize("form", CP_PLAIN)
def test_from_tensor_cp_recovers_exact_low_rank_tensor(form: str) -> None:
    dtype = torch.complex128 if is_complex_form(form) else torch.float64
    x = _exact_cp((6, 5, 4), 3, dtype)
    t = tfx.FactorizedTensor.from_tensor(x, rank=3, factorization=form)
    fit = 1 - float(torch.linalg.norm(t.to_tensor().detach() - x) / torch.linalg.norm(x))
    assert fit > 0.999


@pytest.mark.parametrize("form", CP_TENSORIZED)
def test_tensorized_from_tensor_cp_recovers_exact_low_rank_tensor(form: str) -> None:
    dtype = torch.complex128 if is_complex_form(form) else torch.float64
    tshape = ((3, 4), (4, 2))
    x = _exact_cp(tensor_shape(tshape), 2, dtype)
    t = tfx.TensorizedTensor.from_tensor(x, tshape, rank=2, factorization=form)
    fit = 1 - float(torch.linalg.norm(t.to_tensor().detach() - x) / torch.linalg.norm(x))
    assert fit > 0.999


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_from_tensor_keeps_float64_dtype(form: str) -> None:
    x = random_input((4, 5), form)
    t = tfx.FactorizedTensor.from_tensor(
        x, rank=2 if family(form) != "tt" else (1, 2, 1), factorization=form
    )
    assert t.to_tensor().dtype == x.dtype


@pytest.mark.parametrize("form", [f for f in PLAIN_FORMS if not is_complex_form(f)])
def test_from_tensor_keeps_bfloat16_dtype(form: str) -> None:
    x = torch.randn(4, 5).to(torch.bfloat16)
    rank = (1, 2, 1) if family(form) == "tt" else 2
    t = tfx.FactorizedTensor.from_tensor(x, rank=rank, factorization=form)
    assert t.to_tensor().dtype == torch.bfloat16


# ------------------------------------------------------------- parameter counts
def _rank_family(form: str) -> str:
    return "tt" if family(form) == "blocktt" else family(form)


@pytest.mark.parametrize("form", PLAIN_FORMS)
@given(data=st.data(), shape=shapes())
def test_new_parameter_count_matches_formula(
    form: str, data: st.DataObject, shape: tuple[int, ...]
) -> None:
    rank = "same" if family(form) == "dense" else data.draw(rank_specs(shape, _rank_family(form)))
    t = tfx.FactorizedTensor.new(shape, rank=rank, factorization=form)
    assert sum(p.numel() for p in t.parameters()) == expected_parameters(form, t)


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
@given(data=st.data(), tshape=tensorized_shapes())
def test_tensorized_new_parameter_count_matches_formula(
    form: str, data: st.DataObject, tshape: tuple
) -> None:
    if family(form) == "dense":
        rank = "same"
    elif family(form) == "blocktt":
        rank = data.draw(rank_specs(blocktt_core_sizes(tshape), "tt"))
    else:
        rank = data.draw(rank_specs(tensor_shape(tshape), family(form)))
    t = tfx.TensorizedTensor.new(tshape, rank=rank, factorization=form)
    assert sum(p.numel() for p in t.parameters()) == expected_parameters(form, t)


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_n_parameters_counts_stored_scalars(form: str) -> None:
    t = tfx.FactorizedTensor.new(PLAIN_SHAPE, rank=0.5, factorization=form)
    assert t.n_parameters == expected_parameters(form, t)


# ------------------------------------------------------------- the interface
@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_forward_returns_the_tensor_itself(form: str) -> None:
    t = tfx.FactorizedTensor.new(PLAIN_SHAPE, rank=0.5, factorization=form)
    assert t() is t


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_tensorized_forward_returns_the_tensor_itself(form: str) -> None:
    t = tfx.TensorizedTensor.new(TENSORIZED_SHAPE, rank=0.5, factorization=form)
    assert t() is t


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_shape_and_ndim_match_the_requested_shape(form: str) -> None:
    t = tfx.FactorizedTensor.new(PLAIN_SHAPE, rank=0.5, factorization=form)
    assert (tuple(t.shape), t.ndim, tuple(t.to_tensor().shape)) == (PLAIN_SHAPE, 3, PLAIN_SHAPE)


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_name_is_the_registered_name(form: str) -> None:
    t = tfx.FactorizedTensor.new(PLAIN_SHAPE, rank=0.5, factorization=form.lower())
    assert (t._name, t.name) == (form, form)


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_tensorized_name_is_the_registered_name(form: str) -> None:
    t = tfx.TensorizedTensor.new(TENSORIZED_SHAPE, rank=0.5, factorization=form.lower())
    assert (t._name, t.name) == (form, form)


def _rank_kind(t: tfx.FactorizedTensor) -> object:
    rank = t.rank
    if rank is None:
        return None
    if isinstance(rank, int):
        return "int"
    return (
        type(rank).__name__,
        len(rank),
        rank[0] if family(t._name) in {"tt", "blocktt"} else None,
    )


_PLAIN_RANK_KIND = {"dense": None, "cp": "int", "tucker": ("tuple", 3, None), "tt": ("tuple", 4, 1)}


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_rank_has_the_tltorch_type(form: str) -> None:
    t = tfx.FactorizedTensor.new(PLAIN_SHAPE, rank=0.5, factorization=form)
    assert _rank_kind(t) == _PLAIN_RANK_KIND[family(form)]


_TENSORIZED_RANK_KIND = {
    "dense": None,
    "cp": "int",
    "tucker": ("tuple", 5, None),
    "tt": ("tuple", 6, 1),
    "blocktt": ("tuple", 3, 1),
}


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_tensorized_rank_has_the_tltorch_type(form: str) -> None:
    t = tfx.TensorizedTensor.new(TENSORIZED_SHAPE, rank=0.5, factorization=form)
    assert _rank_kind(t) == _TENSORIZED_RANK_KIND[family(form)]


@pytest.mark.parametrize("form", [f for f in PLAIN_FORMS if family(f) == "tt"])
def test_tt_rank_ends_with_boundary_one(form: str) -> None:
    t = tfx.FactorizedTensor.new(PLAIN_SHAPE, rank=0.5, factorization=form)
    assert t.rank[-1] == 1


# ------------------------------------------------------------- names
@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("cp", tfx.CPTensor),
        ("CP", tfx.CPTensor),
        ("Cp", tfx.CPTensor),
        ("tucker", tfx.TuckerTensor),
        ("TUCKER", tfx.TuckerTensor),
        ("tt", tfx.TTTensor),
        ("TT", tfx.TTTensor),
        ("dense", tfx.DenseTensor),
        ("complextt", tfx.ComplexTTTensor),
        ("ComplexTT", tfx.ComplexTTTensor),
        ("complexcp", tfx.ComplexCPTensor),
        ("ComplexTucker", tfx.ComplexTuckerTensor),
        ("complexdense", tfx.ComplexDenseTensor),
    ],
)
def test_new_accepts_names_case_insensitively(name: str, cls: type) -> None:
    assert type(tfx.FactorizedTensor.new(PLAIN_SHAPE, rank=0.5, factorization=name)) is cls


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("blocktt", tfx.BlockTT),
        ("BlockTT", tfx.BlockTT),
        ("BLOCKTT", tfx.BlockTT),
        ("block-tt", tfx.BlockTT),
        ("cp", tfx.CPTensorized),
        ("Tucker", tfx.TuckerTensorized),
        ("dense", tfx.DenseTensorized),
        ("complexblocktt", tfx.ComplexBlockTT),
        ("ComplexCP", tfx.ComplexCPTensorized),
        ("complextucker", tfx.ComplexTuckerTensorized),
        ("ComplexDense", tfx.ComplexDenseTensorized),
    ],
)
def test_tensorized_new_accepts_names_case_insensitively(name: str, cls: type) -> None:
    assert type(tfx.TensorizedTensor.new(TENSORIZED_SHAPE, rank=0.5, factorization=name)) is cls


def _recased(name: str, flips: list[bool]) -> str:
    return "".join(
        c.swapcase() if flip else c
        for c, flip in zip(name, flips + [False] * len(name), strict=False)
    )


@given(name=form_names(), flips=st.lists(st.booleans(), max_size=16))
def test_new_resolves_any_casing_of_a_registered_name(name: str, flips: list[bool]) -> None:
    recased = _recased(name, flips)
    t = tfx.FactorizedTensor.new(PLAIN_SHAPE, rank=0.5, factorization=recased)
    assert t._name == name


@given(name=form_names(tensorized=True), flips=st.lists(st.booleans(), max_size=16))
def test_tensorized_new_resolves_any_casing_of_a_registered_name(
    name: str, flips: list[bool]
) -> None:
    recased = _recased(name, flips)
    t = tfx.TensorizedTensor.new(TENSORIZED_SHAPE, rank=0.5, factorization=recased)
    assert t._name == name


# ------------------------------------------------------------- transduct
@pytest.mark.parametrize("mode", [0, 1, 3])
@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_transduct_replicates_the_tensor_along_the_new_mode(form: str, mode: int) -> None:
    t = tfx.FactorizedTensor.new(PLAIN_SHAPE, rank=0.5, factorization=form, dtype=torch.float64)
    before = t.to_tensor().detach()
    after = t.transduct(4, mode).to_tensor()
    expected = before.unsqueeze(mode).expand(*before.shape[:mode], 4, *before.shape[mode:])
    torch.testing.assert_close(after, expected)


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_transduct_updates_shape(form: str) -> None:
    t = tfx.FactorizedTensor.new(PLAIN_SHAPE, rank=0.5, factorization=form)
    assert tuple(t.transduct(4, 1).shape) == (3, 4, 4, 5)


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_tensorized_transduct_adds_a_leading_batch_mode(form: str) -> None:
    t = tfx.TensorizedTensor.new(
        TENSORIZED_SHAPE, rank=0.5, factorization=form, dtype=torch.float64
    )
    before = t.to_matrix().detach()
    after = t.transduct(3, 0).to_matrix()
    torch.testing.assert_close(after, before.unsqueeze(0).expand(3, *before.shape))


@pytest.mark.parametrize("form", [f for f in TENSORIZED_FORMS if family(f) != "blocktt"])
def test_tensorized_transduct_inserts_a_batch_mode_between_entries(form: str) -> None:
    t = tfx.TensorizedTensor.new(
        ((2, 3), (3, 2)), rank=0.5, factorization=form, dtype=torch.float64
    )
    before = t.to_tensor().detach()
    t.transduct(4, 1)
    assert tuple(t.tensorized_shape) == ((2, 3), 4, (3, 2))
    torch.testing.assert_close(t.to_tensor(), before.unsqueeze(2).expand(2, 3, 4, 3, 2))


# ------------------------------------------------------------- init_from_tensor
def _plain_case(form: str) -> tuple[tuple[int, ...], object]:
    shape = (4, 5) if family(form) == "cp" else PLAIN_SHAPE
    return shape, full_rank(form, shape) or "same"


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_init_from_tensor_full_rank_reproduces_input(form: str) -> None:
    shape, rank = _plain_case(form)
    t = tfx.FactorizedTensor.new(shape, rank=rank, factorization=form, dtype=torch.float64)
    x = random_input(shape, form)
    torch.testing.assert_close(t.init_from_tensor(x).to_tensor(), x)


def _tensorized_case(form: str) -> tuple[tuple, object]:
    tshape = ((4,), (5,)) if family(form) == "cp" else TENSORIZED_SHAPE
    return tshape, full_rank(form, tshape, tensorized=True) or "same"


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_tensorized_init_from_tensor_full_rank_reproduces_input(form: str) -> None:
    tshape, rank = _tensorized_case(form)
    t = tfx.TensorizedTensor.new(tshape, rank=rank, factorization=form, dtype=torch.float64)
    x = random_input(tensor_shape(tshape), form)
    torch.testing.assert_close(t.init_from_tensor(x).to_tensor(), x)


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_init_from_matrix_full_rank_reproduces_matrix(form: str) -> None:
    tshape, rank = _tensorized_case(form)
    t = tfx.TensorizedTensor.new(tshape, rank=rank, factorization=form, dtype=torch.float64)
    matrix = random_input(tuple(t.shape), form)
    torch.testing.assert_close(t.init_from_matrix(matrix).to_matrix(), matrix)


@pytest.mark.parametrize("form", ["Tucker", "ComplexTucker"])
def test_tucker_init_from_tensor_unsqueezed_mode_averages(form: str) -> None:
    t = tfx.FactorizedTensor.new((3, 4, 5), rank=(3, 1, 5), factorization=form, dtype=torch.float64)
    x = random_input((3, 5), form)
    t.init_from_tensor(x, unsqueezed_modes=[1])
    torch.testing.assert_close(t.to_tensor(), (x / 4).unsqueeze(1).expand(3, 4, 5))


def test_tucker_init_from_tensor_unsqueezed_init_scales() -> None:
    t = tfx.TuckerTensor.new((3, 4, 5), rank=(3, 4, 1), dtype=torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64)
    t.init_from_tensor(x, unsqueezed_modes=[2], unsqueezed_init=0.5)
    torch.testing.assert_close(t.to_tensor(), (0.5 * x).unsqueeze(2).expand(3, 4, 5))


# ------------------------------------------------------------- over-complete ranks
TUCKER_FORMS = [f for f in PLAIN_FORMS if family(f) == "tucker"]
TT_FORMS = [f for f in PLAIN_FORMS if family(f) == "tt"]


@pytest.mark.parametrize("form", TUCKER_FORMS)
def test_tucker_from_tensor_over_complete_rank_is_exact_at_tltorch_shape(form: str) -> None:
    x = random_input((6, 2, 4, 5), form)
    t = tfx.FactorizedTensor.from_tensor(x, rank=(6, 3, 4, 5), factorization=form)
    assert t.rank == (6, 3, 4, 5)
    assert tuple(t.factors[1].shape[:2]) == (2, 3)
    torch.testing.assert_close(t.to_tensor(), x)


@pytest.mark.parametrize("form", TUCKER_FORMS)
def test_tucker_over_complete_components_have_zero_core_slices(form: str) -> None:
    t = tfx.FactorizedTensor.from_tensor(random_input((3, 2, 4), form), rank=3, factorization=form)
    core, factors = t.decomposition
    assert t.rank == (3, 3, 3)
    assert bool((core[:, 2:] == 0).all()) and bool((core[..., 3:] == 0).all())
    assert bool((factors[1][:, 2] != 0).any())  # a repeated basis column, not zero


def test_tensorized_tucker_from_matrix_over_complete_rank_is_exact() -> None:
    matrix = torch.randn(12, 6, dtype=torch.float64)
    t = tfx.TensorizedTensor.from_matrix(matrix, (3, 4), (2, 3), rank=5, factorization="tucker")
    assert t.rank == (5, 5, 5, 5)
    torch.testing.assert_close(t.to_matrix(), matrix)


@pytest.mark.parametrize("form", TUCKER_FORMS + TT_FORMS)
def test_init_from_tensor_keeps_an_over_complete_rank_and_is_exact(form: str) -> None:
    rank = 5 if family(form) == "tucker" else (1, 5, 5, 1)
    t = tfx.FactorizedTensor.new((2, 3, 4), rank=rank, factorization=form, dtype=torch.float64)
    before = [tuple(p.shape) for p in t.parameters()]
    x = random_input((2, 3, 4), form)
    torch.testing.assert_close(t.init_from_tensor(x).to_tensor(), x)
    assert [tuple(p.shape) for p in t.parameters()] == before


def test_tensorized_tt_init_from_matrix_keeps_an_over_complete_rank_and_is_exact() -> None:
    t = tfx.TensorizedTensor.new(((3, 4), (2, 3)), rank=7, factorization="tt", dtype=torch.float64)
    assert t.rank == (1, 7, 7, 7, 1)
    matrix = torch.randn(12, 6, dtype=torch.float64)
    torch.testing.assert_close(t.init_from_matrix(matrix).to_matrix(), matrix)
    assert t.rank == (1, 7, 7, 7, 1)


@pytest.mark.parametrize("form", ["Tucker", "TT"])
def test_over_complete_padding_is_trainable(form: str) -> None:
    rank = 4 if form == "Tucker" else (1, 4, 4, 1)
    t = tfx.FactorizedTensor.new((2, 3, 4), rank=rank, factorization=form, dtype=torch.float64)
    t.init_from_tensor(torch.randn(2, 3, 4, dtype=torch.float64))
    (t.to_tensor() * torch.randn(2, 3, 4, dtype=torch.float64)).sum().backward()
    if form == "Tucker":
        grad = t.core.grad[2:]  # mode 0 (size 2) has 2 padded components
    else:
        grad = t.factors[1].grad[2:]  # bond 1 (bound 2) has 2 padded components
    assert bool((grad != 0).any())
