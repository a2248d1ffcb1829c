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


def _hf(model: str, config: str, **settings: Any) -> Callable[[], nn.Module]:
    """A seeded builder of ``transformers.<model>(transformers.<config>(**settings))``, in eval."""

    def make() -> nn.Module:
        import transformers

        return getattr(transformers, model)(getattr(transformers, config)(**settings))

    return _seeded(make)


def _entries() -> list[Arch]:
    causal, seq2seq = {"causal": True}, {"seq2seq": True}
    vision = {"text": False}
    return [
        # ---------------------------------------------------------- decoders with a KV cache
        Arch(
            "gpt2",
            _hf(
                "GPT2LMHeadModel",
                "GPT2Config",
                vocab_size=VOCAB,
                n_embd=64,
                n_layer=2,
                n_head=4,
                n_positions=64,
                **_SPECIAL,
            ),
            _text,
            **causal,
        ),
        Arch(
            "llama",
            _hf("LlamaForCausalLM", "LlamaConfig", **_T, num_key_value_heads=2, **_SPECIAL),
            _text,
            **causal,
        ),
        # a tied LM head on a RoPE model with biased q/k/v projections
        Arch(
            "qwen2",
            _hf(
                "Qwen2ForCausalLM",
                "Qwen2Config",
                **_T,
                num_key_value_heads=2,
                tie_word_embeddings=True,
                **_SPECIAL,
            ),
            _text,
            **causal,
        ),
        # OPTLearnedPositionalEmbedding: an nn.Embedding subclass with an offset of 2
        Arch(
            "opt",
            _hf(
                "OPTForCausalLM",
                "OPTConfig",
                vocab_size=VOCAB,
                hidden_size=64,
                num_hidden_layers=2,
                ffn_dim=128,
                num_attention_heads=4,
                max_position_embeddings=64,
                word_embed_proj_dim=64,
                **_SPECIAL,
            ),
            _text,
            **causal,
        ),
        Arch(
            "gpt_neo",
            _hf(
                "GPTNeoForCausalLM",
                "GPTNeoConfig",
                vocab_size=VOCAB,
                hidden_size=64,
                num_layers=2,
                num_heads=4,
                attention_types=[[["global", "local"], 1]],
                window_size=8,
                intermediate_size=128,
                max_position_embeddings=64,
                **_SPECIAL,
            ),
            _text,
            **causal,
        ),
        Arch(
            "phi",
            _hf("PhiForCausalLM", "PhiConfig", **_T, partial_rotary_factor=0.5, **_SPECIAL),
            _text,
            **causal,
        ),
        # ALiBi instead of positions; fused query_key_value
        Arch(
            "bloom",
            _hf(
                "BloomForCausalLM",
                "BloomConfig",
                vocab_size=VOCAB,
                hidden_size=64,
                n_layer=2,
                n_head=4,
                **_SPECIAL,
            ),
            _text,
            **causal,
        ),
        # ---------------------------------------------------------- encoders
        Arch("bert", _hf("BertModel", "BertConfig", **_T, pad_token_id=0), _text),
        Arch(
            "distilbert",
            _hf(
                "DistilBertModel",
                "DistilBertConfig",
                vocab_size=VOCAB,
                dim=64,
                n_layers=2,
                n_heads=4,
                hidden_dim=128,
                max_position_embeddings=64,
                pad_token_id=0,
            ),
            _text,
        ),
        # a masked-LM head tied to the word embeddings; positions derived from the padding id
        Arch(
            "roberta",
            _hf(
                "RobertaForMaskedLM",
                "RobertaConfig",
                **_T | {"max_position_embeddings": 80},
                **_SPECIAL,
            ),
            _text,
        ),
        # one layer's weights applied twice, and factorized embeddings (16 -> 64 projection)
        Arch(
            "albert",
            _hf(
                "AlbertModel",
                "AlbertConfig",
                **_T,
                embedding_size=16,
                num_hidden_groups=1,
                inner_group_num=1,
                **_SPECIAL,
            ),
            _text,
        ),
        Arch(
            "electra",
            _hf("ElectraModel", "ElectraConfig", **_T, embedding_size=32, pad_token_id=0),
            _text,
        ),
        # disentangled relative-position attention
        Arch(
            "deberta_v2",
            _hf(
                "DebertaV2Model",
                "DebertaV2Config",
                **_T,
                relative_attention=True,
                pos_att_type=["p2c", "c2p"],
                position_buckets=16,
                max_relative_positions=32,
                pad_token_id=0,
            ),
            _text,
        ),
        # ---------------------------------------------------------- encoder-decoders
        # BartScaledWordEmbedding, shared by encoder, decoder and the LM head
        Arch(
            "bart",
            _hf(
                "BartForConditionalGeneration",
                "BartConfig",
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
            ),
            _seq2seq,
            **seq2seq,
        ),
        Arch(
            "t5",
            _hf(
                "T5ForConditionalGeneration",
                "T5Config",
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
            ),
            _seq2seq,
            **seq2seq,
        ),
        # ---------------------------------------------------------- vision
        Arch(
            "vit",
            _hf(
                "ViTModel",
                "ViTConfig",
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=128,
                image_size=32,
                patch_size=8,
                num_channels=3,
            ),
            _pixels(32),
            variable_length=False,
            **vision,
        ),
        # convolutions and batch norms, and a linear classifier (64 -> 16)
        Arch(
            "resnet",
            _hf(
                "ResNetForImageClassification",
                "ResNetConfig",
                num_channels=3,
                embedding_size=16,
                hidden_sizes=[32, 64],
                depths=[1, 1],
                layer_type="basic",
                num_labels=16,
            ),
            _pixels_any,
            **vision,
        ),
        Arch(
            "convnext",
            _hf(
                "ConvNextModel",
                "ConvNextConfig",
                num_channels=3,
                num_stages=2,
                hidden_sizes=[32, 64],
                depths=[1, 1],
                patch_size=4,
                image_size=32,
            ),
            _pixels_any,
            **vision,
        ),
    ]


ZOO: dict[str, Arch] = {arch.name: arch for arch in _entries()}

# The default run: a decoder with a KV cache and a tied LM head (gpt2), an encoder (bert) and a
# vision model with convolutions and batch norm (resnet). The nn.Embedding subclasses of BART
# and OPT run by default in tests/test_faithful.py; every architecture runs with -m slow.
FAST: frozenset[str] = frozenset({"gpt2", "bert", "resnet"})
