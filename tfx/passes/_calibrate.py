"""Calibration: per-site input statistics and output sensitivities, measured on the captured model.

Stage: capture -> match -> **calibrate** -> candidates -> choose -> rewrite.

:func:`collect_statistics` runs the captured graph (before any rewrite, so it computes
exactly what the original model computes) over the user's calibration batches, with an
observer spliced in front of every factorizable linear and convolution. Each observer
streams the second moment of its layer's input rows, ``sum x x^T`` in float64 (the
im2col patches for a convolution): memory is one ``in x in`` matrix per distinct input
(query, key and value projections share one), no activation is kept. Inputs wider than
:data:`MAX_FULL` keep the diagonal only.

:func:`measure_sensitivity` perturbs one site's output at a time with Gaussian noise of
a fixed relative size on one calibration batch and measures the relative change of the
model's outputs: ``s_i = (|f(y_i + e) - f| / |f|)^2 / (|e| / |y_i|)^2``, the factor by
which an error at that site is amplified (or damped) by the rest of the network. Embeddings
are probed with the error their factorization makes instead of noise (their lookups projected
onto the leading right singular vectors of the frequency-weighted table,
:func:`embedding_basis`), which on trained tables hurts the output more than noise of its size.

On the module-swap path (no graph) the same observers run as forward hooks on the layers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.utils._pytree import tree_flatten

from .._errors import OptionError
from ..cost._whiten import CHUNK_ROWS, InputStats, RowCounts, gram_of_rows
from ._capture import call_with
from ._match import Site

if TYPE_CHECKING:
    from .._distributed import Distributed

__all__ = [
    "collect_statistics",
    "measure_sensitivity",
    "embedding_basis",
    "EMBEDDING_PROBE",
    "MAX_FULL",
    "calibration_batches",
    "attention_mask",
]

#: Inputs wider than this keep only the diagonal of their second moment (memory: an
#: ``in x in`` float64 matrix per distinct input; 8192 -> 512 MiB).
MAX_FULL = 8192


def calibration_batches(calibration: Iterable[Any]) -> list[Any]:
    """The user's calibration batches as a list, checked for emptiness."""
    if isinstance(calibration, torch.Tensor) or isinstance(calibration, dict):
        batches = [calibration]
    else:
        batches = list(calibration)
    if not batches:
        raise OptionError(
            "calibration= is empty.\nFix: pass an iterable of example inputs (tuples of positional "
            "inputs or dicts of keyword inputs), e.g. calibration=[batch_1, batch_2, ...]."
        )
    return batches


def _conv_rows(
    x: torch.Tensor, weight_shape: Sequence[int], conv: dict[str, Any]
) -> torch.Tensor | None:
    """The conv's im2col patches as rows ``(positions, in * prod(kernel))``.

    In the weight's order.
    """
    kernel = tuple(weight_shape[2:])
    order = len(kernel)
    if order not in (1, 2) or conv.get("groups", 1) != 1:
        return None
    padding = conv.get("padding", 0)
    dilation = tuple(conv.get("dilation", (1,) * order))
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0,) * order
        elif padding == "same" and all(
            d * (k - 1) % 2 == 0 for d, k in zip(dilation, kernel, strict=False)
        ):
            padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel, strict=False))
        else:
            return None
    stride = tuple(conv.get("stride", (1,) * order))
    if order == 1:  # a 1-d conv is a 2-d one over a height of 1
        x, kernel, padding, stride, dilation = (
            x.unsqueeze(2),
            (1, *kernel),
            (0, *padding),
            (1, *stride),
            (1, *dilation),
        )
    patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (B, C*k, L)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


class _Mask:
    """The current batch's mask over positions (True: real data), shared by the observers."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None
        self.kept = 0
        self.seen = 0


def attention_mask(batch: Any) -> torch.Tensor | None:
    """The ``attention_mask`` of a Hugging Face-style batch (a dict, or an object with that key)."""
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    if isinstance(mask, torch.Tensor) and mask.dim() >= 1:
        return mask.bool()
    return None


class _Observer(nn.Module):
    """Passes its input through; accumulates the second moment of the site's input rows.

    With a mask over the batch's positions (``(batch, seq)`` for a ``(batch, seq, features)``
    input), only the unmasked rows count: padding is not data.
    """

    def __init__(
        self,
        stats: InputStats,
        kind: str,
        weight_shape: Sequence[int],
        conv: dict[str, Any],
        mask: _Mask | None = None,
    ) -> None:
        super().__init__()
        self.stats = stats
        self.kind = kind
        self.weight_shape = tuple(weight_shape)
        self.conv = conv
        self.mask = mask

    def forward(self, x: Any) -> Any:
        """Record ``x`` (no gradient) and return it."""
        if self.kind == "embedding":
            if isinstance(x, torch.Tensor) and not x.is_floating_point():
                mask = self.mask.value if self.mask is not None else None
                if mask is not None and tuple(x.shape) == tuple(mask.shape):
                    x_seen = x[
                        mask.to(x.device)
                    ]  # padding is not data: the pad row's lookups do not count
                else:
                    x_seen = x
                self.stats.update(x_seen)
            return x
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            with torch.no_grad():
                if self.kind == "conv":
                    rows = _conv_rows(x.detach(), self.weight_shape, self.conv)
                    if rows is None:
                        self.stats.unsupported = True
                        return x
                else:
                    rows = self._rows(x.detach())
                self.stats.update(rows)
        return x

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.mask.value if self.mask is not None else None
        if mask is not None and tuple(x.shape[:-1]) == tuple(mask.shape):
            rows = x[mask.to(x.device)]
            self.mask.kept += rows.shape[0]  # type: ignore[union-attr]
            self.mask.seen += mask.numel()  # type: ignore[union-attr]
            return rows
        return x.reshape(-1, x.shape[-1])


class Perturb(nn.Module):
    """Adds Gaussian noise of relative size ``scale`` to its input when ``scale`` > 0.

    With a ``basis`` (orthonormal columns over the last dimension), it projects its input onto
    their span instead, and ``error`` is the relative energy that took away.
    """

    def __init__(self, mask: torch.Tensor | None = None, basis: torch.Tensor | None = None) -> None:
        super().__init__()
        self.scale = 0.0
        self.seed = 0
        self.mask = mask
        self.basis = basis
        self.error = 0.0

    def forward(self, y: Any) -> Any:
        """``y`` plus noise of norm ``scale * |y|`` (or ``y`` when off).

        With a mask over the batch's positions, on the real positions only (padding is not data).
        """
        if not self.scale or not isinstance(y, torch.Tensor) or not y.is_floating_point():
            return y
        if self.basis is not None:
            return self._project(y)
        gen = torch.Generator(device=y.device).manual_seed(self.seed)
        noise = torch.randn(y.shape, generator=gen, device=y.device, dtype=y.dtype)
        keep = positions_mask(self.mask, y)
        if keep is not None:
            noise = noise * keep
            y_norm = (y * keep).norm()
        else:
            y_norm = y.norm()
        return y + noise * (self.scale * y_norm / noise.norm().clamp_min(1e-30))

    def _project(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` with its rows projected onto the basis (on the real positions)."""
        basis = self.basis.to(y.device, y.dtype)  # type: ignore[union-attr]
        cut = y - (y @ basis) @ basis.mT
        keep = positions_mask(self.mask, y)
        if keep is not None:
            cut = cut * keep
            y_norm2 = float((y * keep).square().sum())
        else:
            y_norm2 = float(y.square().sum())
        self.error = float(cut.square().sum()) / max(y_norm2, 1e-300)
        return y - cut


#: An embedding's sensitivity is measured with the error its low-rank factorization makes: its
#: lookups projected onto the leading right singular vectors of the frequency-weighted table,
#: this fraction of its width (see :func:`embedding_basis`).
EMBEDDING_PROBE = 0.25


#: A projection removing less than this share of the lookups' energy measures nothing
#: (rounding): the site is measured with noise instead.
PROBE_FLOOR = 1e-10


def embedding_basis(
    weight: torch.Tensor, counts: RowCounts, fraction: float = EMBEDDING_PROBE
) -> torch.Tensor:
    """The leading ``fraction`` of the right singular vectors of ``D W`` (``D`` the row weights).

    Projecting a lookup onto them is what a rank-``k`` factorization of the table fitted to
    the calibration data does to it (``k = fraction * min(rows, width)``, at least 1), float64,
    ``(width, k)``.

    Example:
        >>> counts = RowCounts(6)
        >>> counts.update(torch.tensor([0, 1, 2]))
        >>> embedding_basis(torch.eye(6, 4, dtype=torch.float64), counts, 0.5).shape
        torch.Size([4, 2])
    """
    from ..cost._whiten import small_eig

    gram = gram_of_rows(weight.detach(), counts.scales())
    k = max(1, round(fraction * min(weight.shape[0], gram.shape[0])))
    vectors = small_eig(torch.linalg.eigh, gram).eigenvectors
    return vectors[:, -k:].flip(-1).contiguous()


def positions_mask(mask: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor | None:
    """``mask`` broadcast over ``y``'s trailing dims when ``y`` starts with the mask's shape."""
    if mask is None or y.dim() <= mask.dim() or tuple(y.shape[: mask.dim()]) != tuple(mask.shape):
        return None
    return mask.to(y.device, y.dtype).reshape(*mask.shape, *([1] * (y.dim() - mask.dim())))


def _key(site: Site) -> Any:
    """Sites reading the same input with the same patch geometry share statistics."""
    conv = (
        tuple(sorted((k, str(v)) for k, v in site.conv.items())) if site.info.kind == "conv" else ()
    )
    kernel = tuple(site.info.weight_shape[2:]) if site.info.kind == "conv" else ()
    return (site.input if site.node is not None else site.name, site.info.kind, kernel, conv)


def _features(site: Site) -> int:
    return math.prod(site.info.weight_shape[1:])


def collect_statistics(
    gm: fx.GraphModule,
    sites: Sequence[Site],
    batches: Sequence[Any],
    progress: Any = None,
    mask_fn: Any = attention_mask,
    masked: _Mask | None = None,
    ranks: Distributed | None = None,
    share: Sequence[Sequence[str]] = (),
    needed: Mapping[str, Collection[int] | None] | None = None,
) -> dict[str, InputStats]:
    """Per factorizable linear / conv site: the second moment of its input over ``batches``.

    ``gm`` is the captured (not yet rewritten) graph module; it is left as it was.
    Embeddings count how often each row is looked up (:class:`~tfx.cost._whiten.RowCounts`):
    their low-rank candidates are then fitted to the rows the data uses, unseen rows still
    weighing as an average one.

    ``mask_fn(batch)`` gives a boolean mask over the batch's positions (by default the
    batch's ``attention_mask``): a linear whose input rows line up with it (input shape
    ``mask.shape + (features,)``) records only the unmasked rows. ``masked`` counts them.

    With ``ranks`` (a process group, see :mod:`tfx._distributed`), this rank runs its shard of
    ``batches`` and the statistics of all ranks are combined: every rank gets the bits one
    process gets on all of them.

    ``needed`` (with ``ranks``): per site name, the ranks that read its statistics (None, or a
    name left out: every rank); a rank gets only the statistics it reads, and a moment's
    parts travel only to its readers (:meth:`~tfx._distributed.Distributed.combine_stats`).

    Sites of one graph node's input share one moment. Sites found as modules (no graph) share
    one where ``share`` names them together (groups of linear sites known to receive one
    tensor, e.g. Q/K/V): only the group's first is observed, and all get its statistics.

    Returns:
        ``{site name: InputStats}`` for the sites that were observed.
    """
    masked = masked if masked is not None else _Mask()
    wanted = [
        s for s in sites if s.info.factorizable and s.info.kind in ("linear", "conv", "embedding")
    ]
    alias = {name: group[0] for group in share for name in group}

    def key_of(site: Site) -> Any:
        if site.node is None and site.name in alias:  # the group's first site's key
            return (alias[site.name], site.info.kind, (), ())
        return _key(site)

    shared: dict[Any, Any] = {}
    per_site: dict[str, Any] = {}
    for site in wanted:
        key = key_of(site)
        if key not in shared:
            if site.info.kind == "embedding":
                shared[key] = RowCounts(site.info.weight_shape[0])
            else:
                shared[key] = InputStats(_features(site), full=_features(site) <= MAX_FULL)
        per_site[site.name] = shared[key]
    # one observer per moment: a module group's other members are not hooked
    wanted = [s for s in wanted if s.node is not None or alias.get(s.name, s.name) == s.name]
    observers: dict[Any, _Observer] = {}
    for site in wanted:
        key = _key(site)
        if key not in observers:
            observers[key] = _Observer(
                shared[key], site.info.kind, site.info.weight_shape, site.conv, masked
            )
    indices = range(len(batches)) if ranks is None else ranks.shard(range(len(batches)))

    def run() -> None:
        _observe(gm, wanted, observers, batches, indices, progress, mask_fn, masked)

    if ranks is None:
        run()
    else:
        ranks.step("calibration (statistics)", run)
        unique = list({id(s): s for s in shared.values()}.values())
        readers: dict[int, set[int] | None] = {id(s): set() for s in unique}
        for name, s in per_site.items():
            want = None if needed is None else needed.get(name)
            known = readers[id(s)]
            readers[id(s)] = None if want is None or known is None else known | set(want)
        dest = [readers[id(s)] for s in unique]
        combined = dict(zip(map(id, unique), ranks.combine_stats(unique, dest), strict=True))
        per_site = {
            name: combined[id(s)] for name, s in per_site.items() if combined[id(s)] is not None
        }
        masked.kept, masked.seen = ranks.sum_ints([masked.kept, masked.seen], what="statistics")
    for stats in per_site.values():
        if isinstance(stats, InputStats):
            stats.settle()
    return {
        name: stats for name, stats in per_site.items() if stats.count > 0 and not stats.unsupported
    }


def _observe(
    gm: fx.GraphModule,
    wanted: Sequence[Site],
    observers: dict[Any, _Observer],
    batches: Sequence[Any],
    indices: Iterable[int],
    progress: Any,
    mask_fn: Any,
    masked: _Mask,
) -> None:
    """Run ``gm`` on ``batches[i]`` for each of ``indices``, with the observers spliced in."""
    undo = _attach(gm, wanted, observers)
    try:
        with torch.no_grad():
            for i in indices:
                batch = batches[i]
                mask = mask_fn(batch) if mask_fn is not None else None
                if mask is not None and (
                    not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool
                ):
                    raise OptionError(
                        f"calibration_mask returned {type(mask).__name__} "
                        f"{getattr(mask, 'dtype', '')} for batch {i}; it must return a boolean "
                        "tensor over the batch's positions (True: real data) or None.\n"
                        "Fix: calibration_mask=lambda batch: batch['attention_mask'].bool()"
                    )
                masked.value = mask
                try:
                    call_with(gm, batch)
                except Exception as err:
                    fix = (
                        "Fix: pass batches in the example_inputs format (a "
                        "tuple of positional inputs or a dict of keyword "
                        "inputs), with the dtypes and devices the model expects."
                    )
                    if "Guard failed" in str(err):  # a shape torch.export specialised
                        fix = (
                            "The captured graph is specialised to a size of "
                            "example_inputs (torch.export keeps a dimension "
                            "of size 1 at 1, and some models fix others).\n"
                            "Fix: give example_inputs batch and sequence sizes of at "
                            "least 2, or calibration batches of the example's shapes."
                        )
                    raise OptionError(
                        f"calibration batch {i} does not fit the "
                        f"model: {type(err).__name__}: {err}\n"
                        f"{fix}"
                    ) from err
                if progress is not None:
                    progress.update(1)
    finally:
        undo()


def _attach(
    gm: fx.GraphModule, sites: Sequence[Site], modules: dict[Any, nn.Module], after: bool = False
) -> Any:
    """Splice ``modules`` in front of (or after) each site.

    ``modules`` are keyed by :func:`_key`, or by site name when ``after``. Returns a function
    that takes them out again.
    """
    if not sites:
        return lambda: None
    if sites[0].node is None:  # module-swap path: hooks on the layers
        handles = []
        for site in sites:
            layer = gm.get_submodule("model." + site.name)
            module = modules[site.name if after else _key(site)]
            if after:
                handles.append(
                    layer.register_forward_hook(lambda _m, _a, out, mod=module: mod(out))
                )
            else:
                handles.append(
                    layer.register_forward_pre_hook(
                        lambda _m, args, mod=module: (mod(args[0]), *args[1:])
                    )
                )
        return lambda: [h.remove() for h in handles]
    added: list[fx.Node] = []
    names: list[str] = []
    done: set[Any] = set()
    for i, site in enumerate(sites):
        key = site.name if after else _key(site)
        if key in done:
            continue
        done.add(key)
        name = f"_tfx_calibration_{i}"
        gm.add_submodule(name, modules[key])
        names.append(name)
        anchor = site.node if after else site.input
        with gm.graph.inserting_after(anchor):
            new = gm.graph.call_module(name, (anchor,))
        if after:  # the perturbation feeds the site's users
            anchor.replace_all_uses_with(new, delete_user_cb=lambda user, new=new: user is not new)
        added.append(new)
    gm.recompile()

    def undo() -> None:
        for node in reversed(added):
            if after:
                node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
        for name in names:
            delattr(gm, name)
        gm.recompile()

    return undo


def _outputs(gm: nn.Module, batch: Any, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    flat, _ = tree_flatten(call_with(gm, batch))
    out = []
    for t in flat:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
            keep = positions_mask(mask, t)
            out.append(t.detach().double() * (keep.double() if keep is not None else 1.0))
    return out


def measure_sensitivity(
    gm: fx.GraphModule,
    sites: Sequence[Site],
    batch: Any,
    scale: float = 0.05,
    progress: Any = None,
    mask: torch.Tensor | None = None,
    ranks: Distributed | None = None,
    bases: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Per factorizable site: how much a relative error at its output grows by the model's output.

    One forward per site on ``batch`` (the first calibration batch), with noise of relative
    norm ``scale`` added to that site's output; the result is the squared relative change of
    the model's floating outputs divided by ``scale ** 2`` (1 means an error passes through
    unchanged; residual connections and normalisation usually damp it). With ``mask`` (the
    batch's real positions), noise goes to and outputs are compared at those positions only.
    With ``ranks``, the sites are split over the ranks (one forward each) and every rank gets
    every site's value.

    ``bases`` (per site name, orthonormal columns over the output's last dimension): those
    sites' outputs are projected onto the basis instead, and the change is divided by the
    relative error the projection made. :func:`calibrate` gives embeddings the basis of
    :func:`embedding_basis`: a table's factorization removes what distinguishes tokens, in the
    same directions for every lookup, and on all-MiniLM-L6-v2 that costs the output 2 to 4
    times what noise of the same size does (at a quarter of the width: 2.4 times).
    """
    wanted = [s for s in sites if s.info.factorizable]
    bases = bases or {}
    perturbs = {site.name: Perturb(mask, bases.get(site.name)) for site in wanted}
    undo = _attach(gm, wanted, perturbs, after=True)
    out: dict[str, float] = {}
    try:
        with torch.no_grad():
            reference = _outputs(gm, batch, mask)
            ref_norm2 = sum(float((r**2).sum()) for r in reference)
            if ref_norm2 == 0.0:
                raise OptionError(
                    "strategy='sensitivity' measures how a layer's error changes the model's "
                    "floating outputs, and this model's outputs on the first calibration batch "
                    "have none (or are all zero), so every layer would look free to compress.\n"
                    "Fix: make the model return its logits or features "
                    "(not e.g. argmax indices), or use strategy='auto'."
                )

            def change(module: Perturb, i: int) -> float:
                module.scale, module.seed = scale, 1234 + i
                try:
                    got = _outputs(gm, batch, mask)
                finally:
                    module.scale = 0.0
                return sum(
                    float(((g - r) ** 2).sum()) for g, r in zip(got, reference, strict=False)
                )

            def measure(i: int) -> float:
                module = perturbs[wanted[i].name]
                changed = change(module, i)
                if module.basis is not None and module.error > PROBE_FLOOR:
                    value = changed / ref_norm2 / module.error  # per the projection's error
                else:  # no projection, or one that removed nothing from this batch: noise
                    module.basis = None
                    value = change(module, i) / ref_norm2 / scale**2
                if progress is not None:
                    progress.update(1)
                return value

            order = range(len(wanted))
            values = (
                [measure(i) for i in order]
                if ranks is None
                else ranks.map_assigned(
                    order, [1.0] * len(wanted), measure, what="calibration (sensitivity)"
                )
            )
            out = {site.name: value for site, value in zip(wanted, values, strict=True)}
    finally:
        undo()
    return out


def _top_eigenvectors(gram: torch.Tensor, rank: int) -> torch.Tensor:
    """The leading ``rank`` eigenvectors of a symmetric float64 matrix, largest first."""
    from ..cost._whiten import small_eig

    vectors = small_eig(torch.linalg.eigh, gram).eigenvectors
    return vectors[:, -rank:].flip(-1)


def _rows_times(weight: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``W @ right`` a chunk of rows at a time, in ``right``'s dtype."""
    return torch.cat(
        [
            weight[start : start + CHUNK_ROWS].to(right.dtype) @ right
            for start in range(0, weight.shape[0], CHUNK_ROWS)
        ]
    )


def _tall_low_rank(
    weight: torch.Tensor, rank: int, whitening: Any = None, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The SVD of a tall weight's best rank-``rank`` approximation for its calibration data.

    ``whitening`` (a column transform ``L``, ``C = L L^T`` the input moment): the
    approximation ``U U^T W`` with ``U`` the leading left subspace of ``W L``. ``rows`` (row
    weights ``D``, an embedding's lookup frequencies): ``D^-1 [D W]_r = W V V^T`` with ``V``
    the leading right subspace of ``D W``. Both subspaces come from the ``n x n`` Gram
    matrix (``L^T W^T W L`` or ``W^T D^2 W``), so the work is a few passes over ``W``'s rows
    and nothing ``m x n`` is formed beside ``W`` itself: the peak is ``W`` plus ``m x rank``.
    """
    from ..tensors._decompose import gram_dtype, svd_of_product

    gram = gram_of_rows(weight, rows)
    if whitening is not None:  # L^T (W^T W) L = ((W^T W L)^T L)
        gram = whitening.sandwich(gram)
    basis = _top_eigenvectors(gram, rank)  # n x r: right singular vectors
    if whitening is not None:  # L V: W L V spans the left subspace
        root = whitening.sqrt[0].to(basis.device, torch.float64)
        basis = root[:, None] * basis if whitening.diagonal else root @ basis
    left = _rows_times(weight, basis.to(gram_dtype(weight.dtype, *weight.shape)))
    q, r = torch.linalg.qr(left)
    del left  # m x rank: not held beside Q and the singular vectors made from it
    if whitening is None:  # W V V^T = Q (R V^T)
        right = r.double() @ basis.mT
    else:  # Q Q^T W, Q^T W a chunk of rows at a time, in Q's precision (no float64 copies)
        right = torch.zeros(rank, weight.shape[1], dtype=q.dtype, device=weight.device)
        for start in range(0, weight.shape[0], CHUNK_ROWS):
            block = slice(start, start + CHUNK_ROWS)
            right.addmm_(q[block].mT, weight[block].to(q.dtype))
    # In the products' precision (float32 for large float32 weights): no m x r float64 copy.
    u, s, vh = svd_of_product(q, torch.ones_like(q[0]), right.to(q.dtype))
    return u.to(weight.dtype), s.to(weight.dtype), vh.to(weight.dtype)


def whitened_site(site: Site, choice: Any, stats: InputStats | RowCounts | None) -> Site:
    """``site`` with its weight replaced by the chosen form's best approximation *for the output*.

    The weight is whitened by the input statistics (fully for ``'svd'``, Kronecker-factored
    over the column modes for Tucker / TT / BlockTT), decomposed at the chosen rank, and
    mapped back. The result has exactly the chosen structure, so :func:`build_layer`'s
    decomposition of it at the same rank reproduces it (to float rounding). CP, padded
    sites and sites without statistics are returned unchanged. A low-rank (``'svd'``)
    linear or embedding result is returned as its SVD (``Site.svd``), which the layer is
    built from: no dense target is formed, and for tall weights (vocabulary tables and
    heads) nothing of the weight's size beside the weight itself (:func:`_tall_low_rank`).
    """
    from ..tensors import FactorizedTensor, TensorizedTensor
    from ..tensors._decompose import leading_subspace, svd_of_product

    if stats is not None and site.info.kind == "embedding" and choice.form == "svd":
        assert isinstance(stats, RowCounts)
        weight = site.weight.detach()
        return dataclasses.replace(
            site, svd=_tall_low_rank(weight, int(choice.rank), rows=stats.scales())
        )
    if stats is None or choice.form in ("dense", "cp") or site.info.kind not in ("linear", "conv"):
        return site
    weight = site.weight
    flat = weight.reshape(weight.shape[0], -1)
    if choice.form == "svd":
        assert isinstance(stats, InputStats)
        rank = int(choice.rank if site.info.kind == "linear" else choice.rank[1])
        if site.info.kind == "linear" and flat.shape[0] > flat.shape[1]:
            return dataclasses.replace(
                site, svd=_tall_low_rank(flat.detach(), rank, whitening=stats.whitening())
            )
        work = flat.double()  # after the tall case: a head's float64 copy doubles its size
        if stats.full:  # the left subspace of W L from W C W^T: no n x n whitening made
            u = _top_eigenvectors(stats.whitened_gram(flat), rank)
        else:
            u = leading_subspace(stats.whitening().apply(work), rank)
        # [W L]_r L^-1 = U U^T W L L^-1 = U (U^T W), as an SVD: no solve with L needed.
        u, s, vh = svd_of_product(u, torch.ones_like(u[0]), u.mT @ work)
        if site.info.kind == "linear":  # built from this SVD (a conv's goes by TT-SVD)
            return dataclasses.replace(
                site, svd=(u.to(weight.dtype), s.to(weight.dtype), vh.to(weight.dtype))
            )
        target = ((u * s) @ vh).to(weight.dtype)
        return dataclasses.replace(site, weight=target.reshape(weight.shape))
    else:
        if not stats.full:
            return site
        work = flat.double()
        if site.info.kind == "linear":
            rows, cols = choice.tensorized_shape
            if (math.prod(rows), math.prod(cols)) != tuple(
                weight.shape
            ):  # zero-padded: left as planned
                return site
            whitening = stats.whitening(cols)
            approx = TensorizedTensor.from_matrix(
                whitening.apply(work), rows, cols, rank=choice.rank, factorization=choice.form
            )
            target = whitening.undo(approx.to_matrix())
        else:
            whitening = stats.whitening(weight.shape[1:])
            whitened = whitening.apply(work).reshape(weight.shape)
            approx = FactorizedTensor.from_tensor(
                whitened, rank=choice.rank, factorization=choice.form
            )
            target = whitening.undo(approx.to_tensor().reshape(flat.shape))
    return dataclasses.replace(site, weight=target.reshape(weight.shape).to(weight.dtype))


@dataclasses.dataclass
class Calibrated:
    """What calibration measured.

    Input statistics and (``strategy="sensitivity"``) sensitivities.
    """

    stats: dict[str, InputStats]
    sensitivity: dict[str, float]
    batches: int
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    kept_rows: int = 0
    masked_rows: int = 0

    def note(self) -> str:
        """A line for the plan."""
        counted = sum(isinstance(s, RowCounts) for s in self.stats.values())
        text = (
            f"calibrated on {self.batches} batches: errors of {len(self.stats) - counted} "
            "linear/conv sites are relative output errors on that data (whitened spectra)"
        )
        if counted:
            text += (
                f"; low-rank errors of {counted} embeddings are weighted by how often the data "
                "looks up each row"
            )
        if self.masked_rows:
            share = self.masked_rows / max(self.kept_rows + self.masked_rows, 1)
            text += (
                "; masked positions (padding) left out of the statistics: "
                f"{100 * share:.1f}% of rows"
            )
        if self.sensitivity:
            text += "; sens = how much each site's output error grows by the model's output"
        return text


def embedding_bases(sites: Sequence[Site], stats: dict[str, Any]) -> dict[str, torch.Tensor]:
    """:func:`embedding_basis` of every factorizable embedding with row counts."""
    out = {}
    for site in sites:
        counts = stats.get(site.name)
        if (
            site.info.kind == "embedding"
            and site.info.factorizable
            and isinstance(counts, RowCounts)
            and counts.count
            and not counts.unsupported
            and site.weight is not None
        ):
            out[site.name] = embedding_basis(site.weight, counts)
    return out


def calibrate(
    gm: fx.GraphModule,
    sites: Sequence[Site],
    calibration: Iterable[Any],
    *,
    sensitivity: bool,
    progress: Any = None,
    mask: Any = attention_mask,
    ranks: Distributed | None = None,
) -> Calibrated:
    """Collect statistics (and sensitivities) for ``sites`` of the captured ``gm``.

    ``mask`` maps a batch to a boolean mask over its positions (default: its
    ``attention_mask``); masked positions are left out of the statistics. ``ranks``: spread
    the work over a process group (see :mod:`tfx._distributed`).
    """
    import time

    batches = calibration_batches(calibration)
    clock = time.perf_counter()
    bar = progress(len(batches), "tfx: calibration") if progress else None
    masked = _Mask()
    stats = collect_statistics(gm, sites, batches, bar, mask, masked, ranks)
    if bar is not None:
        bar.close()
    timings = {"calibration (statistics)": time.perf_counter() - clock}
    sens: dict[str, float] = {}
    if sensitivity:
        clock = time.perf_counter()
        wanted = [s for s in sites if s.info.factorizable]
        bar = progress(len(wanted), "tfx: sensitivity") if progress else None
        sens = measure_sensitivity(
            gm,
            sites,
            batches[0],
            progress=bar,
            mask=mask(batches[0]) if mask else None,
            ranks=ranks,
            bases=embedding_bases(sites, stats),
        )
        if bar is not None:
            bar.close()
        timings["calibration (sensitivity)"] = time.perf_counter() - clock
    return Calibrated(stats, sens, len(batches), timings, masked.kept, masked.seen - masked.kept)
