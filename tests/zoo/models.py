"""Tiny Hugging Face models, one per architecture, built from configs with random weights.

Each entry of :data:`ZOO` names a builder (a model in eval mode, the same weights on
every call: it seeds torch first), an input builder ``inputs(batch, length)`` giving a
dict of keyword inputs, and flags the tests select on. Every config is tiny (hidden
size at most 64, one or two layers, a vocabulary of 128) so that no download is needed
and a factorize call takes seconds; :data:`FAST` is the subset the default test run
covers, one architecture per code path, the rest run with ``pytest -m slow``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["Arch", "ZOO", "FAST", "VOCAB", "SEED"]

VOCAB = 128
SEED = 1234
# Token ids the inputs draw from: above the special ids the configs use (0-3), so that no
# input token is a padding id (RoBERTa derives positions from `input_ids != padding_idx`).
_LOW = 4


@dataclasses.dataclass(frozen=True)
class Arch:
    """One architecture of the zoo.

    Attributes:
        name: the registry key.
        build: returns the model, in eval mode, with the same weights on every call.
        inputs: ``inputs(batch, length)`` -> a dict of keyword inputs. Vision models ignore
            ``length`` unless ``variable_length`` (then it is the image side).
        causal: a decoder-only LM with ``generate()`` and a KV cache.
        seq2seq: an encoder-decoder LM with ``generate()``.
        text: takes ``input_ids`` (and so an ``attention_mask``).
        variable_length: a second call may use another sequence length (image side for vision).
    """

    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int, int], dict[str, torch.Tensor]]
    causal: bool = False
    seq2seq: bool = False
    text: bool = True
    variable_length: bool = True


def _seeded(make: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(SEED)
        return make().eval()

    return build


def _ids(batch: int, length: int, salt: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 * batch + length + salt)
    return torch.randint(_LOW, VOCAB, (batch, length), generator=gen)


def _text(batch: int, length: int) -> dict[str, torch.Tensor]:
    return {"input_ids": _ids(batch, length)}


def _seq2seq(batch: int, length: int) -> dict[str, torch.Tensor]:
    # The decoder side is shorter than the encoder's, so the two lengths cannot be mixed up.
    return {
        "input_ids": _ids(batch, length),
        "decoder_input_ids": _ids(batch, max(1, length - 2), salt=7),
    }


def _pixels(side: int) -> Callable[[int, int], dict[str, torch.Tensor]]:
    def inputs(batch: int, length: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(batch)
        return {"pixel_values": torch.randn(batch, 3, side, side, generator=gen)}

    return inputs


def _pixels_any(batch: int, length: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(batch * 100 + length)
    return {"pixel_values": torch.randn(batch, 3, 4 * length, 4 * length, generator=gen)}


# Shared sizes: hidden 64, 4 heads, MLP 128, 2 layers, 64 positions.
_T: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "max_position_embeddings": 64,
}
_SPECIAL = {"bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 1}


# ------------------------------------------------------------------ decoders with a KV cache
def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, **_SPECIAL)
    )


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**_T, num_key_value_heads=2, **_SPECIAL))


def _qwen2() -> nn.Module:
    # Tied LM head on a RoPE model with biased q/k/v projections.
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(
        Qwen2Config(**_T, num_key_value_heads=2, tie_word_embeddings=True, **_SPECIAL)
    )


def _opt() -> nn.Module:
    # OPTLearnedPositionalEmbedding: an nn.Embedding subclass with an offset of 2.
    from transformers import OPTConfig, OPTForCausalLM

    return OPTForCausalLM(
        OPTConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            num_hidden_layers=2,
            ffn_dim=128,
            num_attention_heads=4,
            max_position_embeddings=64,
            word_embed_proj_dim=64,
            **_SPECIAL,
        )
    )


def _gpt_neo() -> nn.Module:
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    return GPTNeoForCausalLM(
        GPTNeoConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            attention_types=[[["global", "local"], 1]],
            window_size=8,
            intermediate_size=128,
            max_position_embeddings=64,
            **_SPECIAL,
        )
    )


def _phi() -> nn.Module:
    from transformers import PhiConfig, PhiForCausalLM

    return PhiForCausalLM(PhiConfig(**_T, partial_rotary_factor=0.5, **_SPECIAL))


def _bloom() -> nn.Module:
    # ALiBi instead of positions; fused query_key_value.
    from transformers import BloomConfig, BloomForCausalLM

    return BloomForCausalLM(
        BloomConfig(vocab_size=VOCAB, hidden_size=64, n_layer=2, n_head=4, **_SPECIAL)
    )


# ------------------------------------------------------------------ encoders
def _bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(**_T, pad_token_id=0))


def _distilbert() -> nn.Module:
    from transformers import DistilBertConfig, DistilBertModel

    return DistilBertModel(
        DistilBertConfig(
            vocab_size=VOCAB,
            dim=64,
            n_layers=2,
            n_heads=4,
            hidden_dim=128,
            max_position_embeddings=64,
            pad_token_id=0,
        )
    )


def _roberta() -> nn.Module:
    # Masked-LM head tied to the word embeddings; positions derived from the padding id.
    from transformers import RobertaConfig, RobertaForMaskedLM

    return RobertaForMaskedLM(RobertaConfig(**_T | {"max_position_embeddings": 80}, **_SPECIAL))


def _albert() -> nn.Module:
    # One layer's weights applied twice, and factorized embeddings (16 -> 64 projection).
    from transformers import AlbertConfig, AlbertModel

    return AlbertModel(
        AlbertConfig(**_T, embedding_size=16, num_hidden_groups=1, inner_group_num=1, **_SPECIAL)
    )


def _electra() -> nn.Module:
    from transformers import ElectraConfig, ElectraModel

    return ElectraModel(ElectraConfig(**_T, embedding_size=32, pad_token_id=0))


def _deberta_v2() -> nn.Module:
    # Disentangled relative-position attention.
    from transformers import DebertaV2Config, DebertaV2Model

    return DebertaV2Model(
        DebertaV2Config(
            **_T,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_buckets=16,
            max_relative_positions=32,
            pad_token_id=0,
        )
    )


# ------------------------------------------------------------------ encoder-decoders
def _bart() -> nn.Module:
    # BartScaledWordEmbedding, shared by encoder, decoder and the LM head.
    from transformers import BartConfig, BartForConditionalGeneration

    return BartForConditionalGeneration(
        BartConfig(
            vocab_size=VOCAB,
            d_model=64,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            max_position_embeddings=64,
            scale_embedding=True,
            decoder_start_token_id=2,
            forced_eos_token_id=None,
            **_SPECIAL,
        )
    )


def _t5() -> nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(
        T5Config(
            vocab_size=VOCAB,
            d_model=64,
            d_kv=16,
            d_ff=128,
            num_layers=1,
            num_decoder_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )


# ------------------------------------------------------------------ vision
def _vit() -> nn.Module:
    from transformers import ViTConfig, ViTModel

    return ViTModel(
        ViTConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            image_size=32,
            patch_size=8,
            num_channels=3,
        )
    )


def _resnet() -> nn.Module:
    # Convolutions and batch norms, and a linear classifier (64 -> 16).
    from transformers import ResNetConfig, ResNetForImageClassification

    return ResNetForImageClassification(
        ResNetConfig(
            num_channels=3,
            embedding_size=16,
            hidden_sizes=[32, 64],
            depths=[1, 1],
            layer_type="basic",
            num_labels=16,
        )
    )


def _convnext() -> nn.Module:
    from transformers import ConvNextConfig, ConvNextModel

    return ConvNextModel(
        ConvNextConfig(
            num_channels=3,
            num_stages=2,
            hidden_sizes=[32, 64],
            depths=[1, 1],
            patch_size=4,
            image_size=32,
        )
    )


def _entries() -> list[Arch]:
    causal = {"causal": True}
    return [
        Arch("gpt2", _seeded(_gpt2), _text, **causal),
        Arch("llama", _seeded(_llama), _text, **causal),
        Arch("qwen2", _seeded(_qwen2), _text, **causal),
        Arch("opt", _seeded(_opt), _text, **causal),
        Arch("gpt_neo", _seeded(_gpt_neo), _text, **causal),
        Arch("phi", _seeded(_phi), _text, **causal),
        Arch("bloom", _seeded(_bloom), _text, **causal),
        Arch("bert", _seeded(_bert), _text),
        Arch("distilbert", _seeded(_distilbert), _text),
        Arch("roberta", _seeded(_roberta), _text),
        Arch("albert", _seeded(_albert), _text),
        Arch("electra", _seeded(_electra), _text),
        Arch("deberta_v2", _seeded(_deberta_v2), _text),
        Arch("bart", _seeded(_bart), _seq2seq, seq2seq=True),
        Arch("t5", _seeded(_t5), _seq2seq, seq2seq=True),
        Arch("vit", _seeded(_vit), _pixels(32), text=False, variable_length=False),
        Arch("resnet", _seeded(_resnet), _pixels_any, text=False),
        Arch("convnext", _seeded(_convnext), _pixels_any, text=False),
    ]


ZOO: dict[str, Arch] = {arch.name: arch for arch in _entries()}

# The default run, one architecture per code path: a decoder with a KV cache and a tied LM
# head (gpt2), an encoder (bert), an encoder-decoder whose shared table and positions are
# nn.Embedding subclasses (bart: BartScaledWordEmbedding, BartLearnedPositionalEmbedding),
# and a vision model with convolutions and batch norm (resnet). About a minute on 2 cores.
FAST: frozenset[str] = frozenset({"gpt2", "bert", "resnet"})  # BART, OPT: tests/test_faithful.py
