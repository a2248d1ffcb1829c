"""Capture: which path each model takes, and that the captured graph computes the model."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from tests.passes._models import (
    MLP,
    SmallCNN,
    Untraceable,
    bert_inputs,
    call,
    gpt2_inputs,
    max_rel_error,
    tiny_bert,
    tiny_gpt2,
)
from tfx import TfxWarning
from tfx.passes import Captured, capture


@pytest.fixture(scope="module")
def bert_captured() -> tuple[nn.Module, Captured]:
    model = tiny_bert()
    return model, capture(model, bert_inputs())


@pytest.fixture(scope="module")
def gpt2_captured() -> tuple[nn.Module, Captured, dict[str, torch.Tensor]]:
    model = tiny_gpt2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    return model, capture(model, gpt2_inputs()), before


@pytest.mark.parametrize(
    ("factory", "inputs"),
    [(MLP, lambda: (torch.randn(4, 32),)), (SmallCNN, lambda: (torch.randn(2, 3, 8, 8),))],
    ids=["mlp", "cnn"],
)
def test_capture_traceable_model_takes_symbolic_trace(factory, inputs) -> None:
    model = factory().eval()
    x = inputs()
    captured = capture(model, x)
    assert captured.path == "symbolic_trace"
    assert captured.failures == []
    torch.testing.assert_close(captured.gm(*x), model(*x), rtol=0, atol=0)


def test_capture_symbolic_trace_keeps_layers_as_call_module() -> None:
    captured = capture(MLP(), None)
    targets = {n.target for n in captured.gm.graph.nodes if n.op == "call_module"}
    assert {"encoder.0", "encoder.2", "out", "tiny", "norm"} <= targets


def test_capture_symbolic_trace_records_shapes_with_example_inputs() -> None:
    captured = capture(MLP(), (torch.randn(5, 32),))
    node = next(n for n in captured.gm.graph.nodes if n.target == "encoder.0")
    assert tuple(node.meta["tensor_meta"].shape) == (5, 64)


def test_capture_bert_takes_export_with_keyword_inputs(bert_captured) -> None:
    model, captured = bert_captured
    assert captured.path == "export"
    assert any("symbolic_trace" in f for f in captured.failures)
    inputs = bert_inputs()
    assert max_rel_error(call(model, inputs), call(captured.gm, inputs)) <= 1e-6


def test_capture_gpt2_takes_export_with_positional_inputs(gpt2_captured) -> None:
    model, captured, _ = gpt2_captured
    assert captured.path == "export"
    inputs = gpt2_inputs()
    assert max_rel_error(call(model, inputs), call(captured.gm, inputs)) <= 1e-6


def test_capture_export_graph_is_a_trainable_graph_module(bert_captured) -> None:
    _, captured = bert_captured
    assert isinstance(captured.gm, fx.GraphModule)
    captured.gm.train()  # the module torch.export returns refuses this
    assert captured.gm.training
    captured.gm.eval()


def test_capture_export_has_aten_linear_nodes_with_module_stack(bert_captured) -> None:
    _, captured = bert_captured
    linears = [n for n in captured.gm.graph.nodes if n.target is torch.ops.aten.linear.default]
    assert len(linears) == 7  # q, k, v, attention out, intermediate, output, pooler
    assert all("nn_module_stack" in n.meta for n in linears)


def test_capture_untraceable_without_inputs_takes_module_swap() -> None:
    model = Untraceable().eval()
    with pytest.warns(TfxWarning, match="captured by module swap"):
        captured = capture(model)
    assert captured.path == "module_swap"
    assert captured.model is captured.gm.model
    assert any("symbolic_trace" in f for f in captured.failures)
    assert any("not tried" in f for f in captured.failures)
    x = torch.randn(3, 32)
    torch.testing.assert_close(captured.gm(x), model(x), rtol=0, atol=0)


def test_capture_module_swap_copies_the_model() -> None:
    model = Untraceable()
    with pytest.warns(TfxWarning, match="captured by module swap"):
        captured = capture(model)
    assert captured.gm.model is not model
    assert captured.gm.model.a.weight is not model.a.weight


def test_capture_data_dependent_model_with_inputs_falls_back_to_module_swap() -> None:
    model = Untraceable().eval()
    x = torch.randn(3, 32)
    with pytest.warns(
        TfxWarning,
        match="(?s)captured by module swap.*because torch.fx.symbolic_trace.*torch.export",
    ):
        captured = capture(model, (x,))
    assert captured.path == "module_swap"
    assert [f.split(":")[0] for f in captured.failures] == [
        "torch.fx.symbolic_trace",
        "torch.export",
    ]
    torch.testing.assert_close(captured.gm(x), model(x), rtol=0, atol=0)


def test_capture_skip_makes_an_untraceable_submodule_a_leaf() -> None:
    model = nn.Sequential(nn.Linear(32, 32), Untraceable()).eval()
    captured = capture(model, skip=["1"])
    assert captured.path == "symbolic_trace"
    assert "1" in {n.target for n in captured.gm.graph.nodes if n.op == "call_module"}


def test_capture_does_not_modify_the_model(gpt2_captured) -> None:
    model, _, before = gpt2_captured
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training


def test_capture_export_batch_dimension_is_dynamic(bert_captured) -> None:
    model, captured = bert_captured
    inputs = bert_inputs(batch=3)
    assert max_rel_error(call(model, inputs), call(captured.gm, inputs)) <= 1e-6
