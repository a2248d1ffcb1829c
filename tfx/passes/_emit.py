"""Emit: lint, dead-code removal, recompile, and the optional numeric check."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx
from torch.utils._pytree import tree_flatten

from ._capture import call_with

__all__ = ["emit", "output_error"]


def emit(gm: fx.GraphModule, *, prune: bool = True) -> fx.GraphModule:
    """Lint the rewritten graph, drop dead nodes and (``prune``) unused submodules, recompile.

    The module-swap path passes ``prune=False``: its graph calls the whole model, whose
    children the graph does not reference one by one.
    """
    gm.graph.lint()
    gm.graph.eliminate_dead_code()
    if prune:
        gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def output_error(reference: Any, candidate: Any, example_inputs: Any) -> float:
    """Max relative error (max |a - b| / max |a|) over the floating outputs of the two modules."""
    with torch.no_grad():
        expected, _ = tree_flatten(call_with(reference, example_inputs))
        got, _ = tree_flatten(call_with(candidate, example_inputs))
    worst = 0.0
    for a, b in zip(expected, got):
        if isinstance(a, torch.Tensor) and a.is_floating_point() and a.numel():
            scale = float(a.abs().max()) or 1.0
            worst = max(worst, float((a - b.to(a.dtype)).abs().max()) / scale)
    return worst
