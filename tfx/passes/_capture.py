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
from typing import Any, Final

import torch
from torch import fx, nn

from .._errors import TraceError

__all__ = ["Captured", "Tracer", "capture", "call_with", "split_inputs"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Captured:
    """A captured model: the graph module, the path taken, and why earlier paths failed.

    Attributes:
        gm: the graph (on the module-swap path, one opaque call of ``model``).
        path: ``'symbolic_trace'``, ``'export'`` or ``'module_swap'``.
        failures: why the earlier paths failed, one line each.
        model: the model the graph was captured from (the copy ``capture`` was given); a
            result emitted into the model's own modules is made from it.
        notes: what the plan must say about this capture (e.g. a batch size that could not
            be kept dynamic, or the cache turned off for the analysis).
        graph_faithful: False when the graph is for analysis only and does not compute what
            the model computes (captured with ``use_cache=False``): then the result must be
            emitted into the model's own modules.
        reference: the model's outputs on the example inputs, recorded before anything
            changed (``tfx.factorize`` verifies the result against them).
    """

    gm: fx.GraphModule
    path: str
    failures: list[str]
    model: nn.Module | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    graph_faithful: bool = True
    reference: Any = None


class Tracer(fx.Tracer):
    """tfx's fx tracer: torch.nn modules and the modules named in ``skip`` are leaves."""

    def __init__(self, skip: Sequence[str] = ()) -> None:
        super().__init__()
        self.skip = set(skip)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:  # noqa: D102
        from ..nn import FactorizedConv, FactorizedEmbedding, FactorizedLinear

        # a factorized layer is a site of its own (a result factorized again), not its factors' ops
        factorized = isinstance(m, FactorizedLinear | FactorizedConv | FactorizedEmbedding)
        return (
            module_qualified_name in self.skip
            or factorized
            or super().is_leaf_module(m, module_qualified_name)
        )


def split_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``example_inputs`` as (args, kwargs).

    ``example_inputs`` is a tuple of positional args, a dict of keyword args, or one tensor.
    """
    if example_inputs is None:
        return (), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, tuple | list):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def call_with(module: Any, example_inputs: Any) -> Any:
    """Call ``module`` on the example inputs."""
    args, kwargs = split_inputs(example_inputs)
    return module(*args, **kwargs)


def _fold_layers(gm: fx.GraphModule) -> None:
    """Fold the ops ``splice`` tagged with the layer they compute back into one call of that layer.

    A ``GraphModule`` returned by ``tfx.factorize`` holds each factorized layer as flat ops;
    folded, the layer is one ``call_module`` node again, a site the compiler can re-plan.
    """
    regions: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        layer = node.meta.get("tfx", {}).get("layer")
        if layer is not None:
            regions.setdefault(layer, []).append(node)
    for layer, nodes in regions.items():
        inside = set(nodes)
        inputs = {a for n in nodes for a in n.all_input_nodes if a not in inside}
        outputs = [n for n in nodes if any(u not in inside for u in n.users)]
        try:
            gm.get_submodule(layer)
        except AttributeError:
            continue
        if len(inputs) != 1 or len(outputs) != 1:
            continue  # not one input and one output: left as it is
        with gm.graph.inserting_after(outputs[0]):
            call = gm.graph.call_module(layer, (next(iter(inputs)),))
        outputs[0].replace_all_uses_with(call)
        for node in reversed(nodes):
            gm.graph.erase_node(node)
    gm.recompile()


def _symbolic_trace(model: nn.Module, skip: Sequence[str], example_inputs: Any) -> fx.GraphModule:
    if isinstance(model, fx.GraphModule):
        # Already a graph (e.g. a result of tfx.factorize): use it as it is. Tracing its code
        # again would turn the parameters it reads through the module dictionaries into constants.
        _fold_layers(model)  # in place: ``model`` is capture's own copy
        gm = fx.GraphModule(model, model.graph, model.__class__.__name__)
    else:
        tracer = Tracer(skip)
        graph = tracer.trace(model)
        gm = fx.GraphModule(tracer.root, graph, model.__class__.__name__)
    if example_inputs is not None:
        args, kwargs = split_inputs(example_inputs)
        if kwargs:
            raise TraceError(
                "symbolic_trace graphs take positional inputs; "
                "keyword inputs go through torch.export"
            )
        from torch.fx.passes.shape_prop import ShapeProp

        ShapeProp(gm).propagate(*args)
    return gm


def _export(
    model: nn.Module, example_inputs: Any, notes: list[str] | None = None
) -> fx.GraphModule:
    args, kwargs = split_inputs(example_inputs)
    widened = _widened(args, kwargs)
    attempts = [] if widened is None else [(*widened, True)]
    attempts.append((args, kwargs, False))
    ep = None
    for i, (a, k, wide) in enumerate(attempts):
        try:
            ep = _export_dynamic(model, a, k, allow_static=not wide)
            if not wide and widened is not None and notes is not None:
                notes.append(_MSG_PINNED)
            break
        except Exception as err:  # noqa: BLE001 - the example as given is the fallback
            if i == len(attempts) - 1 or _output_not_exportable(err):
                raise
            logger.info(
                "export of the batch-2 copy of a batch-1 "
                "example failed (%s); exporting it as given",
                err,
            )
    assert ep is not None
    unlifted = ep.module()
    # The module torch.export returns refuses .train(); a plain GraphModule over the same
    # graph and attributes trains. Mode-dependent ops (dropout, batch norm) stay as captured.
    return fx.GraphModule(unlifted, unlifted.graph, model.__class__.__name__)


_MSG_PINNED: Final = (
    "the example has batch size 1 and torch.export could only capture the model at that size "
    "(it specialises dimensions of size 1), so the graph is pinned to one row; pass an example "
    "with 2 or more rows to keep the batch dynamic"
)


def _output_not_exportable(err: BaseException) -> bool:
    """torch.export refused an output type (a model's cache object).

    Other shapes fail the same way.
    """
    text = str(err)
    return "which is not a known type" in text or "register a pytree" in text


def _widened(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """The example with its batch of one repeated to two rows.

    None when it is not a batch of one.

    torch.export specialises every dimension of size 1 (a symbolic size cannot be 0 or 1), so
    a graph captured on one sentence or one image only runs on one; a two-row copy of the same
    example captures the batch as a dimension. Only when every tensor input has one row (a
    tensor with several rows means dimension 0 is not the batch).
    """
    tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.dim() > 0]
    if not tensors or any(t.shape[0] != 1 for t in tensors):
        return None

    def widen(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.expand(2, *value.shape[1:]).clone()
        return value

    return tuple(widen(a) for a in args), {k: widen(v) for k, v in kwargs.items()}


def _export_dynamic(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], allow_static: bool
) -> Any:
    """``torch.export.export`` with the most dynamic shapes the model allows.

    Every dimension (torch.export's AUTO keeps a dimension dynamic unless the model
    specialises it, so sequence lengths and image sizes other than the example's work), else
    the batch dimension only, else (``allow_static``) static shapes.
    """
    specs = [_as_dynamic(model, args, kwargs, every_dim=True), _as_dynamic(model, args, kwargs)]
    if allow_static:
        specs.append(None)
    specs = [spec for spec in specs if spec is not False]
    for i, spec in enumerate(specs):
        try:
            return torch.export.export(model, args, kwargs, strict=False, dynamic_shapes=spec)
        except Exception as err:  # noqa: BLE001 - a less dynamic capture is the fallback
            if i == len(specs) - 1 or _output_not_exportable(err):
                raise
            logger.info(
                "export with dynamic shapes failed (%s); trying fewer dynamic dimensions", err
            )
    raise AssertionError("unreachable")  # pragma: no cover


def _as_dynamic(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], every_dim: bool = False
) -> Any:
    """``dynamic_shapes`` for export.

    The batch dimension, or (``every_dim``) every dimension through ``Dim.AUTO``; False where
    that is not available (torch < 2.5).
    """
    import inspect

    auto = getattr(torch.export.Dim, "AUTO", None)
    if every_dim and auto is None:
        return False
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    names = list(inspect.signature(model.forward).parameters)
    spec: dict[str, Any] = {}
    for name, value in [*zip(names, args, strict=False), *kwargs.items()]:
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


def _first_line(err: BaseException) -> str:
    """The error's type and first sentence, at most 200 characters."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else ""
    line = line.split(". ")[0]
    return f"{type(err).__name__}: {line[:200]}"


def _without_cache(model: nn.Module, example_inputs: Any) -> Any:
    """The example with ``use_cache=False`` added.

    None when the model takes no ``use_cache`` or the example already sets it.
    """
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return None
    if "use_cache" not in params:
        return None
    args, kwargs = split_inputs(example_inputs)
    if "use_cache" in kwargs:
        return None
    names = list(params)
    if len(args) > names.index("use_cache"):
        return None
    named = dict(zip(names, args, strict=False))
    return {**named, **kwargs, "use_cache": False}


def capture(model: nn.Module, example_inputs: Any = None, skip: Sequence[str] = ()) -> Captured:
    """Capture ``model`` (not modified) by the first path that works.

    1. ``torch.fx.symbolic_trace``;
    2. ``torch.export`` on ``example_inputs`` (a batch of one is captured on a two-row copy,
       so the graph keeps the batch dynamic); when that fails and the model takes
       ``use_cache`` (Hugging Face decoders, whose cache output torch.export may refuse),
       again with ``use_cache=False``: that graph is for analysis only
       (``graph_faithful=False``), the result is then emitted into the model's own modules;
    3. module swap (no graph of the model's insides).

    A fallback that changes what the result can do (the module swap, a batch pinned to one
    row, the cache turned off for the analysis) is a :class:`~tfx.TfxWarning` naming the path
    taken and why the earlier one failed, and a note of the plan.

    Raises:
        TraceError: when no path works; names the failures and the fixes.
    """
    failures: list[str] = []
    try:
        return Captured(
            _symbolic_trace(model, skip, example_inputs), "symbolic_trace", failures, model
        )
    except Exception as err:  # noqa: BLE001 - any failure moves on to the next path
        failures.append(f"torch.fx.symbolic_trace: {_first_line(err)}")
    if example_inputs is not None:
        notes: list[str] = []
        try:
            gm = _export(model, example_inputs, notes)
            _warn_notes(notes)
            return Captured(gm, "export", failures, model, notes)
        except Exception as err:  # noqa: BLE001
            failures.append(f"torch.export: {_first_line(err)}")
        no_cache = _without_cache(model, example_inputs)
        if no_cache is not None:
            try:
                gm = _export(model, no_cache, notes)
                note = (
                    f"torch.export could not capture {type(model).__name__} with its cache "
                    f"({failures[-1]}); the graph tfx plans on was captured with use_cache=False, "
                    "and the result is the model with its layers replaced, cache and all"
                )
                # Not a warning: the result is the model itself, cache included; only the
                # analysis graph differs, and the plan says so.
                logger.info("%s", note)
                _warn_notes(notes)
                return Captured(gm, "export", failures, model, [note, *notes], graph_faithful=False)
            except Exception as err:  # noqa: BLE001
                failures.append(f"torch.export (use_cache=False): {_first_line(err)}")
    else:
        failures.append("torch.export: not tried (no example_inputs)")
    try:
        gm = _swap_graph(model)
    except Exception as err:  # noqa: BLE001
        failures.append(f"module swap: {type(err).__name__}: {err}")
    else:
        note = (
            f"captured by module swap (no graph of {type(model).__name__}'s insides: no shapes, no "
            "FLOP counts, only the layers the model holds as modules are sites) because "
            + "; ".join(failures)
        )
        _warn_notes([note])
        return Captured(gm, "module_swap", failures, gm.model, [note])
    raise TraceError(
        f"tfx could not capture {type(model).__name__}.\n  "
        + "\n  ".join(failures)
        + "\nFix one of:\n"
        "  - pass example inputs, so torch.export can capture "
        "it:  tfx.factorize(model, 0.5, example_inputs=(x,))\n"
        '  - leave the failing module dense:  tfx.factorize(model, 0.5, skip=["name.of.module"])\n'
        '  - use the dynamo path:  torch.compile(model, backend="tfx")'
    )


def _warn_notes(notes: Sequence[str]) -> None:
    import warnings

    from .._errors import TfxWarning

    for note in notes:
        warnings.warn(f"tfx: {note}.", TfxWarning, stacklevel=4)
