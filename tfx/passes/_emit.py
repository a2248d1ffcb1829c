"""Emit: lint, dead-code removal, recompile, and the optional numeric check."""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch
from torch import fx
from torch.utils._pytree import tree_flatten

from .._errors import PlanMismatchError, TensorError, TfxWarning
from ._capture import call_with

__all__ = ["emit", "fast_reads", "output_error", "compare_outputs", "check_result", "tie_groups"]


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
