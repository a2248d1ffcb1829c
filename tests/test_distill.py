"""``tfx.distill``: recovery of a factorized model against its original."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tfx
from tests.passes._models import MLP, bert_inputs, tiny_bert
from tfx import OptionError


def _rel_error(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        ref = teacher(x)
        return float((student(x) - ref).norm() / ref.norm())


def test_distill_reduces_the_held_out_error_and_keeps_modes() -> None:
    teacher = nn.Sequential(nn.Linear(48, 96), nn.Tanh(), nn.Linear(96, 48)).eval()
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(64, 48, generator=gen),) for _ in range(8)]
    held = torch.randn(256, 48, generator=gen)
    student = tfx.factorize(teacher, 0.3, example_inputs=data[0], progress=False)
    student.eval()
    before = _rel_error(student, teacher, held)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    out = tfx.distill(student, teacher, data, steps=150, lr=3e-3, progress=False)
    assert out is student
    after = _rel_error(student, teacher, held)
    assert after < 0.8 * before, (before, after)
    history = student.tfx_distill_history
    assert len(history) == 150 and history[-1] < history[0]
    assert not student.training and not teacher.training  # modes restored
    assert all(
        torch.equal(teacher_state[k], v) for k, v in teacher.state_dict().items()
    )  # teacher untouched


def test_distill_cosine_loss_and_output_picker_on_hf_bert() -> None:
    teacher = tiny_bert()
    inputs = bert_inputs()
    student = tfx.factorize(teacher, 0.6, example_inputs=inputs, progress=False)
    tfx.distill(
        student,
        teacher,
        [inputs],
        steps=5,
        lr=1e-3,
        loss="cosine",
        output=lambda out: out.last_hidden_state,
        progress=False,
    )
    assert len(student.tfx_distill_history) == 5
    assert all(0.0 <= v <= 2.0 for v in student.tfx_distill_history)


def test_distill_gradients_reach_the_factors() -> None:
    teacher = MLP().eval()
    data = [(torch.randn(16, 32),)]
    student = tfx.factorize(teacher, 0.5, example_inputs=data[0], progress=False)
    factor_names = [n for n, _ in student.named_parameters() if "factor" in n]
    assert factor_names
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    tfx.distill(student, teacher, data, steps=3, lr=1e-2, progress=False)
    changed = [n for n, p in student.named_parameters() if not torch.equal(before[n], p)]
    assert set(factor_names) <= set(changed)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps=0"),
        ({"lr": -1.0}, "lr=-1.0"),
        ({"loss": "kl"}, "loss"),
        ({"eval_every": 0}, "eval_every=0"),
        ({"eval_data": []}, "eval_data= is empty"),
    ],
)
def test_distill_rejects_bad_options(kwargs: dict, match: str) -> None:
    teacher = MLP().eval()
    with pytest.raises(OptionError, match=match):
        tfx.distill(teacher, teacher, [(torch.randn(2, 32),)], progress=False, **kwargs)


def test_distill_rejects_empty_data_and_mismatched_outputs() -> None:
    teacher = MLP().eval()
    with pytest.raises(OptionError, match="data= is empty"):
        tfx.distill(MLP(), teacher, [], progress=False)
    other = nn.Linear(32, 5)
    with pytest.raises(OptionError, match="do not match"):
        tfx.distill(other, teacher, [(torch.randn(2, 32),)], steps=1, progress=False)


def test_eval_data_keeps_the_best_state() -> None:
    """With a learning rate that wrecks the student, the best held-out state is the starting one,
    and distill hands it back unchanged."""
    teacher = nn.Sequential(nn.Linear(48, 96), nn.Tanh(), nn.Linear(96, 48)).eval()
    gen = torch.Generator().manual_seed(3)
    data = [(torch.randn(32, 48, generator=gen),) for _ in range(4)]
    held = [(torch.randn(64, 48, generator=gen),)]
    student = tfx.factorize(teacher, 0.5, example_inputs=data[0], progress=False)
    start = {k: v.clone() for k, v in student.state_dict().items()}
    tfx.distill(
        student, teacher, data, steps=20, lr=5.0, eval_data=held, eval_every=5, progress=False
    )
    evals = student.tfx_distill_eval
    assert [s for s, _ in evals] == [0, 5, 10, 15, 20]
    assert min(v for _, v in evals[1:]) > evals[0][1]  # the huge lr only made things worse
    assert all(torch.equal(start[k], v) for k, v in student.state_dict().items())


def test_eval_data_with_a_sane_lr_keeps_an_improved_state() -> None:
    teacher = nn.Sequential(nn.Linear(48, 96), nn.Tanh(), nn.Linear(96, 48)).eval()
    gen = torch.Generator().manual_seed(4)
    data = [(torch.randn(64, 48, generator=gen),) for _ in range(8)]
    held = [(torch.randn(128, 48, generator=gen),)]
    student = tfx.factorize(teacher, 0.3, example_inputs=data[0], progress=False)
    tfx.distill(student, teacher, data, steps=60, lr=3e-3, eval_data=held, progress=False)
    evals = student.tfx_distill_eval
    best = min(v for _, v in evals)
    assert best < evals[0][1]
    from tfx._distill import _floats, _loss

    with torch.no_grad():
        now = float(
            _loss(_floats(student(*held[0]), None), _floats(teacher(*held[0]), None), "mse")
        )
    assert now == pytest.approx(best, rel=1e-5)
