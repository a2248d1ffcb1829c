"""Deploying a factorized model: torch.export, ONNX + onnxruntime, torch.compile, saving.

The result of ``tfx.factorize`` is an ordinary ``nn.Module`` (a ``torch.fx.GraphModule`` for the
models ``symbolic_trace`` takes, the model itself with ``tfx.nn`` layers for those captured by
torch.export), so the tools that deploy a module take it. Each test compares the deployed form
with the factorized model run eagerly, on a batch size other than the example's, and checks that
the plan factorized at least one layer. The cases are those of the deployment guide
(docs/guide/deploy.md): an MLP, a small CNN and a tiny Hugging Face BERT, at budget 0.5.

The ONNX tests need ``onnx``, ``onnxscript`` and ``onnxruntime`` (the ``test`` extra) and are
skipped without them. Inductor compiles C++ for several seconds per graph: those cases are ``slow``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.export import Dim

import tfx
from tests.passes._models import sequential_cnn

# torch 2.13's ONNX exporter deep-copies a deprecated pytree LeafSpec inside
# ExportedProgram.run_decompositions (torch/export/exported_program.py), whatever the model.
LEAFSPEC_WARNING = r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"
# Inductor imports a module that calls torch.jit.script_method (as in test_backend.py).
INDUCTOR_FILTER = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)
BUDGET = 0.5
Inputs = tuple[tuple[Any, ...], dict[str, Any]]  # (args, kwargs)


@dataclasses.dataclass(frozen=True)
class Case:
    """A model to deploy: its factory, example inputs, and inputs at another batch size."""

    make: Callable[[], nn.Module]
    inputs: Callable[[int], Inputs]  # batch size -> inputs
    batch: int  # the example's batch size; the checks run at batch + 3

    def example(self) -> Inputs:
        return self.inputs(self.batch)

    def other(self) -> Inputs:
        return self.inputs(self.batch + 3)

    def example_inputs(self) -> Any:
        """The example for tfx.factorize: a tuple of positional or a dict of keyword inputs."""
        args, kwargs = self.example()
        return kwargs if kwargs else args

    def dynamic_shapes(self, batch: Any) -> Any:
        """Dimension 0 of every input is ``batch`` (a ``Dim`` for torch.export, a name for ONNX)."""
        args, kwargs = self.example()
        if kwargs:
            return {key: {0: batch} for key in kwargs}
        return tuple({0: batch} for _ in args)


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    ).eval()


def _bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    return BertModel(config).eval()


def _tensor_inputs(*shape: int) -> Callable[[int], Inputs]:
    def make(batch: int) -> Inputs:
        generator = torch.Generator().manual_seed(batch)
        return (torch.randn(batch, *shape, generator=generator),), {}

    return make


def _bert_inputs(batch: int) -> Inputs:
    generator = torch.Generator().manual_seed(batch)
    input_ids = torch.randint(0, 100, (batch, 8), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 6:] = 0  # one padded row, so the mask matters
    return (), {"input_ids": input_ids, "attention_mask": attention_mask}


CASES = {
    "mlp": Case(_mlp, _tensor_inputs(64), batch=4),
    "cnn": Case(sequential_cnn, _tensor_inputs(3, 16, 16), batch=2),
    "bert": Case(_bert, _bert_inputs, batch=2),
}
NAMES = list(CASES)


@pytest.fixture(scope="module")
def factorized() -> Callable[[str], nn.Module]:
    """``tfx.factorize(model, 0.5)`` per case, made once; asserts that it factorized something."""
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            case = CASES[name]
            torch.manual_seed(0)
            model = case.make()
            cache[name] = tfx.factorize(
                model, BUDGET, example_inputs=case.example_inputs(), progress=False
            )
        result = cache[name]
        assert any(c.form != "dense" for c in result.tfx_plan.choices), result.tfx_plan
        return result

    return get


@pytest.fixture
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _tensors(output: Any) -> list[torch.Tensor]:
    """The tensors of a model's output: a tensor, a tuple, or a Hugging Face ``ModelOutput``."""
    if isinstance(output, torch.Tensor):
        return [output]
    values = output.to_tuple() if hasattr(output, "to_tuple") else tuple(output)
    return [v for v in values if isinstance(v, torch.Tensor)]


def _run(module: Callable[..., Any], inputs: Inputs) -> list[torch.Tensor]:
    args, kwargs = inputs
    with torch.no_grad():
        return _tensors(module(*args, **kwargs))


def _fresh(name: str) -> nn.Module:
    """Another instance of the case's architecture, with other weights."""
    torch.manual_seed(123)
    return CASES[name].make()


# --- torch.export ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_export_with_dynamic_batch_matches_factorized(
    name: str, factorized: Callable[[str], nn.Module]
) -> None:
    case, result = CASES[name], factorized(name)
    args, kwargs = case.example()
    program = torch.export.export(
        result, args, kwargs=kwargs, dynamic_shapes=case.dynamic_shapes(Dim("batch"))
    )
    torch.testing.assert_close(_run(program.module(), case.other()), _run(result, case.other()))


@pytest.mark.parametrize("name", NAMES)
def test_exported_program_saved_and_loaded_matches_factorized(
    name: str, factorized: Callable[[str], nn.Module], tmp_path: Path
) -> None:
    case, result = CASES[name], factorized(name)
    args, kwargs = case.example()
    program = torch.export.export(
        result, args, kwargs=kwargs, dynamic_shapes=case.dynamic_shapes(Dim("batch"))
    )
    torch.export.save(program, tmp_path / f"{name}.pt2")
    loaded = torch.export.load(tmp_path / f"{name}.pt2")
    torch.testing.assert_close(_run(loaded.module(), case.other()), _run(result, case.other()))


# --- ONNX --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.filterwarnings(LEAFSPEC_WARNING)
def test_onnx_export_runs_in_onnxruntime_like_factorized(
    name: str, factorized: Callable[[str], nn.Module], tmp_path: Path
) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    case, result = CASES[name], factorized(name)
    args, kwargs = case.example()
    path = tmp_path / f"{name}.onnx"
    # A name (not a Dim) for the batch: torch.onnx gives every input's axis that name, and warns
    # when one torch.export Dim is shared by two inputs (BERT's input_ids and attention_mask).
    torch.onnx.export(
        result, args, path, kwargs=kwargs, dynamic_shapes=case.dynamic_shapes("batch"), dynamo=True
    )

    assert path.with_name(path.name + ".data").exists()  # the weights, beside the graph
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert all(i.shape[0] == "batch" for i in session.get_inputs())
    other_args, other_kwargs = case.other()
    values = [*other_args, *other_kwargs.values()]
    feed = {i.name: v.numpy() for i, v in zip(session.get_inputs(), values, strict=True)}
    if other_kwargs:
        assert list(feed) == list(other_kwargs)
    got = [torch.from_numpy(v) for v in session.run(None, feed)]
    torch.testing.assert_close(got, _run(result, case.other()), atol=1e-4, rtol=1e-4)


# --- torch.compile -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,backend",
    [
        ("mlp", "aot_eager"),
        ("cnn", "aot_eager"),
        pytest.param("bert", "aot_eager", marks=pytest.mark.slow),
        *(pytest.param(n, "inductor", marks=[pytest.mark.slow, INDUCTOR_FILTER]) for n in NAMES),
    ],
)
@pytest.mark.usefixtures("_fresh_dynamo")
def test_compile_fullgraph_matches_factorized(
    name: str, backend: str, factorized: Callable[[str], nn.Module]
) -> None:
    from torch._inductor import config

    case, result = CASES[name], factorized(name)
    with config.patch(compile_threads=1):
        compiled = torch.compile(result, backend=backend, fullgraph=True)
        got = _run(compiled, case.other())
    torch.testing.assert_close(got, _run(result, case.other()))


# --- saving ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_restore_factorized_outputs(
    name: str, factorized: Callable[[str], nn.Module], tmp_path: Path
) -> None:
    case, result = CASES[name], factorized(name)
    tfx.save(result, tmp_path / f"{name}.tfx")
    restored = tfx.load(
        _fresh(name), tmp_path / f"{name}.tfx", example_inputs=case.example_inputs()
    )
    assert any(c.form != "dense" for c in restored.tfx_plan.choices)
    torch.testing.assert_close(_run(restored, case.other()), _run(result, case.other()))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_into_same_plan_restores_factorized_outputs(
    name: str, factorized: Callable[[str], nn.Module], tmp_path: Path
) -> None:
    case, result = CASES[name], factorized(name)
    torch.save(result.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "plan.json").write_text(result.tfx_plan.to_json())

    plan = tfx.FactorizationPlan.from_json((tmp_path / "plan.json").read_text())
    restored = tfx.factorize(
        _fresh(name), plan=plan, example_inputs=case.example_inputs(), verify=False, progress=False
    )
    restored.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    assert any(c.form != "dense" for c in restored.tfx_plan.choices)
    torch.testing.assert_close(_run(restored, case.other()), _run(result, case.other()))


def test_save_pretrained_keeps_hugging_face_model_and_factors(
    factorized: Callable[[str], nn.Module], tmp_path: Path
) -> None:
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    case, result = CASES["bert"], factorized("bert")
    assert isinstance(result, BertModel), type(result)
    result.save_pretrained(tmp_path)
    (tmp_path / "tfx_plan.json").write_text(result.tfx_plan.to_json())

    config = BertConfig.from_pretrained(tmp_path)
    plan = tfx.FactorizationPlan.from_json((tmp_path / "tfx_plan.json").read_text())
    restored = tfx.factorize(
        BertModel(config).eval(),
        plan=plan,
        example_inputs=case.example_inputs(),
        verify=False,
        progress=False,
    )
    restored.load_state_dict(load_file(tmp_path / "model.safetensors"))
    assert any(c.form != "dense" for c in restored.tfx_plan.choices)
    torch.testing.assert_close(_run(restored, case.other()), _run(result, case.other()))
