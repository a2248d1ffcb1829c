"""The torch.compile backend: ``torch.compile(model, backend="tfx")`` and :func:`backend`.

Stage: dynamo's graph -> parameters as attributes -> find_sites -> plan -> rewrite
(decompositions cached per ``Parameter``) -> parameters back as inputs -> emit -> inductor.

Dynamo (with ``inline_inbuilt_nn_modules``, the default since torch 2.5) hands the
backend a graph whose parameters are *placeholder inputs*, with the live
``nn.Parameter`` objects among the example inputs. The backend registers those
parameters on the graph module under their qualified names and reads them through
``get_attr`` nodes, so the compiler's own :func:`~tfx.passes.find_sites`, cost model,
:func:`~tfx.passes.rewrite` and :func:`~tfx.passes.emit` run unchanged; afterwards
every parameter that is still read goes back to being an input, so the layers that
stay dense keep reading the live parameters, as without tfx.

Because parameters are inputs, dynamo runs one compiled graph for every module with the
same code (instances of a class, blocks resumed after a graph break); the factorized
layers load the factors of the parameters each call passes (:class:`_Use`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import os
import re
import sys
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, cast, overload

import torch
from torch import fx, nn
from torch.utils.weak import WeakIdKeyDictionary

from ._api import _check_names, _plan_sites
from ._errors import BudgetError, OptionError, TfxWarning, unknown_option
from ._tied import TiedGroup, tied_groups
from ._types import FORMS, KINDS, Form, Kind, Strategy
from .cost import Budget, Choice, FactorizationPlan, normalise_budget
from .cost._choose import available_strategies
from .passes import Site, emit, find_sites, rewrite
from .passes._analysis import check_weights
from .passes._decompose import decompose, table_tensor, tied_layer
from .passes._pass import site_context

if TYPE_CHECKING:
    from types import FrameType

__all__ = ["DEFAULT_BUDGET", "backend", "default_backend"]

logger = logging.getLogger(__name__)

#: The budget of ``torch.compile(model, backend="tfx")``: half the parameters of each graph piece.
DEFAULT_BUDGET: Final = 0.5
#: The capture path recorded in the plans the backend makes.
CAPTURE: Final = "dynamo"
_OPTIONS: Final = ("forms", "kinds", "skip", "strategy", "progress", "compiler", "mode")

# One decomposition per (Parameter, what it is decomposed into): recompiles and the
# graph pieces after a graph break reuse it. Keys are the Parameter objects themselves,
# held weakly and compared by identity (a WeakKeyDictionary would compare tensors with ==).
_DECOMPOSED: WeakIdKeyDictionary = WeakIdKeyDictionary()

_MSG_GRAD: Final = (
    "torch.compile(backend='tfx') compiles for inference: the factorized layers' factors are "
    "constants and the compiled graph records no gradients, so its outputs do not require grad.\n"
    "Fix: run the compiled model under torch.no_grad() or "
    "torch.inference_mode() (this warning then goes away); to train or "
    "fine-tune a factorized model, use tfx.factorize(model, budget=...)."
)

_MSG_PIECE: Final = (
    "{err}\n"
    "  (torch.compile backend: the budget applies to each graph piece dynamo hands it, "
    "here one with {tensors} parameter tensors; a graph break splits a model into pieces, "
    "and each must fit. List the breaks with torch._dynamo.explain(model)(*inputs).)"
)
_MSG_SKIP: Final = (
    "skip={name!r} names no module of {owner}.{hint}\n"
    "Fix: tfx.backend(budget, skip=[{fix!r}]), with names from model.named_modules() of the module "
    "torch.compile compiles."
)
_MSG_SENSITIVITY: Final = (
    "strategy='sensitivity' weighs layers by their measured effect on the output, "
    "which needs calibration data, and the torch.compile backend takes none.\n"
    "Fix: tfx.backend(budget, strategy='auto'), or tfx.factorize(model, budget, "
    "strategy='sensitivity', calibration=[...]) and then torch.compile the result."
)

# --- names: dynamo's sources -> the compiled module's qualified names -------------------------
#
# Dynamo names what a graph reads by *sources*, expressions in the compiled frame:
# ``L['self']._modules['encoder']._parameters['weight']``, ``G['model']...`` (a global),
# ``L['fn']...`` (torch.compile of a builtin container such as nn.Sequential), and in the
# frames it resumes after a graph break, ``L['self']`` is the *inner* module whose forward
# broke. The plan's site names must be those of ``model.named_modules()``, as in
# tfx.factorize, so each source is walked to the first module it passes through, and that
# module is located, by identity, in the module torch.compile compiles.

_CONTAINERS: Final = frozenset({"_modules", "_parameters", "_buffers"})
_EVAL_FRAME: Final = os.path.join("_dynamo", "eval_frame.py")
# The string form, for sources that cannot be walked: a root, then attributes and keys.
_ROOT = re.compile(r"^[LG]\[(['\"])([^'\"]+)\1\]")
_PART = re.compile(r"\.(\w+)|\[(['\"])([^'\"\]]*)\2\]|\[(\d+)\]")
_GETATTR = re.compile(r"getattr\(([^()]*), (['\"])([^'\"]*)\2\)")


def _source_text(source: Any) -> str:
    name = source.name
    return name() if callable(name) else str(name)


def _source_name(node: fx.Node) -> str | None:
    source = getattr(node.meta.get("grapharg"), "source", None)
    return None if source is None else _source_text(source)


def _qualified_name(source: str) -> tuple[str, str] | None:
    """``("self", "encoder.weight")`` for ``L['self']._modules['encoder']._parameters['weight']``.

    The string fallback of :func:`_walk`. Once the source reaches into ``_modules`` or
    ``_parameters``, the module path starts there (``L['args'][0]._modules['encoder']``:
    ``encoder``); without them (dynamo's module-stack paths, ``L['self'].encoder.layer.0``),
    every part after the root is a name. ``getattr(x, 'name')``, nested too, is ``x['name']``.
    """
    while (inner := _GETATTR.sub(r"\1[\2\3\2]", source)) != source:
        source = inner
    root = _ROOT.match(source)
    if root is None:
        return None
    parts, pos = [], root.end()
    while pos < len(source):
        match = _PART.match(source, pos)
        if match is None:
            return None
        parts.append(
            next(g for g in (match.group(1), match.group(3), match.group(4)) if g is not None)
        )
        pos = match.end()
    if any(p in _CONTAINERS for p in parts):
        first = next(i for i, p in enumerate(parts) if p in _CONTAINERS)
        parts = [p for p in parts[first:] if p not in _CONTAINERS]
    return (root.group(2), ".".join(parts)) if parts else None


def _step(source: Any) -> tuple[str, Any]:
    """How ``source`` reaches its value from its base's.

    One of ``("attr", name)``, ``("item", key)``, ``("same", None)`` (dynamo's wrappers that
    only mark a module), or ``("other", None)``.
    """
    member, index = getattr(source, "member", None), getattr(source, "index", None)
    if isinstance(member, str):
        return "attr", member
    if isinstance(index, str | int) and not isinstance(index, bool):
        return "item", index
    base = getattr(source, "base", None)
    if base is not None and _source_text(source) == _source_text(base):
        return "same", None
    return "other", None


def _walk(
    source: Any, scope: tuple[dict[str, Any], dict[str, Any]]
) -> tuple[nn.Module, str] | None:
    """The first module along ``source`` and the qualified name of the rest of the path in it.

    ``source`` is evaluated in the frame's ``(locals, globals)``; None where a step is not a
    plain attribute or key.
    """
    links = []
    while source is not None:
        links.append(source)
        source = getattr(source, "base", None)
    links.reverse()
    root = links[0]
    local: Any = getattr(root, "local_name", None)
    name: Any = getattr(root, "global_name", None)
    try:
        value = scope[0][local] if isinstance(local, str) else scope[1][name]
    except (KeyError, TypeError):
        return None
    for i, link in enumerate(links):
        if i:
            kind, key = _step(link)
            if kind == "other":
                return None
            try:
                value = (
                    getattr(value, key)
                    if kind == "attr"
                    else value[key]
                    if kind == "item"
                    else value
                )
            except Exception:  # noqa: BLE001 - a source dynamo guards on, no longer evaluable here
                return None
        if isinstance(value, nn.Module):
            steps = [_step(rest) for rest in links[i + 1 :]]
            if any(kind == "other" for kind, _ in steps):
                return None
            return value, ".".join(
                str(key) for kind, key in steps if kind != "same" and key not in _CONTAINERS
            )
    return None


def _frame_scope() -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The ``(locals, globals)`` of the frame dynamo is compiling; None outside dynamo."""
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        tx = InstructionTranslator.current_tx()
        return dict(tx.f_locals), tx.f_globals
    except Exception:  # noqa: BLE001 - called outside dynamo, or another torch's internals
        return None


def _compiled_module() -> nn.Module | None:
    """The module torch.compile compiles, read off the call stack.

    That is the callable ``fn`` of dynamo's innermost entry frame (in
    ``torch/_dynamo/eval_frame.py``), when it is a module, a module's bound method, or a
    function that reaches exactly one module (through a closure or a global).
    """
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.endswith(_EVAL_FRAME):
            fn = frame.f_locals.get("fn")
            if callable(fn):
                return _module_of(fn)
        frame = frame.f_back
    return None


def _module_of(fn: Any) -> nn.Module | None:
    for candidate in (fn, getattr(fn, "__self__", None)):
        if isinstance(candidate, nn.Module):
            return candidate
    found: dict[int, nn.Module] = {}
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(value, nn.Module):
            found[id(value)] = value
    code, scope = getattr(fn, "__code__", None), getattr(fn, "__globals__", {})
    for name in code.co_names if code is not None else ():
        value = scope.get(name)
        if isinstance(value, nn.Module):
            found[id(value)] = value
    return next(iter(found.values())) if len(found) == 1 else None


class _Names:
    """Qualified names, as ``named_modules()`` has them, of a graph piece's parameters and modules.

    They are relative to the compiled module, also in the frames dynamo resumes inside a
    submodule after a graph break. Where that module is unknown (a function reaching several),
    to the first module seen by this backend (``roots``) that holds the one a source starts at.
    """

    def __init__(self, compiled: nn.Module | None, roots: list[weakref.ref[nn.Module]]) -> None:
        self.compiled = compiled
        self.roots = roots
        self.scope = _frame_scope()
        self.tops: list[nn.Module] = []
        self.paths: dict[int, str] = {}  # id(module) -> its name in its top
        self._params: dict[int, list[str]] | None = (
            None  # id(parameter) -> its names, built on demand
        )
        if compiled is not None:
            self._use(compiled)
        else:
            for ref in list(roots):
                if ref() is None:
                    roots.remove(ref)

    def _use(self, top: nn.Module) -> None:
        if all(t is not top for t in self.tops):
            self.tops.append(top)
            for name, module in top.named_modules(remove_duplicate=False):
                self.paths.setdefault(id(module), name)

    def _locate(self, module: nn.Module) -> str | None:
        if id(module) not in self.paths and self.compiled is None:
            live = [top for top in (ref() for ref in self.roots) if top is not None]
            top = next((t for t in live if any(m is module for m in t.modules())), None)
            if top is None:
                self.roots.append(weakref.ref(module))
            self._use(top if top is not None else module)
        return self.paths.get(id(module))

    def param(self, node: fx.Node, param: nn.Parameter) -> str | None:
        """The qualified name of the parameter ``node`` (a placeholder) reads."""
        source = getattr(node.meta.get("grapharg"), "source", None)
        walked = (
            _walk(source, self.scope) if source is not None and self.scope is not None else None
        )
        if walked is not None:
            prefix = self._locate(walked[0])
            if prefix is not None:
                return ".".join(filter(None, (prefix, walked[1])))
        named = _qualified_name(_source_text(source)) if source is not None else None
        names = self._param_names().get(
            id(param), []
        )  # the parameter itself, in the compiled module
        if names:  # tied: the name that ends like the source's path
            return next(
                (n for n in names if named and (n == named[1] or n.endswith("." + named[1]))),
                names[0],
            )
        return named[1] if named else None

    def _param_names(self) -> dict[int, list[str]]:
        if self._params is None:
            self._params = {}
            if self.compiled is not None:
                for name, p in self.compiled.named_parameters(remove_duplicate=False):
                    self._params.setdefault(id(p), []).append(name)
        return self._params

    def module(self, key: str, path: str) -> str:
        """The qualified name of an entry ``key: (path, type)`` of dynamo's ``nn_module_stack``.

        ``key`` is the module's ``id`` (``@n`` counts repeated calls).
        """
        head = key.split("@", 1)[0]
        found = self.paths.get(int(head)) if head.isdigit() else None
        if found is not None:
            return found
        named = _qualified_name(path)
        return named[1] if named else ""

    def valid(self) -> set[str]:
        """Every module name this piece's plan may use: the compiled module's (or the roots')."""
        tops = {id(t): t for t in [*self.tops, *(ref() for ref in self.roots)] if t is not None}
        return {name for top in tops.values() for name, _ in top.named_modules()}


def _holder(gm: fx.GraphModule, path: Sequence[str]) -> nn.Module | None:
    """The module at ``path`` on ``gm``, adding empty holder modules if missing; None on a clash."""
    owner: nn.Module = gm
    for part in path:
        child = owner._modules.get(part)
        if child is None:
            if hasattr(owner, part):
                return None
            child = nn.Module()
            owner.add_module(part, child)
        owner = child
    return owner


def _register(gm: fx.GraphModule, target: str, param: nn.Parameter) -> bool:
    """Register ``param`` at ``target`` on ``gm``, creating holder modules; False on a clash."""
    *path, leaf = target.split(".")
    owner = _holder(gm, path)
    if owner is None or hasattr(owner, leaf):
        return False
    owner.register_parameter(leaf, param)
    return True


def _unregister(gm: fx.GraphModule, target: str, param: nn.Parameter) -> None:
    owner_path, _, leaf = target.rpartition(".")
    try:
        owner = gm.get_submodule(owner_path) if owner_path else gm
    except AttributeError:
        return  # replaced by a factorized layer registered at the site's name
    if owner._parameters.get(leaf) is param:
        del owner._parameters[leaf]


class _Lifted:
    """The graph's parameter placeholders, read through ``get_attr`` nodes while tfx works.

    Each is registered under its qualified name in the compiled module, and the graph's
    module stacks are renamed the same way, so that :func:`~tfx.passes.find_sites` names
    the sites as tfx.factorize does (``lm_head``, not ``transformer.wte``, for a tied weight).
    """

    def __init__(self, gm: fx.GraphModule, example_inputs: Sequence[Any], names: _Names) -> None:
        self.gm = gm
        self.names = names
        self.params: dict[str, nn.Parameter] = {}
        self.placeholders: dict[str, fx.Node] = {}
        self.reads: dict[
            fx.Node, fx.Node
        ] = {}  # the get_attr nodes made here -> their placeholders
        self.stacks: dict[fx.Node, Any] = {}  # dynamo's module stacks, put back by restore()
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.positions = {node: i for i, node in enumerate(placeholders)}
        for node, value in zip(placeholders, example_inputs, strict=False):
            if isinstance(value, nn.Parameter) and node.users:
                self._lift(node, value, placeholders[-1])
        for node in gm.graph.nodes:
            stack = node.meta.get("nn_module_stack")
            if stack:
                self.stacks[node] = stack
                node.meta["nn_module_stack"] = {
                    key: (names.module(key, str(path)), kind) for key, (path, kind) in stack.items()
                }

    def _lift(self, node: fx.Node, param: nn.Parameter, last: fx.Node) -> None:
        name = self.names.param(node, param)
        candidates = [name] if name else []
        candidates.append(
            f"_tfx_inputs.{node.name}.weight"
        )  # site name "_tfx_inputs.<placeholder>"
        target = next(
            (t for t in candidates if t not in self.params and _register(self.gm, t, param)), None
        )
        if target is None:
            return  # stays an input, so find_sites does not see it
        with self.gm.graph.inserting_after(last):
            attr = self.gm.graph.get_attr(target)
        node.replace_all_uses_with(attr)
        self.params[target] = param
        self.placeholders[target] = node
        self.reads[attr] = node

    @overload
    def index(self, target: str) -> int: ...
    @overload
    def index(self, target: None) -> None: ...
    def index(self, target: str | None) -> int | None:
        """The position among the graph's inputs of the parameter lifted to ``target``."""
        return None if target is None else self.positions[self.placeholders[target]]

    def prefixes(self) -> set[str]:
        """The qualified names of the modules holding the lifted parameters, and their parents."""
        parts = (t.split(".")[:-1] for t in self.params if not t.startswith("_tfx_inputs."))
        return {".".join(p[:i]) for p in parts for i in range(1, len(p) + 1)}

    def restore(self) -> None:
        """Read every parameter still in use from its placeholder again; unregister them all.

        Only the ``get_attr`` nodes made by :meth:`_lift` go: a factorized layer registered
        at a site's name may hold a tensor at the same path (its own bias, ``<site>.bias``).
        """
        for attr, placeholder in self.reads.items():
            if attr.graph is self.gm.graph and not getattr(attr, "_erased", False):
                attr.replace_all_uses_with(placeholder)
                self.gm.graph.erase_node(attr)
        for target, param in self.params.items():
            _unregister(self.gm, target, param)
        for node, stack in self.stacks.items():
            node.meta["nn_module_stack"] = stack


class _Decomposed:
    """A site's factorized layer and the state of the live weight and bias it was computed from."""

    def __init__(
        self, site: Site, choice: Choice, param: nn.Parameter, bias: torch.Tensor | None
    ) -> None:
        # The nodes are dropped so that the cache keeps no graph alive; the live parameters are
        # held weakly and read again on refresh, so that ``param.data = ...`` (new storage) is
        # seen as well as in-place updates (version counters).
        self.site = dataclasses.replace(site, node=None, input=None)  # type: ignore[arg-type]
        self.choice = choice
        self.param = weakref.ref(param)
        self.bias = weakref.ref(bias) if isinstance(bias, nn.Parameter) else None
        # Sites read through ``x @ W`` hold the transposed weight.
        self.transposed = site.weight.dim() == 2 and site.weight.stride() != param.stride()
        self.layer = _inference(self._make())
        self.state = self.live()
        self.generation = 0  # counts refreshes, for the graphs' layers that hold a copy (_load)

    def live(self) -> tuple[Any, ...]:
        """What identifies the weight's and bias's current values: storage, version, dtype."""
        out: list[Any] = []
        for ref, alias in ((self.param, self.site.weight), (self.bias, self.site.bias)):
            tensor = ref() if ref is not None else alias
            out.append(
                None
                if tensor is None
                else (tensor.data_ptr(), tensor._version, tensor.dtype, tensor.device)
            )
        return tuple(out)

    def stale(self) -> bool:
        """Whether the weight or bias changed since the factors were computed."""
        return self.live() != self.state

    def refresh(self) -> None:
        """Decompose again if the weight or bias changed, updating the layer's tensors in place."""
        if not self.stale():
            return
        param = self.param()
        if param is not None:  # new storage (``param.data = ...``) or new values
            weight = param.detach()
            bias = self.bias() if self.bias is not None else None
            self.site = dataclasses.replace(
                self.site,
                weight=weight.t() if self.transposed else weight,
                bias=bias.detach() if bias is not None else self.site.bias,
            )
        with torch.inference_mode(False), torch.no_grad(), site_context(self.site, self.choice):
            fresh = self._make()
            for old, new in zip(_tensors(self.layer), _tensors(fresh), strict=False):
                old.copy_(new)
        self.state = self.live()
        self.generation += 1
        logger.info("tfx backend: %s changed; decomposed again", self.site.name)

    def _make(self) -> nn.Module:
        return decompose(self.site, self.choice)

    def sibling(self, param: nn.Parameter, bias: Any) -> _Decomposed:
        """The decomposition of another module's weight (and bias) with this one's choice.

        Cached per Parameter, like every decomposition.
        """
        weight = param.detach()
        site = dataclasses.replace(
            self.site,
            weight=weight.t() if self.transposed else weight,
            bias=bias.detach() if isinstance(bias, torch.Tensor) else self.site.bias,
        )
        return _decomposition(
            site, self.choice, param, bias if isinstance(bias, nn.Parameter) else None
        )


class _Table(_Decomposed):
    """A tied weight's one factorized table, which every reader's layer holds (``layer``).

    Made from the group's owner (:class:`~tfx._tied.TiedGroup`); the readers' layers are
    :func:`~tfx.passes._decompose.tied_layer` over it, so refreshing the table in place (the
    weight changed) updates every reader at once, and the graph's readers stay one table.
    """

    def _make(self) -> nn.Module:
        return table_tensor(self.site, self.choice)

    def sibling(self, param: nn.Parameter, bias: Any) -> _Decomposed:
        weight = param.detach()
        site = dataclasses.replace(self.site, weight=weight.t() if self.transposed else weight)
        return _table(site, self.choice, param)


def _table(site: Site, choice: Choice, param: nn.Parameter) -> _Decomposed:
    """The cached table of the tied ``param`` for ``choice`` (``site``: the group's owner)."""
    key = (
        "table",
        choice.form,
        repr(choice.tensorized_shape),
        repr(choice.rank),
        param.dtype,
        param.device,
    )
    per_param = _DECOMPOSED.setdefault(param, {})
    entry: _Decomposed | None = per_param.get(key)
    if entry is None:
        entry = per_param[key] = _Table(site, choice, param, None)
    return entry


def _decomposition(
    site: Site, choice: Choice, param: nn.Parameter, bias: nn.Parameter | None
) -> _Decomposed:
    """The cached decomposition of ``param`` for ``choice``; made on the first request."""
    key = (
        site.info.kind,
        choice.form,
        repr(choice.tensorized_shape),
        repr(choice.rank),
        repr(sorted(site.conv.items())),
        site.padding_idx,
        param.dtype,
        param.device,
        None if site.bias is None else (site.bias.data_ptr(), tuple(site.bias.shape)),
    )
    per_param = _DECOMPOSED.setdefault(param, {})
    entry: _Decomposed | None = per_param.get(key)
    if entry is None:
        entry = per_param[key] = _Decomposed(site, choice, param, bias)
    return entry


def _tensors(layer: nn.Module) -> list[torch.Tensor]:
    return [*layer.parameters(), *layer.buffers()]


# The decomposition whose factors a graph's layer holds (as a copy), and its generation.
_HOLDS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _load(layer: nn.Module, entry: _Decomposed) -> None:
    if layer is entry.layer or _HOLDS.get(layer) == (entry, entry.generation):
        return
    with torch.no_grad():
        for old, new in zip(_tensors(layer), _tensors(entry.layer), strict=False):
            old.copy_(new)
    _HOLDS[layer] = (entry, entry.generation)


@dataclasses.dataclass
class _Use:
    """A factorized layer of one compiled graph, and which graph inputs hold its weight and bias.

    Dynamo reuses a compiled graph for every module that runs the same code (the parameters
    are graph inputs, which it does not guard by identity): two instances of a class, the
    blocks of a ``ModuleList`` resumed after a graph break. The factors are the graph's own
    tensors, so before each call the layer is made to hold those of the parameters passed.
    """

    layer: nn.Module
    entry: _Decomposed  # the decomposition the graph was built with
    weight: int
    bias: int | None

    def sync(self, args: Sequence[Any]) -> None:
        """Make the layer hold the factors of the weight (and bias) in ``args``, decomposed once."""
        entry = self.entry
        weight = args[self.weight]
        if weight is not entry.param():
            entry = entry.sibling(weight, args[self.bias] if self.bias is not None else None)
            if (
                self.layer is self.entry.layer
            ):  # its factors move to a copy; the layer now holds others
                self.entry.layer = copy.deepcopy(self.layer)
                _HOLDS[self.layer] = (self.entry, self.entry.generation)
        entry.refresh()
        _load(self.layer, entry)


def _cached_builder(
    lifted: _Lifted, used: list[_Use], owners: dict[str, tuple[Site, Choice]] | None = None
) -> Callable[[Site, Choice], nn.Module]:
    """``build`` for :func:`~tfx.passes.rewrite`: one decomposition per (Parameter, choice).

    ``owners`` maps each reader of a tied table to the group's owner and its choice: the
    readers' layers hold the one table made from the owner (:class:`_Table`).
    """

    def build(site: Site, choice: Choice) -> nn.Module:
        param = lifted.params.get(site.weight_target)
        if param is None:
            return _inference(decompose(site, choice))
        owner = (owners or {}).get(site.name)
        if owner is not None and choice.form != "dense":
            table = _table(*owner, param)
            table.refresh()
            used.append(_Use(table.layer, table, lifted.index(site.weight_target), None))
            with site_context(site, choice):
                return _inference(tied_layer(site, choice, table.layer))  # type: ignore[arg-type]
        bias_target = None
        if site.bias is not None:  # the live bias Parameter, when the graph reads one
            ptr = site.bias.data_ptr()
            bias_target = next((t for t, p in lifted.params.items() if p.data_ptr() == ptr), None)
        bias = lifted.params[bias_target] if bias_target is not None else None
        entry = _decomposition(site, choice, param, bias)
        entry.refresh()
        used.append(
            _Use(entry.layer, entry, lifted.index(site.weight_target), lifted.index(bias_target))
        )
        return entry.layer

    return build


def _checked(compiled: Callable[..., Any], used: Sequence[_Use]) -> Callable[..., Any]:
    """``compiled``, after loading the factors of the parameters each call passes.

    That costs a few compares per layer: the factors are re-decomposed if the parameters
    changed in place since, decomposed if they are another module's.

    The factors are the compiled graph's own tensors, so updating them in place is all
    it takes: no recompilation. The plan (form and rank) stays as chosen.
    """
    if not used:
        return compiled

    def run(*args: Any) -> Any:
        for use in used:
            use.sync(args)
        return compiled(*args)

    return run


def _inference(layer: nn.Module) -> nn.Module:
    layer.requires_grad_(False)
    return layer.eval()


def _without_grad(gm: fx.GraphModule) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        with torch.no_grad():
            return gm(*args)

    return run


class _Backend:
    """A configured tfx backend for ``torch.compile``; see :func:`backend`."""

    def __init__(
        self,
        budget: float | int | Budget,
        forms: tuple[str, ...],
        kinds: tuple[str, ...],
        skip: tuple[str, ...],
        strategy: str,
        progress: bool,
        compiler: str,
        mode: str | None = None,
    ) -> None:
        self.budget = budget
        self.forms = forms
        self.kinds = kinds
        self.skip = skip
        self.strategy = strategy
        self.progress = progress
        self.compiler = compiler
        self.mode = mode
        #: The plan of each graph piece compiled so far, in order.
        self.plans: list[FactorizationPlan] = []
        #: For ``torch.compile(fn)``: the modules its frames reached, that later pieces' names are
        #: relative to.
        self.roots: list[weakref.ref[nn.Module]] = []
        # The choice each parameter was given by the first graph piece reading it:
        # a later piece reading it too (after a graph break) takes the same, so that the
        # parameter has one decomposition, counted once.
        self._decided: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def __repr__(self) -> str:
        return (
            f"tfx.backend(budget={self.budget!r}, strategy={self.strategy!r}, "
            f"compiler={self.compiler!r})"
        )

    def __call__(self, gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        if torch.is_grad_enabled() and any(
            isinstance(x, torch.Tensor) and x.requires_grad for x in example_inputs
        ):
            warnings.warn(_MSG_GRAD, TfxWarning, stacklevel=2)
        used: list[_Use] = []
        gm = self._factorize_graph(gm, example_inputs, used)
        if self.compiler == "eager":
            return _checked(_without_grad(gm), used)
        from torch._inductor import list_mode_options
        from torch._inductor.compile_fx import compile_fx

        patches = (
            list_mode_options(self.mode) if self.mode is not None else None
        )  # None lists every mode
        with torch.no_grad():  # an inference graph: nothing saved for a backward pass
            compiled = cast(
                "Callable[..., Any]",
                compile_fx(gm, list(example_inputs), config_patches=patches),
            )
        return _checked(compiled, used)

    def _factorize_graph(
        self, gm: fx.GraphModule, example_inputs: Sequence[Any], used: list[_Use]
    ) -> fx.GraphModule:
        """Rewrite dynamo's graph in place (plan appended to :attr:`plans`); no compilation."""
        names = _Names(_compiled_module(), self.roots)
        lifted = _Lifted(gm, example_inputs, names)
        try:
            sites = find_sites(gm, path=CAPTURE, kinds=self.kinds, skip=self.skip)
            _check_skip(
                self.skip, names.valid() | lifted.prefixes() | {s.name for s in sites}, names
            )
            check_weights(sites)
            if not any(s.info.factorizable for s in sites):
                logger.info(
                    "tfx backend: no factorizable site in this graph piece; compiled unchanged"
                )
                return gm
            params = {s.name: lifted.params.get(s.weight_target) for s in sites}
            pinned = {
                name: self._decided[p]
                for name, p in params.items()
                if p is not None and p in self._decided
            }
            groups = _tied(sites, self.kinds, self.skip, params)
            try:
                plan = _plan_sites(
                    model=gm,
                    gm=gm,
                    sites=sites,
                    budget=self.budget,
                    forms=self.forms,
                    strategy=self.strategy,
                    path=CAPTURE,
                    progress=self.progress,
                    pinned=pinned,
                    groups=groups,
                )
            except BudgetError as err:
                raise BudgetError(_MSG_PIECE.format(err=err, tensors=len(lifted.params))) from None
            choices = [plan.choice(s.name) for s in sites]
            for site, choice in zip(sites, choices, strict=False):
                if choice.form != "dense":  # rewrite registers the layer at the site's name
                    _holder(gm, site.name.split(".")[:-1])
            owners = {
                sites[i].name: (sites[g.owner], plan.choice(sites[g.owner].name))
                for g in groups
                for i in g.members
            }
            build = _cached_builder(lifted, used, owners)
            rewrite(gm, sites, choices, build=build, keep_bias=False)
            for site, choice in zip(sites, choices, strict=True):
                param = params[site.name]
                if param is not None and param not in self._decided:
                    self._decided[param] = choice
            self.plans.append(plan)
        finally:
            lifted.restore()
        if hasattr(gm, "_param_name_to_source"):
            # Dynamo's map of the graph's own parameters to their sources; AOTAutograd checks
            # that every parameter of the module is in it, and the factors have no source in
            # user code. Without the map, AOTAutograd treats the graph as exported (as
            # torch._dynamo.functional_export does after changing a graph).
            del gm._param_name_to_source
        return emit(gm)


def _tied(
    sites: Sequence[Site],
    kinds: Sequence[str],
    skip: Sequence[str],
    params: dict[str, nn.Parameter | None],
) -> list[TiedGroup]:
    """The graph piece's tied tables (:func:`~tfx._tied.tied_groups`) the backend can keep live.

    A group is one lifted Parameter read by readers without a bias of their own: the table is
    decomposed again when that Parameter changes, which a bias copied into one reader's layer
    would not follow.
    """
    return [
        g
        for g in tied_groups(sites, kinds, skip)
        if params.get(sites[g.owner].name) is not None
        and all(sites[i].bias is None for i in g.members)
    ]


def _check_skip(skip: Sequence[str], known: set[str], names: _Names) -> None:
    """Raise on a ``skip=`` name that is no module of the compiled module.

    Without a compiled module, the names are checked against what this graph piece reads; a
    module absent from this piece alone is no error.
    """
    known.discard("")
    if not known:
        return  # a piece that reads no parameter of any module: nothing to check against
    for name in skip:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            owner = type(names.tops[0]).__name__ if names.tops else "the compiled module"
            raise OptionError(
                _MSG_SKIP.format(
                    name=name, owner=owner, hint=hint, fix=close[0] if close else "encoder.layer.0"
                )
            )


def _check_options(
    budget: Any,
    forms: Sequence[str],
    kinds: Sequence[str],
    skip: Sequence[str],
    strategy: str,
    compiler: str,
    mode: str | None,
    unknown: dict[str, Any],
) -> None:
    for name in unknown:
        raise unknown_option(
            "keyword",
            name,
            _OPTIONS,
            hint="tfx.backend takes budget= and these options of tfx.factorize; "
            "example_inputs, verify and plan do not apply: dynamo supplies the inputs.",
        )
    normalise_budget(budget, 1 << 40, 1 << 40)  # raises BudgetError on a malformed budget
    _check_names(forms, FORMS, "form")
    _check_names(kinds, KINDS, "kind")
    if isinstance(skip, str) or not all(isinstance(s, str) for s in skip):
        raise OptionError(
            f'skip={skip!r} is not a sequence of module names.\nFix: skip=["encoder.layer.0"].'
        )
    if strategy == "sensitivity":
        raise OptionError(_MSG_SENSITIVITY)
    if strategy not in available_strategies():
        raise unknown_option("strategy", strategy, available_strategies())
    if compiler not in ("inductor", "eager"):
        raise unknown_option("compiler", compiler, ("inductor", "eager"))
    if mode is not None:
        from torch._inductor import list_mode_options

        if mode not in list_mode_options():
            raise unknown_option(
                "mode",
                mode,
                list_mode_options(),
                hint="These are inductor's modes, as in torch.compile(mode=...).",
            )


def backend(
    budget: float | int | Budget = DEFAULT_BUDGET,
    *,
    forms: Sequence[Form] = FORMS,
    kinds: Sequence[Kind] = KINDS,
    skip: Sequence[str] = (),
    strategy: Strategy = "auto",
    progress: bool = False,
    compiler: str = "inductor",
    mode: str | None = None,
    **options: Any,
) -> Callable[[fx.GraphModule, list[torch.Tensor]], Callable[..., Any]]:
    """A ``torch.compile`` backend that factorizes the graph's layers, then compiles with inductor.

    ``torch.compile(model, backend=tfx.backend(budget=0.3))`` runs the compiler's
    stages (match, cost model, choose, rewrite) on each graph dynamo captures and
    hands the result to inductor. ``torch.compile(model, backend="tfx")`` does the
    same with ``budget=DEFAULT_BUDGET`` (0.5) and needs no ``import tfx``.

    This path is for inference. Dynamo keeps the model's dense parameters (they are
    the compiled graph's inputs), so nothing is saved in memory; the factors are
    computed once per parameter and cached; and the compiled graph records no
    gradients. To train, save, or shrink a model, use :func:`tfx.factorize`.

    Args:
        budget: a float in (0, 1], a fraction of the parameters *of each graph piece*
            dynamo compiles (the whole model's when there is no graph break), an int
            (a parameter count per piece) or :class:`~tfx.Budget`.
        forms: the forms to consider, as in :func:`tfx.factorize`.
        kinds: the layer kinds to factorize, as in :func:`tfx.factorize`.
        skip: qualified names of modules to leave dense, as ``named_modules()`` of the
            compiled module gives them (e.g. ``"encoder.layer.0"``), the names of the plans'
            sites too. A name that is no module of it raises :class:`~tfx.OptionError` when
            dynamo hands the backend its first graph.
        strategy: the allocation strategy, as in :func:`tfx.factorize`.
        progress: show progress bars while planning.
        compiler: ``"inductor"`` (the default) or ``"eager"``, which runs the
            factorized graph uncompiled (for debugging).
        mode: inductor's mode, as in ``torch.compile(mode=...)`` (``"max-autotune"``, ...).
        **options: anything else raises :class:`~tfx.OptionError`.

    Returns:
        The backend: a callable ``(gm, example_inputs) -> compiled``; its ``plans``
        attribute lists the :class:`~tfx.FactorizationPlan` of each graph piece compiled.

    Raises:
        BudgetError: a malformed budget (here) or one a graph piece cannot reach (at compile time).
        OptionError: an unknown form, kind, strategy, compiler or keyword (here), or a
            ``skip=`` name that is no module of the compiled model (at compile time,
            wrapped by dynamo in ``BackendCompilerFailed``).

    Example:
        >>> import torch, tfx
        >>> model = torch.nn.Sequential(
        ...     torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)
        ... ).eval()
        >>> tfx_backend = tfx.backend(budget=0.5, compiler="eager")
        >>> compiled = torch.compile(model, backend=tfx_backend)
        >>> with torch.no_grad():
        ...     compiled(torch.randn(4, 64)).shape
        torch.Size([4, 8])
        >>> tfx_backend.plans[0].choices[0].site
        '0'
    """
    _check_options(budget, forms, kinds, skip, strategy, compiler, mode, options)
    return _Backend(
        budget, tuple(forms), tuple(kinds), tuple(skip), strategy, progress, compiler, mode
    )


_DEFAULT: _Backend | None = None


def default_backend(
    gm: fx.GraphModule,
    example_inputs: list[torch.Tensor],
    *,
    options: dict[str, Any] | None = None,
    mode: str | None = None,
) -> Callable[..., Any]:
    """The ``"tfx"`` entry point of ``torch.compile``: :func:`backend` with its defaults.

    The default budget is 0.5.

    ``torch.compile(model, backend="tfx", options={"budget": 0.3}, mode=...)`` passes
    ``options`` as the keyword arguments of :func:`backend` and ``mode`` to inductor.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(64, 64).eval()
        >>> compiled = torch.compile(model, backend="tfx", options={"budget": 0.3})
    """
    global _DEFAULT
    if options or mode is not None:
        return backend(**{"mode": mode, **(options or {})})(gm, example_inputs)
    if _DEFAULT is None:
        _DEFAULT = _Backend(DEFAULT_BUDGET, FORMS, KINDS, (), "auto", False, "inductor")
    return _DEFAULT(gm, example_inputs)
