"""The torch.compile backend: ``backend="tfx"`` and ``tfx.backend(...)``.

Every factorized result is compared with ``tfx.factorize`` on the same model and
budget (same plan, so the same outputs up to float32 rounding) or with the dense
model where the plan is exact (budget 1.0, or weights of low rank). Inductor
compiles C++ on CPU, several seconds per graph: the default run compiles a few
small models with it; the BERT and dynamic-shape inductor cases are ``slow``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any

import pytest
import torch
from torch import nn

import tfx
import tfx._backend
from tests.passes._models import sequential_cnn

INDUCTOR_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
pytestmark = pytest.mark.filterwarnings(INDUCTOR_WARNING)


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(autouse=True)
def _one_compile_thread() -> Iterator[None]:
    """Inductor compiles in this process: no pool of compile workers to start on 2 cores."""
    from torch._inductor import config

    with config.patch(compile_threads=1):
        yield


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The site names the backend decomposes a weight for, in order (cache misses only)."""
    names: list[str] = []
    build = tfx._backend.decompose

    def counting(site: Any, choice: Any) -> nn.Module:
        names.append(site.name)
        return build(site, choice)

    monkeypatch.setattr(tfx._backend, "decompose", counting)
    return names


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    ).eval()


def _low_rank_mlp(rank: int = 4) -> nn.Module:
    """An MLP whose two large weights have rank ``rank``: a 0.5 budget factorizes them exactly."""
    model = _mlp()
    with torch.no_grad():
        for layer in (model[0], model[2]):
            out_f, in_f = layer.weight.shape
            layer.weight.copy_(torch.randn(out_f, rank) @ torch.randn(rank, in_f) / in_f)
    return model


def _bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=128,
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=32,
        attn_implementation="eager",
    )
    return BertModel(config).eval()


MODELS = {
    "mlp": (_mlp, lambda: torch.randn(8, 64)),
    "cnn": (sequential_cnn, lambda: torch.randn(2, 3, 16, 16)),
    "bert": (_bert, lambda: torch.randint(0, 128, (2, 8))),
}


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    make, inputs = MODELS[name]
    return make(), inputs()


def _outputs(value: Any) -> list[torch.Tensor]:
    """The floating outputs of a model: a tensor, or a Hugging Face output's tensors."""
    if isinstance(value, torch.Tensor):
        return [value]
    return [v for v in value.to_tuple() if isinstance(v, torch.Tensor)]


def _run(model: Any, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return _outputs(model(x))


def _max_rel_error(got: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    assert len(got) == len(expected)
    return max(
        float((g - e).abs().max() / e.abs().max()) for g, e in zip(got, expected, strict=False)
    )


def _decisions(plan: tfx.FactorizationPlan) -> list[tuple[Any, ...]]:
    return [(c.site, c.kind, c.form, c.tensorized_shape, c.rank) for c in plan.choices]


def _factorized(plan: tfx.FactorizationPlan) -> list[str]:
    return [c.site for c in plan.choices if c.form != "dense"]


# --- the entry point ---------------------------------------------------------------------------


def test_entry_point_names_the_default_backend() -> None:
    (point,) = [p for p in entry_points(group="torch_dynamo_backends") if p.name == "tfx"]
    assert point.load() is tfx._backend.default_backend


def test_backend_string_resolves_without_importing_tfx() -> None:
    code = (
        "import sys, torch\n"
        "from torch._dynamo.backends.registry import lookup_backend\n"
        "before = 'tfx' in sys.modules\n"
        "fn = lookup_backend('tfx')\n"
        "print(before, fn.__module__, fn.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "tfx._backend", "default_backend"]


def test_backend_string_takes_options() -> None:
    """``torch.compile(model, backend="tfx", options={...})``: the options of ``tfx.backend``."""
    model, x = _model("mlp")
    options = {"budget": 0.3, "compiler": "eager"}
    got = _run(torch.compile(model, backend="tfx", options=options), x)
    at_03 = tfx.factorize(model, 0.3, example_inputs=(x,), progress=False)
    at_05 = tfx.factorize(model, 0.5, example_inputs=(x,), progress=False)
    assert _decisions(at_03.tfx_plan) != _decisions(at_05.tfx_plan)
    torch.testing.assert_close(got, _run(at_03, x), rtol=1e-5, atol=1e-6)


# --- same plan and outputs as tfx.factorize + inductor --------------------------------------------


def test_backend_string_matches_factorize_then_inductor() -> None:
    model, x = _model("mlp")
    compiled = torch.compile(model, backend="tfx")
    got = _run(compiled, x)
    gm = tfx.factorize(model, tfx._backend.DEFAULT_BUDGET, example_inputs=(x,), progress=False)
    expected = _run(torch.compile(gm, backend="inductor"), x)
    plan = tfx._backend._DEFAULT.plans[-1]  # type: ignore[union-attr]
    assert _decisions(plan) == _decisions(gm.tfx_plan)
    assert _factorized(plan) != []
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert _max_rel_error(got, _run(model, x)) > 1e-3  # factorized, not dense


@pytest.mark.parametrize(
    "name",
    [
        "cnn",
        pytest.param("bert", marks=pytest.mark.slow),
        pytest.param("mlp", marks=pytest.mark.slow),
    ],
)
def test_configured_backend_matches_factorize_then_inductor(name: str) -> None:
    model, x = _model(name)
    backend = tfx.backend(budget=0.3)
    got = _run(torch.compile(model, backend=backend), x)
    (plan,) = backend.plans  # type: ignore[attr-defined]
    if name != "bert":  # factorize plans BERT's query/key/value as a group; the backend, one by one
        assert _decisions(plan) == _decisions(
            tfx.factorize(model, 0.3, example_inputs=(x,), progress=False).tfx_plan
        )
    gm = tfx.factorize(
        model, plan=plan, example_inputs=(x,), progress=False
    )  # the backend's plan, applied
    expected = _run(torch.compile(gm, backend="inductor"), x)
    assert _factorized(plan) != []
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["mlp", "cnn", "bert"])
def test_backend_graph_has_the_plan_and_outputs_of_factorize(name: str) -> None:
    """Dynamo's graph (parameters as inputs) gets factorize's plan; ``compiler="eager"`` runs it
    uncompiled. ``fullgraph=True``: one graph, no break added."""
    model, x = _model(name)
    backend = tfx.backend(budget=0.5, compiler="eager")
    got = _run(torch.compile(model, backend=backend, fullgraph=True), x)
    gm = tfx.factorize(model, 0.5, example_inputs=(x,), progress=False)
    (plan,) = backend.plans  # type: ignore[attr-defined]
    assert [c.site for c in plan.choices] == [c.site for c in gm.tfx_plan.choices]
    if name != "bert":  # factorize plans BERT's query/key/value as a group; the backend, one by one
        assert _decisions(plan) == _decisions(gm.tfx_plan)
    assert plan.total_params_before == gm.tfx_plan.total_params_before
    assert plan.capture == "dynamo"
    same = tfx.factorize(
        model, plan=plan, example_inputs=(x,), progress=False
    )  # the backend's plan, applied
    torch.testing.assert_close(got, _run(same, x), rtol=1e-5, atol=1e-6)


# --- exact plans reproduce the dense model --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "compiler"),
    [
        ("mlp", "eager"),
        ("cnn", "eager"),
        ("bert", "eager"),
        ("cnn", "inductor"),
        pytest.param("mlp", "inductor", marks=pytest.mark.slow),
        pytest.param("bert", "inductor", marks=pytest.mark.slow),
    ],
)
def test_budget_one_reproduces_eager(name: str, compiler: str) -> None:
    model, x = _model(name)
    got = _run(torch.compile(model, backend=tfx.backend(budget=1.0, compiler=compiler)), x)
    assert _max_rel_error(got, _run(model, x)) <= 1e-5


def test_low_rank_weights_are_factorized_exactly_and_dense_layers_stay_live() -> None:
    """Rank-4 weights at budget 0.5: exact. Layer ``4`` stays dense and keeps reading its live
    parameters (graph inputs, as without tfx): an in-place update shows without a recompile."""
    model, x = _low_rank_mlp(), torch.randn(8, 64)
    backend = tfx.backend(budget=0.5, skip=["4"])
    compiled = torch.compile(model, backend=backend)
    before = _run(compiled, x)
    (plan,) = backend.plans  # type: ignore[attr-defined]
    assert _factorized(plan) == ["0", "2"]
    assert all(c.rank >= 4 for c in plan.choices if c.form != "dense")
    assert _max_rel_error(before, _run(model, x)) <= 1e-5
    with torch.no_grad():
        model[4].bias.add_(1.0)
    after = _run(compiled, x)
    assert len(backend.plans) == 1  # type: ignore[attr-defined]
    torch.testing.assert_close(after[0], before[0] + 1.0)
    assert _max_rel_error(after, _run(model, x)) <= 1e-5


# --- decompositions: once per parameter ----------------------------------------------------------


def test_decomposes_once_across_recompiles(built: list[str]) -> None:
    model = _mlp()
    backend = tfx.backend(budget=0.5, compiler="eager")
    compiled = torch.compile(model, backend=backend, dynamic=False)
    gm = tfx.factorize(model, 0.5, example_inputs=(torch.randn(4, 64),), progress=False)
    for batch in (4, 8):
        x = torch.randn(batch, 64)
        torch.testing.assert_close(_run(compiled, x), _run(gm, x), rtol=1e-5, atol=1e-6)
    first, second = backend.plans  # type: ignore[attr-defined]  # two compiles: static shapes
    assert _decisions(first) == _decisions(second)
    assert sorted(built) == sorted(_factorized(first)) != []


class _Twice(nn.Module):
    """``fc`` runs on both sides of a graph break, so two graph pieces read its weight."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 64)
        self.out = nn.Linear(64, 64)
        with torch.no_grad():
            for layer in (self.fc, self.out):
                layer.weight.copy_(torch.randn(64, 4) @ torch.randn(4, 64) / 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc(x))
        torch._dynamo.graph_break()
        return self.out(torch.relu(self.fc(x)))


def test_decomposes_once_across_a_graph_break(built: list[str]) -> None:
    model, x = _Twice().eval(), torch.randn(4, 64)
    backend = tfx.backend(budget=0.5, compiler="eager")
    got = _run(torch.compile(model, backend=backend), x)
    first, second = backend.plans  # type: ignore[attr-defined]
    assert _factorized(first) == ["fc"] and _factorized(second) == ["fc", "out"]
    assert first.choice("fc").rank == second.choice("fc").rank
    assert sorted(built) == ["fc", "out"]
    assert _max_rel_error(got, _run(model, x)) <= 1e-5  # rank-4 weights: exact


class _Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(64, 64)
        self.b = nn.Linear(64, 64)
        _low_rank(self.a, self.b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class _Repeated(nn.Module):
    """Blocks in a loop, each with a graph break: dynamo compiles block 0's frames once and
    reuses them, parameters as inputs, for block 1."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(), _Block()])
        _low_rank(*(block.inner for block in self.blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def _low_rank(*layers: nn.Linear) -> None:
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(torch.randn(64, 4) @ torch.randn(4, 64) / 8)


@pytest.mark.parametrize("compiler", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_a_graph_reused_for_another_instance_uses_its_weights(
    compiler: str, built: list[str]
) -> None:
    """Dynamo runs the graph compiled for ``first`` on ``second`` (same class, so same code):
    the layers get ``second``'s factors (rank-4 weights: exact), each weight decomposed once."""
    first, second, x = _Pair().eval(), _Pair().eval(), torch.randn(4, 64)
    backend = tfx.backend(0.5, compiler=compiler)
    for _ in range(2):
        for model in (first, second):
            assert (
                _max_rel_error(_run(torch.compile(model, backend=backend), x), _run(model, x))
                <= 1e-5
            )
    assert len(backend.plans) == 1  # type: ignore[attr-defined]  # one compile, reused
    assert sorted(built) == ["a", "a", "b", "b"]


def test_blocks_resumed_after_a_graph_break_use_their_own_weights(built: list[str]) -> None:
    model, x = _Repeated().eval(), torch.randn(4, 64)
    backend = tfx.backend(0.5, compiler="eager")
    compiled = torch.compile(model, backend=backend)
    for _ in range(2):
        assert _max_rel_error(_run(compiled, x), _run(model, x)) <= 1e-5
    assert sorted(built) == [
        "blocks.0.inner",
        "blocks.0.inner",
    ]  # block 1's weight, with block 0's plan


def test_budget_is_a_fraction_of_each_graph_piece() -> None:
    model, x = _Twice().eval(), torch.randn(4, 64)
    backend = tfx.backend(budget=0.5, compiler="eager")
    _run(torch.compile(model, backend=backend), x)
    layer = 64 * 64 + 64
    assert [p.total_params_before for p in backend.plans] == [layer, 2 * layer]  # type: ignore[attr-defined]
    assert [p.budget_params for p in backend.plans] == [0.5 * layer, layer]  # type: ignore[attr-defined]


def test_weight_changed_in_place_is_decomposed_again(built: list[str]) -> None:
    """``load_state_dict`` or ``copy_`` into a factorized weight: the next call re-decomposes it
    (same plan), with no recompile."""
    model, x = _mlp(), torch.randn(8, 64)
    backend = tfx.backend(budget=0.5, compiler="eager")
    compiled = torch.compile(model, backend=backend)
    before = _run(compiled, x)
    with torch.no_grad():
        model[0].weight.mul_(-1.0)
    after = _run(compiled, x)
    assert len(backend.plans) == 1  # type: ignore[attr-defined]
    assert built.count("0") == 2 and built.count("2") == 1
    gm = tfx.factorize(model, 0.5, example_inputs=(x,), progress=False)
    assert _decisions(gm.tfx_plan) == _decisions(backend.plans[0])  # type: ignore[attr-defined]
    torch.testing.assert_close(after, _run(gm, x), rtol=1e-5, atol=1e-6)
    assert _max_rel_error(after, before) > 1e-3


def test_weight_rebound_or_retyped_is_seen() -> None:
    """``param.data = ...`` (new storage, no version bump) and ``model.double()`` (new dtype):
    the compiled model follows the live parameters, as it would without tfx."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 64, bias=False), nn.ReLU(), nn.Linear(64, 64, bias=False)
    ).eval()
    backend = tfx.backend(budget=0.5, compiler="eager", forms=("svd",))
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(8, 64)

    def expected(inputs: torch.Tensor) -> torch.Tensor:
        h = inputs.double()
        for i, choice in zip((0, 2), backend.plans[-1].choices, strict=False):  # type: ignore[attr-defined]
            u, s, vh = torch.linalg.svd(model[i].weight.double())
            r = choice.rank
            h = torch.nn.functional.linear(h, (u[:, :r] * s[:r]) @ vh[:r])
            h = h.relu() if i == 0 else h
        return h

    with torch.no_grad():
        torch.testing.assert_close(compiled(x).double(), expected(x), rtol=1e-4, atol=1e-5)
        model[0].weight.data = model[0].weight.data * 3
        torch.testing.assert_close(compiled(x).double(), expected(x), rtol=1e-4, atol=1e-5)
        model.double()
        y = compiled(x.double())
        assert y.dtype == torch.float64
        torch.testing.assert_close(y, expected(x), rtol=1e-8, atol=1e-10)


# --- shapes, graph breaks, grad mode ------------------------------------------------------------


def _batches_recompile_at_most_twice(compiler: str, built: list[str]) -> None:
    model = _mlp()
    backend = tfx.backend(budget=0.5, compiler=compiler)
    compiled = torch.compile(model, backend=backend)
    gm = tfx.factorize(model, 0.5, example_inputs=(torch.randn(2, 64),), progress=False)
    for batch in (2, 3, 5, 8, 13):
        x = torch.randn(batch, 64)
        torch.testing.assert_close(_run(compiled, x), _run(gm, x), rtol=1e-5, atol=1e-5)
    assert len(backend.plans) == 2  # type: ignore[attr-defined]  # static, then a dynamic batch
    assert sorted(built) == sorted(_factorized(backend.plans[0]))  # type: ignore[attr-defined]


def test_batch_sizes_recompile_at_most_twice(built: list[str]) -> None:
    _batches_recompile_at_most_twice("eager", built)


@pytest.mark.slow
def test_batch_sizes_recompile_at_most_twice_with_inductor(built: list[str]) -> None:
    _batches_recompile_at_most_twice("inductor", built)


def test_grad_mode_warns_and_records_no_gradients() -> None:
    model, x = _mlp(), torch.randn(8, 64)
    compiled = torch.compile(model, backend=tfx.backend(budget=0.5, compiler="eager"))
    with pytest.warns(
        tfx.TfxWarning, match=r"(?s)for inference.*torch\.no_grad\(\).*tfx\.factorize"
    ):
        y = compiled(x)
    assert not y.requires_grad


def test_skip_leaves_a_module_dense() -> None:
    model, x = _mlp(), torch.randn(8, 64)
    backend = tfx.backend(budget=0.5, skip=["0"], compiler="eager")
    _run(torch.compile(model, backend=backend), x)
    choice = backend.plans[0].choice("0")  # type: ignore[attr-defined]
    assert choice.form == "dense" and "skip" in choice.reason


# --- site names: those of tfx.factorize, i.e. the compiled module's named_modules() ---------------


def _tiny_bert() -> tuple[nn.Module, torch.Tensor]:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        attn_implementation="eager",
    )
    return BertModel(config).eval(), torch.randint(0, 100, (2, 8))


def _tiny_gpt2() -> tuple[nn.Module, torch.Tensor]:
    """GPT-2 with its LM head tied to the token embedding; no cache (torch.export refuses it)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=100,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        use_cache=False,
        attn_implementation="eager",
    )
    return GPT2LMHeadModel(config).eval(), torch.randint(0, 100, (2, 8))


def _tiny_swin() -> tuple[nn.Module, torch.Tensor]:
    from transformers import SwinConfig, SwinModel

    config = SwinConfig(
        image_size=32,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1],
        num_heads=[1, 2],
        window_size=2,
    )
    return SwinModel(config).eval(), torch.randn(2, 3, 32, 32)


HF_MODELS = {"bert": _tiny_bert, "gpt2": _tiny_gpt2, "swin": _tiny_swin}


def _sites(backend: Any) -> set[str]:
    return {c.site for plan in backend.plans for c in plan.choices}


def _factorized_sites(backend: Any) -> set[str]:
    return {site for plan in backend.plans for site in _factorized(plan)}


@pytest.mark.parametrize("name", ["bert", "gpt2", pytest.param("swin", marks=pytest.mark.slow)])
def test_backend_site_names_are_those_of_factorize(name: str) -> None:
    """Hugging Face models: the backend names every site as tfx.factorize does, by
    ``named_modules()`` (GPT-2's tied LM head is ``lm_head``, not the embedding it shares a
    weight with), and both factorize some. Which ones is the planners' business: tfx.factorize
    also plans shared input bases (with calibration). Swin is ``slow``: torch.export takes a
    minute on it; the next test checks its names without export."""
    model, x = HF_MODELS[name]()
    backend = tfx.backend(0.5, compiler="eager", progress=False)
    _run(torch.compile(model, backend=backend), x)
    plan = tfx.factorize(model, 0.5, example_inputs=(x,), progress=False).tfx_plan
    sites = _sites(backend)
    assert sites == {c.site for c in plan.choices} == _layers(model)
    assert set() != _factorized_sites(backend) <= sites
    assert set() != set(_factorized(plan)) <= sites


def test_backend_site_names_are_named_modules_on_swin() -> None:
    model, x = _tiny_swin()
    backend = tfx.backend(0.5, compiler="eager", progress=False)
    _run(torch.compile(model, backend=backend), x)
    assert _sites(backend) == _layers(model)
    assert _factorized_sites(backend) != set()


def _layers(model: nn.Module) -> set[str]:
    """The names of the model's linear, conv and embedding layers (GPT-2's Conv1D included)."""
    kinds = ("Linear", "Conv2d", "Embedding", "Conv1D")
    return {name for name, module in model.named_modules() if type(module).__name__ in kinds}


class _Block(nn.Module):
    """A graph break inside: dynamo resumes in this module's frame, where ``self`` is the block."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x)
        torch._dynamo.graph_break()
        return self.inner(x)


class _Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block()])
        self.head = nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks[0](x))


@pytest.mark.parametrize("how", ["module", "function", "method", "module.compile"])
def test_site_names_are_qualified_after_a_graph_break_inside_a_submodule(how: str) -> None:
    """A piece compiled in a submodule's frame still gets the compiled module's names
    (``blocks.0.inner``, not ``inner``): for ``torch.compile(model)``, a function calling a
    global model, a bound ``forward`` and ``model.compile()``."""
    model, x = _Nested().eval(), torch.randn(4, 64)
    backend = tfx.backend(0.5, compiler="eager", progress=False)
    if how == "module.compile":
        model.compile(backend=backend)
        _run(model, x)
    else:
        target = {"module": model, "function": lambda t: model(t), "method": model.forward}[how]
        _run(torch.compile(target, backend=backend), x)
    assert len(backend.plans) == 2  # type: ignore[attr-defined]  # blocks.0 after its break; head
    assert _factorized_sites(backend) == {"blocks.0.inner", "head"}


def test_skip_leaves_a_hugging_face_site_dense() -> None:
    model, x = _tiny_bert()
    name = "encoder.layer.0.attention.self.query"
    backend = tfx.backend(0.5, compiler="eager", skip=[name], progress=False)
    _run(torch.compile(model, backend=backend), x)
    (plan,) = backend.plans  # type: ignore[attr-defined]
    assert plan.choice(name).form == "dense" and "skip" in plan.choice(name).reason
    assert "encoder.layer.1.attention.self.query" in _factorized(plan)


def test_skip_of_a_module_absent_from_a_graph_piece_is_no_error() -> None:
    """``head`` is in the second piece only: the first compiles, and the second has nothing left
    to factorize (no plan)."""
    model, x = _Nested().eval(), torch.randn(4, 64)
    backend = tfx.backend(0.5, compiler="eager", skip=["head"], progress=False)
    _run(torch.compile(model, backend=backend), x)
    assert [_factorized(p) for p in backend.plans] == [["blocks.0.inner"]]  # type: ignore[attr-defined]


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"form": ["svd"]}, r"keyword='form' is not registered\. Did you mean 'forms'\?"),
        (
            {"example_inputs": (1,)},
            r"(?s)keyword='example_inputs' is not registered.*dynamo supplies the inputs",
        ),
        ({"forms": ["tuker"]}, r"form='tuker' is not registered\. Did you mean 'tucker'\?"),
        ({"kinds": ["lineer"]}, r"kind='lineer' is not registered\. Did you mean 'linear'\?"),
        ({"strategy": "gredy"}, r"strategy='gredy' is not registered\. Did you mean 'greedy'\?"),
        (
            {"strategy": "sensitivity"},
            r"(?s)needs calibration data.*Fix: tfx\.backend\(budget, strategy='auto'\)",
        ),
        ({"compiler": "aot"}, r"(?s)compiler='aot' is not registered.*'eager', 'inductor'"),
        ({"skip": "encoder"}, r"skip='encoder' is not a sequence of module names"),
        (
            {"mode": "max-autotun"},
            r"mode='max-autotun' is not registered\. Did you mean 'max-autotune'\?",
        ),
    ],
)
def test_backend_rejects_bad_options(options: dict[str, Any], match: str) -> None:
    with pytest.raises(tfx.OptionError, match=match):
        tfx.backend(0.5, **options)


@pytest.mark.parametrize(
    ("budget", "match"),
    [
        (1.5, r"budget=1\.5 is a float above 1"),
        (0, r"budget=0 is not a positive number"),
        ("half", r"budget='half'"),
    ],
)
def test_backend_rejects_malformed_budgets(budget: Any, match: str) -> None:
    with pytest.raises(tfx.BudgetError, match=match):
        tfx.backend(budget)


@pytest.mark.parametrize(
    ("make", "skip", "match"),
    [
        (
            _tiny_bert,
            "encoder.layer.0.atention",
            r"skip='encoder\.layer\.0\.atention' names no module of BertModel\. "
            r"Did you mean 'encoder\.layer\.0\.attention'\?",
        ),
        (
            lambda: (_Nested().eval(), torch.randn(4, 64)),
            "blocks.0.iner",
            r"(?s)names no module of _Nested\. Did you mean 'blocks\.0\.inner'\?"
            r".*Fix: tfx\.backend\(budget, skip=",
        ),
    ],
    ids=["bert", "graph-break"],
)
def test_unknown_skip_name_raises_with_a_suggestion(make: Any, skip: str, match: str) -> None:
    """A misspelt ``skip=`` name would leave the module factorized: an error, as in factorize."""
    model, x = make()
    compiled = torch.compile(model, backend=tfx.backend(0.5, compiler="eager", skip=[skip]))
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match="Did you mean") as info:
        _run(compiled, x)
    assert isinstance(info.value.inner_exception, tfx.OptionError)
    with pytest.raises(tfx.OptionError, match=match):
        raise info.value.inner_exception


def test_unreachable_budget_names_the_graph_piece() -> None:
    model, x = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 64)).eval(), torch.randn(4, 64)
    compiled = torch.compile(model, backend=tfx.backend(budget=0.01, compiler="eager"))
    with pytest.raises(
        torch._dynamo.exc.BackendCompilerFailed, match=r"(?s)BudgetError: budget=0\.01.*graph piece"
    ):
        _run(compiled, x)


# --- tied tables: one factorized table read by every reader ----------------------------------


@pytest.fixture
def tables(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The owners the backend decomposes a tied table for, in order (cache misses only)."""
    names: list[str] = []
    make = tfx._backend.table_tensor

    def counting(site: Any, choice: Any) -> nn.Module:
        names.append(site.name)
        return make(site, choice)

    monkeypatch.setattr(tfx._backend, "table_tensor", counting)
    return names


def _tied_gpt2() -> tuple[nn.Module, torch.Tensor]:
    """GPT-2 whose tied token table is most of the model, so a 0.5 budget must compress it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=1000,
        n_embd=64,
        n_layer=1,
        n_head=2,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        use_cache=False,
        attn_implementation="eager",
    )
    return GPT2LMHeadModel(config).eval(), torch.randint(0, 1000, (2, 8))


def test_tied_table_is_factorized_once_and_read_by_both_readers(tables: list[str]) -> None:
    """GPT-2's ``wte``/``lm_head``: one table in the plan (counted once, within the budget), one
    decomposition, one tensor held by both of the graph's layers; the outputs are those of
    tfx.factorize applying the same plan (which keeps the tie: tests/test_tied.py)."""
    model, x = _tied_gpt2()
    backend = tfx.backend(budget=0.5, compiler="eager")
    got = _run(torch.compile(model, backend=backend, fullgraph=True), x)
    (plan,) = backend.plans  # type: ignore[attr-defined]
    wte, head = plan.choice("transformer.wte"), plan.choice("lm_head")
    assert wte.form != "dense" and (head.form, head.rank) == (wte.form, wte.rank)
    assert head.params_after == 0 and "one factorized table" in head.reason
    assert plan.total_params_after <= 0.5 * plan.total_params_before
    assert tables == ["lm_head"]
    same = tfx.factorize(model, plan=plan, example_inputs=(x,), progress=False, emit="graph")
    torch.testing.assert_close(got, _run(same, x), rtol=1e-5, atol=1e-6)


def test_tied_table_follows_recompiles_and_weight_changes(tables: list[str]) -> None:
    """A new batch shape recompiles: the second plan keeps the table's choice and the table is
    not decomposed again. An in-place change of the tied weight is decomposed again, once, and
    reaches both readers."""
    model, x = _tied_gpt2()
    backend = tfx.backend(budget=0.5, compiler="eager")
    compiled = torch.compile(model, backend=backend, dynamic=False)
    _run(compiled, x)
    y = torch.randint(0, 1000, (3, 8))
    got = _run(compiled, y)
    first, second = backend.plans  # type: ignore[attr-defined]
    assert _decisions(first) == _decisions(second) and tables == ["lm_head"]
    with torch.no_grad():
        model.transformer.wte.weight.mul_(-0.5)
    changed = _run(compiled, y)
    assert tables == ["lm_head", "lm_head"] and len(backend.plans) == 2  # type: ignore[attr-defined]
    assert _max_rel_error(changed, got) > 1e-3
    same = tfx.factorize(model, plan=second, example_inputs=(y,), progress=False, emit="graph")
    torch.testing.assert_close(changed, _run(same, y), rtol=1e-5, atol=1e-6)
