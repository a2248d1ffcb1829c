"""Builders and dense references shared by the layer and functional tests.

Every reference here is written with plain torch ops on the layer's
reconstructed weight (``to_matrix()`` / ``to_tensor()``), never with tfx's
contraction code, so a layer is checked against what it claims to compute.
Everything is float64 (complex128 for complex forms).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import tfx
from tests.helpers import family, is_complex_form

__all__ = [
    "TENSORIZED_FORMS",
    "PLAIN_FORMS",
    "REAL_PLAIN_FORMS",
    "bug",
    "bias_of",
    "randn",
    "linear_reference",
    "conv_reference",
    "embedding_reference",
    "trl_reference",
    "tcl_reference",
    "make_linear",
    "make_conv",
    "make_embedding",
    "make_trl",
    "make_tcl",
    "build",
    "LAYER_KINDS",
    "gradcheck_module",
    "contraction_ops",
    "EMBEDDING_INDEX",
    "full_rank_linear",
    "full_rank",
]

F64 = torch.float64
TENSORIZED_FORMS: list[str] = tfx.tensors.available(tensorized=True)
PLAIN_FORMS: list[str] = tfx.tensors.available()
REAL_PLAIN_FORMS: list[str] = [f for f in PLAIN_FORMS if not is_complex_form(f)]


def bug(reason: str) -> pytest.MarkDecorator:
    """A strict xfail for a known tfx bug."""
    return pytest.mark.xfail(strict=True, reason=reason)


def randn(*shape: int, form: str = "CP") -> torch.Tensor:
    """A float64 input, complex128 for complex forms."""
    return torch.randn(*shape, dtype=torch.complex128 if is_complex_form(form) else F64)


def _pick(value: Any, indices: int | None) -> Any:
    if value is None or indices is None:
        return value
    return value[indices]


def _bias_like(bias: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor | None:
    return None if bias is None else bias.to(weight.dtype)


def bias_of(layer: nn.Module, indices: int | None = None) -> torch.Tensor | None:
    """The bias a layer adds, for layer ``indices`` of a stack.

    A complex layer may store its bias as real ``(..., 2)`` pairs (so DDP sees real
    parameters); that storage has one more dim than the bias it adds.
    """
    bias = layer.bias
    if bias is None:
        return None
    n_out = len(layer.output_shape) if isinstance(layer, tfx.TRL) else 1
    n_out += 1 if getattr(layer, "n_layers", 1) > 1 else 0
    if not bias.is_complex() and bias.dim() == n_out + 1:
        bias = torch.view_as_complex(bias)
    return _pick(bias, indices)


# ------------------------------------------------------------------ dense references
def linear_reference(
    layer: tfx.FactorizedLinear, x: torch.Tensor, indices: int | None = None
) -> torch.Tensor:
    """``F.linear`` with the reconstructed matrix (and bias) of layer ``indices``."""
    weight = _pick(layer.weight.to_matrix(), indices)
    return F.linear(x, weight, _bias_like(bias_of(layer, indices), weight))


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def conv_reference(
    layer: tfx.FactorizedConv, x: torch.Tensor, indices: int | None = None
) -> torch.Tensor:
    """An ``nn.Conv{1,2,3}d`` with the layer's configuration, run on the reconstructed kernel."""
    weight = _pick(layer.weight.to_tensor(), indices)
    bias = _bias_like(bias_of(layer, indices), weight)
    conv = _CONV[layer.order](
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=layer.groups,
        bias=bias is not None,
        padding_mode=layer.padding_mode,
        dtype=F64,
    )
    params = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
    with warnings.catch_warnings():
        # torch's own note that padding='same' with an even kernel copies the input.
        warnings.filterwarnings("ignore", message="Using padding='same'", category=UserWarning)
        return functional_call(conv, params, (x,))


def embedding_reference(
    layer: tfx.FactorizedEmbedding, index: torch.Tensor, indices: int | None = None
) -> torch.Tensor:
    """Rows of the reconstructed table; zeros at ``padding_idx``."""
    out = _pick(layer.weight.to_matrix(), indices)[index]
    if layer.padding_idx is not None:
        out = torch.where((index == layer.padding_idx).unsqueeze(-1), torch.zeros_like(out), out)
    return out


def trl_reference(layer: tfx.TRL, x: torch.Tensor, indices: int | None = None) -> torch.Tensor:
    """``tensordot`` of the input with the reconstructed regression weight, plus the bias."""
    weight = _pick(layer.weight.to_tensor(), indices)
    y = torch.tensordot(x, weight, dims=layer.n_input)
    bias = bias_of(layer, indices)
    return y if bias is None else y + bias


def tcl_reference(layer: tfx.TCL, x: torch.Tensor, indices: int | None = None) -> torch.Tensor:
    """Mode-k products with each factor, then the bias."""
    y = x
    for k, factor in enumerate(layer.factors):
        y = torch.movedim(
            torch.tensordot(y, _pick(factor, indices), dims=([k + 1], [1])), -1, k + 1
        )
    bias = _pick(layer.bias, indices)
    return y if bias is None else y + bias


# ------------------------------------------------------------------ small layers
def make_linear(form: str, **kwargs: Any) -> tfx.FactorizedLinear:
    """A 6 -> 6 layer tensorized (2, 3) -> (3, 2), float64."""
    kwargs.setdefault("rank", 0.5)
    return tfx.FactorizedLinear((2, 3), (3, 2), factorization=form, dtype=F64, **kwargs)


def make_conv(form: str, order: int = 2, **kwargs: Any) -> tfx.FactorizedConv:
    """A 3 -> 4 channel convolution with kernel (3, 2, 2)[:order], float64."""
    kwargs.setdefault("rank", 0.5)
    return tfx.FactorizedConv(3, 4, (3, 2, 2)[:order], factorization=form, dtype=F64, **kwargs)


def make_embedding(form: str, **kwargs: Any) -> tfx.FactorizedEmbedding:
    """A 24 x 12 table tensorized (2, 3, 4) x (2, 2, 3), float64."""
    kwargs.setdefault("rank", 0.5)
    return tfx.FactorizedEmbedding(
        24,
        12,
        tensorized_num_embeddings=(2, 3, 4),
        tensorized_embedding_dim=(2, 2, 3),
        factorization=form,
        dtype=F64,
        **kwargs,
    )


def make_trl(form: str, **kwargs: Any) -> tfx.TRL:
    """(batch, 3, 4) -> (batch, 2, 3), float64."""
    kwargs.setdefault("rank", 0.5)
    return tfx.TRL((3, 4), (2, 3), factorization=form, dtype=F64, **kwargs)


def make_tcl(**kwargs: Any) -> tfx.TCL:
    """(batch, 3, 4, 5) -> (batch, 2, 3, 4), float64."""
    return tfx.TCL((3, 4, 5), (2, 3, 4), dtype=F64, **kwargs)


LAYER_KINDS = ("linear", "conv", "embedding", "trl", "tcl")
EMBEDDING_INDEX = torch.tensor([[0, 5, 23], [7, 5, 1]])


def build(
    kind: str, form: str = "CP", implementation: str = "factorized", **kwargs: Any
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A small layer of ``kind`` and a matching input; biases on where the layer has them."""
    if kind == "linear":
        return make_linear(form, implementation=implementation, **kwargs), (randn(5, 6, form=form),)
    if kind == "conv":
        kwargs.setdefault("bias", True)
        layer = make_conv(form, padding=1, implementation=implementation, **kwargs)
        return layer, (randn(2, 3, 6, 5, form=form),)
    if kind == "embedding":
        return make_embedding(form, implementation=implementation, **kwargs), (
            EMBEDDING_INDEX.clone(),
        )
    if kind == "trl":
        return make_trl(form, bias=True, **kwargs), (randn(5, 3, 4, form=form),)
    if kind == "tcl":
        return make_tcl(bias=True, **kwargs), (randn(5, 3, 4, 5),)
    raise ValueError(kind)


# ------------------------------------------------------------------ gradients and graphs
def gradcheck_module(module: nn.Module, *inputs: torch.Tensor, wrt_inputs: bool = True) -> bool:
    """``torch.autograd.gradcheck`` of ``module`` w.r.t. every parameter (and floating inputs)."""
    names = [name for name, _ in module.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in module.named_parameters())
    if wrt_inputs:
        leaves = tuple(x.detach().clone().requires_grad_(True) for x in inputs)

        def with_inputs(*args: torch.Tensor) -> torch.Tensor:
            return functional_call(
                module, dict(zip(names, args[len(leaves) :], strict=True)), args[: len(leaves)]
            )

        return torch.autograd.gradcheck(with_inputs, leaves + params)

    def params_only(*args: torch.Tensor) -> torch.Tensor:
        return functional_call(module, dict(zip(names, args, strict=True)), inputs)

    return torch.autograd.gradcheck(params_only, params)


_CONTRACTIONS = {
    "einsum",
    "tensordot",
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "embedding",
    "matmul",
    "bmm",
    "mm",
    "addmm",
}


def contraction_ops(graph: torch.fx.Graph) -> list[str]:
    """Names of the contraction ops (einsum, conv, linear, ...) called in ``graph``."""
    names = []
    for node in graph.nodes:
        if node.op in ("call_function", "call_method"):
            name = (
                node.target
                if isinstance(node.target, str)
                else getattr(node.target, "__name__", "")
            )
            if name in _CONTRACTIONS:
                names.append(name)
    return names


def full_rank_linear(form: str) -> dict[str, Any]:
    """Tensorization and rank at which ``form`` holds every 10 x 12 matrix exactly."""
    fam = family(form)
    if fam == "cp":  # a matrix: the rank-10 CP is its SVD
        return {"in_tensorized_features": (12,), "out_tensorized_features": (10,), "rank": 10}
    shapes = {"in_tensorized_features": (3, 4), "out_tensorized_features": (2, 5)}
    if fam == "tucker":
        return {**shapes, "rank": (2, 5, 3, 4)}
    if fam == "tt":  # the bounds of the chain (2, 5, 3, 4): a new TT takes an int as given
        return {**shapes, "rank": (1, 2, 10, 4, 1)}
    if fam == "blocktt":
        return {**shapes, "rank": 10**6}  # one int is capped to each bond's bound
    return shapes


def full_rank(form: str, shape: Sequence[int]) -> Any:
    """A rank at which a (non-CP) plain form holds every tensor of ``shape`` exactly."""
    fam = family(form)
    if fam == "tucker":
        return tuple(shape)
    if fam == "tt":  # the unfolding bounds (a new TT takes an int as given, as tltorch does)
        return tfx.tensors._rank.tt_rank_bounds(shape)
    if fam == "dense":
        return "same"
    raise ValueError(f"no exact full rank for {form} of order {len(shape)}")
