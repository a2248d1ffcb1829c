"""Emit into the model's own modules: the result is the model, with its layers replaced.

When every site tfx factorizes is a layer module of the model (``nn.Linear``, ``nn.Conv*``,
``nn.Embedding``, their subclasses, transformers' ``Conv1D``), the result need not be a
graph: each chosen layer is replaced, in a copy of the model, by the ``tfx.nn`` layer that
holds its factors. The model keeps its class and its own ``forward``: the same signature and
defaults, any batch size, ``generate()``, the KV cache, ``save_pretrained``. The captured
graph is then only the analysis (shapes, data flow, calibration statistics).

A subclass that overrides ``forward`` and calls ``super().forward(...)`` (BART's scaled word
embedding, OPT's learned positional embedding) keeps its ``forward``: its class is swapped
for a subclass in which that ``super().forward`` call reaches the factorized layer, held as
the child ``tfx_layer``. A subclass whose ``forward`` does anything else is not swappable.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Final

from torch import nn

__all__ = ["swap_kind", "module_of", "swap_modules", "DELEGATE_CHILD"]

#: The child under which a delegating subclass holds its factorized layer.
DELEGATE_CHILD: Final = "tfx_layer"

_BASES: Final = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
_DELEGATES: dict[type, type] = {}


def _base(module: nn.Module) -> type | None:
    if type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers"):
        return type(module)  # GPT-2's x @ W + b, replaced as a linear
    return next((b for b in _BASES if isinstance(module, b)), None)


def swap_kind(module: nn.Module) -> str | None:
    """How ``module`` can be replaced.

    ``'replace'`` (its forward is its base layer's, or it is a ``tfx.nn`` layer), ``'delegate'``
    (a subclass whose forward calls ``super().forward``), or None.
    """
    from ..nn import FactorizedConv, FactorizedEmbedding, FactorizedLinear

    if isinstance(module, FactorizedLinear | FactorizedConv | FactorizedEmbedding):
        return "replace"
    base = _base(module)
    if base is None:
        return None
    if type(module).forward is base.forward:
        return "replace"
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):  # pragma: no cover - classes defined without source
        return None
    return "delegate" if "super().forward(" in source else None


def module_of(root: nn.Module, name: str, weight_target: str) -> nn.Module | None:
    """The layer module of ``root`` whose weight is ``weight_target``.

    It is the module whose call the site ``name`` is, when it can be swapped; else None.
    """
    owner_path, _, attr = weight_target.rpartition(".")
    if attr != "weight":
        return None
    try:
        owner = root.get_submodule(owner_path)
        named = root.get_submodule(name)
    except AttributeError:
        return None
    if named is not owner or swap_kind(owner) is None:
        return None
    return owner


def _holders(root: nn.Module, target: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every (parent, attribute) that holds ``target``.

    A module shared under several names (BART's ``shared`` and ``encoder.embed_tokens``) is
    replaced under all of them.
    """
    return [
        (parent, key)
        for parent in root.modules()
        for key, child in parent._modules.items()
        if child is target
    ]


def _delegating_class(cls: type, base: type) -> type:
    if cls not in _DELEGATES:

        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            return getattr(self, DELEGATE_CHILD)(*args, **kwargs)

        def weight(self: nn.Module) -> Any:
            """The factorized weight.

            Its ``dtype`` and ``device`` are what code around it reads.
            """
            return getattr(self, DELEGATE_CHILD).weight

        call = type(
            f"_Factorized{base.__name__}Call",
            (base,),
            {"forward": forward, "weight": property(weight), "__module__": __name__},
        )
        doc = (
            f"{cls.__name__} whose base {base.__name__} call runs the factorized layer "
            f"``{DELEGATE_CHILD}``."
        )
        _DELEGATES[cls] = type(
            f"Factorized{cls.__name__}", (cls, call), {"__module__": __name__, "__doc__": doc}
        )
    return _DELEGATES[cls]


def _delegate(module: nn.Module, layer: nn.Module) -> None:
    """Turn ``module`` (a subclass with its own forward) into its delegating subclass, in place."""
    base = _base(module)
    assert base is not None
    module.__class__ = _delegating_class(type(module), base)
    for name in ("weight", "bias"):
        module._parameters.pop(name, None)
    setattr(module, DELEGATE_CHILD, layer)


def _keep_bias(module: nn.Module, layer: nn.Module) -> None:
    """Give ``layer`` the module's own bias Parameter (same values).

    A bias tied elsewhere (RoBERTa's ``lm_head.bias`` is ``lm_head.decoder.bias``) stays tied,
    and nothing is copied.
    """
    old, new = module._parameters.get("bias"), getattr(layer, "_parameters", {}).get("bias")
    if isinstance(old, nn.Parameter) and isinstance(new, nn.Parameter) and old.shape == new.shape:
        with_values = bool((old.detach() == new.detach()).all())
        if with_values:
            layer.bias = old


def swap_modules(
    root: nn.Module,
    targets: Sequence[tuple[nn.Module, Any]],
    build: Callable[[Any], nn.Module],
    progress: Any = None,
) -> None:
    """Replace each ``(module, item)`` of ``targets`` in ``root`` by ``build(item)``, in place."""
    for module, item in targets:
        layer = build(item)
        _keep_bias(module, layer)
        if swap_kind(module) == "delegate":
            _delegate(module, layer)
        else:
            for parent, key in _holders(root, module):
                parent._modules[key] = layer
        if progress is not None:
            progress.update(1)
