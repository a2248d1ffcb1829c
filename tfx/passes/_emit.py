"""Emit: lint, dead-code removal, recompile; the result's post-conditions; the numeric check.

Stage: rewrite -> **emit**. :class:`Emit` finishes a result of either kind (a graph or the
model's own modules) and its ``ensures`` are the post-conditions every result of
``tfx.factorize`` meets (:func:`check_result`, :func:`budget_kept`, :func:`verify`).
"""

from __future__ import annotations

import re
import time
import warnings
import weakref
from typing import Any, Final

import torch
from torch import fx
from torch.utils._pytree import tree_flatten

from .._errors import PlanMismatchError, TensorError, TfxWarning
from ._capture import call_with
from ._pass import Compilation, Pass
from ._swap import DELEGATE_CHILD

__all__ = [
    "Emit",
    "emit",
    "fast_reads",
    "output_error",
    "compare_outputs",
    "check_result",
    "tie_groups",
    "attach_plan",
    "budget_kept",
    "declare_shared",
    "recount",
    "verify",
]

#: The ``GraphModule.meta`` key whose attributes ``GraphModule.__deepcopy__`` sets again on the
#: copy (``torch.fx.graph_module._USER_PRESERVED_ATTRIBUTES_KEY``).
_PRESERVED: Final = "_user_preserved_attributes"


def emit(gm: fx.GraphModule, *, prune: bool = True) -> fx.GraphModule:
    """Lint the rewritten graph, drop dead nodes and (``prune``) unused submodules, recompile.

    The recompiled code reads attributes with :func:`fast_reads`.
    """
    gm.graph.lint()
    for node in gm.graph.nodes:
        # A model written with ``from __future__ import annotations`` gives fx its annotations as
        # strings; the generated code then holds them as string globals, which torch.save of the
        # GraphModule cannot pickle. The types are only annotations: drop them.
        if isinstance(node.type, str):
            node.type = None
    gm.graph.eliminate_dead_code()
    if prune:
        gm.delete_all_unused_submodules()
    fast_reads(gm)
    gm.recompile()
    return gm


def fast_reads(gm: fx.GraphModule) -> None:
    """Make ``gm``'s generated code read parameters and submodules through the modules' dicts.

    fx prints a ``get_attr`` node as ``self.layer.weight.factors.factor_0``: every step is an
    ``nn.Module.__getattr__`` call that starts with a failed ordinary lookup, about 1.5 us each
    on a CPU, 10-20 us per factorized layer at batch 1 -- as much as its kernels. This code
    transformer (``Graph.on_generate_code``, applied at every ``recompile``) prints the same read
    as ``self._modules['layer']._modules['weight']...._parameters['factor_0']``, resolved against
    the module tree when the code is generated. The graph itself is unchanged (its ``get_attr``
    and ``call_module`` nodes are what passes see). A read whose object moved (a parameter
    re-registered as a plain attribute) raises ``KeyError``: the code never reads a stale value.
    """
    ref = weakref.ref(gm)

    def transform(body: list[str]) -> list[str]:
        root = ref()
        if root is None:
            return body
        fast = {}
        for node in root.graph.nodes:
            if node.op in ("get_attr", "call_module") and isinstance(node.target, str):
                expr = _fast_expr(root, node.target)
                if expr is not None:
                    fast[_printed(node.target)] = expr
        return [_fast_line(line, fast) for line in body]

    gm.graph.on_generate_code(
        lambda previous: (lambda body: transform(previous(body) if previous else body))
    )


def _printed(target: str) -> str:
    """How fx prints a ``get_attr`` / ``call_module`` target (``torch.fx.graph._format_target``)."""
    expr = "self"
    for name in target.split("."):
        expr = f"{expr}.{name}" if name.isidentifier() else f'getattr({expr}, "{name}")'
    return expr


def _fast_expr(root: torch.nn.Module, target: str) -> str | None:
    """``target`` read through the dicts it lives in now; None if a step is a plain attribute."""
    obj: Any = root
    expr = "self"
    for name in target.split("."):
        if not isinstance(obj, torch.nn.Module):
            return None
        for store in ("_parameters", "_buffers", "_modules"):
            found = obj.__dict__[store].get(name)
            if found is not None:
                obj, expr = found, f"{expr}.{store}[{name!r}]"
                break
        else:
            return None  # e.g. an fx tensor constant: read as printed
    return expr


def _fast_line(line: str, fast: dict[str, str]) -> str:
    head, sep, tail = line.partition(" = ")
    if not sep:
        return line
    for printed in sorted((p for p in fast if tail.startswith(p)), key=len, reverse=True):
        after = tail[len(printed) :]
        if not after or after[0] in "(;\n":
            return f"{head} = {fast[printed]}{after}"
    return line


def output_error(reference: Any, candidate: Any, example_inputs: Any) -> float:
    """Max relative error (max |a - b| / max |a|) over the floating outputs of the two modules.

    Raises:
        TensorError: ``candidate``'s outputs hold NaN or Inf where ``reference``'s are finite.

    Warns:
        TfxWarning: ``reference`` itself gives NaN or Inf on ``example_inputs`` (then those
            positions are left out of the error, and the warning says so).
    """
    with torch.no_grad():
        expected = call_with(reference, example_inputs)
    return compare_outputs(expected, candidate, example_inputs)


def compare_outputs(expected: Any, candidate: Any, example_inputs: Any) -> float:
    """:func:`output_error` against outputs recorded before (``expected``, any pytree)."""
    expected, _ = tree_flatten(expected)
    with torch.no_grad():
        got, _ = tree_flatten(call_with(candidate, example_inputs))
    worst = 0.0
    original_bad = 0
    for a, b in zip(expected, got, strict=False):
        if not (isinstance(a, torch.Tensor) and a.is_floating_point() and a.numel()):
            continue
        b = b.to(a.dtype)
        finite = torch.isfinite(a)
        new_bad = int((finite & ~torch.isfinite(b)).sum())
        if new_bad:
            raise TensorError(
                f"the factorized model gives {new_bad} NaN/Inf output "
                "values on example_inputs where the original's are finite.\n"
                "Fix: leave the layers involved dense (skip=[...]), or check the model's "
                "dtype (float16 factors can overflow; factorize in float32 and cast after)."
            )
        original_bad += int((~finite).sum())
        if not bool(finite.any()):
            continue
        scale = float(a[finite].abs().max()) or 1.0
        worst = max(worst, float((a[finite] - b[finite]).abs().max()) / scale)
    if original_bad:
        warnings.warn(
            f"tfx: the original model itself gives {original_bad} NaN/Inf output values on "
            "example_inputs (a NaN/Inf in the inputs or in a weight or bias); the verified "
            "output error leaves them out. Check the model and the example inputs.",
            TfxWarning,
            stacklevel=3,
        )
    return worst


def tie_groups(model: torch.nn.Module) -> list[list[str]]:
    """The names under which each parameter shared by several names is reachable."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def check_result(model: Any, result: torch.nn.Module, plan: Any) -> None:
    """The post-conditions of a factorized model, checked on every result of ``tfx.factorize``.

    - a graph result passes ``graph.lint()``;
    - its parameters, counted on the returned module, are the plan's total (no double count,
      no factor frozen as a constant);
    - every tie of the model is still a tie: names that shared one parameter in ``model`` and
      still exist in ``result`` share one parameter there (``model`` may be the model, or its
      :func:`tie_groups` recorded before it was changed in place).

    Raises:
        PlanMismatchError: a post-condition does not hold (a bug in tfx: please report it).
    """
    if isinstance(result, fx.GraphModule):
        result.graph.lint()
    after = dict(result.named_parameters(remove_duplicate=False))
    name = type(model).__name__ if isinstance(model, torch.nn.Module) else "model"
    for names in tie_groups(model) if isinstance(model, torch.nn.Module) else model:
        kept = {id(after[n]) for n in names if n in after}
        if len(kept) > 1:
            raise PlanMismatchError(
                f"the tied parameters {names} of {name} are no longer one parameter in "
                "the factorized model: a bug in tfx (please report it with the model)."
            )
    counted = sum(p.numel() for p in result.parameters())
    if counted != plan.total_params_after:
        raise PlanMismatchError(
            f"the factorized {name} holds {counted:,} parameters but its plan says "
            f"{plan.total_params_after:,}: a bug in tfx (please report it with the model)."
        )


def declare_shared(result: torch.nn.Module) -> None:
    """Tell a Hugging Face model's ``save_pretrained`` which of its parameters tfx shares.

    A tied table's factors, a shared input basis: it refuses shared tensors it was not told of.
    Each shared parameter is saved once, under its first name; ``tfx.save`` keeps them all.
    """
    if not hasattr(result, "save_pretrained"):
        return
    ours = {}
    for names in tie_groups(result):
        if not any(
            ".weight.factors." in n or n.endswith(".weight.weights") or ".tfx_layer." in n
            for n in names
        ):
            continue  # the model's own ties: declared by the model
        keep, *rest = sorted(names)
        ours.update({re.escape(name) + "$": keep for name in rest})
    if ours:
        declared = dict(getattr(result, "_tied_weights_keys", None) or {})
        result._tied_weights_keys = {**declared, **ours}  # type: ignore[assignment]


def recount(result: torch.nn.Module, plan: Any) -> None:
    """Price each factorized choice of a given plan at the parameters of the layer built for it.

    A plan edited by hand may carry another count: the plan says what the result does.
    """
    seen: set[int] = set()
    for choice in plan.choices:
        if choice.form != "dense":
            layer = result.get_submodule(choice.site.split(":")[0])  # "<module>:k": its k-th call
            layer = getattr(layer, DELEGATE_CHILD, layer)
            params = [p for n, p in layer.named_parameters() if n != "bias" and id(p) not in seen]
            seen.update(id(p) for p in params)  # a table shared by tied readers counts once
            choice.params_after = sum(p.numel() for p in params)


def verify(result: torch.nn.Module, reference: Any, example_inputs: Any) -> float:
    """The result's max relative output error against the original's outputs.

    The outputs were recorded in eval mode before anything changed.
    """
    was = result.training
    result.eval()
    try:
        return compare_outputs(reference, result, example_inputs)
    finally:
        result.train(was)


def attach_plan(result: torch.nn.Module, plan: Any) -> None:
    """Set ``result.tfx_plan`` so that it survives ``copy.deepcopy(result)``.

    ``GraphModule.__deepcopy__`` rebuilds the module from its graph and keeps, of its plain
    attributes, those named in ``meta["_user_preserved_attributes"]`` (deep-copied with the
    rest of ``meta``): the plan is kept there. Any other module keeps its ``__dict__``.
    """
    result.tfx_plan = plan
    if isinstance(result, fx.GraphModule):
        result.meta.setdefault(_PRESERVED, {})["tfx_plan"] = plan


def budget_kept(plan: Any) -> None:
    """A plan made here holds no more parameters than its budget.

    Raises:
        PlanMismatchError: it holds more (a bug in tfx: please report it).
    """
    if plan.total_params_after > plan.budget_params:
        raise PlanMismatchError(
            f"the plan holds {plan.total_params_after:,} parameters, above its budget of "
            f"{plan.budget_params:,.0f}: a bug in tfx (please report it with the model)."
        )


class Emit(Pass):
    """The result, finished and checked: emit's post-conditions are every result's.

    ``call``: a graph result is linted, pruned and recompiled (:func:`emit`); a given plan's
    rows are priced at the layers built (:func:`recount`); the result gets the model's
    train/eval mode; a Hugging Face model is told which parameters tfx shares; the plan is
    attached (:func:`attach_plan`).

    ``ensures`` (:func:`check_result`, :func:`budget_kept`, :func:`verify`): the graph lints,
    the parameters counted on the result are the plan's, every tie of the model is still a
    tie, a plan made here fits its budget, and with ``verify`` and example inputs the outputs
    are finite where the original's are (their max relative error goes into the plan).

    Args:
        given: the plan was given (``plan=``), not made here: its counts are the layers'.
        verify: measure the output error on the example inputs.
    """

    reads = ("plan", "result", "emission")

    def __init__(self, *, given: bool = False, verify: bool = True) -> None:
        self.given = given
        self.verify = verify

    def call(self, state: Compilation) -> None:
        """Finish the result and attach the plan."""
        result, plan = state.result, state.plan
        if state.emission == "graph":
            emit(result)
        if self.given:
            recount(result, plan)
        result.train(state.model.training)
        if state.emission == "modules":
            declare_shared(result)
        attach_plan(result, plan)

    def ensures(self, state: Compilation) -> None:
        """Check the result's post-conditions; measure its output error (``verify``)."""
        result, plan = state.result, state.plan
        clock = time.perf_counter()
        check_result(state.ties, result, plan)
        if not self.given:
            budget_kept(plan)
        if self.verify and state.example_inputs is not None:
            plan.output_error = verify(result, state.reference, state.example_inputs)
            plan.timings["verify"] = time.perf_counter() - clock
