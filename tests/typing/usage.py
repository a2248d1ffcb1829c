"""Typed use of tfx's public API, checked by mypy in ``tests/test_typing.py`` (never run).

``assert_type`` pins what a call returns; a ``# type: ignore[arg-type]`` marks a call mypy
must reject (a misspelt option name): with ``warn_unused_ignores``, a call it accepted would
leave the ignore unused, which is an error. The functions only need to type-check.
"""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import assert_type

import tfx
from tfx.cost import Choice


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64))


def compiler() -> None:
    model, x = _model(), torch.randn(4, 64)
    plan = tfx.plan(model, 0.5, example_inputs=(x,), forms=("svd", "tucker"), strategy="dp")
    assert_type(plan, tfx.FactorizationPlan)
    assert_type(plan.choice("0"), Choice)
    result = tfx.factorize(
        model, tfx.Budget(params=0.5), example_inputs=(x,), kinds=("linear",), emit="modules"
    )
    assert_type(result, nn.Module)
    again = tfx.factorize(model, plan=plan, example_inputs=(x,), progress=False)
    assert_type(again, nn.Module)
    backend = tfx.backend(0.3, forms=("cp", "tt", "blocktt"), strategy="greedy")
    torch.compile(model, backend=backend)
    tfx.distill(result, model, [(x,)], steps=10, loss="cosine")


def misspelt_options() -> None:
    model, x = _model(), torch.randn(4, 64)
    tfx.factorize(model, 0.5, example_inputs=(x,), forms=("svdd",))  # type: ignore[arg-type]
    tfx.factorize(model, 0.5, kinds=("linears",))  # type: ignore[arg-type]
    tfx.factorize(model, 0.5, strategy="greedyy")  # type: ignore[arg-type]
    tfx.factorize(model, 0.5, emit="graphs")  # type: ignore[arg-type]
    tfx.plan(model, 0.5, forms=("tucker", "block-tt"))  # type: ignore[arg-type]
    tfx.backend(0.5, strategy="fast")  # type: ignore[arg-type]
    tfx.distill(model, model, [], loss="l2")  # type: ignore[arg-type]
    tfx.FactorizedLinear(
        (8, 8),
        (8, 8),
        implementation="factorised",  # type: ignore[arg-type]
    )
    tfx.FactorizedConv(3, 8, 3, order=2, implementation="depthwise")  # type: ignore[arg-type]


def layers() -> None:
    linear = tfx.FactorizedLinear.from_linear(nn.Linear(64, 32), rank=0.5, factorization="tucker")
    assert_type(linear, tfx.FactorizedLinear)
    assert_type(linear.forward(torch.randn(2, 64)), torch.Tensor)  # nn.Module.__call__ is Any
    conv = tfx.FactorizedConv.from_conv(nn.Conv2d(8, 16, 3), rank=0.5, implementation="mobilenet")
    assert_type(conv, tfx.FactorizedConv)
    embedding = tfx.FactorizedEmbedding(1000, 16, factorization="blocktt", rank=8)
    assert_type(embedding.forward(torch.tensor([1, 2])), torch.Tensor)
    tfx.tensor_dropout(linear.weight, p=0.1, implementation="mask")


def tensors() -> None:
    cp = tfx.CPTensor.new((4, 5, 6), rank=3)
    assert_type(cp, tfx.CPTensor)
    assert_type(cp.normal_(0, 0.02), tfx.CPTensor)
    assert_type(cp.to_tensor(), torch.Tensor)
    w = tfx.TensorizedTensor.from_matrix(torch.randn(24, 30), (4, 3, 2), (5, 3, 2), rank=0.5)
    assert_type(w, tfx.TensorizedTensor)
    assert_type(
        tfx.get_tensorized_shape(768, 3072, order=3), tuple[tuple[int, ...], tuple[int, ...]]
    )
    assert_type(tfx.tensors.available(), list[str])
