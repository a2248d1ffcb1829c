"""Capture: turn a model into a torch.fx GraphModule, by the first path that works.

1. ``torch.fx.symbolic_trace`` with :class:`Tracer` (module-level graph, the
   ``nn.Linear`` / ``nn.Conv*`` / ``nn.Embedding`` calls as ``call_module``);
2. ``torch.export.export(..., strict=False)`` with the example inputs (ATen-level
   graph; most Hugging Face models need this path), re-wrapped in a plain
   ``GraphModule`` so that it trains (the module ``torch.export`` returns refuses
   ``.train()``);
3. module swap: the model is kept whole as one leaf, and its layers are replaced
   in place by ``tfx.nn`` layers.

Each failure is kept so a final :class:`~tfx.TraceError` can say what happened.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn

from .._errors import TraceError

__all__ = ["Captured", "Tracer", "capture", "call_with", "split_inputs"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Captured:
    """A captured model: the graph module, the path taken, and why earlier paths failed."""

    gm: fx.GraphModule
    path: str
    failures: list[str]


class Tracer(fx.Tracer):
    """tfx's fx tracer: torch.nn modules and the modules named in ``skip`` are leaves."""

    def __init__(self, skip: Sequence[str] = ()) -> None:
        super().__init__()
        self.skip = set(skip)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:  # noqa: D102
        return module_qualified_name in self.skip or super().is_leaf_module(m, module_qualified_name)


def split_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``example_inputs`` (a tuple of positional args, a dict of keyword args, or one tensor) as (args, kwargs)."""
    if example_inputs is None:
        return (), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def call_with(module: Any, example_inputs: Any) -> Any:
    """Call ``module`` on the example inputs."""
    args, kwargs = split_inputs(example_inputs)
    return module(*args, **kwargs)


def _symbolic_trace(model: nn.Module, skip: Sequence[str], example_inputs: Any) -> fx.GraphModule:
    tracer = Tracer(skip)
    graph = tracer.trace(model)
    gm = fx.GraphModule(tracer.root, graph, model.__class__.__name__)
    if example_inputs is not None:
        args, kwargs = split_inputs(example_inputs)
        if kwargs:
            raise TraceError("symbolic_trace graphs take positional inputs; keyword inputs go through torch.export")
        from torch.fx.passes.shape_prop import ShapeProp

        ShapeProp(gm).propagate(*args)
    return gm


def _export(model: nn.Module, example_inputs: Any) -> fx.GraphModule:
    args, kwargs = split_inputs(example_inputs)
    ep = None
    # Dynamic dimensions where the model allows them: every dimension (torch.export's AUTO
    # keeps a dimension dynamic unless the model specialises it, so sequence lengths and image
    # sizes other than the example's work), else the batch dimension only, else static shapes.
    for spec in (_as_dynamic(model, args, kwargs, every_dim=True), _as_dynamic(model, args, kwargs), None):
        if spec is False:
            continue
        try:
            ep = torch.export.export(model, args, kwargs, strict=False, dynamic_shapes=spec)
            break
        except Exception as err:  # noqa: BLE001 - a less dynamic capture is the fallback
            if spec is None:
                raise
            logger.info("export with dynamic shapes failed (%s); trying fewer dynamic dimensions", err)
    assert ep is not None
    unlifted = ep.module()
    # The module torch.export returns refuses .train(); a plain GraphModule over the same
    # graph and attributes trains. Mode-dependent ops (dropout, batch norm) stay as captured.
    return fx.GraphModule(unlifted, unlifted.graph, model.__class__.__name__)


def _as_dynamic(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], every_dim: bool = False) -> Any:
    """``dynamic_shapes`` for export: the batch dimension, or (``every_dim``) every dimension
    through ``Dim.AUTO``; False where that is not available (torch < 2.5)."""
    import inspect

    auto = getattr(torch.export.Dim, "AUTO", None)
    if every_dim and auto is None:
        return False
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    names = list(inspect.signature(model.forward).parameters)
    spec: dict[str, Any] = {}
    for name, value in [*zip(names, args), *kwargs.items()]:
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            spec[name] = None
        elif every_dim:
            spec[name] = {d: auto for d in range(value.dim())}
        else:
            spec[name] = {0: batch} if value.shape[0] > 1 else None
    return spec


def _call(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return module(*args, **kwargs)


def _swap_graph(model: nn.Module) -> fx.GraphModule:
    root = nn.Module()
    root.model = copy.deepcopy(model)
    graph = fx.Graph()
    args = graph.placeholder("*args")
    kwargs = graph.placeholder("**kwargs")
    module = graph.get_attr("model")
    graph.output(graph.call_function(_call, (module, args, kwargs)))
    return fx.GraphModule(root, graph, model.__class__.__name__)


def capture(model: nn.Module, example_inputs: Any = None, skip: Sequence[str] = ()) -> Captured:
    """Capture ``model`` (not modified) by the first path that works.

    Raises:
        TraceError: when no path works; names the failures and the fixes.
    """
    failures: list[str] = []
    try:
        return Captured(_symbolic_trace(model, skip, example_inputs), "symbolic_trace", failures)
    except Exception as err:  # noqa: BLE001 - any failure moves on to the next path
        failures.append(f"torch.fx.symbolic_trace: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    if example_inputs is not None:
        try:
            return Captured(_export(model, example_inputs), "export", failures)
        except Exception as err:  # noqa: BLE001
            failures.append(f"torch.export: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    else:
        failures.append("torch.export: not tried (no example_inputs)")
    try:
        return Captured(_swap_graph(model), "module_swap", failures)
    except Exception as err:  # noqa: BLE001
        failures.append(f"module swap: {type(err).__name__}: {err}")
    raise TraceError(
        f"tfx could not capture {type(model).__name__}.\n  " + "\n  ".join(failures) + "\nFix one of:\n"
        "  - pass example inputs, so torch.export can capture it:  tfx.factorize(model, 0.5, example_inputs=(x,))\n"
        "  - leave the failing module dense:  tfx.factorize(model, 0.5, skip=[\"name.of.module\"])\n"
        "  - use the dynamo path:  torch.compile(model, backend=\"tfx\")"
    )
