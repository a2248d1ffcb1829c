"""``tfx.distill``: recover a factorized model's quality by matching the original's outputs."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, get_args

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ._errors import OptionError, unknown_option
from ._types import Loss

__all__ = ["distill"]

logger = logging.getLogger(__name__)
LOSSES = get_args(Loss)


def _floats(out: Any, pick: Callable[[Any], Any] | None) -> list[torch.Tensor]:
    flat, _ = tree_flatten(pick(out) if pick is not None else out)
    return [t for t in flat if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _loss(got: list[torch.Tensor], want: list[torch.Tensor], kind: str) -> torch.Tensor:
    if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want, strict=False)):
        raise OptionError(
            f"the student's outputs ({[tuple(g.shape) for g in got]}) do "
            f"not match the teacher's ({[tuple(w.shape) for w in want]}).\n"
            "Fix: distil a model factorized from the teacher, or pick the "
            "tensor to match with output=lambda out: out.last_hidden_state."
        )
    terms = []
    for g, w in zip(got, want, strict=False):
        g, w = g.float(), w.float()
        if kind == "mse":  # relative: scale-free across outputs
            terms.append(((g - w) ** 2).mean() / (w**2).mean().clamp_min(1e-12))
        else:
            terms.append(1 - torch.nn.functional.cosine_similarity(g, w, dim=-1, eps=1e-8).mean())
    return torch.stack(terms).mean()


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Iterable[Any],
    *,
    steps: int = 200,
    lr: float = 1e-4,
    loss: Loss = "mse",
    output: Callable[[Any], Any] | None = None,
    weight_decay: float = 0.0,
    eval_data: Iterable[Any] | None = None,
    eval_every: int | None = None,
    progress: bool = True,
) -> nn.Module:
    """Fine-tune a factorized ``student`` to reproduce ``teacher``'s outputs (distillation).

    A short AdamW run (linear warm-up over the first 5% of steps, then linear decay) on
    ``data``, cycled, minimising the distance between the two models' outputs: the relative
    mean squared error (``loss="mse"``) or ``1 - cosine`` along the last dimension
    (``loss="cosine"``), averaged over the floating tensors of the outputs (or of
    ``output(out)``). The teacher runs in eval mode without gradients; the student trains in
    place and is returned in its original train/eval mode.

    With ``eval_data`` (inputs held out from ``data``), the loss on them is measured before
    training and every ``eval_every`` steps (default: ten times per run), and the student
    ends in its best measured state: distillation on a few hundred inputs can overfit them,
    and then this keeps the better model (the starting one included).

    Use it after :func:`tfx.factorize` when the budget is tight (below about half of a
    layer's parameters post-training factorization loses noticeable quality): a few hundred
    steps on unlabelled in-domain inputs usually recover most of it, at the cost of minutes,
    not the hours of task fine-tuning. Calibrate first (``calibration=``): distillation
    starts from a better point and needs fewer steps.

    Args:
        student: the factorized model (e.g. the GraphModule :func:`tfx.factorize` returns).
        teacher: the original model.
        data: inputs in the ``example_inputs`` format (tuples of positional inputs or dicts
            of keyword inputs); no labels are needed.
        steps: optimizer steps (``data`` is cycled).
        lr: peak learning rate.
        loss: ``"mse"`` or ``"cosine"``.
        output: picks what to match from a model's output (default: every floating tensor).
        weight_decay: AdamW weight decay.
        eval_data: held-out inputs (same format as ``data``); keeps the best state on them.
        eval_every: steps between evaluations on ``eval_data``.
        progress: show a progress bar with the loss.

    Returns:
        ``student``, trained; ``student.tfx_distill_history`` holds the loss per step and,
        with ``eval_data``, ``student.tfx_distill_eval`` the ``(step, held-out loss)`` pairs.

    Raises:
        OptionError: bad steps / lr / loss, empty ``data``, or outputs that do not match.

    Example:
        >>> import torch, tfx
        >>> teacher = torch.nn.Sequential(
        ...     torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64)
        ... )
        >>> data = [(torch.randn(32, 64),) for _ in range(4)]
        >>> student = tfx.factorize(teacher, 0.4, example_inputs=data[0], progress=False)
        >>> student = tfx.distill(student, teacher, data, steps=20, lr=1e-3, progress=False)
        >>> student.tfx_distill_history[-1] < student.tfx_distill_history[0]
        True
    """
    if loss not in LOSSES:
        raise unknown_option("loss", loss, LOSSES)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise OptionError(f"steps={steps!r} must be a positive int.\nFix: steps=200.")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise OptionError(f"lr={lr!r} must be a positive number.\nFix: lr=1e-4.")
    from .passes._calibrate import calibration_batches
    from .passes._capture import call_with

    try:
        batches = calibration_batches(data)
    except OptionError as err:
        raise OptionError(str(err).replace("calibration=", "data=")) from None
    held = None
    if eval_data is not None:
        try:
            held = calibration_batches(eval_data)
        except OptionError as err:
            raise OptionError(str(err).replace("calibration=", "eval_data=")) from None
    every = eval_every if eval_every is not None else max(1, steps // 10)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise OptionError(f"eval_every={eval_every!r} must be a positive int.\nFix: eval_every=20.")
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise OptionError(
            "the student has no trainable parameters.\n"
            "Fix: pass a model whose factors require grad."
        )
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup
        if s < warmup
        else max(0.0, (steps - s) / max(1, steps - warmup)),
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        # disable=None: a bar only on a terminal, never carriage-return frames in logs or pipes
        bar = tqdm(total=steps, desc="tfx: distill", leave=False, disable=None)
    was_training, teacher_training = student.training, teacher.training
    student.train()
    teacher.eval()
    history: list[float] = []
    evals: list[tuple[int, float]] = []
    best: dict[str, torch.Tensor] | None = None

    def evaluate(step: int) -> None:
        nonlocal best
        student.eval()
        with torch.no_grad():
            losses: list[float] = [
                float(
                    _loss(
                        _floats(call_with(student, b), output),
                        _floats(call_with(teacher, b), output),
                        loss,
                    )
                )
                for b in held  # type: ignore[union-attr]
            ]
            value = sum(losses) / len(losses)
        student.train()
        if not evals or value < min(v for _, v in evals):
            best = {k: v.detach().clone() for k, v in student.state_dict().items()}
        evals.append((step, value))

    try:
        if held is not None:
            evaluate(0)
        for step in range(steps):
            batch = batches[step % len(batches)]
            with torch.no_grad():
                want = _floats(call_with(teacher, batch), output)
            got = _floats(call_with(student, batch), output)
            value = _loss(got, [w.to(g.device) for g, w in zip(got, want, strict=False)], loss)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            history.append(float(value.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]:.4g}")
            if held is not None and ((step + 1) % every == 0 or step + 1 == steps):
                evaluate(step + 1)
        if best is not None:
            student.load_state_dict(best)
    finally:
        if bar is not None:
            bar.close()
        student.train(was_training)
        teacher.train(teacher_training)
    logger.info(
        "tfx.distill: loss %.4g -> %.4g over %d steps",
        history[0] if history else float("nan"),
        history[-1] if history else float("nan"),
        len(history),
    )
    student.tfx_distill_history = history  # type: ignore[assignment]
    if held is not None:
        student.tfx_distill_eval = evals  # type: ignore[assignment]
    return student
