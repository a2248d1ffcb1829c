"""``tfx.factorize`` and ``tfx.plan``: glue over the compiler's stages.

capture -> find_sites -> candidates -> build_graph -> choose -> (decompose, rewrite) -> emit
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from ._distributed import (
    Distributed,
    group_cost,
    plan_digest,
    prebuilt_builder,
    resolve,
    work_cost,
)
from ._errors import (
    OptionError,
    PlanMismatchError,
    TfxWarning,
    unknown_option,
)
from ._shared import (
    SiblingGroup,
    expand,
    group_options,
    member_energies,
    sibling_groups,
)
from ._tied import TiedGroup, joint_options, member_choices, tied_groups
from ._types import Emit, Form, Kind, Offload, Strategy
from .cost import (
    FORMS,
    Budget,
    Choice,
    FactorizationPlan,
    Group,
    Option,
    build_graph,
    candidates,
    plan_graph,
)
from .cost._choose import available_strategies
from .cost._device import DeviceProfile
from .cost._flops import price
from .cost._options import map_sites
from .cost._refine import svd_option
from .passes import Site
from .passes._analysis import EMITS as EMITS  # the emit= names (tests/test_typing.py)
from .passes._analysis import Calibrate, Capture, Match, check_model
from .passes._calibrate import Calibrated
from .passes._decompose import Decomposer
from .passes._emit import Emit as EmitPass  # ._types.Emit is the option's type
from .passes._emit import tie_groups
from .passes._pass import Compilation
from .passes._prior import PRIOR_NOTE, prior_note
from .passes._rewrite import Rewrite

__all__ = ["factorize", "plan", "save", "load", "Budget", "FactorizationPlan"]

logger = logging.getLogger(__name__)
KINDS = ("linear", "conv", "embedding")


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc=desc, leave=False, disable=None)  # None: only on a terminal


def _check_names(values: Iterable[str], valid: Sequence[str], what: str) -> tuple[str, ...]:
    values = tuple(values)
    for value in values:
        if value not in valid:
            raise unknown_option(what, value, valid)
    return values


def _check_skip(model: nn.Module, skip: Sequence[str]) -> None:
    names = {name for name, _ in model.named_modules()}
    for name in skip:
        if name not in names:
            import difflib

            close = difflib.get_close_matches(name, list(names), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise OptionError(
                f"skip={name!r} names no module of {type(model).__name__}.{hint}\n"
                "Fix: use names from model.named_modules()."
            )


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _edges(gm: fx.GraphModule, sites: Sequence[Site]) -> list[tuple[str, str]]:
    """Nearest-upstream data-flow edges between sites."""
    site_of = {
        site.node: site.name
        for site in sites
        if site.node is not None and site.node.graph is gm.graph
    }
    upstream: dict[fx.Node, frozenset[str]] = {}
    edges = set()
    for node in gm.graph.nodes:
        above: frozenset[str] = frozenset().union(
            *(upstream.get(a, frozenset()) for a in node.all_input_nodes)
        )
        if node in site_of:
            edges.update((a, site_of[node]) for a in above)
            upstream[node] = frozenset({site_of[node]})
        else:
            upstream[node] = above
    return sorted(edges)


def _plan_sites(
    model: nn.Module,
    gm: fx.GraphModule,
    sites: list[Site],
    budget: Any,
    forms: Sequence[str],
    strategy: str,
    path: str,
    progress: bool,
    weights: Sequence[float] | None = None,
    calibrated: Calibrated | None = None,
    profile: DeviceProfile | None = None,
    groups: Sequence[TiedGroup] = (),
    siblings: Sequence[SiblingGroup] = (),
    graph_result: bool = True,
    ranks: Distributed | None = None,
    pinned: dict[str, Choice] | None = None,
    priors: dict[str, Any] | None = None,
) -> FactorizationPlan:
    """Candidates for every site and group, the graph, then the planner (tfx.cost.plan_graph).

    ``priors`` (without ``calibrated``): data-free input moments per site (the graph's,
    :func:`~tfx.passes.input_priors`); the plan notes them, the decompositions use them, and
    ranks are still chosen by weight error (see :mod:`tfx.passes._prior`).

    With ``ranks``, each site's candidates are made by one rank (by cost) and shared; the
    plan is made on every rank from them, and the ranks check that theirs agree. ``pinned``
    maps a site to the choice it must take (the backend's decision for a parameter an
    earlier graph piece read): its options are that one alone.
    """
    total = _count_params(model)
    outside = total - sum(
        {
            s.weight.untyped_storage().data_ptr(): s.info.dense_params
            if s.held_params is None
            else s.held_params
            for s in sites
            if s.weight.numel()
        }.values()
    )
    clock = time.perf_counter()
    bar = _progress(len(sites), progress, "tfx: spectra")

    def spectra(site: Site) -> tuple[list[Option], dict[str, Any]]:
        stats = calibrated.stats.get(site.name) if calibrated is not None else None
        keep: dict[str, Any] = {}
        found = candidates(site.info, site.weight, forms, stats, profile, keep=keep)
        if bar is not None:
            bar.update(1)
        return found, keep

    made = (
        map_sites(spectra, sites, [s.weight.numel() for s in sites])  # large: one per core
        if ranks is None
        else ranks.map_assigned(
            sites, [work_cost(s.info.weight_shape) for s in sites], spectra, what="spectra"
        )
    )
    options: list[list[Option]] = [found for found, _ in made]
    kept: list[dict[str, Any]] = [keep for _, keep in made]
    in_table = {sites[i].name for g in groups for i in g.members}
    for name, choice in (pinned or {}).items():
        if name in in_table:  # the table's options are pinned instead (_tied_node)
            continue
        i = next(i for i, s in enumerate(sites) if s.name == name)
        options[i], kept[i] = _pin(sites[i], options[i], kept[i], choice, profile), {}
    if bar is not None:
        bar.close()
    if weights is None and calibrated is not None and calibrated.sensitivity:
        weights = [calibrated.sensitivity.get(s.name, 1.0) for s in sites]
    site_weights = list(weights) if weights is not None else [1.0] * len(sites)
    nodes = [
        {"itemsize": s.weight.element_size(), "held": s.held_params, "kept": k, "weight": w}
        for s, k, w in zip(sites, kept, site_weights, strict=False)
    ]
    planned = [_tied_node(g, sites, forms, profile, pinned or {}) for g in groups]

    def moment(sib: SiblingGroup) -> Any:
        return calibrated.stats.get(sites[sib.members[0]].name) if calibrated is not None else None

    energies = (
        [member_energies(sib, sites, moment(sib)) for sib in siblings]
        if ranks is None
        else ranks.map_assigned(
            siblings,
            [group_cost([sites[i].info.weight_shape for i in s.members]) for s in siblings],
            lambda sib: member_energies(sib, sites, moment(sib)),
            what="spectra",
        )
    )
    for sib, made in zip(siblings, energies, strict=True):
        member = [options[i] for i in sib.members]
        sib_options = group_options(
            sib,
            sites,
            member,
            None,
            [site_weights[i] for i in sib.members],
            graph_result,
            energies=made,
        )
        planned.append(_sibling_node(sib, sites, sib_options))
    spectra_s = time.perf_counter() - clock
    graph = build_graph(
        [s.info for s in sites], options, _edges(gm, sites), extra=nodes, groups=planned
    )
    clock = time.perf_counter()

    def choose() -> FactorizationPlan:
        return plan_graph(
            graph, budget, total=total, strategy=strategy, profile=profile, outside=outside
        )

    the_plan = choose() if ranks is None else ranks.step("plan", choose, digest=plan_digest)
    timings = {"candidates (spectra)": spectra_s, "choose": time.perf_counter() - clock}
    if calibrated is not None:
        for choice in the_plan.choices:
            choice.sensitivity = calibrated.sensitivity.get(choice.site)
        timings = {**calibrated.timings, **timings}
        the_plan.notes.append(calibrated.note())
    elif priors:
        the_plan.notes.append(prior_note(priors, sites))
    the_plan.capture, the_plan.timings = path, timings
    return the_plan


def _pin(
    site: Site,
    options: list[Option],
    kept: dict[str, Any],
    choice: Choice,
    profile: DeviceProfile | None,
) -> list[Option]:
    """The one option of ``site`` that is ``choice`` (a refined SVD rank made from spectra)."""
    want = (choice.form, repr(choice.tensorized_shape), repr(choice.rank))
    same = [o for o in options if o.key() == want]
    if not same and choice.form == "svd" and kept.get("svd") is not None:
        made = svd_option(kept["svd"], int(choice.rank))
        same = [price(site.info, made, site.weight.element_size(), profile)]
    if not same:  # pragma: no cover - the same weight and forms give the same candidates
        raise PlanMismatchError(
            f"{site.name!r} was given {choice.form} rank {choice.rank} by an earlier graph "
            "piece, which is not among its candidates in this one.\n"
            "Fix: report this as a bug, with the model."
        )
    return same


def _tied_node(
    group: TiedGroup,
    sites: Sequence[Site],
    forms: Sequence[str],
    profile: DeviceProfile | None,
    pinned: dict[str, Choice] | None = None,
) -> Group:
    """A tied table as a planner group: its options counted once, a row per reader.

    A reader in ``pinned`` (the backend's choice for a table an earlier graph piece read)
    leaves the table that one option.
    """
    names = [sites[i].name for i in group.members]
    options = joint_options(group, sites, forms, profile)
    pin = next((pinned[n] for n in names if pinned and n in pinned), None)
    if pin is not None:
        want = (pin.form, repr(pin.tensorized_shape), repr(pin.rank))
        options = [o for o in options if o.key() == want]
        if not options:  # pragma: no cover - the same weight and forms give the same options
            raise PlanMismatchError(
                f"the table read by {names} was given {pin.form} rank {pin.rank} by an earlier "
                "graph piece, which is not among its options in this one.\n"
                "Fix: report this as a bug, with the model."
            )

    def rows(option: Option, make: Any) -> dict[str, Choice]:
        made = member_choices(group, sites, option, profile, lambda site, o: make(site.name, o))
        return {sites[i].name: row for i, row in made.items()}

    return Group("tied:" + names[0], names, options, True, rows)


def _sibling_node(group: SiblingGroup, sites: Sequence[Site], options: list[Option]) -> Group:
    """Siblings reading one input as a planner group: joint bases, or their separate picks."""
    names = [sites[i].name for i in group.members]

    def rows(option: Option, make: Any) -> dict[str, Choice] | None:
        made, _ = expand(group, sites, option, lambda site, o: make(site.name, o))
        return {sites[i].name: row for i, row in made.items()}

    def separate(option: Option) -> dict[str, Option] | None:
        return (
            dict(zip(names, group.separate[id(option)], strict=False))
            if option.form == "separate"
            else None
        )

    return Group("basis:" + group.name, names, options, False, rows, separate)


def _groups(
    state: Compilation, kinds: Sequence[str], skip: Sequence[str], forms: Sequence[str]
) -> tuple[list[TiedGroup], list[SiblingGroup]]:
    """The graph's groups: tied weights (one table), and linears that read one input (one basis).

    Shared input bases need calibration data: their joint error is then the output error on
    the siblings' one input moment. From weight spectra alone the joint option looks better
    than it is (all-MiniLM-L6-v2, linears at half, no calibration: mean embedding cosine 0.466
    with separate picks, 0.420 when Q/K/V shared a basis).
    """
    sites = state.sites
    root = state.captured.model if state.emission == "modules" else None
    groups = tied_groups(sites, kinds, skip, root)
    if "svd" not in forms or state.calibrated is None:
        return groups, []
    tied = {i for g in groups for i in g.members}
    return groups, sibling_groups(sites, tied, root)


def _check_strategy(strategy: str, calibration: Any) -> None:
    if strategy not in available_strategies():
        raise unknown_option("strategy", strategy, available_strategies())
    if strategy == "sensitivity" and calibration is None:
        raise OptionError(
            'strategy="sensitivity" weighs each layer by how much its error changes the '
            "model's output, which is measured on calibration data, and none was given.\n"
            "Fix: pass calibration=[batch, ...] (inputs in the example_inputs format), "
            'or use strategy="auto".'
        )


def _stats_of(state: Compilation) -> Callable[[Site], Any] | None:
    """A site's input statistics (or data-free moment), for the decompose stage."""
    stats = state.calibrated.stats if state.calibrated is not None else state.priors
    if not stats:
        return None
    return lambda site: stats.get(site.name)


def _check_options(
    model: nn.Module, forms: Sequence[str], kinds: Sequence[str], skip: Sequence[str]
) -> None:
    """The options, checked at the boundary (before any work)."""
    check_model(model)
    _check_names(forms, FORMS, "form")
    _check_names(kinds, KINDS, "kind")
    _check_skip(model, skip)


def _calibration_pass(
    calibration: Any, strategy: str, progress: bool, mask: Any, ranks: Distributed | None
) -> Calibrate:
    """The calibration pass; with calibration data, ``"auto"`` measures sensitivities too."""
    bars = (lambda total, desc: _progress(total, True, desc)) if progress else None
    return Calibrate(calibration, strategy=strategy, progress=bars, mask=mask, ranks=ranks)


def _new_plan(
    state: Compilation,
    budget: Any,
    forms: Sequence[str],
    strategy: str,
    progress: bool,
    profile: DeviceProfile | None,
    ranks: Distributed | None,
    groups: Sequence[TiedGroup],
    siblings: Sequence[SiblingGroup],
) -> FactorizationPlan:
    """The planner's plan for the analysed model (:func:`_plan_sites`), with capture's notes."""
    captured = state.need("captured")
    the_plan = _plan_sites(
        state.model,
        captured.gm,
        state.need("sites"),
        budget,
        forms,
        strategy,
        captured.path,
        progress,
        calibrated=state.calibrated,
        priors=state.priors,
        profile=profile,
        groups=groups,
        siblings=siblings,
        graph_result=state.emission == "graph",
        ranks=ranks,
    )
    the_plan.notes[:0] = captured.notes
    return the_plan


def _given_plan(
    plan: FactorizationPlan, sites: Sequence[Site], calibration: Any
) -> FactorizationPlan:
    """A copy of a given plan, checked against the sites."""
    the_plan = copy.deepcopy(plan)
    _check_plan(the_plan, sites)
    if calibration is None and any(n.startswith("calibrated on") for n in the_plan.notes):
        warnings.warn(
            "this plan was made with calibration=, and re-applying it without calibration "
            "data decomposes each weight for the weight, not for the layer's output: same "
            "forms and ranks, larger output errors than the plan estimates. Pass the same "
            "calibration= (or use tfx.load, which restores the saved factors).",
            TfxWarning,
            stacklevel=3,
        )
    return the_plan


def plan(
    model: nn.Module,
    budget: float | int | Budget,
    *,
    example_inputs: Any = None,
    forms: Sequence[Form] = FORMS,
    kinds: Sequence[Kind] = KINDS,
    skip: Sequence[str] = (),
    strategy: Strategy = "auto",
    calibration: Iterable[Any] | None = None,
    device_profile: DeviceProfile | None = None,
    progress: bool = True,
    emit: Emit = "auto",
    calibration_mask: Callable[[Any], torch.Tensor | None] | None = None,
    distributed: bool | None = None,
) -> FactorizationPlan:
    """Decide, per layer, the form, tensorized shape and rank under one budget; change nothing.

    Arguments are those of :func:`factorize` (``distributed`` included: under ``torchrun``
    every rank returns the same plan). Returns the :class:`FactorizationPlan`
    (print it for the table; ``plan.to_json()`` to save it).
    """
    _check_strategy(strategy, calibration)
    _check_options(model, forms, kinds, skip)
    ranks = resolve(distributed)
    state = Compilation(model, example_inputs)
    Capture(skip)(state)
    Match(kinds, skip, emit)(state)
    _calibration_pass(calibration, strategy, progress, calibration_mask, ranks)(state)
    groups, siblings = _groups(state, kinds, skip, forms)
    the_plan = _new_plan(
        state, budget, forms, strategy, progress, device_profile, ranks, groups, siblings
    )
    the_plan.emit = state.emission
    if ranks is not None:
        ranks.record(the_plan)
    return the_plan


def factorize(
    model: nn.Module,
    budget: float | int | Budget | None = None,
    *,
    example_inputs: Any = None,
    forms: Sequence[Form] = FORMS,
    kinds: Sequence[Kind] = KINDS,
    skip: Sequence[str] = (),
    strategy: Strategy = "auto",
    calibration: Iterable[Any] | None = None,
    device_profile: DeviceProfile | None = None,
    verify: bool = True,
    progress: bool = True,
    plan: FactorizationPlan | None = None,
    emit: Emit = "auto",
    calibration_mask: Callable[[Any], torch.Tensor | None] | None = None,
    inplace: bool = False,
    sequential: bool | str = False,
    offload: Offload | None = None,
    device: str | torch.device | None = None,
    distributed: bool | None = None,
) -> nn.Module:
    """Factorize every linear, convolution and embedding of ``model`` under one budget.

    Args:
        model: any ``nn.Module``; it is left untouched.
        budget: a float in (0, 1] (a fraction of the model's parameters), an int
            (a parameter count) or :class:`Budget`. Not needed with ``plan=``.
        example_inputs: a tuple of positional inputs or a dict of keyword inputs;
            needed by models ``torch.fx.symbolic_trace`` cannot take (most Hugging
            Face models), for FLOP counts and for ``verify``.
        forms: the forms to consider: ``"svd"`` (low-rank matrix), ``"cp"``, ``"tucker"``,
            ``"tt"``, ``"blocktt"``.
        kinds: the layer kinds to factorize: ``"linear"``, ``"conv"``, ``"embedding"``.
        skip: qualified names of modules to leave dense.
        strategy: the allocation strategy (``"auto"``, ``"greedy"``, ``"dp"``, ``"uniform"``,
            ``"sensitivity"`` -- ``"auto"`` with each site's error weighted by its measured
            effect on the model's output; needs ``calibration`` -- or a registered one). With
            ``calibration``, ``"auto"`` measures and uses those effects too.
        calibration: an iterable of example inputs (each in the ``example_inputs`` format),
            e.g. a few hundred sentences' token batches or images. tfx records each linear and
            convolution's input second moments on them (streamed, no activations kept) and
            factorizes for the layer's *output* on that data: whitened SVD, and Kronecker-factored
            whitening for Tucker / TT / BlockTT; estimated errors become output errors. See
            the quality guide. Padded positions are not data: a batch's ``attention_mask``
            (a dict key, as Hugging Face tokenizers give) leaves them out of the statistics.
        calibration_mask: a function from a calibration batch to a boolean mask over its
            positions (True: real data), for models whose batches carry no ``attention_mask``;
            a linear whose input is ``mask.shape + (features,)`` counts only the True rows.
        device_profile: a :class:`~tfx.cost.DeviceProfile` (``tfx.cost.measure_device()``
            measures this machine once and caches it): each option is then priced in estimated
            time (FLOPs, bytes and kernel launches), its contraction order chosen by time, and
            options estimated slower than 0.95x their dense layer at the planned batch are left
            out where the budget allows (else the plan notes which sites are slower). Without a
            profile the same rule uses FLOPs: linear and convolution options with more than
            1/0.95 of their dense layer's FLOPs are left out where the budget allows.
        verify: with ``example_inputs``, measure the outputs' max relative error
            against the original and record it in the plan.
        progress: show progress bars.
        plan: re-apply a saved plan exactly (then ``budget`` and ``strategy`` are ignored).
        inplace: rewrite ``model`` itself instead of a deep copy, so that a model as large as
            the memory allows can be factorized (no second copy of its weights). The original
            is consumed: with a ``"modules"`` result the returned module *is* ``model``;
            with a graph result ``model``'s modules may have been changed. Default: a copy.
        sequential: factorize a model made of repeated blocks (``nn.ModuleList`` of layers, as
            every Hugging Face transformer) one block at a time, in bounded memory: ``True``
            finds the list, or name it (``"model.layers"``). Spectra are computed block by
            block (one block's input statistics in memory), sensitivities (with
            ``calibration``) in one backward pass of the first batch through the blocks, the
            budget is allocated once over all of them, then each block is decomposed for the
            inputs the *factorized* blocks before it give it. Runs on ``calibration`` batches
            (or ``example_inputs``); the result is the model with its layers replaced
            (``emit="modules"``). With
            ``inplace=True`` the peak memory stays near the model's own size. See the
            large-models guide.
        offload: with ``sequential``: where the blocks' inputs are kept between blocks:
            ``None`` (where the block runs), ``"cpu"`` or ``"disk"`` (a temporary directory).
        device: with ``sequential``: the device each block is moved to for its statistics and
            decomposition (e.g. ``"cuda"`` while the model stays on the CPU); None: where it is.
        distributed: spread the work over a ``torch.distributed`` process group (``torchrun``):
            every rank calls ``factorize`` with the same model and ``calibration``; each runs
            its shard of the batches (batch ``i`` on rank ``i % world``), the statistics are
            combined exactly, sensitivities, spectra and decompositions are each made once and
            shared, and every rank returns the same model, bit for bit the one a single process
            makes on the same data. ``None`` (default): use the default group when one is
            initialised with more than one process; ``True``: require it; ``False``: one
            process. A rank whose work fails makes every rank raise
            :class:`~tfx.DistributedError`; a rank that dies is waited for up to the group's
            ``timeout``. See the large-models guide.
        emit: the kind of result: ``"graph"`` (a ``torch.fx.GraphModule``), ``"modules"``
            (a copy of ``model``, of its own class, with its layer modules replaced by
            ``tfx.nn`` layers; functional sites stay dense) or ``"auto"``: ``"modules"`` for
            models captured by ``torch.export`` whose sites are all layer modules (most
            Hugging Face models: ``generate()``, the KV cache and ``save_pretrained`` keep
            working) and for module swap, else ``"graph"``.

    Returns:
        A stand-in for ``model``: the same call signature and defaults, any batch size,
        the same dtype, device and train/eval mode; ``result.tfx_plan`` is the plan, and
        ``result.tfx_plan.emit`` says which kind of module it is. Its parameter count is
        the plan's and every tied weight stays tied (checked on every call).

    Raises:
        BudgetError: malformed or unreachable budget (with the smallest reachable one).
        TraceError: no capture path works.
        OptionError: unknown form, kind, strategy, or ``skip`` name; inputs that do not fit.
        TensorError: NaN/Inf weights, or NaN/Inf outputs of the result where the
            original's are finite.
        UnsupportedSiteError: the model has no site at all (e.g. a quantized model).
        PlanMismatchError: ``plan`` does not fit this model.
        DistributedError: with ``distributed``, another rank failed (its error is named).

    Warns:
        TfxWarning: a capture fallback that changes what the result can do (module swap,
            a batch pinned to one row, an analysis graph captured with ``use_cache=False``),
            or an original model that itself gives NaN/Inf on ``example_inputs``.

    Example:
        >>> import torch, tfx
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256))
        >>> gm = tfx.factorize(model, 0.5, example_inputs=(torch.randn(8, 256),), progress=False)
        >>> n_params = lambda m: sum(p.numel() for p in m.parameters())
        >>> n_params(gm) <= 0.5 * n_params(model)
        True
    """
    if plan is None:
        _check_strategy(strategy, calibration)
    if plan is not None and plan.capture == "sequential" and not sequential:
        sequential = True  # a plan made block by block is re-applied block by block
    if sequential or offload is not None or device is not None:
        if not sequential:
            raise OptionError(
                "offload= and device= apply to sequential mode.\nFix: pass sequential=True "
                "(or the name of the model's list of blocks)."
            )
        if emit == "graph":
            raise OptionError(
                "sequential mode replaces the model's layer modules; it has no graph result.\n"
                "Fix: emit='auto' or emit='modules'."
            )
        from ._sequential import factorize_sequential

        return factorize_sequential(
            model,
            budget,
            blocks=None if sequential is True else str(sequential),
            example_inputs=example_inputs,
            calibration=calibration,
            forms=forms,
            kinds=kinds,
            skip=skip,
            strategy=strategy,
            device_profile=device_profile,
            verify=verify,
            progress=progress,
            plan=plan,
            calibration_mask=calibration_mask,
            inplace=inplace,
            offload=offload,
            device=device,
            distributed=distributed,
        )
    start = time.perf_counter()
    ranks = resolve(distributed)
    if plan is not None and emit == "auto":
        emit = plan.emit
    _check_options(model, forms, kinds, skip)
    # The model's ties are recorded before anything (inplace=True) changes it.
    state = Compilation(model, example_inputs, inplace=inplace, ties=tie_groups(model))
    Capture(skip)(state)
    Match(kinds, skip, emit)(state)
    capture_s = time.perf_counter() - start
    _calibration_pass(
        calibration, strategy if plan is None else "auto", progress, calibration_mask, ranks
    )(state)
    groups, siblings = _groups(state, kinds, skip, forms)
    if plan is None:
        state.plan = _new_plan(
            state, budget, forms, strategy, progress, device_profile, ranks, groups, siblings
        )
    else:
        state.plan = _given_plan(plan, state.sites, calibration)
        if not any(n.startswith(PRIOR_NOTE) for n in state.plan.notes):
            state.priors = None  # applied as it was made: factors for the weight
    the_plan = state.plan
    the_plan.emit = state.emission
    the_plan.timings = {"capture + match": capture_s, **the_plan.timings}  # stages in order
    clock = time.perf_counter()
    sites = state.sites
    state.build = Decomposer(sites, the_plan, _stats_of(state), groups)
    bar = _progress(len(sites), progress, "tfx: decompose")
    tied = {sites[i].name for g in groups for i in g.members}
    spread = _spread(ranks, state.build, groups, sites)
    try:
        Rewrite(tied=tied, spread=spread, progress=bar)(state)
    finally:
        if bar is not None:
            bar.close()
    the_plan.timings["decompose + rewrite"] = time.perf_counter() - clock
    EmitPass(given=plan is not None, verify=verify)(state)
    if ranks is not None:
        ranks.record(the_plan)
    the_plan.timings["total"] = time.perf_counter() - start
    if (
        state.emission == "graph"
        and the_plan.capture == "export"
        and _mode_dependent(model)
        and not any("frozen" in n for n in the_plan.notes)
    ):
        the_plan.notes.append(
            "captured by torch.export in eval mode: dropout is off and batch norm uses its running "
            "statistics in the result, also after .train(); fine-tune the factors with that in mind"
        )
    logger.info("tfx.factorize took %.2f s", the_plan.timings["total"])
    return state.result


def _spread(
    ranks: Distributed | None, build: Any, groups: Sequence[TiedGroup], sites: Sequence[Site]
) -> Callable[[list[tuple[Site, Choice]]], Any] | None:
    """With ``ranks``: ``build`` with the layers of the calls it will get made over the ranks.

    A tied table's readers, and siblings over one basis, are built by one rank: their layers
    share Parameters, which stay shared when sent whole.
    """
    if ranks is None:
        return None
    table = {sites[i].name: "tied:" + sites[g.owner].name for g in groups for i in g.members}

    def unit(site: Site, choice: Choice) -> str:
        return table.get(site.name) or (f"basis:{choice.group}" if choice.group else site.name)

    def prepare(calls: list[tuple[Site, Choice]]) -> Any:
        factorized = [(site, choice) for site, choice in calls if choice.form != "dense"]
        return prebuilt_builder(ranks, factorized, build, unit)

    return prepare


def _mode_dependent(model: nn.Module) -> bool:
    kinds = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)
    return any(isinstance(m, kinds) for m in model.modules())


def _check_plan(the_plan: FactorizationPlan, sites: Sequence[Site]) -> None:
    by_name = {s.name: s for s in sites}
    for choice in the_plan.choices:
        site = by_name.get(choice.site)
        if site is None or tuple(site.info.weight_shape) != tuple(choice.weight_shape):
            found = "no such site" if site is None else f"weight {site.info.weight_shape}"
            raise PlanMismatchError(
                f"the plan's site {choice.site!r} (weight {choice.weight_shape}) does not fit "
                f"this model: {found}.\n"
                "Fix: apply the plan to the architecture it was made for, or make a new plan."
            )
    missing = set(by_name) - {c.site for c in the_plan.choices}
    if missing:
        raise PlanMismatchError(
            f"the model has sites the plan does not cover: {sorted(missing)[:5]}.\n"
            "Fix: make a new plan."
        )


def save(gm: fx.GraphModule, path: str | Path) -> None:
    """Save a factorized model: its plan (JSON) and its state dict, in one file (``torch.save``).

    Restore it with :func:`load` on the original architecture.
    """
    the_plan: FactorizationPlan | None = getattr(gm, "tfx_plan", None)
    if the_plan is None:
        raise OptionError("tfx.save needs a module returned by tfx.factorize (it has no tfx_plan).")
    torch.save({"tfx_plan": the_plan.to_json(), "state_dict": gm.state_dict()}, path)


def load(model: nn.Module, path: str | Path, *, example_inputs: Any = None) -> nn.Module:
    """Re-apply a saved plan to ``model`` (same architecture) and load the saved factors exactly.

    Args:
        model: a model of the architecture the plan was made for (its weights are replaced).
        path: a file written by :func:`save`.
        example_inputs: the same kind of inputs the plan was made with; needed when the plan's
            capture path was ``'export'`` (most Hugging Face models), since the model is captured
            again the same way.

    Raises:
        OptionError: the plan was captured by torch.export and no ``example_inputs`` were given.
        PlanMismatchError: the plan does not fit ``model``.
    """
    data = torch.load(path, map_location="cpu", weights_only=True)
    the_plan = FactorizationPlan.from_json(data["tfx_plan"])
    if the_plan.capture == "export" and example_inputs is None:
        raise OptionError(
            f"the plan in {str(path)!r} was made on a graph captured by torch.export, and "
            f"capturing {type(model).__name__} the same way needs example inputs; none were "
            "given.\nFix: tfx.load(model, path, example_inputs=...) with inputs like those given "
            "to tfx.factorize (any batch size)."
        )
    with warnings.catch_warnings():  # the saved factors replace whatever the plan decomposes
        warnings.simplefilter("ignore", TfxWarning)
        gm = factorize(
            model, example_inputs=example_inputs, plan=the_plan, verify=False, progress=False
        )
    gm.load_state_dict(data["state_dict"])
    return gm
