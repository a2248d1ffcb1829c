"""Sensitivities in sequential mode (tfx._block_sensitivity).

Sequential mode measures each site's sensitivity with one backward pass through the blocks,
last to first, one block at a time. Checked against a backward pass of the whole model with
the same probe vector (float64: the chain of per-block gradients is the whole model's
gradient), against the one-shot path's measure (embeddings: the same projection, so the same
value; linears: the same quantity, estimated with other random draws), and through the
result: sequential mode's allocation follows the sensitivities.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

import tfx
from tfx._block_sensitivity import SEED

from .zoo.models import ZOO

SENSITIVITY_RTOL = 1e-9  # float64, one process: the per-block chain is the whole gradient


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, 3 * width)
        self.down = nn.Linear(3 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.tanh(self.up(x)))


class _Net(nn.Module):
    """Embedding, four residual blocks, a head: no attention mask, a plain ModuleList."""

    def __init__(self, vocab: int = 40, width: int = 12, argmax: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.layers = nn.ModuleList([_Block(width) for _ in range(4)])
        self.head = nn.Linear(width, vocab)
        self.argmax = argmax

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        for layer in self.layers:
            h = layer(h)
        out = self.head(h)
        return out.argmax(-1) if self.argmax else out


def _llama() -> tuple[nn.Module, list[dict[str, torch.Tensor]]]:
    model = ZOO["llama"].build().double()
    batches = []
    for i in range(3):
        inputs = ZOO["llama"].inputs(3, 10 + i)
        mask = torch.ones_like(inputs["input_ids"])
        mask[0, -3:] = 0  # padding in the probe batch: its positions are not data
        batches.append({**inputs, "attention_mask": mask})
    return model, batches


def _net() -> tuple[nn.Module, list[tuple[torch.Tensor]]]:
    torch.manual_seed(0)
    model = _Net().double().eval()
    gen = torch.Generator().manual_seed(1)
    return model, [(torch.randint(0, 40, (4, 9), generator=gen),) for _ in range(3)]


def _call(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, dict):
        return model(**batch, use_cache=False) if "attention_mask" in batch else model(**batch)
    return model(*batch)


def _whole_model_reference(model: nn.Module, batch: Any, names: list[str]) -> dict[str, float]:
    """``|J_i^T v|^2 |y_i|^2 / (n_i |f|^2)`` from one backward pass of the whole model."""
    mask = batch["attention_mask"].bool() if isinstance(batch, dict) else None

    def keep_of(t: torch.Tensor) -> torch.Tensor:
        if mask is None or tuple(t.shape[: mask.dim()]) != tuple(mask.shape):
            return torch.ones((), dtype=t.dtype)
        return mask.to(t.dtype).reshape(*mask.shape, *([1] * (t.dim() - mask.dim())))

    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str) -> Any:
        def add(_m: nn.Module, _a: Any, out: torch.Tensor) -> torch.Tensor:
            leaf = torch.zeros_like(out, requires_grad=True)
            seen[name] = (out.detach(), leaf)
            return out + leaf

        return add

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        with torch.enable_grad():
            flat, _ = tree_flatten(_call(model, batch))
            outs = [t for t in flat if isinstance(t, torch.Tensor) and t.is_floating_point()]
            total = sum(float((t.detach() * keep_of(t)).square().sum()) for t in outs)
            probe = []
            for j, t in enumerate(outs):
                gen = torch.Generator().manual_seed(SEED + j)
                probe.append(torch.randn(t.shape, generator=gen, dtype=t.dtype) * keep_of(t))
            grads = torch.autograd.grad(outs, [seen[n][1] for n in names], probe)
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for name, g in zip(names, grads, strict=True):
        y = seen[name][0]
        keep = keep_of(y)
        n = float(keep.expand_as(y).sum())
        out[name] = float((g * keep).square().sum()) * float((y * keep).square().sum()) / n / total
    return out


@pytest.mark.parametrize("case", [_llama, _net], ids=["llama", "plain"])
def test_block_by_block_equals_the_whole_model_backward(case: Any) -> None:
    model, batches = case()
    result = tfx.factorize(model, 0.5, calibration=batches, sequential=True, progress=False)
    plan = result.tfx_plan
    measured = {c.site: c.sensitivity for c in plan.choices if c.sensitivity is not None}
    linears = [
        name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name in measured
    ]
    assert len(linears) >= 9  # every block's linears and the head
    reference = _whole_model_reference(model, batches[0], linears)
    for name in linears:
        assert measured[name] == pytest.approx(reference[name], rel=SENSITIVITY_RTOL), name
    assert len({round(measured[n], 6) for n in linears}) > 1  # they differ: a real measure
    assert "calibration (sensitivity)" in plan.timings
    assert any("sensitivity" in note for note in plan.notes)


def test_embedding_measured_as_in_one_shot() -> None:
    """An embedding's error is its projection onto its table's leading directions, run
    through every block: the one-shot measure exactly (deterministic, no random draw)."""
    model, batches = _llama()
    settings = dict(calibration=batches, progress=False)
    sequential = tfx.factorize(model, 0.5, sequential=True, **settings).tfx_plan
    one_shot = tfx.factorize(model, 0.5, example_inputs=batches[0], **settings).tfx_plan
    name = "model.embed_tokens"
    value = sequential.choice(name).sensitivity
    assert value is not None and value > 0
    assert value == pytest.approx(one_shot.choice(name).sensitivity, rel=1e-7)


def test_linears_agree_with_the_one_shot_noise_measure() -> None:
    """One shot adds noise of 5% to a site's output and runs the model; sequential mode
    takes the first-order expectation. One random draw each: they agree to within the draws'
    spread, and rank the sites alike."""
    model, batches = _llama()
    settings = dict(calibration=batches, progress=False)
    sequential = tfx.factorize(model, 0.5, sequential=True, **settings).tfx_plan
    one_shot = tfx.factorize(model, 0.5, example_inputs=batches[0], **settings).tfx_plan
    names = [c.site for c in one_shot.choices if c.kind == "linear" and c.sensitivity]
    a = torch.tensor([sequential.choice(n).sensitivity for n in names], dtype=torch.float64)
    b = torch.tensor([one_shot.choice(n).sensitivity for n in names], dtype=torch.float64)
    assert float((a.log() - b.log()).abs().max()) < 0.5  # within a factor of 1.65 each
    ranks_a, ranks_b = a.argsort().argsort().double(), b.argsort().argsort().double()
    assert float(torch.corrcoef(torch.stack([ranks_a, ranks_b]))[0, 1]) > 0.8


def test_allocation_follows_the_sensitivities() -> None:
    """Weighted by sensitivity, the site that matters most keeps a larger share of its
    parameters than unweighted ("greedy": every site's error weighs the same)."""
    model, batches = _net()
    settings = dict(calibration=batches, sequential=True, progress=False)
    weighted = tfx.factorize(model, 0.4, **settings).tfx_plan
    plain = tfx.factorize(model, 0.4, strategy="greedy", **settings).tfx_plan
    assert all(c.sensitivity is None for c in plain.choices)
    sens = {c.site: c.sensitivity for c in weighted.choices if c.sensitivity is not None}
    top = max(sens, key=sens.__getitem__)
    low = min(sens, key=sens.__getitem__)
    assert sens[top] > 2 * sens[low]

    def kept(plan: Any, name: str) -> float:
        c = plan.choice(name)
        return c.params_after / c.params_before

    assert kept(weighted, top) - kept(weighted, low) > kept(plain, top) - kept(plain, low)


def test_strategy_sensitivity_is_accepted_and_the_same_as_auto() -> None:
    model, batches = _net()
    settings = dict(calibration=batches, sequential=True, progress=False)
    auto = tfx.factorize(model, 0.5, **settings)
    sens = tfx.factorize(model, 0.5, strategy="sensitivity", **settings)
    assert [c.sensitivity for c in auto.tfx_plan.choices] == [
        c.sensitivity for c in sens.tfx_plan.choices
    ]


def test_outputs_without_floats_are_a_clear_error() -> None:
    torch.manual_seed(0)
    model = _Net(argmax=True).eval()
    batches = [(torch.randint(0, 40, (4, 9)),) for _ in range(2)]
    with pytest.raises(tfx.OptionError, match="floating outputs"):
        tfx.factorize(model, 0.5, calibration=batches, sequential=True, progress=False)
    # without the measure, the same model factorizes
    result = tfx.factorize(
        model, 0.5, calibration=batches, sequential=True, strategy="greedy", progress=False
    )
    assert any(c.form != "dense" for c in result.tfx_plan.choices)


def test_probe_inputs_kept_every_sqrt_blocks() -> None:
    """The backward pass keeps about 2 sqrt(n) hidden states, not n (the inputs between two
    kept ones are recomputed: the 4-block net above keeps blocks 0 and 2, and its values
    equal the whole-model backward)."""
    from tfx._block_sensitivity import checkpoint_every

    for n in range(1, 200):
        every = checkpoint_every(n)
        kept = len(range(0, n, every))
        assert every * every >= n  # a segment recomputes fewer than every blocks
        assert kept + every <= 2 * math.isqrt(n) + 3
    assert checkpoint_every(4) == 2 and checkpoint_every(16) == 4
