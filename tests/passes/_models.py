"""Small models the compiler tests run through ``tfx.factorize`` and its stages.

Written out here (not imported from anywhere) so the tests know exactly which
layers each model has: an MLP, a ResNet-style CNN, a model made of functional
calls on parameters, a model ``torch.fx`` cannot trace, and tiny Hugging Face
BERT / GPT-2 built from configs with random weights (no download).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MLP",
    "SmallCNN",
    "Functional",
    "RootFunctional",
    "Untraceable",
    "GroupedConvs",
    "sequential_cnn",
    "tiny_bert",
    "tiny_gpt2",
    "bert_inputs",
    "gpt2_inputs",
    "call",
    "max_rel_error",
    "VOCAB",
]

VOCAB = 96


class MLP(nn.Module):
    """Three linears, a LayerNorm and a tiny head; nested so names have dots."""

    def __init__(self, d_in: int = 32, hidden: int = 64, d_out: int = 24) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, d_out)
        self.tiny = nn.Linear(d_out, 4)  # 96 weights: stays dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tiny(torch.tanh(self.out(self.norm(self.encoder(x)))))


class _Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class SmallCNN(nn.Module):
    """ResNet-style: stem conv, one residual block, a strided conv, pooling, a linear head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.block = _Block(16)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(self.block(F.relu(self.stem(x))))
        return self.head(h.mean(dim=(2, 3)))


class _FEmbedding(nn.Module):
    def __init__(self, num: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num, dim))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.weight)


class _FLinear(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in) / d_in**0.5)
        self.bias = nn.Parameter(torch.randn(d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _FConv(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, 3, 3) / (9 * c_in) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=1)


class _MatmulProj(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_in, d_out) / d_in**0.5)  # (in, out): x @ W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class Functional(nn.Module):
    """Every site is a functional call on a parameter (inside small custom modules the tracer
    traces through): F.embedding, F.linear with bias, F.conv2d, ``x @ W``."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = _FEmbedding(40, 24)
        self.lin = _FLinear(24, 32)
        self.conv = _FConv(32, 16)
        self.proj = _MatmulProj(16, 20)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.lin(torch.tanh(self.emb(idx)))  # (B, 8, 32)
        img = h.transpose(1, 2).reshape(h.shape[0], 32, 2, 4)
        c = self.conv(img)  # (B, 16, 2, 4)
        return self.proj(c.flatten(2).transpose(1, 2))  # (B, 8, 20)


class RootFunctional(nn.Module):
    """Functional calls on parameters owned by the root module itself."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(40, 24))
        self.w = nn.Parameter(torch.randn(32, 24) / 5)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.tanh(F.embedding(idx, self.table)), self.w)


class Untraceable(nn.Module):
    """Data-dependent control flow: symbolic_trace fails, and without inputs export is not tried."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(32, 64)
        self.b = nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 0:
            h = torch.relu(h)
        return self.b(h)


class GroupedConvs(nn.Module):
    """A grouped conv, a depthwise conv, a tiny conv and a plain one."""

    def __init__(self) -> None:
        super().__init__()
        self.grouped = nn.Conv2d(16, 32, 3, padding=1, groups=2)  # 2304 weights
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)  # 288 weights
        self.tiny = nn.Conv2d(32, 4, 1)  # 128 weights
        self.plain = nn.Conv2d(4, 16, 3, padding=1)  # 576 weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.plain(self.tiny(self.depthwise(self.grouped(x))))


def sequential_cnn() -> nn.Module:
    """Two 3x3 convolutions, global pooling and a linear head, as one ``nn.Sequential`` (eval)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()


def tiny_bert() -> nn.Module:
    """A 1-layer BertModel with hidden size 32, random weights, eval mode."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return BertModel(config).eval()


def tiny_gpt2() -> nn.Module:
    """A 1-layer GPT2LMHeadModel with n_embd 32, tied LM head, random weights, eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    # bos/eos inside the tiny vocabulary: the default 50256 makes transformers log a complaint.
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=1,
        n_head=2,
        n_positions=32,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config).eval()


def bert_inputs(batch: int = 2, length: int = 8) -> dict[str, torch.Tensor]:
    """Keyword inputs for :func:`tiny_bert`."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (batch, length), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones(batch, length, dtype=torch.long)}


def gpt2_inputs(batch: int = 2, length: int = 8) -> tuple[torch.Tensor]:
    """Positional inputs for :func:`tiny_gpt2`."""
    gen = torch.Generator().manual_seed(2)
    return (torch.randint(0, VOCAB, (batch, length), generator=gen),)


def call(module: Any, inputs: Any) -> Any:
    """``module(*inputs)`` for a tuple, ``module(**inputs)`` for a dict."""
    if isinstance(inputs, dict):
        return module(**inputs)
    return module(*inputs)


def max_rel_error(expected: Any, got: Any) -> float:
    """Max over floating leaves of ``max |a - b| / max |a|``; both outputs have one structure."""
    from torch.utils._pytree import tree_flatten

    a_leaves, a_spec = tree_flatten(expected)
    b_leaves, b_spec = tree_flatten(got)
    if a_spec != b_spec:
        raise AssertionError(f"output structures differ:\n{a_spec}\n{b_spec}")
    worst = 0.0
    for a, b in zip(a_leaves, b_leaves, strict=True):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            a, b = a.detach(), b.detach()
            worst = max(worst, float((a - b).abs().max()) / (float(a.abs().max()) or 1.0))
    return worst
