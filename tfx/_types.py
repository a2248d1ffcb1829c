"""The option names of tfx's public API as ``Literal`` types, each set defined once.

Signatures use these, so a type checker catches ``forms=("svdd",)`` before a run does; the
runtime checks (with their "did you mean" messages) stay where the options are read, and
``tests/test_typing.py`` keeps each set equal to the names those checks accept.

Strategies are the built-in names; one added with :func:`tfx.cost.register_strategy` works at
run time, and a type checker needs a ``cast`` for it (as opt_einsum types its path names).
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias, get_args

__all__ = [
    "Form",
    "Kind",
    "Strategy",
    "Emit",
    "Offload",
    "Implementation",
    "ConvImplementation",
    "DropoutImplementation",
    "Loss",
    "FORMS",
    "KINDS",
]

#: A form :func:`tfx.factorize` may choose: ``"svd"`` is the low-rank matrix.
Form: TypeAlias = Literal["svd", "cp", "tucker", "tt", "blocktt"]
#: A layer kind :func:`tfx.factorize` may factorize.
Kind: TypeAlias = Literal["linear", "conv", "embedding"]
#: A built-in allocation strategy (:func:`tfx.cost.available_strategies`).
Strategy: TypeAlias = Literal["auto", "greedy", "dp", "uniform", "sensitivity"]
#: What :func:`tfx.factorize` returns: a GraphModule, the model with swapped modules, or either.
Emit: TypeAlias = Literal["auto", "graph", "modules"]
#: Where ``tfx.factorize(sequential=True)`` keeps the blocks' inputs between blocks.
Offload: TypeAlias = Literal["cpu", "disk"]
#: How a factorized linear or embedding runs: with the factors, by rebuilding the weight, or
#: whichever costs fewer FLOPs at the batch size.
Implementation: TypeAlias = Literal["factorized", "reconstructed", "auto"]
#: :data:`Implementation`, and for CP convolutions the pointwise-depthwise-pointwise one.
ConvImplementation: TypeAlias = Literal["factorized", "reconstructed", "mobilenet", "auto"]
#: How tensor dropout removes rank components (see :class:`tfx.TensorDropout`).
DropoutImplementation: TypeAlias = Literal["auto", "reduce", "mask"]
#: The distance :func:`tfx.distill` minimises.
Loss: TypeAlias = Literal["mse", "cosine"]

# The defaults of ``forms=`` and ``kinds=``: every name, in the order above.
FORMS: Final[tuple[Form, ...]] = get_args(Form)
KINDS: Final[tuple[Kind, ...]] = get_args(Kind)
