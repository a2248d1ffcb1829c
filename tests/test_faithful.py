"""The result of ``tfx.factorize`` is a faithful stand-in for the model: one regression test per
way it was not (a batch pinned by a one-row example, ties broken on the module-swap path, a
silent change of capture path, a changed signature, NaN verified as 0, a silent no-op on a
quantized model, meta tensors, ``tfx.load`` without inputs, a misleading budget hint)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import tfx
from tests.passes._models import MLP, bert_inputs, tiny_bert
from tfx import BudgetError, OptionError, TensorError, TfxWarning, UnsupportedSiteError
from tfx.passes import output_error

transformers = pytest.importorskip("transformers")

VOCAB = 128


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny_llama() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config).eval()


def tiny_bart() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BartConfig(
        vocab_size=VOCAB,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
    )
    return transformers.BartForConditionalGeneration(config).eval()


def tiny_opt() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.OPTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        ffn_dim=64,
        num_attention_heads=2,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
    )
    return transformers.OPTForCausalLM(config).eval()


@pytest.fixture(scope="module")
def llama_result() -> tuple[nn.Module, nn.Module, torch.Tensor, list[warnings.WarningMessage]]:
    """A one-layer Llama factorized at 0.5 from a one-row example, and the warnings it gave."""
    model = tiny_llama()
    ids = torch.randint(0, VOCAB, (1, 12))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = tfx.factorize(model, 0.5, example_inputs={"input_ids": ids}, progress=False)
    return model, result, ids, caught


# ------------------------------------------------------------ 1. one-row examples
def test_one_row_example_does_not_pin_the_batch_of_an_exported_encoder() -> None:
    model = tiny_bert()
    ids = torch.randint(0, 96, (1, 8))
    result = tfx.factorize(model, 0.5, example_inputs={"input_ids": ids}, progress=False)
    assert any(c.form != "dense" for c in result.tfx_plan.choices)
    batch = torch.randint(0, 96, (4, 8))
    with torch.no_grad():
        assert result(input_ids=batch).last_hidden_state.shape == (4, 8, 32)


def test_one_row_example_does_not_pin_the_batch_of_a_graph_result() -> None:
    model = tiny_bert()
    ids = torch.randint(0, 96, (1, 8))
    gm = tfx.factorize(model, 0.5, example_inputs={"input_ids": ids}, progress=False, emit="graph")
    assert isinstance(gm, torch.fx.GraphModule)
    batch = torch.randint(0, 96, (3, 8))
    with torch.no_grad():
        expected = model(input_ids=batch).last_hidden_state
        got = gm(input_ids=batch).last_hidden_state
    assert got.shape == expected.shape


# ------------------------------------------------------------ 2. module swap: subclasses and ties
def test_module_swap_finds_embedding_subclasses_and_keeps_shared_tables_tied() -> None:
    model = tiny_bart()
    with pytest.warns(TfxWarning, match="captured by module swap"):
        result = tfx.factorize(model, 0.5, progress=False)
    plan = result.tfx_plan
    by_site = {c.site: c for c in plan.choices}
    assert "model.shared" in by_site  # BartScaledWordEmbedding is a site
    assert (
        len({by_site[s].form for s in ("model.shared", "model.encoder.embed_tokens", "lm_head")})
        == 1
    )
    readers = [
        result.model.shared,
        result.model.encoder.embed_tokens,
        result.model.decoder.embed_tokens,
        result.lm_head,
    ]
    tables = {id(getattr(m, "tfx_layer", m).weight) for m in readers}
    assert len(tables) == 1  # one table (dense or factorized), still tied
    assert n_params(result) == plan.total_params_after <= 0.5 * n_params(model)
    assert any(c.form != "dense" for c in plan.choices)


def test_subclass_with_its_own_forward_keeps_it_and_runs_the_factors() -> None:
    """OPT's learned positional embedding adds an offset, then calls super().forward: the
    result keeps its forward and the base call reaches the factorized table."""
    model = tiny_opt()
    ids = torch.randint(0, VOCAB, (1, 10))
    result = tfx.factorize(model, 0.5, example_inputs={"input_ids": ids}, progress=False)
    positions = result.model.decoder.embed_positions
    assert result.tfx_plan.choice("model.decoder.embed_positions").form != "dense"
    assert isinstance(positions, type(model.model.decoder.embed_positions))
    assert isinstance(positions.tfx_layer, tfx.nn.FactorizedEmbedding)
    assert "weight" not in dict(positions.named_parameters(recurse=False))
    assert result.tfx_plan.output_error is not None and result.tfx_plan.output_error < 1.0
    assert n_params(result) == result.tfx_plan.total_params_after


# ------------------------------------------------------------ 3. decoders with a cache
def test_cached_decoder_analysis_graph_is_a_plan_note_not_a_warning(llama_result) -> None:  # noqa: ANN001
    """The result keeps the cache (it is the model itself); only the analysis graph was captured
    without it, which the plan says, without a warning that would fail every user test suite."""
    _, result, _, caught = llama_result
    assert not [w for w in caught if issubclass(w.category, TfxWarning)]
    assert result.tfx_plan.capture == "export"
    assert any(
        "could not capture LlamaForCausalLM with its cache" in n for n in result.tfx_plan.notes
    )
    assert any("use_cache=False" in note for note in result.tfx_plan.notes)
    assert "use_cache=False" in str(result.tfx_plan)


def test_cached_decoder_result_exports_and_generates(llama_result) -> None:  # noqa: ANN001
    model, result, ids, _ = llama_result
    assert type(result) is type(model)
    assert any(c.form != "dense" for c in result.tfx_plan.choices)
    batch = torch.randint(0, VOCAB, (3, 12))
    program = torch.export.export(
        result, (), {"input_ids": batch, "use_cache": False}, strict=False
    )
    with torch.no_grad():
        torch.testing.assert_close(
            program.module()(input_ids=batch, use_cache=False).logits,
            result(input_ids=batch, use_cache=False).logits,
        )
        out = result.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 15)


def test_cached_decoder_calibrates_through_its_analysis_graph() -> None:
    """The analysis graph was captured with use_cache=False, so the calibration batches (which
    do not say it) are given it too; the plan is then calibrated."""
    model = tiny_llama()
    ids = torch.randint(0, VOCAB, (2, 12))
    batches = [{"input_ids": torch.randint(0, VOCAB, (3, 12))} for _ in range(2)]
    result = tfx.factorize(
        model, 0.5, example_inputs={"input_ids": ids}, calibration=batches, progress=False
    )
    assert any(n.startswith("calibrated on 2 batches") for n in result.tfx_plan.notes)
    assert any(c.form != "dense" for c in result.tfx_plan.choices)


# ------------------------------------------------------------ 4. the model's signature
def test_result_accepts_keywords_the_example_did_not_use(llama_result) -> None:  # noqa: ANN001
    _, result, _, _ = llama_result
    batch = torch.randint(0, VOCAB, (2, 12))
    out = result(input_ids=batch, attention_mask=torch.ones_like(batch), labels=batch)
    assert out.loss is not None and torch.isfinite(out.loss)
    assert out.past_key_values is not None  # use_cache keeps its default (True)


def test_result_keeps_save_pretrained(tmp_path) -> None:  # noqa: ANN001
    model = tiny_bert()
    result = tfx.factorize(model, 0.5, example_inputs=bert_inputs(), progress=False)
    result.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").exists()


# ------------------------------------------------------------ 5. NaN is not "verified"
def test_nan_bias_in_the_original_warns_instead_of_verifying_zero() -> None:
    model = MLP().eval()
    with torch.no_grad():
        model.tiny.bias[0] = float("nan")
    x = torch.randn(4, 32)
    with pytest.warns(TfxWarning, match="original model itself gives .* NaN/Inf"):
        tfx.factorize(model, 0.5, example_inputs=(x,), progress=False)


def test_nan_in_the_example_warns() -> None:
    model = MLP().eval()
    x = torch.randn(4, 32)
    x[0, 0] = float("nan")
    with pytest.warns(TfxWarning, match="NaN/Inf"):
        result = tfx.factorize(model, 0.5, example_inputs=(x,), progress=False)
    assert result.tfx_plan.output_error is not None and result.tfx_plan.output_error > 0


def test_non_finite_outputs_of_the_result_only_are_a_tensor_error() -> None:
    model = nn.Linear(8, 8)
    broken = nn.Linear(8, 8)
    with torch.no_grad():
        broken.bias[3] = float("inf")
    with pytest.raises(
        TensorError, match="2 NaN/Inf output values .* where the original's are finite"
    ):
        output_error(model, broken, (torch.randn(2, 8),))


# ------------------------------------------------------------ 6. nothing to factorize
@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings(
    "ignore:torch.quantize_per_tensor, torch.quantize_per_channel:UserWarning"
)
def test_quantized_model_says_what_it_found() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    with pytest.raises(
        UnsupportedSiteError,
        match="(?s)nothing to factorize.*quantized layers.*factorize the float model",
    ):
        tfx.factorize(quantized, 0.5, example_inputs=(torch.randn(2, 64),), progress=False)


def test_model_without_sites_is_nothing_to_factorize_not_a_budget_error() -> None:
    model = nn.Sequential(nn.LayerNorm(16), nn.ReLU())
    with pytest.raises(UnsupportedSiteError, match="nothing to factorize"):
        tfx.factorize(model, 0.5, example_inputs=(torch.randn(2, 16),), progress=False)


# ------------------------------------------------------------ 9. meta tensors
def test_meta_device_model_is_a_clear_option_error() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    with pytest.raises(OptionError, match="(?s)meta device.*Fix: load the weights"):
        tfx.factorize(model, 0.5, progress=False)


# -------------------------------------------------- 10. tfx.load needs the inputs of an export plan
def test_load_of_an_export_plan_without_example_inputs_names_them(tmp_path) -> None:  # noqa: ANN001
    model = tiny_bert()
    result = tfx.factorize(model, 0.5, example_inputs=bert_inputs(), progress=False)
    tfx.save(result, tmp_path / "bert.tfx")
    with pytest.raises(OptionError, match="(?s)torch.export.*example_inputs=\\.\\.\\."):
        tfx.load(tiny_bert(), tmp_path / "bert.tfx")
    loaded = tfx.load(tiny_bert(), tmp_path / "bert.tfx", example_inputs=bert_inputs())
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(**bert_inputs()).last_hidden_state,
            result(**bert_inputs()).last_hidden_state,
            rtol=0,
            atol=0,
        )


# ------------------------------------------------------------ 11. the budget hint
def test_budget_above_one_does_not_suggest_one_parameter() -> None:
    model = MLP().eval()
    with pytest.raises(BudgetError, match="budget=1.5 is a float above 1") as info:
        tfx.factorize(model, 1.5, example_inputs=(torch.randn(2, 32),), progress=False)
    assert "budget=1." not in str(info.value).split("budget=1.0")[-1]
    assert f"budget={n_params(model) // 2} (half of the model" in str(info.value)


# ------------------------------------------------------------ post-conditions
def test_post_conditions_catch_a_result_that_does_not_match_its_plan() -> None:
    from tfx.passes._emit import check_result

    model = MLP().eval()
    result = tfx.factorize(model, 0.5, example_inputs=(torch.randn(4, 32),), progress=False)
    result.extra = nn.Parameter(torch.zeros(3))  # a parameter the plan does not know
    with pytest.raises(tfx.PlanMismatchError, match="holds .* parameters but its plan says"):
        check_result(model, result, result.tfx_plan)


def test_post_conditions_catch_an_untied_weight() -> None:
    from tfx.passes._emit import check_result

    model = nn.Sequential(nn.Embedding(32, 16), nn.Linear(16, 32, bias=False))
    model[1].weight = model[0].weight
    copy = tfx.factorize(model, 1.0, progress=False, example_inputs=(torch.randint(0, 32, (2, 4)),))
    head = copy.get_submodule("1")
    head.weight = nn.Parameter(head.weight.detach().clone())  # untie
    with pytest.raises(tfx.PlanMismatchError, match="no longer one parameter"):
        check_result(model, copy, copy.tfx_plan)


# ------------------------------------------------------------ 7. factorizing a result again
def test_factorizing_a_graph_result_again_replans_its_layers_with_exact_counts() -> None:
    model = MLP().eval()
    x = torch.randn(8, 32)
    first = tfx.factorize(model, 0.6, example_inputs=(x,), progress=False)
    again = tfx.factorize(first, 0.7, example_inputs=(x,), progress=False)
    plan = again.tfx_plan
    factorized_first = {c.site for c in first.tfx_plan.choices if c.form != "dense"}
    assert factorized_first <= {
        c.site for c in plan.choices
    }  # the factorized layers are sites again
    assert n_params(again) == plan.total_params_after <= 0.7 * n_params(first)
    assert all(p.requires_grad for p in again.parameters())
    assert not [k for k in again.state_dict() if "_tensor_constant" in k]  # nothing frozen
    assert plan.choice("encoder.0").params_before == sum(
        p.numel() for n, p in first.get_submodule("encoder.0").named_parameters() if n != "bias"
    )


def test_refactorizing_at_full_size_reproduces_the_first_result() -> None:
    model = MLP().eval()
    x = torch.randn(8, 32)
    first = tfx.factorize(model, 0.6, example_inputs=(x,), progress=False)
    plan = first.tfx_plan
    again = tfx.factorize(first, 1.0, example_inputs=(x,), progress=False)
    with torch.no_grad():
        torch.testing.assert_close(again(x), first(x), rtol=1e-4, atol=1e-5)
    assert n_params(again) <= plan.total_params_after


def test_factorizing_an_exported_result_again_sees_its_layers() -> None:
    model = tiny_bert()
    first = tfx.factorize(model, 0.6, example_inputs=bert_inputs(), progress=False)
    again = tfx.factorize(first, 0.8, example_inputs=bert_inputs(), progress=False)
    plan = again.tfx_plan
    sites = {c.site for c in plan.choices}
    assert not any(".weight.factors" in s for s in sites)  # no factor matrix is a site of its own
    assert {c.site for c in first.tfx_plan.choices if c.form != "dense"} <= sites
    assert n_params(again) == plan.total_params_after <= 0.8 * n_params(first)
    assert type(again) is type(model)


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings(
    "ignore:torch.quantize_per_tensor, torch.quantize_per_channel:UserWarning"
)
def test_partly_quantized_model_says_which_layers_it_left() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    model[2] = torch.ao.quantization.quantize_dynamic(
        nn.Sequential(model[2]), {nn.Linear}, dtype=torch.qint8
    )[0]
    with pytest.warns(TfxWarning, match="quantized layers .* are not sites"):
        result = tfx.factorize(model, 0.8, example_inputs=(torch.randn(2, 64),), progress=False)
    assert any("quantized layers" in n for n in result.tfx_plan.notes)
    assert [c.site for c in result.tfx_plan.choices] == ["0"]


# ------------------------------------------------------------ inplace: no second copy
def test_inplace_rewrites_the_model_itself_without_a_copy(monkeypatch) -> None:  # noqa: ANN001
    import copy as copy_module

    model = tiny_bert()
    reference = copy_module.deepcopy(model)
    inputs = bert_inputs()
    real = copy_module.deepcopy

    def no_model_copy(value, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if isinstance(value, nn.Module) and value is model:
            raise AssertionError("inplace=True deep-copied the model")
        return real(value, *args, **kwargs)

    monkeypatch.setattr(copy_module, "deepcopy", no_model_copy)
    result = tfx.factorize(model, 0.5, example_inputs=inputs, progress=False, inplace=True)
    monkeypatch.undo()
    assert result is model
    assert n_params(result) == result.tfx_plan.total_params_after <= 0.5 * n_params(reference)
    assert result.tfx_plan.output_error is not None and result.tfx_plan.output_error > 0
    assert output_error(reference, result, inputs) == pytest.approx(
        result.tfx_plan.output_error, rel=1e-6
    )


def test_default_leaves_the_model_untouched() -> None:
    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = tfx.factorize(model, 0.5, example_inputs=bert_inputs(), progress=False)
    assert result is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p1 is p2 for p1 in model.parameters() for p2 in result.parameters())
