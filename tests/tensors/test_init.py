"""Initialisers: the reconstruction has mean 0 and the requested std, on every form.

tltorch 0.5's TT and BlockTT initialisers are off by 10^2 to 10^4 and its
``cp_init`` crashes; these tests check the statistics of the reconstruction
itself, on tensors large enough (>= 20000 entries) for the sample std to be
within a few percent of the distribution's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import tfx
from tests.helpers import dense, family
from tests.strategies import PLAIN_FORMS, TENSORIZED_FORMS

SHAPE = (32, 32, 32)
TSHAPE = ((4, 8, 8), (8, 8, 4))  # a 256 x 256 matrix, 6 tensorized modes
RANKS = [0.1, 0.5]

FORM_INIT: dict[str, Callable[..., Any]] = {
    "cp": tfx.cp_init,
    "tucker": tfx.tucker_init,
    "tt": tfx.tt_init,
    "blocktt": tfx.block_tt_init,
}


def _plain(form: str, rank: float) -> tfx.FactorizedTensor:
    return tfx.FactorizedTensor.new(SHAPE, rank=rank, factorization=form)


def _tensorized(form: str, rank: float) -> tfx.TensorizedTensor:
    return tfx.TensorizedTensor.new(TSHAPE, rank=rank, factorization=form)


def _assert_distribution(t: tfx.FactorizedTensor, std: float) -> None:
    with torch.no_grad():
        value = dense(t).to(torch.complex128 if dense(t).is_complex() else torch.float64)
    mean, sample_std = float(value.mean().abs()), float(value.std())
    assert value.numel() >= 20_000
    assert (mean < 0.1 * std, abs(sample_std / std - 1) < 0.1) == (
        True,
        True,
    ), f"mean {mean:.3g}, std {sample_std:.4g}, requested N(0, {std})"


# ------------------------------------------------------------------ normal_
@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_normal_gives_the_requested_std(form: str, rank: float) -> None:
    t = _plain(form, rank).normal_(0, 0.5)
    _assert_distribution(t, 0.5)


@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_tensorized_normal_gives_the_requested_std(form: str, rank: float) -> None:
    t = _tensorized(form, rank).normal_(0, 0.5)
    _assert_distribution(t, 0.5)


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_new_gives_std_one(form: str) -> None:
    _assert_distribution(_plain(form, 0.1), 1.0)


# ------------------------------------------------------------------ tensor_init
@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_tensor_init_gives_the_requested_std(form: str) -> None:
    t = tfx.tensor_init(_plain(form, 0.1), std=0.02)
    _assert_distribution(t, 0.02)


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_tensorized_tensor_init_gives_the_requested_std(form: str) -> None:
    t = tfx.tensor_init(_tensorized(form, 0.1), std=0.02)
    _assert_distribution(t, 0.02)


def test_tensor_init_initialises_a_plain_torch_tensor() -> None:
    t = tfx.tensor_init(torch.empty(200, 200), std=0.02)
    assert abs(float(t.std()) / 0.02 - 1) < 0.1


# ------------------------------------------------------------------ form initialisers
@pytest.mark.parametrize("form", [f for f in PLAIN_FORMS if family(f) in FORM_INIT])
def test_form_initialiser_gives_the_requested_std(form: str) -> None:
    t = FORM_INIT[family(form)](_plain(form, 0.5), std=0.02)
    _assert_distribution(t, 0.02)


@pytest.mark.parametrize("form", [f for f in TENSORIZED_FORMS if family(f) in FORM_INIT])
def test_tensorized_form_initialiser_gives_the_requested_std(form: str) -> None:
    t = FORM_INIT[family(form)](_tensorized(form, 0.5), std=0.02)
    _assert_distribution(t, 0.02)


_WRONG = [
    (tfx.cp_init, "tucker", "cp_init"),
    (tfx.tucker_init, "cp", "tucker_init"),
    (tfx.tt_init, "cp", "tt_init"),
    (tfx.block_tt_init, "tt", "block_tt_init"),
    (tfx.cp_init, "dense", "cp_init"),
]


@pytest.mark.parametrize(("init", "form", "name"), _WRONG, ids=[w[2] + "-" + w[1] for w in _WRONG])
def test_form_initialiser_rejects_another_form(
    init: Callable[..., Any], form: str, name: str
) -> None:
    t = tfx.FactorizedTensor.new((4, 5, 6), rank=0.5, factorization=form)
    with pytest.raises(
        tfx.OptionError, match=rf"{name} initialises .* got .*\nFix: use tfx.tensor_init"
    ):
        init(t, std=0.02)


def test_block_tt_init_rejects_a_tensorized_cp() -> None:
    t = tfx.TensorizedTensor.new(((2, 3), (3, 2)), rank=0.5, factorization="cp")
    with pytest.raises(tfx.OptionError, match="block_tt_init initialises BlockTT"):
        tfx.block_tt_init(t)


def test_tensor_init_rejects_a_non_tensor() -> None:
    with pytest.raises(tfx.OptionError, match="tensor_init got list"):
        tfx.tensor_init([1.0, 2.0])


# ------------------------------------------------------------------ mean
@pytest.mark.parametrize("form", [f for f in PLAIN_FORMS if family(f) != "dense"])
def test_normal_with_nonzero_mean_raises_on_factorized_forms(form: str) -> None:
    t = _plain(form, 0.1)
    with pytest.raises(tfx.TfxError, match=r"normal_\(mean=1.5\) is only exact for dense tensors"):
        t.normal_(1.5, 0.1)


@pytest.mark.parametrize("form", [f for f in TENSORIZED_FORMS if family(f) != "dense"])
def test_tensorized_normal_with_nonzero_mean_raises_on_factorized_forms(form: str) -> None:
    t = tfx.TensorizedTensor.new(((2, 3), (3, 2)), rank=0.5, factorization=form)
    with pytest.raises(tfx.TfxError, match=r"(?s)normal_\(mean=-1\).*Fix: use mean=0"):
        t.normal_(-1, 0.1)


@pytest.mark.parametrize("form", ["Dense", "ComplexDense"])
def test_dense_normal_with_nonzero_mean_shifts_the_mean(form: str) -> None:
    t = _plain(form, 0.1).normal_(3.0, 0.5)
    value = t.to_tensor().detach()
    assert abs(complex(value.mean()) - 3.0) < 0.05 and abs(float(value.std()) / 0.5 - 1) < 0.1
