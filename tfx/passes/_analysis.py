"""Capture, match and calibrate as passes: the analysis half of ``tfx.factorize``.

Stage: **capture -> match -> calibrate** -> cost model -> decompose -> rewrite -> emit.

Each pass fills in its part of a :class:`~tfx.passes._pass.Compilation`: :class:`Capture`
the captured model and the original's reference outputs, :class:`Match` the sites and the
kind of result (``'graph'`` or ``'modules'``), :class:`Calibrate` the input statistics and
sensitivities. ``tfx.plan`` stops after them and the planner; ``tfx.factorize`` goes on to
:class:`~tfx.passes._rewrite.Rewrite` and :class:`~tfx.passes._emit.Emit`.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import torch
from torch import fx, nn

from .._errors import OptionError, TensorError, TfxWarning, UnsupportedSiteError, unknown_option
from ._calibrate import Calibrated, attention_mask, calibrate, calibration_batches
from ._capture import _without_cache, call_with, capture
from ._match import Site, _dense_reason, _site_of_module, find_module_sites, find_sites
from ._pass import Compilation, ContractError, Pass
from ._prior import input_priors
from ._swap import module_of

if TYPE_CHECKING:
    from .._distributed import Distributed

__all__ = [
    "Capture",
    "Match",
    "Calibrate",
    "EMITS",
    "check_model",
    "check_weights",
    "nothing_to_factorize",
    "quantized",
]

#: The capture paths, in the order they are tried.
PATHS: Final = ("symbolic_trace", "export", "module_swap")


def check_model(model: Any) -> None:
    """Raise unless ``model`` is an ``nn.Module`` whose parameters hold values."""
    if not isinstance(model, nn.Module):
        raise OptionError(f"tfx.factorize needs an nn.Module, got {type(model).__name__}.")
    on_meta = [name for name, p in model.named_parameters() if p.is_meta]
    if on_meta:
        raise OptionError(
            f"{type(model).__name__} has {len(on_meta)} parameters on the meta device "
            f"(e.g. {on_meta[0]!r}): "
            "they have shapes but no values, and a factorization is computed from the values.\n"
            "Fix: load the weights first, e.g. model = AutoModel.from_pretrained(...) without "
            "device_map='meta', or model.to_empty(device='cpu') followed by load_state_dict(...)."
        )


def quantized(model: nn.Module) -> list[str]:
    """The quantized layer classes of ``model`` (their weights are packed integers)."""
    return sorted(
        {
            type(m).__module__ + "." + type(m).__name__
            for m in model.modules()
            if ".quantized" in type(m).__module__ or "quantized" in type(m).__name__.lower()
        }
    )


def nothing_to_factorize(model: nn.Module, kinds: Sequence[str]) -> UnsupportedSiteError:
    """The error for a model without a site, saying why (e.g. quantized layers)."""
    packed = quantized(model)
    found = (
        f" It holds quantized layers ({', '.join(packed)}): their weights are packed integers, "
        "which tfx does not decompose.\nFix: factorize the float model, then quantize the result."
        if packed
        else f"\nFix: check kinds= ({', '.join(kinds)}), or pass a model whose weights are "
        "parameters."
    )
    return UnsupportedSiteError(
        f"nothing to factorize: {type(model).__name__} has no linear, convolution or embedding "
        "layer "
        f"whose weight is an nn.Parameter.{found}"
    )


def check_weights(sites: Sequence[Site]) -> None:
    """Raise :class:`~tfx.TensorError` for a factorizable site whose weight is not finite."""
    for site in sites:
        if site.info.factorizable and not bool(torch.isfinite(site.weight).all()):
            raise TensorError(
                f"the weight of {site.name!r} contains NaN or Inf values, so it cannot be "
                "factorized.\n"
                f"Fix: repair the weight, or leave the layer dense: skip=[{site.name!r}]."
            )


def _with_factorized_layers(
    root: nn.Module, sites: list[Site], kinds: Sequence[str], skip: Sequence[str]
) -> list[Site]:
    """Sites of an exported graph, each ``tfx.nn`` layer of ``root`` one site.

    ``root`` is a result of ``tfx.factorize`` factorized again: its layers are sites instead of
    their factors' products.

    torch.export traces into the layers, so the graph shows their factors; those sites are
    replaced by the layers themselves, re-planned from their reconstructions (no graph node:
    such a model is emitted into its modules).
    """
    from ..nn import FactorizedConv, FactorizedEmbedding, FactorizedLinear

    layers = [
        (n, m)
        for n, m in root.named_modules()
        if isinstance(m, FactorizedLinear | FactorizedConv | FactorizedEmbedding)
    ]
    if not layers:
        return sites
    inside = tuple(f"{name}." for name, _ in layers)
    kept = [s for s in sites if not s.weight_target.startswith(inside)]
    for name, layer in layers:
        site = _site_of_module(layer, name, None, "export")
        if site is None:
            continue
        reason = _dense_reason(site, set(kinds), set(skip))
        if reason:
            site.info = dataclasses.replace(site.info, factorizable=False, reason=reason)
        kept.append(site)
    return kept


EMITS = ("auto", "graph", "modules")


def emission(emit: str, captured: Any, sites: list[Site]) -> str:
    """``'graph'`` or ``'modules'``, and the sites a modules result cannot replace marked dense.

    ``'auto'``: a graph result where the graph is the model's own code (symbolic_trace, or
    export with a site that is not a layer module); the model with its layers replaced where
    every site is a layer module (export: the result keeps the signature, ``generate()`` and
    any batch size), or where the graph is for analysis only (module swap, cache off).
    """
    if emit not in EMITS:
        raise unknown_option("emit", emit, EMITS)
    root = captured.model
    modular = captured.path == "module_swap" or all(
        module_of(root, s.name, s.weight_target) is not None for s in sites if s.info.factorizable
    )
    forced = (
        captured.path == "module_swap"
        or not captured.graph_faithful
        or any(s.node is None for s in sites)
    )
    if emit == "graph" and forced:
        why = (
            "a module swap has no graph"
            if captured.path == "module_swap"
            else (
                "the graph was captured with use_cache=False, for analysis only"
                if not captured.graph_faithful
                else "the model holds tfx.nn layers, which torch.export traces into"
            )
        )
        raise OptionError(
            f"emit='graph' is not possible here: {why}.\nFix: emit='auto' or emit='modules'."
        )
    if emit == "auto":
        emit = "modules" if forced or (captured.path == "export" and modular) else "graph"
    if emit == "modules" and captured.path != "module_swap":
        for site in sites:
            if site.info.factorizable and module_of(root, site.name, site.weight_target) is None:
                site.info = dataclasses.replace(
                    site.info,
                    factorizable=False,
                    reason="not a layer module (a functional call): kept dense by emit='modules'",
                )
    return emit


def calibration_for(captured: Any, calibration: Any) -> Any:
    """The calibration batches as the captured graph takes them.

    With ``use_cache=False`` when the analysis graph was captured so (a Hugging Face decoder
    whose cache torch.export refused).
    """
    if calibration is None or captured.graph_faithful or captured.path != "export":
        return calibration
    batches = calibration_batches(calibration)
    return [_without_cache(captured.model, b) or b for b in batches]


def _calibrate(
    gm: fx.GraphModule,
    sites: Sequence[Site],
    calibration: Any,
    strategy: str,
    progress: Callable[[int, str], Any] | None,
    mask: Any = None,
    ranks: Distributed | None = None,
) -> Calibrated | None:
    if calibration is None:
        return None
    if any(s.node is not None for s in sites):  # sites without a node in a graph: no statistics
        sites = [s for s in sites if s.node is not None]
    if mask is not None and not callable(mask):
        raise OptionError(
            f"calibration_mask={mask!r} is not callable.\nFix: a function from a calibration "
            "batch to a boolean mask over its positions, e.g. "
            "calibration_mask=lambda batch: batch['input_ids'] != pad_id."
        )
    # With calibration data, "auto" weighs each site by its measured effect on the output too
    # (on all-MiniLM-L6-v2 at half the parameters: 0.78 -> 0.90 mean embedding cosine).
    return calibrate(
        gm,
        sites,
        calibration,
        sensitivity=strategy in ("sensitivity", "auto"),
        progress=progress,
        mask=mask if mask is not None else attention_mask,
        ranks=ranks,
    )


def _reference(model: nn.Module, example_inputs: Any) -> Any:
    """The model's outputs on the example inputs (an :class:`~tfx.OptionError` if it fails)."""
    with torch.no_grad():
        try:
            return call_with(model, example_inputs)
        except Exception as err:
            raise OptionError(
                f"the model cannot run on example_inputs: {type(err).__name__}: {err}\n"
                "Fix: pass a tuple of positional inputs or a dict of keyword inputs "
                "that model(...) accepts."
            ) from err


class Capture(Pass):
    """The model captured as a graph (or its layers as modules), from a copy unless inplace.

    ``requires``: an ``nn.Module`` whose parameters hold values (:func:`check_model`).
    ``call``: in eval mode, the model's outputs on the example inputs are recorded
    (``state.reference``, what :class:`~tfx.passes._emit.Emit` verifies against), then
    :func:`~tfx.passes.capture` takes a deep copy (the model itself with ``inplace``); the
    model gets its train/eval mode back. ``ensures``: one of the three paths was taken.

    Args:
        skip: qualified names of modules kept whole (leaves of the trace).
    """

    def __init__(self, skip: Sequence[str] = ()) -> None:
        self.skip = skip

    def requires(self, state: Compilation) -> None:
        """The model is an ``nn.Module`` with values in its parameters."""
        check_model(state.model)

    def call(self, state: Compilation) -> None:
        """Record the reference outputs, then capture."""
        model = state.model
        was_training = model.training
        model.eval()  # capture and verify in inference mode; the result gets the mode back
        try:
            if state.example_inputs is not None:
                state.reference = _reference(model, state.example_inputs)
            # Capture a copy: the returned module must share nothing with ``model``, so that
            # training it leaves the original untouched -- unless the caller gives it up.
            copied = model if state.inplace else copy.deepcopy(model)
            state.captured = capture(copied, state.example_inputs, self.skip)
            state.captured.reference = state.reference
        finally:
            model.train(was_training)

    def ensures(self, state: Compilation) -> None:
        """A known capture path, with the model it was captured from."""
        captured = state.captured
        if captured.path not in PATHS or captured.model is None:
            raise ContractError(f"capture returned path {captured.path!r} without its model")


class Match(Pass):
    """The sites of the captured model, and the kind of result.

    ``call``: :func:`~tfx.passes.find_sites` on the graph (the layer modules on the module-swap
    path; a ``tfx.nn`` layer of an exported result factorized again is one site); no site
    at all is an :class:`~tfx.UnsupportedSiteError`, quantized layers a warning and a plan
    note, a weight with NaN/Inf a :class:`~tfx.TensorError`; then :func:`emission` decides
    ``'graph'`` or ``'modules'``. ``ensures``: every site has its own name.

    Args:
        kinds: the layer kinds to factorize.
        skip: qualified names of modules to leave dense.
        emit: ``'auto'``, ``'graph'`` or ``'modules'``.
    """

    reads = ("captured",)

    def __init__(self, kinds: Sequence[str], skip: Sequence[str] = (), emit: str = "auto") -> None:
        self.kinds = kinds
        self.skip = skip
        self.emit = emit

    def call(self, state: Compilation) -> None:
        """Find the sites; decide the kind of result."""
        captured, kinds, skip = state.captured, self.kinds, self.skip
        if captured.path == "module_swap":
            sites = find_module_sites(captured.model, kinds=kinds, skip=skip)
        else:
            sites = find_sites(captured.gm, path=captured.path, kinds=kinds, skip=skip)
            if captured.path == "export":
                sites = _with_factorized_layers(captured.model, sites, kinds, skip)
        if not sites:
            raise nothing_to_factorize(state.model, kinds)
        packed = quantized(state.model)
        if packed:
            note = (
                f"quantized layers ({', '.join(packed)}) are not sites: their weights are packed "
                "integers; they stay as they are"
            )
            # 1: here, 2: Pass.__call__, 3: tfx.factorize / tfx.plan, 4: the user's call
            warnings.warn(f"tfx: {note}.", TfxWarning, stacklevel=4)
            captured.notes.append(note)
        check_weights(sites)
        state.sites = sites
        state.emission = emission(self.emit, captured, sites)

    def ensures(self, state: Compilation) -> None:
        """Site names are unique: the plan has one row per site."""
        names = [s.name for s in state.sites]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ContractError(f"sites named twice: {twice[:5]}")


class Calibrate(Pass):
    """Input statistics (and sensitivities) per site, measured on the calibration batches.

    Sets ``state.calibrated`` (None without calibration data). Without data, sets
    ``state.priors``: the input moments the graph gives without data (a linear layer behind a
    LayerNorm or RMSNorm, or behind one more linear layer and an activation:
    :func:`~tfx.passes.input_priors`). ``ensures``: statistics only for sites of this model.

    Args:
        calibration: the user's calibration batches, or None.
        strategy: the planner's strategy (``'auto'`` and ``'sensitivity'`` measure sensitivities).
        progress: a factory of progress bars ``(total, description) -> bar``, or None.
        mask: a batch's mask over its positions (default: its ``attention_mask``).
        ranks: spread the work over a process group.
    """

    reads = ("captured", "sites")

    def __init__(
        self,
        calibration: Any,
        *,
        strategy: str = "auto",
        progress: Callable[[int, str], Any] | None = None,
        mask: Any = None,
        ranks: Distributed | None = None,
    ) -> None:
        self.calibration = calibration
        self.strategy = strategy
        self.progress = progress
        self.mask = mask
        self.ranks = ranks

    def call(self, state: Compilation) -> None:
        """Run the captured graph over the batches with observers in front of the sites."""
        batches = calibration_for(state.captured, self.calibration)
        state.calibrated = _calibrate(
            state.captured.gm,
            state.sites,
            batches,
            self.strategy,
            self.progress,
            self.mask,
            self.ranks,
        )
        if state.calibrated is None:
            state.priors = input_priors(state.captured.gm, state.sites)

    def ensures(self, state: Compilation) -> None:
        """Every statistic belongs to a site."""
        if state.calibrated is None:
            return
        unknown = set(state.calibrated.stats) - {s.name for s in state.sites}
        if unknown:
            raise ContractError(f"statistics for no site: {sorted(unknown)[:5]}")
