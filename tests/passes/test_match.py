"""Match: a Site per linear / conv / embedding, module or functional, in the layer's orientation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.passes._models import (
    MLP,
    Functional,
    GroupedConvs,
    RootFunctional,
    SmallCNN,
    bert_inputs,
    gpt2_inputs,
    tiny_bert,
    tiny_gpt2,
)
from tfx.passes import capture, find_sites
from tfx.passes._match import MIN_PARAMS

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


def _sites(model: nn.Module, inputs, **kwargs):
    captured = capture(model, inputs)
    return {s.name: s for s in find_sites(captured.gm, path=captured.path, **kwargs)}


@pytest.fixture(scope="module")
def bert_sites():
    model = tiny_bert()
    return model, _sites(model, bert_inputs())


@pytest.fixture(scope="module")
def gpt2_sites():
    model = tiny_gpt2()
    return model, _sites(model, gpt2_inputs())


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _LAYERS)}


@pytest.mark.parametrize(
    ("factory", "inputs"),
    [(MLP, (torch.randn(4, 32),)), (SmallCNN, (torch.randn(2, 3, 8, 8),))],
    ids=["mlp", "cnn"],
)
def test_find_sites_finds_every_layer_module(factory, inputs) -> None:
    model = factory()
    sites = _sites(model, inputs)
    layers = _layers(model)
    assert sites.keys() == layers.keys()
    for name, layer in layers.items():
        assert sites[name].info.weight_shape == tuple(layer.weight.shape)
        assert torch.equal(sites[name].weight, layer.weight)


def test_find_sites_kinds_of_cnn_layers() -> None:
    sites = _sites(SmallCNN(), (torch.randn(2, 3, 8, 8),))
    kinds = {name: s.info.kind for name, s in sites.items()}
    assert kinds == {
        "stem": "conv",
        "block.conv1": "conv",
        "block.conv2": "conv",
        "down": "conv",
        "head": "linear",
    }


def test_find_sites_records_conv_hyperparameters() -> None:
    model = SmallCNN()
    down = _sites(model, (torch.randn(2, 3, 8, 8),))["down"]
    assert down.conv == {
        "stride": (2, 2),
        "padding": (1, 1),
        "dilation": (1, 1),
        "groups": 1,
        "padding_mode": "zeros",
    }
    assert down.info.tokens == 2 * 4 * 4  # batch x output positions
    assert down.info.has_bias
    torch.testing.assert_close(down.bias, model.down.bias.detach(), rtol=0, atol=0)


def test_find_sites_tokens_are_rows_per_forward() -> None:
    sites = _sites(MLP(), (torch.randn(5, 3, 32),))
    assert sites["encoder.0"].info.tokens == 15


def test_find_sites_functional_calls_on_parameters() -> None:
    model = Functional()
    sites = _sites(model, (torch.randint(0, 40, (2, 8)),))
    assert {n: (s.info.kind, s.info.weight_shape) for n, s in sites.items()} == {
        "emb": ("embedding", (40, 24)),
        "lin": ("linear", (32, 24)),
        "conv": ("conv", (16, 32, 3, 3)),
        "proj": ("linear", (20, 16)),
    }
    assert all(s.info.factorizable for s in sites.values())
    assert [s.node.op for s in sites.values()] == ["call_function"] * 4


def test_find_sites_functional_calls_on_root_parameters() -> None:
    sites = _sites(RootFunctional(), (torch.randint(0, 40, (2, 8)),))
    assert {n: s.info.kind for n, s in sites.items()} == {"table": "embedding", "w": "linear"}


def test_find_sites_matmul_weight_is_transposed_to_out_in() -> None:
    model = Functional()
    sites = _sites(model, (torch.randint(0, 40, (2, 8)),))
    torch.testing.assert_close(sites["proj"].weight, model.proj.weight.detach().T, rtol=0, atol=0)
    torch.testing.assert_close(sites["lin"].bias, model.lin.bias.detach(), rtol=0, atol=0)
    assert sites["proj"].bias is None


def test_find_sites_bert_finds_every_linear_and_embedding(bert_sites) -> None:
    model, sites = bert_sites
    layers = _layers(model)
    assert sites.keys() == layers.keys()
    for name, layer in layers.items():
        assert sites[name].info.weight_shape == tuple(layer.weight.shape)
        assert sites[name].info.path == "export"


def test_find_sites_gpt2_conv1d_addmm_is_a_linear_site(gpt2_sites) -> None:
    model, sites = gpt2_sites
    block = model.transformer.h[0]
    conv1d = {
        "transformer.h.0.attn.c_attn": block.attn.c_attn,
        "transformer.h.0.attn.c_proj": block.attn.c_proj,
        "transformer.h.0.mlp.c_fc": block.mlp.c_fc,
        "transformer.h.0.mlp.c_proj": block.mlp.c_proj,
    }
    for name, layer in conv1d.items():
        site = sites[name]
        assert site.info.kind == "linear"
        assert site.info.weight_shape == (layer.nf, layer.weight.shape[0])  # (out, in)
        torch.testing.assert_close(site.weight, layer.weight.detach().T, rtol=0, atol=0)
        torch.testing.assert_close(site.bias, layer.bias.detach(), rtol=0, atol=0)


def test_find_sites_gpt2_finds_embeddings_and_head(gpt2_sites) -> None:
    _, sites = gpt2_sites
    assert {"transformer.wte", "transformer.wpe", "lm_head"} <= sites.keys()
    assert len(sites) == 7


@pytest.mark.parametrize("name", ["transformer.wte", "lm_head"])
def test_find_sites_tied_weights_stay_dense(gpt2_sites, name) -> None:
    _, sites = gpt2_sites
    info = sites[name].info
    assert not info.factorizable
    assert "tied" in info.reason


def test_find_sites_tied_reason_names_the_other_site(gpt2_sites) -> None:
    _, sites = gpt2_sites
    assert "lm_head" in sites["transformer.wte"].info.reason
    assert "transformer.wte" in sites["lm_head"].info.reason


def test_find_sites_untied_gpt2_sites_are_factorizable(gpt2_sites) -> None:
    _, sites = gpt2_sites
    assert [n for n, s in sites.items() if s.info.factorizable] == [
        "transformer.wpe",
        "transformer.h.0.attn.c_attn",
        "transformer.h.0.attn.c_proj",
        "transformer.h.0.mlp.c_fc",
        "transformer.h.0.mlp.c_proj",
    ]


def test_find_sites_grouped_conv_stays_dense_with_reason() -> None:
    sites = _sites(GroupedConvs(), (torch.randn(1, 16, 6, 6),))
    assert not sites["grouped"].info.factorizable
    assert sites["grouped"].info.reason == "grouped conv (groups=2)"
    assert sites["plain"].info.factorizable


def test_find_sites_depthwise_conv_reason_is_grouped() -> None:
    sites = _sites(GroupedConvs(), (torch.randn(1, 16, 6, 6),))
    info = sites["depthwise"].info
    assert info.dense_params >= MIN_PARAMS
    assert not info.factorizable
    assert info.reason == "grouped conv (groups=32)"


def test_find_sites_tiny_layers_stay_dense() -> None:
    sites = _sites(GroupedConvs(), (torch.randn(1, 16, 6, 6),))
    assert not sites["tiny"].info.factorizable
    assert sites["tiny"].info.reason.startswith("tiny")
    mlp_sites = _sites(MLP(), (torch.randn(2, 32),))
    assert not mlp_sites["tiny"].info.factorizable
    assert mlp_sites["tiny"].info.reason.startswith("tiny")


def test_find_sites_kinds_filter_leaves_other_kinds_dense() -> None:
    sites = _sites(SmallCNN(), (torch.randn(2, 3, 8, 8),), kinds=("linear",))
    assert sites["head"].info.factorizable
    assert not sites["stem"].info.factorizable
    assert sites["stem"].info.reason == "kind 'conv' not in kinds="


def test_find_sites_skip_covers_submodules() -> None:
    sites = _sites(MLP(), (torch.randn(2, 32),), skip=("encoder",))
    assert [n for n, s in sites.items() if s.info.reason == "skipped (skip=)"] == [
        "encoder.0",
        "encoder.2",
    ]
    assert sites["out"].info.factorizable


def test_find_sites_embedding_with_max_norm_stays_dense() -> None:
    model = nn.Sequential(nn.Embedding(64, 32, max_norm=1.0))
    sites = _sites(model, (torch.randint(0, 64, (2, 4)),))
    assert not sites["0"].info.factorizable
    assert "max_norm" in sites["0"].info.reason


def test_find_sites_embedding_records_padding_idx_and_lookups() -> None:
    model = nn.Sequential(nn.Embedding(64, 32, padding_idx=3))
    sites = _sites(model, (torch.randint(0, 64, (2, 5)),))
    assert sites["0"].padding_idx == 3
    assert sites["0"].info.tokens == 10
    assert sites["0"].info.kind == "embedding"


def test_find_module_sites_finds_every_layer_module() -> None:
    from tfx.passes._match import find_module_sites

    model = MLP()
    sites = {s.name: s for s in find_module_sites(model)}
    assert sites.keys() == _layers(model).keys()
    assert all(s.info.path == "module_swap" for s in sites.values())


def test_cached_decoder_is_planned_on_a_cache_free_graph_and_keeps_its_cache() -> None:
    """GPT-2 with its KV cache on: torch.export cannot return the cache object, so capture
    exports it again with use_cache=False for the analysis (a plan note says so),
    and the result is the model itself with its layers replaced: cache, ties and totals kept."""
    from transformers import GPT2Config, GPT2LMHeadModel

    import tfx
    from tests.passes._models import VOCAB, gpt2_inputs

    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=1,
        n_head=2,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config).eval()
    inputs = gpt2_inputs()
    gm = tfx.factorize(model, 0.5, example_inputs=inputs, forms=("svd",), progress=False)
    plan = gm.tfx_plan
    assert (plan.capture, plan.emit) == ("export", "modules")
    assert any("use_cache=False" in n for n in plan.notes)
    by_site = {c.site: c for c in plan.choices}
    assert {"transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc"} <= set(by_site)
    assert by_site["lm_head"].form == by_site["transformer.wte"].form  # one table, planned once
    assert by_site["lm_head"].params_after == 0
    assert type(gm) is GPT2LMHeadModel
    assert gm.lm_head.weight is gm.transformer.wte.weight
    assert (
        sum(p.numel() for p in gm.parameters())
        == plan.total_params_after
        <= 0.5 * sum(p.numel() for p in model.parameters())
    )
    with torch.no_grad():
        out = gm(*inputs)
    assert out.logits.shape == model(*inputs).logits.shape
    assert out.past_key_values is not None


def test_string_padding_convs_are_sites_on_the_export_path() -> None:
    """``padding="same"`` lowers to ``aten.conv2d.padding`` under torch.export: still a site,
    factorized, with the same output shape (it used to stay dense without a reason)."""
    import tfx

    class Same(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(16, 32, 3, padding="same")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] > 0:  # symbolic_trace fails; torch.export captures
                x = x * 1.0
            return self.conv(x)

    model = Same().eval()
    x = torch.randn(2, 16, 8, 8)
    gm = tfx.factorize(model, 0.5, example_inputs=(x,), progress=False)
    choice = gm.tfx_plan.choice("conv")
    assert gm.tfx_plan.capture == "export" and choice.form != "dense"
    layer = gm.get_submodule("conv")
    with torch.no_grad():
        weight = layer.weight.to_tensor()
        expected = torch.nn.functional.conv2d(x, weight, model.conv.bias, padding="same")
        assert gm(x).shape == model(x).shape
        torch.testing.assert_close(gm(x), expected, rtol=1e-4, atol=1e-5)
