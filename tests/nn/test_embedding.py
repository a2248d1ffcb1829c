"""FactorizedEmbedding: rows against the reconstructed table, padding_idx, from_embedding."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

import tfx
from tests.helpers import family, is_complex_form
from tests.nn._helpers import (
    EMBEDDING_INDEX,
    TENSORIZED_FORMS,
    embedding_reference,
    make_embedding,
)

F64 = torch.float64
REAL_FORMS = [f for f in TENSORIZED_FORMS if not is_complex_form(f)]
FACTORIZED_FORMS = [f for f in TENSORIZED_FORMS if family(f) != "dense"]


def _cases() -> list:
    return [
        pytest.param(form, impl, id=f"{form}-{impl}")
        for form in TENSORIZED_FORMS
        for impl in ("factorized", "reconstructed", "auto")
    ]


# ------------------------------------------------------------------ outputs
@pytest.mark.parametrize("padding_idx", [None, 5])
@pytest.mark.parametrize(("form", "implementation"), _cases())
def test_embedding_matches_rows_of_reconstructed_table(
    form: str, implementation: str, padding_idx: Any
) -> None:
    layer = make_embedding(form, implementation=implementation, padding_idx=padding_idx)
    torch.testing.assert_close(layer(EMBEDDING_INDEX), embedding_reference(layer, EMBEDDING_INDEX))


@pytest.mark.parametrize(("form", "implementation"), _cases())
def test_embedding_stacked_tables_match_each_reconstructed_table(
    form: str, implementation: str
) -> None:
    layer = make_embedding(form, implementation=implementation, n_layers=3, padding_idx=7)
    for i in range(3):
        expected = embedding_reference(layer, EMBEDDING_INDEX, indices=i)
        torch.testing.assert_close(layer(EMBEDDING_INDEX, indices=i), expected)


@pytest.mark.parametrize("shape", [(), (7,), (2, 3), (2, 3, 4)])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("form", ["BlockTT", "CP", "Tucker", "TT"])
def test_embedding_accepts_cpu_index_tensors_of_any_shape(
    form: str, dtype: torch.dtype, shape: tuple
) -> None:
    layer = make_embedding(form)
    index = torch.randint(0, 24, shape, dtype=dtype)
    out = layer(index)
    assert out.shape == (*shape, 12)
    torch.testing.assert_close(out, embedding_reference(layer, index.long()))


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_embedding_auto_matches_table_for_many_indices(form: str) -> None:
    layer = make_embedding(form, implementation="auto", padding_idx=3)
    index = torch.randint(0, 24, (40, 50))
    torch.testing.assert_close(layer(index), embedding_reference(layer, index))


@pytest.mark.parametrize("form", ["BlockTT", "ComplexCP"])
def test_embedding_uses_a_given_table(form: str) -> None:
    table = tfx.TensorizedTensor.new(
        ((2, 3, 4), (2, 2, 3)), rank=0.5, factorization=form, dtype=F64
    )
    layer = tfx.FactorizedEmbedding(
        24,
        12,
        tensorized_num_embeddings=(2, 3, 4),
        tensorized_embedding_dim=(2, 2, 3),
        factorization=table,
    )
    assert layer.weight is table
    torch.testing.assert_close(layer(EMBEDDING_INDEX), table.to_matrix()[EMBEDDING_INDEX])


@pytest.mark.parametrize("form", FACTORIZED_FORMS)
def test_embedding_factorized_lookup_never_builds_the_table(
    form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = make_embedding(form)
    expected = embedding_reference(layer, EMBEDDING_INDEX)

    def refuse() -> torch.Tensor:
        raise AssertionError("the full table was reconstructed")

    monkeypatch.setattr(layer.weight, "to_tensor", refuse)
    torch.testing.assert_close(layer(EMBEDDING_INDEX), expected)


# ------------------------------------------------------------------ padding_idx
@pytest.mark.parametrize("implementation", ["factorized", "reconstructed"])
@pytest.mark.parametrize("form", REAL_FORMS)
def test_embedding_padding_rows_are_zero_and_get_no_gradient(
    form: str, implementation: str
) -> None:
    layer = make_embedding(form, implementation=implementation, padding_idx=5)
    out = layer(EMBEDDING_INDEX)
    at_padding = EMBEDDING_INDEX == 5
    assert torch.equal(out[at_padding], torch.zeros(int(at_padding.sum()), 12, dtype=F64))
    assert out[~at_padding].abs().sum() > 0
    out[at_padding].sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is None or torch.equal(p.grad, torch.zeros_like(p)), name


def test_embedding_negative_padding_idx_counts_from_the_end() -> None:
    layer = make_embedding("BlockTT", padding_idx=-1)
    assert layer.padding_idx == 23
    assert torch.equal(layer(torch.tensor([23]))[0], torch.zeros(12, dtype=F64))


# ------------------------------------------------------------------ from_embedding
def _full_rank(form: str) -> dict[str, Any]:
    fam = family(form)
    if fam == "cp":  # one row mode, one column mode: a matrix, exact at rank min(24, 12)
        return {"tensorized_num_embeddings": (24,), "tensorized_embedding_dim": (12,), "rank": 12}
    shapes = {"tensorized_num_embeddings": (2, 3, 4), "tensorized_embedding_dim": (2, 2, 3)}
    if fam == "tucker":
        return {**shapes, "rank": (2, 3, 4, 2, 2, 3)}
    if fam == "tt":  # the bounds of the chain (2, 3, 4, 2, 2, 3)
        return {**shapes, "rank": (1, 2, 6, 12, 6, 3, 1)}
    if fam == "blocktt":
        return {**shapes, "rank": 10**6}  # one int is capped to each bond's bound
    return shapes


@pytest.mark.parametrize("padding_idx", [None, 3])
@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_from_embedding_at_full_rank_reproduces_the_embedding(form: str, padding_idx: Any) -> None:
    embedding = nn.Embedding(24, 12, padding_idx=padding_idx, dtype=F64)
    layer = tfx.FactorizedEmbedding.from_embedding(
        embedding, factorization=form, **_full_rank(form)
    )
    assert layer.padding_idx == padding_idx
    index = torch.tensor([[0, 3, 23], [3, 11, 12]])
    expected = embedding(index)
    if is_complex_form(form):
        expected = expected.to(torch.complex128)
    torch.testing.assert_close(layer(index), expected)


def test_from_embedding_padding_row_stays_zero_after_training_the_factors() -> None:
    embedding = nn.Embedding(24, 12, padding_idx=3, dtype=F64)
    layer = tfx.FactorizedEmbedding.from_embedding(embedding, factorization="blocktt", rank=4)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(1.0)  # the table's row 3 is no longer zero, the lookup still is
    assert layer.weight.to_matrix()[3].abs().sum() > 0
    assert torch.equal(layer(torch.tensor([3, 3]))[0], torch.zeros(12, dtype=F64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_from_embedding_keeps_dtype_and_device(dtype: torch.dtype) -> None:
    embedding = nn.Embedding(24, 12, dtype=dtype)
    layer = tfx.FactorizedEmbedding.from_embedding(
        embedding, **(_full_rank("blocktt") | {"rank": 4})
    )
    for name, p in layer.named_parameters():
        assert (p.dtype, p.device) == (dtype, embedding.weight.device), name
    assert layer(torch.tensor([1, 2])).dtype == dtype


def test_from_embedding_list_at_full_rank_reproduces_each_embedding() -> None:
    embeddings = [nn.Embedding(24, 12, dtype=F64) for _ in range(3)]
    layer = tfx.FactorizedEmbedding.from_embedding_list(
        embeddings,
        factorization="tt",
        rank=(1, 3, 6, 18, 12, 6, 3, 1),  # the bounds of the chain (3, 2, 3, 4, 2, 2, 3)
        tensorized_num_embeddings=(2, 3, 4),
        tensorized_embedding_dim=(2, 2, 3),
    )
    assert layer.n_layers == 3
    for i, embedding in enumerate(embeddings):
        torch.testing.assert_close(layer(EMBEDDING_INDEX, indices=i), embedding(EMBEDDING_INDEX))


def test_from_embedding_refuses_max_norm() -> None:
    with pytest.raises(
        tfx.UnsupportedSiteError, match=r"max_norm=1.0.*\n.*leave this embedding dense"
    ):
        tfx.FactorizedEmbedding.from_embedding(nn.Embedding(24, 12, max_norm=1.0))


@pytest.mark.parametrize("option", [{"sparse": True}, {"scale_grad_by_freq": True}])
def test_from_embedding_refuses_sparse_and_scaled_gradients(option: dict) -> None:
    with pytest.raises(tfx.OptionError, match=r"scale_grad_by_freq=True or sparse=True"):
        tfx.FactorizedEmbedding.from_embedding(nn.Embedding(24, 12, **option))


# ------------------------------------------------------------------ initialisation
@pytest.mark.parametrize("form", REAL_FORMS)
def test_embedding_initial_table_std_is_one_over_sqrt_three_rows(form: str) -> None:
    layer = tfx.FactorizedEmbedding(1000, 64, factorization=form, rank=0.2)
    expected = 1 / math.sqrt(3 * 1000)
    with torch.no_grad():
        std = float(layer.weight.to_matrix().std())
    assert abs(std - expected) < 0.1 * expected
