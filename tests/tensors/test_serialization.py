"""dtype moves, state_dict round trips, deepcopy and pickle on every form."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import tfx
from tests.helpers import dense
from tests.strategies import PLAIN_FORMS, TENSORIZED_FORMS

SHAPE = (3, 4, 5)
TSHAPE = (2, (2, 3), (3, 2))
REAL_PLAIN = [f for f in PLAIN_FORMS if not f.startswith("Complex")]
REAL_TENSORIZED = [f for f in TENSORIZED_FORMS if not f.startswith("Complex")]


def _plain(form: str) -> tfx.FactorizedTensor:
    return tfx.FactorizedTensor.new(SHAPE, rank=0.5, factorization=form)


def _tensorized(form: str) -> tfx.TensorizedTensor:
    return tfx.TensorizedTensor.new(TSHAPE, rank=0.5, factorization=form)


def _identical(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------ dtype
_F64 = {False: torch.float64, True: torch.complex128}


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_to_float64_changes_the_reconstruction_dtype(form: str) -> None:
    t = _plain(form).to(torch.float64)
    assert dense(t).dtype == _F64[form.startswith("Complex")]


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_tensorized_to_float64_changes_the_reconstruction_dtype(form: str) -> None:
    t = _tensorized(form).to(torch.float64)
    assert dense(t).dtype == _F64[form.startswith("Complex")]


@pytest.mark.parametrize("form", REAL_PLAIN)
def test_to_bfloat16_changes_the_reconstruction_dtype(form: str) -> None:
    assert dense(_plain(form).to(torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("form", REAL_TENSORIZED)
def test_tensorized_to_bfloat16_changes_the_reconstruction_dtype(form: str) -> None:
    assert dense(_tensorized(form).to(torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_to_float64_keeps_the_values(form: str) -> None:
    t = _plain(form)
    before = dense(t).detach()
    torch.testing.assert_close(dense(t.to(torch.float64)).to(before.dtype), before)


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_indexing_after_to_float64_gives_float64(form: str) -> None:
    t = _plain(form).to(torch.float64)
    assert dense(t[1, :, [0, 2]]).dtype == _F64[form.startswith("Complex")]


# ------------------------------------------------------------------ state_dict
@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_state_dict_round_trip_gives_identical_reconstruction(form: str) -> None:
    source, target = _plain(form), _plain(form)
    target.load_state_dict(source.state_dict())
    _identical(dense(target), dense(source))


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_tensorized_state_dict_round_trip_gives_identical_reconstruction(form: str) -> None:
    source, target = _tensorized(form), _tensorized(form)
    target.load_state_dict(source.state_dict())
    _identical(dense(target), dense(source))


@pytest.mark.parametrize("form", [f for f in PLAIN_FORMS if "Dense" not in f])
def test_state_dict_uses_tltorch_factor_names(form: str) -> None:
    keys = set(_plain(form).state_dict())
    assert "factors.factor_0" in keys


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_state_dict_round_trip_after_init_from_tensor(form: str) -> None:
    source = _plain(form)
    source.init_from_tensor(torch.randn(*SHAPE))
    target = _plain(form)
    target.load_state_dict(source.state_dict())
    _identical(dense(target), dense(source))


# ------------------------------------------------------------------ copies
@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_deepcopy_gives_identical_reconstruction(form: str) -> None:
    t = _plain(form)
    _identical(dense(copy.deepcopy(t)), dense(t))


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_tensorized_deepcopy_gives_identical_reconstruction(form: str) -> None:
    t = _tensorized(form)
    _identical(dense(copy.deepcopy(t)), dense(t))


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_deepcopy_does_not_share_parameters(form: str) -> None:
    t = _plain(form)
    clone = copy.deepcopy(t)
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(1)
    assert not torch.equal(dense(clone), dense(t))


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_pickle_round_trip_gives_identical_reconstruction(form: str) -> None:
    t = _plain(form)
    _identical(dense(pickle.loads(pickle.dumps(t))), dense(t))


@pytest.mark.parametrize("form", TENSORIZED_FORMS)
def test_tensorized_pickle_round_trip_gives_identical_reconstruction(form: str) -> None:
    t = _tensorized(form)
    _identical(dense(pickle.loads(pickle.dumps(t))), dense(t))


@pytest.mark.parametrize("form", PLAIN_FORMS)
def test_torch_save_load_round_trip_gives_identical_reconstruction(form: str, tmp_path) -> None:
    t = _plain(form)
    torch.save(t, tmp_path / "t.pt")
    _identical(dense(torch.load(tmp_path / "t.pt", weights_only=False)), dense(t))
