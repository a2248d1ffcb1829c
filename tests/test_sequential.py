"""Sequential mode: ``tfx.factorize(..., sequential=True)`` factorizes one block at a time.

The result is checked against the original model (budget, ties, outputs), against the one-shot
path (weight-only: the same plan and the same factors), and against its own promise: each
block is decomposed for the inputs the *factorized* blocks before it give it.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

import tfx
from tfx._sequential import BlockStream, find_blocks
from tfx.cost._whiten import InputStats
from tfx.passes import build_layer
from tfx.passes._calibrate import whitened_site
from tfx.passes._match import find_module_sites

from .zoo.models import ZOO


def _batches(arch: str, n: int = 3, batch: int = 3, length: int = 10) -> list[dict]:
    out = []
    for i in range(n):
        inputs = ZOO[arch].inputs(batch, length + i)
        mask = torch.ones_like(inputs["input_ids"])
        mask[0, -3:] = 0  # padding in every batch: masked rows must be left out
        out.append({**inputs, "attention_mask": mask})
    return out


def _example(arch: str) -> dict:
    inputs = ZOO[arch].inputs(2, 8)
    return {**inputs, "attention_mask": torch.ones_like(inputs["input_ids"])}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _run(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_within_budget_and_faithful(arch: str) -> None:
    model = ZOO[arch].build()
    before = _params(model)
    result = tfx.factorize(
        model,
        0.5,
        example_inputs=_example(arch),
        calibration=_batches(arch),
        sequential=True,
        progress=False,
    )
    plan = result.tfx_plan
    assert type(result) is type(model)
    assert plan.capture == "sequential" and plan.emit == "modules"
    assert _params(result) == plan.total_params_after <= 0.5 * before
    assert sum(c.form != "dense" for c in plan.choices) >= 4
    assert _params(model) == before  # the original is untouched (no inplace)
    out = _run(result, ZOO[arch].inputs(5, 11))  # another batch size and length
    assert out.shape == _run(model, ZOO[arch].inputs(5, 11)).shape
    assert bool(torch.isfinite(out).all())
    assert any("sequential" in note for note in plan.notes)


def test_tied_table_stays_tied() -> None:
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=512, n_embd=64, n_layer=2, n_head=2, n_positions=32, bos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    batches = [{"input_ids": torch.randint(0, 512, (4, 16))} for _ in range(3)]
    # Unweighted: weighted by sensitivity, this random table is kept dense (in one shot too).
    result = tfx.factorize(
        model, 0.5, calibration=batches, sequential=True, strategy="greedy", progress=False
    )
    head, table = result.lm_head, result.transformer.wte
    assert type(head).__module__.startswith("tfx") and type(table).__module__.startswith("tfx")
    shared = {id(p) for p in head.parameters()} & {id(p) for p in table.parameters()}
    assert shared, "the tied table's factors are one set of parameters"
    assert _params(result) == result.tfx_plan.total_params_after


def test_without_calibration_equals_one_shot() -> None:
    """Weight-only, the block order changes nothing: the one-shot plan and factors."""
    model = ZOO["llama"].build()
    kwargs = dict(example_inputs=_example("llama"), progress=False, forms=("svd", "tt"))
    seq = tfx.factorize(model, 0.5, sequential=True, **kwargs)
    one = tfx.factorize(model, 0.5, **kwargs)
    assert [(c.site, c.form, c.rank) for c in seq.tfx_plan.choices] == [
        (c.site, c.form, c.rank) for c in one.tfx_plan.choices
    ]
    assert sum(c.form != "dense" for c in one.tfx_plan.choices) >= 4
    ours, theirs = seq.state_dict(), one.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)


def test_budget_one_is_exact() -> None:
    model = ZOO["llama"].build()
    inputs = _example("llama")
    result = tfx.factorize(
        model, 1.0, calibration=_batches("llama"), sequential=True, progress=False
    )
    torch.testing.assert_close(_run(result, inputs), _run(model, inputs), rtol=0, atol=0)


def _low_rank_llama(rank: int) -> nn.Module:
    model = ZOO["llama"].build().double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.model.layers.modules():
            if isinstance(module, nn.Linear):
                out, inp = module.weight.shape
                a = torch.randn(out, rank, generator=gen, dtype=torch.float64)
                b = torch.randn(rank, inp, generator=gen, dtype=torch.float64)
                module.weight.copy_(a @ b / inp)
    return model


def test_exact_at_the_weights_rank() -> None:
    """Blocks whose weights have rank 4, planned with room for rank 4: float64 outputs match."""
    model = _low_rank_llama(4)
    blocks = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, nn.Linear))
    low = sum(
        4 * sum(m.weight.shape) for m in model.model.layers.modules() if isinstance(m, nn.Linear)
    )
    budget = _params(model) - blocks + low + 200
    result = tfx.factorize(
        model,
        budget,
        calibration=[{k: v for k, v in b.items()} for b in _batches("llama")],
        sequential=True,
        kinds=("linear",),
        skip=("lm_head",),
        forms=("svd",),
        progress=False,
    )
    chosen = [c for c in result.tfx_plan.choices if c.form != "dense"]
    assert len(chosen) >= 10 and all(c.rank >= 4 for c in chosen)
    inputs = _example("llama")
    torch.testing.assert_close(_run(result, inputs), _run(model, inputs), rtol=1e-9, atol=1e-9)


def test_block_statistics_come_from_the_factorized_blocks_before() -> None:
    """Block 1's layers are fitted to the inputs the factorized block 0 gives them (inside a
    block, every layer is fitted on the block's dense computation, as in GPTQ: a layer that
    reads the block's input, here a query projection, sees exactly what it will see)."""
    model = ZOO["llama"].build().double()
    batches = _batches("llama")
    result = tfx.factorize(
        model, 0.4, calibration=batches, sequential=True, forms=("tt", "tucker"), progress=False
    )
    plan = result.tfx_plan
    name = "model.layers.1.self_attn.q_proj"
    choice = plan.choice(name)
    assert choice.form in ("tt", "tucker") and choice.group is None
    # The statistics block 1's down_proj sees in the result (factorized blocks before it),
    # and in the original (dense blocks before it).
    seen = {}
    for key, net in (("result", result), ("dense", model)):
        stats = InputStats(choice.weight_shape[1])

        def record(_m, args, stats=stats, mask=None):
            stats.update(args[0][mask].reshape(-1, args[0].shape[-1]))

        module = net.get_submodule(name)
        for batch in batches:
            mask = batch["attention_mask"].bool()
            handle = module.register_forward_pre_hook(
                lambda m, a, mask=mask, stats=stats: record(m, a, stats, mask)
            )
            with torch.no_grad():
                net(**batch)
            handle.remove()
        seen[key] = stats
    site = next(s for s in find_module_sites(model) if s.name == name)
    layer = result.get_submodule(name)

    def expected(stats: InputStats) -> torch.Tensor:
        return build_layer(whitened_site(site, choice, stats), choice).weight.to_tensor()

    got = layer.weight.to_tensor()
    from_result = (got - expected(seen["result"])).norm() / got.norm()
    from_dense = (got - expected(seen["dense"])).norm() / got.norm()
    assert from_result < 1e-8
    assert from_dense > 1e-3  # the check can tell the two apart


@pytest.mark.parametrize("offload", ["cpu", "disk"])
def test_offload_and_device_give_the_same_result(offload: str) -> None:
    model = ZOO["llama"].build()
    kwargs = dict(calibration=_batches("llama"), sequential=True, progress=False)
    base = tfx.factorize(model, 0.5, **kwargs)
    other = tfx.factorize(model, 0.5, offload=offload, device="cpu", **kwargs)
    ours, theirs = base.state_dict(), other.state_dict()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)


def test_inplace_frees_each_dense_weight() -> None:
    """With inplace=True, block 0's dense weights are gone before the last block is decomposed:
    the model is never held twice."""
    model = ZOO["llama"].build()
    first = [
        weakref.ref(m.weight) for m in model.model.layers[0].modules() if isinstance(m, nn.Linear)
    ]
    alive_at_last_block = []

    def count(_m, _a):
        gc.collect()
        alive_at_last_block.append(sum(ref() is not None for ref in first))

    handle = model.model.layers[-1].register_forward_pre_hook(count)
    result = tfx.factorize(
        model, 0.5, calibration=_batches("llama"), sequential=True, inplace=True, progress=False
    )
    handle.remove()
    factorized = [
        c
        for c in result.tfx_plan.choices
        if c.site.startswith("model.layers.0.") and c.form != "dense"
    ]
    assert result is model and factorized
    assert alive_at_last_block[0] == len(first)  # the spectra pass: the model as it was
    gc.collect()
    assert alive_at_last_block[-1] == len(first) - len(factorized)


def test_inplace_frees_the_dense_table_before_the_blocks_are_decomposed() -> None:
    """The embedding table, once its factors replace it, is not held to the end by its site:
    it is gone while the blocks are decomposed."""
    model = ZOO["llama"].build()
    table = weakref.ref(model.model.embed_tokens.weight)
    alive = []

    def check(_m, _a):
        gc.collect()
        alive.append(table() is not None)

    handle = model.model.layers[-1].register_forward_pre_hook(check)
    result = tfx.factorize(
        model,
        0.3,
        calibration=_batches("llama"),
        sequential=True,
        inplace=True,
        strategy="greedy",  # no sensitivity pass: the last block runs in the two stages only
        progress=False,
    )
    handle.remove()
    assert result.tfx_plan.choice("model.embed_tokens").form != "dense"
    assert alive[0] and not alive[-1]  # held for the spectra, gone while decomposing


def test_find_blocks() -> None:
    model = ZOO["bert"].build()
    assert find_blocks(model)[0] == "encoder.layer"
    assert find_blocks(model, "encoder.layer")[1] is model.encoder.layer


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(sequential="encoder.nope"), "names no nn.ModuleList"),
        (dict(sequential=True, offload="gpu"), "offload='gpu'"),
        (dict(offload="cpu"), "apply to sequential mode"),
        (dict(sequential=True, emit="graph"), "no graph result"),
    ],
)
def test_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(tfx.OptionError, match=match):
        tfx.factorize(
            ZOO["bert"].build(), 0.5, calibration=_batches("bert"), progress=False, **kwargs
        )


def test_no_blocks_is_an_error() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    with pytest.raises(tfx.OptionError, match="no list of repeated blocks"):
        tfx.factorize(model, 0.5, example_inputs=(torch.randn(2, 8),), sequential=True)


def test_stream_runs_blocks_like_the_model() -> None:
    """The stream's block-by-block run reproduces the model's own hidden states."""
    model = ZOO["llama"].build()
    batches = _batches("llama", n=2)
    _, blocks = find_blocks(model)
    stream = BlockStream(model, blocks, batches, [None, None])
    stream.trace()
    for k in range(len(blocks)):
        stream.advance(k)
    with torch.no_grad():
        out = model.model(**batches[1], output_hidden_states=True)
    torch.testing.assert_close(
        model.model.norm(stream.hidden.get(1)), out.last_hidden_state, rtol=1e-6, atol=1e-6
    )
    stream.close()


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("llama", [["q_proj", "k_proj", "v_proj"], ["gate_proj", "up_proj"]]),
        ("gpt2", []),  # c_attn reads ln_1's output, c_fc ln_2's (freed and reallocated between)
    ],
)
def test_siblings_are_the_layers_that_read_one_tensor(arch: str, expected: list) -> None:
    from tfx._sequential import _look_at_block

    model = ZOO[arch].build()
    _, blocks = find_blocks(model)
    sites = find_module_sites(model)
    stream = BlockStream(model, blocks, _batches(arch, n=1), [None])
    stream.trace()
    members = [i for i, s in enumerate(sites) if ".0." in s.name and s.info.kind == "linear"]
    groups = _look_at_block(stream, 0, sites, members)
    assert [[sites[i].name.split(".")[-1] for i in g] for g in groups] == expected
    stream.close()


def test_each_moment_is_let_go_after_its_last_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spectra pass: a block's sites are visited largest input moment first, and a moment is
    gone before the next moment's readers start (not held to the end of the block)."""
    import tfx._sequential as sequential

    seen: list[tuple[str, int, weakref.ref]] = []  # (site, features, its moment)
    alive_at_next: list[bool] = []
    real = sequential.candidates

    def spy(info, weight, forms, stats, *args, **kwargs):
        if isinstance(stats, InputStats) and "layers." in info.name:
            gc.collect()
            if seen and seen[-1][2]() is not stats:  # the previous moment's readers are done
                alive_at_next.append(seen[-1][2]() is not None)
            seen.append((info.name, stats.features, weakref.ref(stats)))
        return real(info, weight, forms, stats, *args, **kwargs)

    monkeypatch.setattr(sequential, "candidates", spy)
    model = ZOO["llama"].build()
    tfx.factorize(
        model, 0.5, calibration=_batches("llama"), sequential=True, inplace=True, progress=False
    )
    blocks = {name.split(".mlp.")[0].split(".self_attn.")[0] for name, _, _ in seen}
    firsts = [next(name for name, _, _ in seen if name.startswith(b + ".")) for b in blocks]
    assert len(blocks) == len(model.model.layers) > 1
    assert all(name.endswith("mlp.down_proj") for name in firsts)  # the widest input first
    assert alive_at_next and not any(alive_at_next)


def test_decompose_pass_collects_no_moment_for_layers_kept_dense(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second pass observes only the inputs its decompositions read: a site the plan keeps
    dense (and in no sibling group with a factorized member) is not observed again."""
    asked: list[list[str]] = []
    real = BlockStream.statistics

    def spy(self, k, sites, share=(), **kwargs):
        asked.append([s.name for s in sites])
        return real(self, k, sites, share, **kwargs)

    monkeypatch.setattr(BlockStream, "statistics", spy)
    model = ZOO["llama"].build()
    n = len(model.model.layers)
    result = tfx.factorize(
        model, 0.6, calibration=_batches("llama"), sequential=True, inplace=True, progress=False
    )
    plan = result.tfx_plan
    second = {name for names in asked[n:] for name in names}  # the decompose pass's blocks
    in_blocks = [c for c in plan.choices if c.site.startswith("model.layers.")]
    dense = [c.site for c in in_blocks if c.form == "dense"]
    assert len(asked) == 2 * n and dense
    assert all(c.site in second for c in in_blocks if c.form != "dense")  # each one read
    assert any(name not in second for name in dense)  # and a dense one not observed again


def test_layers_after_the_blocks_observed_without_computing_what_follows_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The LM head's product runs once (the first batch's full call counts the head's entries);
    the other calls end once its input is observed, and that input's moment is the one the
    factorized model gives the head."""
    model = ZOO["llama"].build()
    config = model.config
    model.config.tie_word_embeddings = False
    batches = _batches("llama", n=4)
    head_runs: list[int] = []
    model.lm_head.register_forward_hook(lambda *_: head_runs.append(1))
    finished: list[dict] = []
    real = BlockStream.finish

    def spy(self, sites=(), **kwargs):
        out = real(self, sites, **kwargs)
        finished.append(dict(out))
        return out

    monkeypatch.setattr(BlockStream, "finish", spy)
    result = tfx.factorize(
        model,
        0.6,
        calibration=batches,
        sequential=True,
        inplace=True,
        strategy="greedy",  # the sensitivity pass runs the head too (test_sensitivity.py)
        progress=False,
    )
    assert config.tie_word_embeddings is False
    assert len(head_runs) == 1  # 2 stages x 4 batches observed: the head computed once
    assert result.tfx_plan.choice("lm_head").form != "dense"
    # the decompose stage's moment of the head's input, against a hook on the result
    moment = torch.zeros(config.hidden_size, config.hidden_size, dtype=torch.float64)
    rows = 0

    def record(_m, args) -> None:  # noqa: ANN001
        nonlocal rows
        x = args[0][mask].double()
        moment.add_(x.T @ x)
        rows += x.shape[0]

    result.lm_head.register_forward_pre_hook(record)
    for batch in batches:
        mask = batch["attention_mask"].bool()
        with torch.no_grad():
            result(**batch, use_cache=False)
    stats = finished[-1]["lm_head"]
    assert stats.count == rows
    torch.testing.assert_close(stats.moment, moment, rtol=1e-5, atol=1e-5 * float(moment.max()))
