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
"""

from __future__ import annotations

import dataclasses
import logging
import re
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Final

import torch
from torch import fx, nn
from torch.utils.weak import WeakIdKeyDictionary

from ._api import KINDS, _check_names, _check_weights, _plan_sites
from ._errors import BudgetError, OptionError, TfxWarning, unknown_option
from .cost import FORMS, Budget, Choice, FactorizationPlan, normalise_budget
from .cost._choose import available_strategies
from .passes import Site, emit, find_sites, rewrite
from .passes._rewrite import build_layer

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
    "Fix: run the compiled model under torch.no_grad() or torch.inference_mode() (this warning "
    "then goes away); to train or fine-tune a factorized model, use tfx.factorize(model, budget=...)."
)

_MSG_PIECE: Final = (
    "{err}\n  (torch.compile backend: the budget applies to each graph piece dynamo hands it, here one "
    "with {tensors} parameter tensors; a graph break splits a model into pieces, and each must fit. "
    "List the breaks with torch._dynamo.explain(model)(*inputs).)"
)
_MSG_SENSITIVITY: Final = (
    "strategy='sensitivity' weighs layers by their measured effect on the output, which needs "
    "calibration data, and the torch.compile backend takes none.\n"
    "Fix: tfx.backend(budget, strategy='auto'), or tfx.factorize(model, budget, strategy='sensitivity', "
    "calibration=[...]) and then torch.compile the result."
)

# ``L['self']._modules['encoder']._parameters['weight']``: a root, then attributes and keys.
_ROOT = re.compile(r"^[LG]\['([A-Za-z_]\w*)'\]")
_PART = re.compile(r"\.([A-Za-z_]\w*)|\['([^'\]]+)'\]|\[(\d+)\]")
_CONTAINERS: Final = frozenset({"_modules", "_parameters", "_buffers"})


def _source_name(node: fx.Node) -> str | None:
    arg = node.meta.get("grapharg")
    source = getattr(arg, "source", None)
    if source is None:
        return None
    name = source.name
    return name() if callable(name) else str(name)


def _qualified_name(source: str) -> tuple[str, str] | None:
    """``("self", "encoder.weight")`` for ``L['self']._modules['encoder']._parameters['weight']``."""
    root = _ROOT.match(source)
    if root is None:
        return None
    parts, pos = [], root.end()
    while pos < len(source):
        match = _PART.match(source, pos)
        if match is None:
            return None
        part = next(g for g in match.groups() if g is not None)
        if part not in _CONTAINERS:
            parts.append(part)
        pos = match.end()
    return (root.group(1), ".".join(parts)) if parts else None


def _register(gm: fx.GraphModule, target: str, param: nn.Parameter) -> bool:
    """Register ``param`` at ``target`` on ``gm``, creating holder modules; False on a clash."""
    owner: nn.Module = gm
    *path, leaf = target.split(".")
    for part in path:
        child = owner._modules.get(part)
        if child is None:
            if hasattr(owner, part):
                return False
            child = nn.Module()
            owner.add_module(part, child)
        owner = child
    if hasattr(owner, leaf):
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
    """The graph's parameter placeholders, read through ``get_attr`` nodes while tfx works."""

    def __init__(self, gm: fx.GraphModule, example_inputs: Sequence[Any]) -> None:
        self.gm = gm
        self.params: dict[str, nn.Parameter] = {}
        self.placeholders: dict[str, fx.Node] = {}
        self.reads: dict[fx.Node, fx.Node] = {}  # the get_attr nodes made here -> their placeholders
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        for node, value in zip(placeholders, example_inputs):
            if isinstance(value, nn.Parameter) and node.users:
                self._lift(node, value, placeholders[-1])

    def _lift(self, node: fx.Node, param: nn.Parameter, last: fx.Node) -> None:
        source = _source_name(node)
        named = _qualified_name(source) if source is not None else None
        candidates = [named[1], f"{named[0]}.{named[1]}"] if named else []
        candidates.append(f"_tfx_inputs.{node.name}.weight")  # site name "_tfx_inputs.<placeholder>"
        target = next((t for t in candidates if t not in self.params and _register(self.gm, t, param)), None)
        if target is None:
            return  # stays an input, so find_sites does not see it
        with self.gm.graph.inserting_after(last):
            attr = self.gm.graph.get_attr(target)
        for user in list(node.users):
            user.meta.pop("nn_module_stack", None)  # dynamo's paths (L['self'].x) are no module names here
        node.replace_all_uses_with(attr)
        self.params[target] = param
        self.placeholders[target] = node
        self.reads[attr] = node

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


class _Decomposed:
    """A site's factorized layer and the state of the live weight and bias it was computed from."""

    def __init__(self, site: Site, choice: Choice, param: nn.Parameter, bias: torch.Tensor | None) -> None:
        # The nodes are dropped so that the cache keeps no graph alive; the live parameters are
        # held weakly and read again on refresh, so that ``param.data = ...`` (new storage) is
        # seen as well as in-place updates (version counters).
        self.site = dataclasses.replace(site, node=None, input=None)
        self.choice = choice
        self.param = weakref.ref(param)
        self.bias = weakref.ref(bias) if isinstance(bias, nn.Parameter) else None
        # Sites read through ``x @ W`` hold the transposed weight.
        self.transposed = site.weight.dim() == 2 and site.weight.stride() != param.stride()
        self.layer = _inference(build_layer(site, choice))
        self.state = self.live()

    def live(self) -> tuple[Any, ...]:
        """What identifies the weight's and bias's current values: storage, version, dtype."""
        out: list[Any] = []
        for ref, alias in ((self.param, self.site.weight), (self.bias, self.site.bias)):
            tensor = ref() if ref is not None else alias
            out.append(None if tensor is None else (tensor.data_ptr(), tensor._version, tensor.dtype, tensor.device))
        return tuple(out)

    def stale(self) -> bool:
        """Whether the weight or bias changed since the factors were computed."""
        return self.live() != self.state

    def refresh(self) -> None:
        """Decompose again if the weight or bias changed; the layer's tensors are updated in place."""
        if not self.stale():
            return
        param = self.param()
        if param is not None:  # new storage (``param.data = ...``) or new values
            weight = param.detach()
            bias = self.bias() if self.bias is not None else None
            self.site = dataclasses.replace(
                self.site, weight=weight.t() if self.transposed else weight,
                bias=bias.detach() if bias is not None else self.site.bias,
            )
        with torch.inference_mode(False), torch.no_grad():
            fresh = build_layer(self.site, self.choice)
            for old, new in zip(_tensors(self.layer), _tensors(fresh)):
                old.copy_(new)
        self.state = self.live()
        logger.info("tfx backend: %s changed; decomposed again", self.site.name)


def _tensors(layer: nn.Module) -> list[torch.Tensor]:
    return [*layer.parameters(), *layer.buffers()]


def _cached_builder(lifted: _Lifted, used: list[_Decomposed]) -> Callable[[Site, Choice], nn.Module]:
    """``build`` for :func:`~tfx.passes.rewrite`: one decomposition per (Parameter, choice), reused."""

    def build(site: Site, choice: Choice) -> nn.Module:
        param = lifted.params.get(site.weight_target)
        if param is None:
            return _inference(build_layer(site, choice))
        key = (
            site.info.kind, choice.form, repr(choice.tensorized_shape), repr(choice.rank),
            repr(sorted(site.conv.items())), site.padding_idx, param.dtype, param.device,
            None if site.bias is None else (site.bias.data_ptr(), tuple(site.bias.shape)),
        )
        per_param = _DECOMPOSED.setdefault(param, {})
        entry = per_param.get(key)
        if entry is None:
            bias = None
            if site.bias is not None:  # the live bias Parameter, when the graph reads one
                bias = next((p for p in lifted.params.values() if p.data_ptr() == site.bias.data_ptr()), None)
            entry = per_param[key] = _Decomposed(site, choice, param, bias)
        else:
            entry.refresh()
        used.append(entry)
        return entry.layer

    return build


def _checked(compiled: Callable[..., Any], used: Sequence[_Decomposed]) -> Callable[..., Any]:
    """``compiled``, after re-decomposing any weight changed in place since (a few int compares per call).

    The factors are the compiled graph's own tensors, so updating them in place is all
    it takes: no recompilation. The plan (form and rank) stays as chosen.
    """
    if not used:
        return compiled

    def run(*args: Any) -> Any:
        for entry in used:
            if entry.stale():
                entry.refresh()
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
        self, budget: float | int | Budget, forms: tuple[str, ...], kinds: tuple[str, ...], skip: tuple[str, ...],
        strategy: str, progress: bool, compiler: str, mode: str | None = None,
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

    def __repr__(self) -> str:
        return f"tfx.backend(budget={self.budget!r}, strategy={self.strategy!r}, compiler={self.compiler!r})"

    def __call__(self, gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        if torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in example_inputs):
            warnings.warn(_MSG_GRAD, TfxWarning, stacklevel=2)
        used: list[_Decomposed] = []
        gm = self._factorize_graph(gm, example_inputs, used)
        if self.compiler == "eager":
            return _checked(_without_grad(gm), used)
        from torch._inductor.compile_fx import compile_fx

        from torch._inductor import list_mode_options

        patches = list_mode_options(self.mode) if self.mode is not None else None  # None lists every mode
        with torch.no_grad():  # an inference graph: nothing saved for a backward pass
            compiled = compile_fx(gm, list(example_inputs), config_patches=patches)
        return _checked(compiled, used)

    def _factorize_graph(
        self, gm: fx.GraphModule, example_inputs: Sequence[Any], used: list[_Decomposed]
    ) -> fx.GraphModule:
        """Rewrite dynamo's graph in place (plan appended to :attr:`plans`); no compilation."""
        lifted = _Lifted(gm, example_inputs)
        try:
            sites = find_sites(gm, path=CAPTURE, kinds=self.kinds, skip=self.skip)
            _check_weights(sites)
            if not any(s.info.factorizable for s in sites):
                logger.info("tfx backend: no factorizable site in this graph piece; compiled unchanged")
                return gm
            try:
                plan = _plan_sites(
                    model=gm, gm=gm, sites=sites, budget=self.budget, forms=self.forms, strategy=self.strategy,
                    path=CAPTURE, progress=self.progress,
                )
            except BudgetError as err:
                raise BudgetError(_MSG_PIECE.format(err=err, tensors=len(lifted.params))) from None
            rewrite(gm, sites, [plan.choice(s.name) for s in sites], build=_cached_builder(lifted, used))
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


def _check_options(
    budget: Any, forms: Sequence[str], kinds: Sequence[str], skip: Sequence[str], strategy: str, compiler: str,
    mode: str | None, unknown: dict[str, Any],
) -> None:
    for name in unknown:
        raise unknown_option(
            "keyword", name, _OPTIONS,
            hint="tfx.backend takes budget= and these options of tfx.factorize; "
            "example_inputs, verify and plan do not apply: dynamo supplies the inputs.",
        )
    normalise_budget(budget, 1 << 40, 1 << 40)  # raises BudgetError on a malformed budget
    _check_names(forms, FORMS, "form")
    _check_names(kinds, KINDS, "kind")
    if isinstance(skip, str) or not all(isinstance(s, str) for s in skip):
        raise OptionError(f"skip={skip!r} is not a sequence of module names.\nFix: skip=[\"encoder.layer.0\"].")
    if strategy == "sensitivity":
        raise OptionError(_MSG_SENSITIVITY)
    if strategy not in available_strategies():
        raise unknown_option("strategy", strategy, available_strategies())
    if compiler not in ("inductor", "eager"):
        raise unknown_option("compiler", compiler, ("inductor", "eager"))
    if mode is not None:
        from torch._inductor import list_mode_options

        if mode not in list_mode_options():
            raise unknown_option("mode", mode, list_mode_options(), hint="These are inductor's modes, as in torch.compile(mode=...).")


def backend(
    budget: float | int | Budget = DEFAULT_BUDGET,
    *,
    forms: Sequence[str] = FORMS,
    kinds: Sequence[str] = KINDS,
    skip: Sequence[str] = (),
    strategy: str = "auto",
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
        skip: qualified names of modules to leave dense (relative to the module
            whose ``forward`` dynamo compiles, e.g. ``"encoder.layer.0"``).
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
        OptionError: an unknown form, kind, strategy, compiler or keyword.

    Example:
        >>> import torch, tfx
        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval()
        >>> tfx_backend = tfx.backend(budget=0.5, compiler="eager")
        >>> compiled = torch.compile(model, backend=tfx_backend)
        >>> with torch.no_grad():
        ...     compiled(torch.randn(4, 64)).shape
        torch.Size([4, 8])
        >>> tfx_backend.plans[0].choices[0].site
        '0'
    """
    _check_options(budget, forms, kinds, skip, strategy, compiler, mode, options)
    return _Backend(budget, tuple(forms), tuple(kinds), tuple(skip), strategy, progress, compiler, mode)


_DEFAULT: _Backend | None = None


def default_backend(
    gm: fx.GraphModule, example_inputs: list[torch.Tensor], *, options: dict[str, Any] | None = None,
    mode: str | None = None,
) -> Callable[..., Any]:
    """The ``"tfx"`` entry point of ``torch.compile``: :func:`backend` with its defaults (budget 0.5).

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
