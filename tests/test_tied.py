"""Tied weights are one table: planned once, factorized once, read by every reader, still tied."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tfx

transformers = pytest.importorskip("transformers")


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class TiedLM(nn.Module):
    """A functional language model: ``F.embedding(ids, E)`` in, ``F.linear(h, E)`` out."""

    def __init__(self, vocab: int = 300, dim: int = 48) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(vocab, dim) / dim**0.5)
        self.mix = nn.Linear(dim, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.mix(F.embedding(ids, self.table)))
        return F.linear(h, self.table)


def tiny_gpt2() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=512,
        n_embd=64,
        n_layer=1,
        n_head=2,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config).eval()


def gpt2_example(batch: int = 2) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, 512, (batch, 16)), "use_cache": False}


def full_rank(plan: tfx.FactorizationPlan, sites: tuple[str, ...]) -> tfx.FactorizationPlan:
    """``plan`` with ``sites`` (one tied group) set to a full-rank low-rank table."""
    choices = []
    for c in plan.choices:
        if c.site in sites:
            rows, cols = c.weight_shape
            c = dataclasses.replace(
                c, form="svd", tensorized_shape=((rows,), (cols,)), rank=min(rows, cols)
            )
        choices.append(c)
    return dataclasses.replace(plan, choices=choices)


@pytest.fixture(scope="module")
def gpt2_half() -> tuple[nn.Module, nn.Module]:
    model = tiny_gpt2()
    return model, tfx.factorize(model, 0.5, example_inputs=gpt2_example(), progress=False)


def test_gpt2_tied_table_is_factorized_once_within_budget(gpt2_half) -> None:  # noqa: ANN001
    model, result = gpt2_half
    wte, head = result.tfx_plan.choice("transformer.wte"), result.tfx_plan.choice("lm_head")
    assert wte.form != "dense" and (head.form, head.rank) == (wte.form, wte.rank)
    assert head.params_after == 0 and "one factorized table" in head.reason
    assert n_params(result) == result.tfx_plan.total_params_after <= 0.5 * n_params(model)


def test_gpt2_tied_table_stays_tied_and_both_readers_train_it(gpt2_half) -> None:  # noqa: ANN001
    _, result = gpt2_half
    assert result.transformer.wte.weight is result.lm_head.weight
    factors = dict(result.lm_head.weight.named_parameters())
    assert factors and all(
        p is dict(result.transformer.wte.weight.named_parameters())[k] for k, p in factors.items()
    )
    result.zero_grad()
    out = result(**gpt2_example())
    out.logits.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in factors.values())


@pytest.mark.parametrize("emit", ["modules", "graph"])
def test_gpt2_full_rank_tied_table_reproduces_the_model(emit) -> None:  # noqa: ANN001
    model = tiny_gpt2()
    example = gpt2_example()
    plan = full_rank(
        tfx.plan(model, 1.0, example_inputs=example, progress=False), ("transformer.wte", "lm_head")
    )
    result = tfx.factorize(model, plan=plan, example_inputs=example, progress=False, emit=emit)
    assert result.tfx_plan.choice("transformer.wte").form == "svd"
    assert n_params(result) == result.tfx_plan.total_params_after
    batch = gpt2_example(3)
    with torch.no_grad():
        torch.testing.assert_close(
            result(**batch).logits, model(**batch).logits, rtol=1e-5, atol=1e-5
        )


def test_functional_tied_readers_equal_the_dense_computation_in_float64() -> None:
    torch.manual_seed(0)
    model = TiedLM().double().eval()
    ids = torch.randint(0, 300, (4, 7))
    plan = full_rank(
        tfx.plan(model, 1.0, example_inputs=(ids,), progress=False), ("table", "table:1")
    )
    names = [c.site for c in plan.choices if c.form == "svd"]
    assert len(names) == 2  # the embedding and the head read one table
    result = tfx.factorize(model, plan=plan, example_inputs=(ids,), progress=False)
    torch.testing.assert_close(result(ids), model(ids))
    assert n_params(result) == result.tfx_plan.total_params_after


def test_functional_tied_table_at_half_budget_counts_once() -> None:
    torch.manual_seed(0)
    model = TiedLM().eval()
    ids = torch.randint(0, 300, (4, 7))
    result = tfx.factorize(model, 0.5, example_inputs=(ids,), progress=False)
    rows = [
        c
        for c in result.tfx_plan.choices
        if c.kind in ("embedding", "linear") and c.weight_shape == (300, 48)
    ]
    assert len(rows) == 2 and rows[0].form != "dense"
    assert sorted(c.params_after for c in rows)[0] == 0
    assert n_params(result) == result.tfx_plan.total_params_after <= 0.5 * n_params(model)
    readers = [
        m
        for m in result.modules()
        if isinstance(m, tfx.nn.FactorizedEmbedding | tfx.nn.FactorizedLinear)
        and m.weight_shape[-2:] == (300, 48)
    ]
    assert len(readers) == 2 and readers[0].weight is readers[1].weight


def test_tied_table_left_dense_when_a_reader_is_skipped() -> None:
    model = tiny_gpt2()
    result = tfx.factorize(
        model, 0.6, example_inputs=gpt2_example(), progress=False, skip=["lm_head"]
    )
    assert result.tfx_plan.choice("transformer.wte").form == "dense"
    assert result.transformer.wte.weight is result.lm_head.weight
