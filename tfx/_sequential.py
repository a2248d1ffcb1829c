"""Sequential mode: factorize a model made of repeated blocks one block at a time.

``tfx.factorize(model, budget, calibration=..., sequential=True, inplace=True)`` never
captures the whole model, never holds more than one block's input statistics, and feeds each
block the outputs of the *factorized* blocks before it, so that later blocks are fitted to what
they will really see.

Stages::

    find_blocks        the model's largest nn.ModuleList of blocks of one class
    find sites         every linear / conv / embedding module (module discovery, no graph)
    trace              one model call per batch with each block's forward replaced by a stub
                       that records its inputs (the keyword arguments the model builds for it:
                       masks, positions) and passes the hidden state on: the prefix runs
                       (embeddings), no block does
    spectra            block by block on the *dense* model: statistics of the block's inputs,
                       candidates (spectra) of its sites, the statistics dropped, the block run
                       to give the next block its inputs; then the sites outside the blocks
    sensitivities      (calibrated, strategy "auto" or "sensitivity") each site's effect on
                       the model's output, from one backward pass of the first batch through
                       the blocks, last to first (tfx._block_sensitivity)
    choose             one allocation under the global budget (tfx.cost.plan_graph)
    decompose          prefix sites first; then block by block: statistics of its inputs as
                       the factorized blocks before it give them, its layers decomposed for
                       those inputs and swapped in, the factorized block run for the next;
                       then the sites after the blocks (the head) on the factorized outputs

Block inputs are kept per calibration batch on ``offload`` (``None``: where the block runs;
``"cpu"``; ``"disk"``: a temporary directory), and each block is moved to ``device`` for its
work and back. Sites that read one tensor inside a block (Q/K/V, gate/up) are found by the
identity of the tensor their forwards receive, and get joint shared-basis options as in the
one-shot path. Sensitivities are those of the one-shot path to first order, measured without
a forward of the whole model per site (see :mod:`tfx._block_sensitivity`); a site's error is
weighted by its sensitivity as in one shot.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import functools
import inspect
import math
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from ._block_sensitivity import checkpoint_every
from ._distributed import Distributed, assign, group_cost, plan_digest, resolve, work_cost
from ._errors import OptionError, TfxError
from ._shared import SiblingGroup, group_options, member_energies
from .cost import Choice, FactorizationPlan, Option, build_graph, candidates, plan_graph
from .cost._device import DeviceProfile
from .cost._whiten import InputStats
from .passes import Site
from .passes._analysis import check_model, check_weights, nothing_to_factorize
from .passes._calibrate import (
    attention_mask,
    calibration_batches,
    collect_statistics,
    embedding_bases,
)
from .passes._capture import call_with, split_inputs
from .passes._match import find_module_sites

__all__ = ["find_blocks", "BlockStream", "factorize_sequential"]


class _Stop(Exception):
    """Raised by a hook to end a model call early."""


def find_blocks(model: nn.Module, name: str | None = None) -> tuple[str, nn.ModuleList]:
    """The model's list of repeated blocks, as ``(name, list)``.

    ``name`` if given; else the ``nn.ModuleList`` holding the most parameters among those of
    two or more children of one class (``model.layers``, ``encoder.layer``, ``transformer.h``).

    Example:
        >>> import torch
        >>> layers = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(3)])
        >>> net = torch.nn.Sequential(layers)
        >>> find_blocks(net)[0]
        '0'
    """
    if name is not None:
        try:
            found = model.get_submodule(name)
        except AttributeError:
            found = None
        if not isinstance(found, nn.ModuleList | nn.Sequential) or len(found) == 0:
            raise OptionError(
                f"sequential={name!r} names no nn.ModuleList of {type(model).__name__}.\n"
                "Fix: name the list of the model's blocks, e.g. sequential='model.layers', or pass "
                "sequential=True to find it."
            )
        return name, found  # type: ignore[return-value]
    best: tuple[int, str, nn.ModuleList] | None = None
    for qual, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size and (best is None or size > best[0]):
            best = (size, qual, module)
    if best is None:
        raise OptionError(
            f"sequential=True found no list of repeated blocks in {type(model).__name__} (an "
            "nn.ModuleList of two or more modules of one class, as the layers of a transformer).\n"
            "Fix: name the list, e.g. sequential='encoder.layer', or factorize in one shot "
            "(sequential=False)."
        )
    return best[1], best[2]


class _Store:
    """One tensor per calibration batch, in memory (on ``device``) or on disk."""

    def __init__(self, offload: str | None) -> None:
        if offload not in (None, "cpu", "disk"):
            raise OptionError(
                f"offload={offload!r} is not one of None, 'cpu', 'disk'.\nFix: offload='cpu' keeps "
                "block inputs in host memory, offload='disk' in a temporary directory."
            )
        self.offload = offload
        self._items: dict[int, torch.Tensor] = {}
        self._dir = tempfile.TemporaryDirectory(prefix="tfx-") if offload == "disk" else None

    def put(self, i: int, value: torch.Tensor) -> None:
        value = value.detach()
        if self._dir is not None:
            torch.save(value.cpu(), Path(self._dir.name) / f"{i}.pt")
            return
        self._items[i] = value.cpu() if self.offload == "cpu" else value

    def get(self, i: int) -> torch.Tensor:
        if self._dir is not None:
            return torch.load(Path(self._dir.name) / f"{i}.pt", weights_only=True)
        return self._items[i]

    def close(self) -> None:
        self._items.clear()
        if self._dir is not None:
            self._dir.cleanup()


def _to(tree: Any, device: torch.device | None) -> Any:
    if device is None:
        return tree
    return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, tree)


def _no_cache(model: nn.Module, batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``batch`` as ``(args, kwargs)``, with ``use_cache=False`` where the model takes it.

    Blocks are run on their own, so nothing may be appended to a cache.
    """
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        params = {}
    args, kwargs = split_inputs(batch)
    if "use_cache" in params:
        kwargs.setdefault("use_cache", False)
    return args, kwargs


class _Runner(nn.Module):
    """Runs ``self.step(i)`` for batch ``(i,)``.

    It holds the model as ``.model``: the module-swap layout ``collect_statistics`` expects.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.step: Callable[[int], Any] = lambda i: None

    def forward(self, i: int) -> Any:
        return self.step(i)


class BlockStream:
    """Runs ``model``'s blocks one at a time over the calibration batches.

    Args:
        model: the model.
        blocks: its list of blocks (``find_blocks``).
        batches: the calibration batches (in the ``example_inputs`` format).
        masks: per batch, a boolean mask over its positions, or None.
        offload: where block inputs are kept between blocks (``None``, ``"cpu"``, ``"disk"``).
        device: the device a block is moved to for its work (None: where it is).
    """

    def __init__(
        self,
        model: nn.Module,
        blocks: nn.ModuleList,
        batches: Sequence[Any],
        masks: Sequence[torch.Tensor | None],
        offload: str | None = None,
        device: str | torch.device | None = None,
        ranks: Distributed | None = None,
    ) -> None:
        self.model, self.blocks, self.masks = model, blocks, list(masks)
        self.batches = [_no_cache(model, b) for b in batches]
        self.ranks = ranks
        self.local = (
            list(range(len(batches))) if ranks is None else list(ranks.shard(range(len(batches))))
        )
        if not self.local:
            raise OptionError(
                f"{len(batches)} calibration batches for {ranks.world if ranks else 1} processes: "
                f"rank {ranks.rank if ranks else 0} has none.\nFix: at least one calibration "
                "batch per process."
            )
        self.device = torch.device(device) if device is not None else None
        self.hidden = _Store(offload)
        self.calls: list[dict[int, tuple[tuple[Any, ...], dict[str, Any], int | None]]] = []
        self.runner = _Runner(model)
        self._batch = 0
        #: how often sites after the blocks are entered per model call (see :meth:`finish`)
        self._entries: dict[tuple[str, ...], int] = {}
        self._output: tuple[str, tuple[Any, ...]] = ("tensor", ())
        self._learn_output()

    # ------------------------------------------------------------------ model calls
    def _learn_output(self) -> None:
        """The structure of a block's output (a tensor, or a tuple led by the hidden state)."""

        def hook(_m: nn.Module, _a: Any, out: Any) -> None:
            if isinstance(out, tuple | list):
                self._output = ("tuple", tuple(None for _ in out[1:]))
            raise _Stop

        handle = self.blocks[0].register_forward_hook(hook)
        try:
            with torch.no_grad():
                self._call(self.local[0])
        except _Stop:
            pass
        finally:
            handle.remove()

    def _like(self, hidden: torch.Tensor) -> Any:
        kind, rest = self._output
        return hidden if kind == "tensor" else (hidden, *rest)

    @staticmethod
    def _split(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, int | None]:
        if args and isinstance(args[0], torch.Tensor):
            return args[0], 0
        if isinstance(kwargs.get("hidden_states"), torch.Tensor):
            return kwargs["hidden_states"], None
        raise TfxError(
            "sequential mode could not find a block's input: its first positional argument or "
            "keyword 'hidden_states' must be the hidden-state tensor.\nFix: factorize in one "
            "shot (sequential=False), or name another list of blocks."
        )

    @contextlib.contextmanager
    def stubs(self, mode: str, last: torch.Tensor | None = None) -> Iterator[None]:
        """Replace every block's forward by a stub for the model calls inside the block.

        ``"trace"``: record each block's call arguments per batch and the first block's input,
        and pass the hidden state on (the prefix runs, no block does). ``"finish"``: the last
        block returns the stored hidden state of the batch (the layers after the blocks run on
        the factorized blocks' output), or ``last`` when given.
        """
        if mode == "trace":
            self.calls = [{} for _ in self.blocks]
        final = len(self.blocks) - 1

        def stub(k: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            hidden, where = self._split(args, kwargs)
            if mode == "trace":
                rest_args = args[1:] if where == 0 else args
                rest_kwargs = {n: v for n, v in kwargs.items() if n != "hidden_states"}
                self.calls[k][self._batch] = (rest_args, rest_kwargs, where)
                if k == 0:
                    self.hidden.put(self._batch, hidden)
                if k == final:  # all recorded: what follows the blocks (a head) is not computed
                    raise _Stop
            elif k == final:
                stored = self.hidden.get(self._batch) if last is None else last
                hidden = stored.to(hidden.device)
            return self._like(hidden)

        for k, block in enumerate(self.blocks):
            block.forward = (lambda k: lambda *a, **kw: stub(k, a, kw))(k)  # type: ignore[method-assign]
        try:
            yield
        finally:
            for block in self.blocks:
                block.__dict__.pop("forward", None)
        if mode == "trace" and any(len(c) != len(self.local) for c in self.calls):
            raise TfxError(
                "sequential mode needs every block called once per model call; "
                f"{type(self.model).__name__} called its blocks "
                f"{[len(c) for c in self.calls]} times over {len(self.local)} batches.\n"
                "Fix: factorize in one shot (sequential=False)."
            )

    def _call(self, i: int) -> Any:
        self._batch = i
        args, kwargs = self.batches[i]
        return self.model(*args, **kwargs)

    def collect(
        self,
        sites: Sequence[Site],
        step: Callable[[int], Any],
        share: Sequence[Sequence[str]] = (),
        needed: Mapping[str, Collection[int] | None] | None = None,
    ) -> dict[str, Any]:
        """Statistics of ``sites``' inputs while ``step(i)`` runs for every batch ``i``.

        ``share``: groups of site names that receive one tensor (one moment each group).
        ``needed`` (with ranks): per site name, the ranks that read its statistics (see
        :func:`~tfx.passes._calibrate.collect_statistics`).
        """
        sites = [s for s in sites if s.info.factorizable]
        if not sites:
            with torch.no_grad():
                for i in self.local:
                    step(i)
            return {}
        self.runner.step = step
        return collect_statistics(
            self.runner,  # type: ignore[arg-type]
            sites,
            [(i,) for i in range(len(self.batches))],
            mask_fn=lambda b: self.masks[b[0]],
            ranks=self.ranks,
            share=share,
            needed=needed,
        )

    def trace(
        self,
        sites: Sequence[Site] = (),
        needed: Mapping[str, Collection[int] | None] | None = None,
    ) -> dict[str, Any]:
        """Record the blocks' inputs (see :meth:`stubs`).

        Returns the statistics of ``sites`` (layers before the blocks), recorded on the way.
        """

        def step(i: int) -> None:
            try:
                self._call(i)
            except _Stop:  # raised by the last block's stub
                pass

        with self.stubs("trace"):
            return self.collect(sites, step, needed=needed)

    def finish(
        self,
        sites: Sequence[Site] = (),
        *,
        tokens: bool = False,
        needed: Mapping[str, Collection[int] | None] | None = None,
    ) -> dict[str, Any]:
        """Statistics of ``sites`` (after the blocks) on the stored output of the last block.

        Each model call ends once ``sites`` have been entered as often as in the first full
        call (made once per stream): what follows them (an LM head's product, a loss) is not
        computed, their inputs being all that is observed. ``tokens``: set ``sites``' token
        counts (rows per forward) from the first batch.
        """
        if not sites:
            return {}
        first, key = self.local[0], tuple(site.name for site in sites)

        def step(i: int) -> Any:
            entered = 0
            stop = self._entries.get(key)  # None: not known yet (this call runs to its end)

            def seen(site: Site, x: Any) -> None:
                nonlocal entered
                entered += 1
                if tokens and i == first:
                    _set_tokens(site, x)
                if stop is not None and entered >= stop:
                    raise _Stop

            # Registered per call, after the statistics' own pre-hooks: they see the input first.
            handles = [
                self.model.get_submodule(site.name).register_forward_pre_hook(
                    lambda _m, args, site=site: seen(site, args[0] if args else None)
                )
                for site in sites
            ]
            try:
                self._call(i)
            except _Stop:
                pass
            finally:
                for handle in handles:
                    handle.remove()
            if stop is None and entered:
                self._entries[key] = entered

        with self.stubs("finish"):
            return self.collect(sites, step, needed=needed)

    def run_block(self, k: int, i: int, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Block ``k`` on batch ``i``'s stored input; returns its hidden-state output.

        ``hidden``: run on it instead (with batch ``i``'s other arguments).
        """
        args, kwargs, where = self.calls[k][i]
        hidden = _to(self.hidden.get(i) if hidden is None else hidden, self.device)
        args, kwargs = _to(args, self.device), _to(kwargs, self.device)
        if where == 0:
            out = self.blocks[k](hidden, *args, **kwargs)
        else:
            out = self.blocks[k](*args, hidden_states=hidden, **kwargs)
        return out if isinstance(out, torch.Tensor) else out[0]

    def advance(self, k: int) -> None:
        """Replace every batch's stored input by block ``k``'s output on it."""
        with torch.no_grad():
            for i in self.local:
                self.hidden.put(i, self.run_block(k, i))

    def statistics(
        self,
        k: int,
        sites: Sequence[Site],
        share: Sequence[Sequence[str]] = (),
        *,
        advance: bool = False,
        needed: Mapping[str, Collection[int] | None] | None = None,
    ) -> dict[str, Any]:
        """Input statistics of ``sites`` (block ``k``'s) on the stored inputs of block ``k``.

        ``share``: sibling groups (site names) that get one moment for their one input.
        ``advance``: also keep the block's outputs in place of its inputs, as :meth:`advance`
        does (one run of the block instead of two, where the block is not changed between).
        """

        def step(i: int) -> None:
            out = self.run_block(k, i)
            if advance:
                self.hidden.put(i, out)

        return self.collect(sites, step, share, needed)

    def close(self) -> None:
        self.hidden.close()


@dataclasses.dataclass
class _Parts:
    """Site indices: before the blocks, per block, after the blocks."""

    prefix: list[int]
    blocks: list[list[int]]
    suffix: list[int]


def _parts(sites: Sequence[Site], blocks_name: str, n_blocks: int, early: set[str]) -> _Parts:
    parts = _Parts([], [[] for _ in range(n_blocks)], [])
    for i, site in enumerate(sites):
        rest = (
            site.name[len(blocks_name) + 1 :] if site.name.startswith(blocks_name + ".") else None
        )
        if rest is not None and rest.split(".")[0].isdigit():
            parts.blocks[int(rest.split(".")[0])].append(i)
        elif site.name in early:
            parts.prefix.append(i)
        else:
            parts.suffix.append(i)
    return parts


def _set_tokens(site: Site, x: Any) -> None:
    """Set ``site.info.tokens`` (rows per forward, for FLOP counts) from its input ``x``."""
    if not isinstance(x, torch.Tensor) or site.info.kind == "conv":
        return
    rows = x.numel() if site.info.kind == "embedding" else x.numel() // max(x.shape[-1], 1)
    site.info = dataclasses.replace(site.info, tokens=max(int(rows), 1))


def _hooks(model: nn.Module, sites: Sequence[Site], members: Sequence[int], fn: Any) -> list[Any]:
    return [
        model.get_submodule(sites[i].name).register_forward_pre_hook(
            lambda _m, args, i=i: fn(i, args[0] if args else None)
        )
        for i in members
    ]


def _prefix_names(stream: BlockStream, sites: Sequence[Site]) -> set[str]:
    """The sites the model calls before its first block (their tokens set on the way)."""
    early: set[str] = set()

    def seen(i: int, x: Any) -> None:
        _set_tokens(sites[i], x)
        early.add(sites[i].name)

    def stop(_m: nn.Module, _a: Any) -> None:
        raise _Stop

    handles = _hooks(stream.model, sites, range(len(sites)), seen)
    handles.append(stream.blocks[0].register_forward_pre_hook(stop))
    try:
        with torch.no_grad():
            stream._call(stream.local[0])
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return early


def _return_freed_memory() -> None:
    """Hand the memory one block's work freed back to the system (glibc's ``malloc_trim``).

    glibc keeps freed chunks below its mmap threshold (up to 32 MiB each, per thread arena) in
    the process; after a block, that is a few hundred MB of resident memory no later block may
    reuse. Elsewhere than glibc this is a no-op.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return None


def _look_at_block(
    stream: BlockStream, k: int, sites: Sequence[Site], members: Sequence[int]
) -> list[list[int]]:
    """One run of block ``k`` on batch 0: its sites' tokens, and sibling groups.

    Siblings are linear sites whose forwards receive one tensor (they can share an input basis).
    """
    # The tensors themselves are kept until the run ends: an id or address could otherwise be
    # reused by a later tensor (ln_1's output freed, ln_2's allocated in its place).
    by_input: list[tuple[torch.Tensor, list[int]]] = []

    def seen(i: int, x: Any) -> None:
        _set_tokens(sites[i], x)
        site = sites[i]
        if not isinstance(x, torch.Tensor) or site.info.kind != "linear":
            return
        if not site.info.factorizable or site.held_params is not None:
            return
        group = next((members for seen, members in by_input if seen is x), None)
        if group is None:
            by_input.append((x, [i]))
        elif i not in group:
            group.append(i)

    handles = _hooks(stream.model, sites, members, seen)
    try:
        with torch.no_grad():
            stream.run_block(k, stream.local[0])
    finally:
        for handle in handles:
            handle.remove()
    return [group for _, group in by_input if len(group) > 1]


def _outside(total: int, sites: Sequence[Site]) -> int:
    """Parameters held outside the sites (each weight storage counted once)."""
    held = {
        s.weight.untyped_storage().data_ptr(): s.info.dense_params
        if s.held_params is None
        else s.held_params
        for s in sites
        if s.weight.numel()
    }
    return total - sum(held.values())


def _batches(calibration: Any, example_inputs: Any) -> list[Any] | None:
    if calibration is not None:
        return calibration_batches(calibration)
    return [example_inputs] if example_inputs is not None else None


def _masks(batches: Sequence[Any], mask_fn: Any) -> list[torch.Tensor | None]:
    masks = []
    for i, batch in enumerate(batches):
        mask = mask_fn(batch) if mask_fn is not None else None
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool):
            raise OptionError(
                f"calibration_mask returned {type(mask).__name__} for batch {i}; it must return a "
                "boolean tensor over the batch's positions (True: real data) or None.\n"
                "Fix: calibration_mask=lambda batch: batch['attention_mask'].bool()"
            )
        masks.append(mask)
    return masks


@dataclasses.dataclass
class _Schedule:
    """A stage's work items (site indices and sibling groups) in order, with their owners."""

    items: list[Any]
    costs: list[float]
    owners: list[int]
    #: per site name, the ranks whose items read its input statistics
    readers: dict[str, set[int]]


@dataclasses.dataclass
class _Job:
    """What a sequential run works on."""

    root: nn.Module
    sites: list[Site]
    parts: _Parts
    stream: BlockStream | None
    forms: Sequence[str]
    profile: DeviceProfile | None
    calibrated: bool
    ranks: Distributed | None = None
    #: per block: the names of its sibling groups (linears that receive one tensor)
    siblings: dict[int, list[list[str]]] = dataclasses.field(default_factory=dict)
    #: measure each site's sensitivity (calibrated, strategy "auto" or "sensitivity")
    measure: bool = False
    #: the measured sensitivities by site name, and the seconds they took
    sensitivity: dict[str, float] = dataclasses.field(default_factory=dict)
    sensitivity_s: float = 0.0
    progress: bool = False

    @property
    def probing(self) -> bool:
        """Whether this rank measures the sensitivities (the one holding the first batch)."""
        return (
            self.measure
            and self.stream is not None
            and (self.ranks is None or self.ranks.rank == 0)
        )


def _agree_tokens(job: _Job, indices: Sequence[int]) -> None:
    """With ranks: every rank takes rank 0's token counts.

    They are measured on the first batch, which is rank 0's: every rank then plans the same
    FLOPs as one process does.
    """
    if job.ranks is None:
        return
    tokens = job.ranks.exchange("tokens", lambda: [job.sites[i].info.tokens for i in indices])[0]
    for i, n in zip(indices, tokens, strict=True):
        job.sites[i].info = dataclasses.replace(job.sites[i].info, tokens=n)


def _spectra(
    job: _Job, progress: Any
) -> tuple[list[list[Option]], list[dict[str, Any]], list[Any]]:
    """Candidates of every site, and the sibling groups' joint options.

    Block by block on the dense model: one block's statistics in memory at a time.
    """
    from ._api import _sibling_node

    sites, stream = job.sites, job.stream
    options: list[list[Option]] = [[] for _ in sites]
    kept: list[dict[str, Any]] = [{} for _ in sites]
    planned: list[Any] = []

    def schedule(indices: Sequence[int], groups: Sequence[SiblingGroup] = ()) -> _Schedule:
        """The work items of ``indices`` and ``groups`` in order, their costs and owners.

        Made before the statistics: each moment then goes only to the ranks that read it.
        Readers of one moment together, the largest moment's first: each moment is let go
        after its last reader, before the next one's work starts (the sort keys are the same
        on every rank: widths, site indices and the sibling groups of names).
        """
        shared_as = {name: names[0] for names in job.siblings.get(block, []) for name in names}

        def first(item: int | SiblingGroup) -> int:
            return item.members[0] if isinstance(item, SiblingGroup) else item

        def moment(item: int | SiblingGroup) -> str:
            name = sites[first(item)].name
            return shared_as.get(name, name)

        def size(item: int | SiblingGroup) -> int:
            info = sites[first(item)].info
            return math.prod(info.weight_shape[1:]) if info.kind in ("linear", "conv") else 0

        leader: dict[str, int] = {}
        for item in [*indices, *groups]:
            leader[moment(item)] = min(leader.get(moment(item), first(item)), first(item))
        items: list[int | SiblingGroup] = sorted(
            [*indices, *groups], key=lambda item: (-size(item), leader[moment(item)], first(item))
        )
        costs = [
            group_cost([sites[i].info.weight_shape for i in item.members])
            if isinstance(item, SiblingGroup)
            else work_cost(sites[item].info.weight_shape)
            for item in items
        ]
        owners = [0] * len(items) if job.ranks is None else assign(costs, job.ranks.world)
        readers: dict[str, set[int]] = {}
        for item, owner in zip(items, owners, strict=True):
            for i in item.members if isinstance(item, SiblingGroup) else [item]:
                readers.setdefault(sites[i].name, set()).add(owner)
        return _Schedule(items, costs, owners, readers)

    def fill(
        work_items: _Schedule, stats: dict[str, Any], groups: Sequence[SiblingGroup] = ()
    ) -> list[list[torch.Tensor]]:
        """Candidates of the scheduled sites; returns the member energies of ``groups``.

        With a process group, each item is made by its owner and sent to every rank.
        """
        items, costs, owners = work_items.items, work_items.costs, work_items.owners

        def first(item: int | SiblingGroup) -> int:
            return item.members[0] if isinstance(item, SiblingGroup) else item

        reads = [stats.get(sites[first(item)].name) for item in items]
        rank = 0 if job.ranks is None else job.ranks.rank
        uses = collections.Counter(
            id(read) for read, owner in zip(reads, owners, strict=True) if owner == rank
        )

        def let_go(read: Any) -> None:
            for name in [name for name, value in stats.items() if value is read]:
                del stats[name]
            for j, other in enumerate(reads):
                if other is read:
                    reads[j] = None

        def work(k: int) -> Any:
            item, read = items[k], reads[k]
            if isinstance(item, SiblingGroup):
                made: Any = member_energies(item, sites, read)
            else:
                keep: dict[str, Any] = {}
                site = sites[item]
                found = candidates(site.info, site.weight, job.forms, read, job.profile, keep=keep)
                made = (found, keep)
            uses[id(read)] -= 1
            if not uses[id(read)] and read is not None:  # its last reader here
                let_go(read)
            return made

        if job.ranks is None:
            made = [work(k) for k in range(len(items))]
        else:  # each site's spectra and each group's energies made once, by one rank, shared
            made = job.ranks.map_assigned(range(len(items)), costs, work, what="spectra")
        energies: dict[int, Any] = {}
        for item, result in zip(items, made, strict=True):
            if isinstance(item, SiblingGroup):
                energies[id(item)] = result
            else:
                options[item], kept[item] = result
        return [energies[id(group)] for group in groups]

    block = -1  # the block whose sibling groups schedule() reads (-1: none)
    prefix = [sites[i] for i in job.parts.prefix]
    work_items = schedule(job.parts.prefix)
    if job.measure:  # rank 0 measures the sensitivities: it reads the embeddings' row counts
        for site in prefix:
            if site.info.kind == "embedding":
                work_items.readers.setdefault(site.name, set()).add(0)
    stats = (
        stream.trace(prefix, needed=work_items.readers)
        if stream is not None and job.calibrated
        else {}
    )
    if stream is not None and not job.calibrated:
        stream.trace()
    bases = embedding_bases(prefix, stats) if job.probing else {}
    probes = _Store(stream.hidden.offload) if stream is not None and job.probing else None
    fill(work_items, stats)
    pending: list[tuple[SiblingGroup, Any]] = []
    for k, members in enumerate(job.parts.blocks):
        groups: list[list[int]] = []
        with _on_device(job, k):
            if stream is not None:
                groups = _look_at_block(stream, k, sites, members)
                _agree_tokens(job, members)
            job.siblings[k], block = [[sites[i].name for i in group] for group in groups], k
            joint = job.calibrated and "svd" in job.forms
            sibs = [SiblingGroup(g, f"{sites[g[0]].name}+{len(g) - 1}") for g in groups]
            work_items = schedule(members, sibs if joint else ())
            if probes is not None and k % checkpoint_every(len(job.parts.blocks)) == 0:
                # the probe batch's input of this block, for the sensitivities (every few
                # blocks: the backward pass recomputes the inputs in between)
                probes.put(k, stream.hidden.get(stream.local[0]))  # type: ignore[union-attr]
            # The dense block's outputs are kept on the way: the next block's inputs.
            stats = (
                stream.statistics(
                    k,
                    [sites[i] for i in members],
                    job.siblings[k],
                    advance=True,
                    needed=work_items.readers,
                )
                if job.calibrated
                else {}
            )
            energies = fill(work_items, stats, sibs if joint else ())
            pending.extend(zip(sibs if joint else (), energies, strict=True))
            del stats
            if stream is not None and not job.calibrated:
                stream.advance(k)
        _return_freed_memory()
        if progress is not None:
            progress.update(1)
    block = -1
    suffix = [sites[i] for i in job.parts.suffix]
    work_items = schedule(job.parts.suffix)
    stats = (
        stream.finish(suffix, tokens=True, needed=work_items.readers)
        if stream is not None and job.calibrated
        else {}
    )
    if stream is not None:
        if not job.calibrated:
            _suffix_tokens(stream, sites, job.parts.suffix)
        _agree_tokens(job, job.parts.suffix)
    fill(work_items, stats)
    del stats
    if job.measure:
        _sensitivities(job, probes, bases)
    weights = [job.sensitivity.get(s.name, 1.0) for s in sites]
    for sib, made in pending:  # options weighed as the planner weighs their members
        member = [options[i] for i in sib.members]
        member_weights = [weights[i] for i in sib.members]
        opts = group_options(sib, sites, member, None, member_weights, False, energies=made)
        planned.append(_sibling_node(sib, sites, opts))
    return options, kept, planned


def _sensitivities(job: _Job, probes: _Store | None, bases: dict[str, torch.Tensor]) -> None:
    """``job.sensitivity``: measured by the rank holding the first batch, sent to every rank."""
    from . import _api
    from ._block_sensitivity import block_sensitivities

    stream = job.stream
    assert stream is not None
    clock = time.perf_counter()

    def measure() -> dict[str, float] | None:
        if probes is None:
            return None
        bar = _api._progress(len(stream.blocks), job.progress, "tfx: sensitivity")
        try:
            probes.put(len(stream.blocks), stream.hidden.get(stream.local[0]))
            return block_sensitivities(
                stream,
                job.sites,
                job.parts,
                probes,
                bases,
                lambda k: _on_device(job, k),
                bar,
            )
        finally:
            probes.close()
            if bar is not None:
                bar.close()

    found = measure() if job.ranks is None else job.ranks.exchange("sensitivity", measure)[0]
    job.sensitivity = dict(found or {})
    job.sensitivity_s = time.perf_counter() - clock


def _suffix_tokens(stream: BlockStream, sites: Sequence[Site], members: Sequence[int]) -> None:
    handles = _hooks(stream.model, sites, members, lambda i, x: _set_tokens(sites[i], x))
    try:
        with stream.stubs("finish"), torch.no_grad():
            stream._call(stream.local[0])
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _on_device(job: _Job, k: int) -> Iterator[None]:
    """Block ``k`` (and its sites' weights) on the stream's device for the duration."""
    stream = job.stream
    if stream is None or stream.device is None:
        yield
        return
    block = stream.blocks[k]
    home = next((p.device for p in block.parameters()), None)
    block.to(stream.device)
    _refresh(job, k)
    try:
        yield
    finally:
        if home is not None:
            block.to(home)
        _refresh(job, k)


def _refresh(job: _Job, k: int) -> None:
    """Point block ``k``'s sites at their modules' weights (after a move)."""
    for i in job.parts.blocks[k]:
        module = job.root.get_submodule(job.sites[i].name)
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and job.sites[i].weight.numel():
            job.sites[i].weight = weight.detach()
            bias = getattr(module, "bias", None)
            job.sites[i].bias = bias.detach() if isinstance(bias, torch.Tensor) else None


def _to_decompose(
    sites: Sequence[Site], members: Sequence[int], plan: FactorizationPlan, share: Any
) -> list[Site]:
    """The sites of ``members`` whose input statistics the decomposition needs.

    Those not kept dense, and every member of a sibling group one of whose members is not:
    a layer the plan keeps dense needs no moment (an MLP down projection's is the largest).
    """
    names = {
        sites[i].name
        for i in members
        if plan.choice(sites[i].name).form != "dense" or sites[i].held_params is not None
    }
    for group in share:
        if names.intersection(group):
            names.update(group)
    return [sites[i] for i in members if sites[i].name in names]


def _releasing(
    chosen: list[Site], plan: FactorizationPlan, build: Any, now: dict[str, Any]
) -> tuple[list[Site], Callable[[Site, Choice], nn.Module]]:
    """``chosen``, the largest input moment's readers first, and a ``build`` that lets go.

    The ``build`` returned drops each moment from ``now`` once its last reader is built.
    Readers of one moment stay together and in order (a sibling group's members); the largest
    moment (an MLP down projection's) is freed before the next block's layers are built.
    """

    def size(site: Site) -> int:
        found = now.get(site.name)
        return int(found.features) if isinstance(found, InputStats) else 0

    order = sorted(range(len(chosen)), key=lambda i: (-size(chosen[i]), i))
    chosen = [chosen[i] for i in order]
    left = collections.Counter(
        id(now.get(s.name)) for s in chosen if plan.choice(s.name).form != "dense"
    )

    def built(site: Site, choice: Choice) -> nn.Module:
        layer = build(site, choice)
        read = now.get(site.name)
        left[id(read)] -= 1
        if read is not None and not left[id(read)]:
            for name in [name for name, value in now.items() if value is read]:
                del now[name]
        return layer

    return chosen, built


def _decompose(
    job: _Job, the_plan: FactorizationPlan, groups: Sequence[Any], progress: Any
) -> None:
    """Build and swap in the chosen layers.

    The prefix, then each block on the factorized blocks' outputs, then the suffix.
    """
    from ._distributed import builders, prebuilt_builder
    from .passes._decompose import Decomposer
    from .passes._rewrite import swap_sites

    sites, stream = job.sites, job.stream
    now: dict[str, Any] = {}  # the current block's input statistics
    build = Decomposer(sites, the_plan, lambda site: now.get(site.name), groups)
    tied = {sites[i].name for g in groups for i in g.members}
    spread = None

    def unit(site: Site, choice: Choice) -> str:
        return f"basis:{choice.group}" if choice.group else site.name

    def spread_calls(calls: Sequence[tuple[Site, Choice]]) -> list[tuple[Site, Choice]]:
        # A tied table's readers may sit before and after the blocks: each rank builds the
        # table itself (the same computation, the same bits) so that they share it.
        return [(s, c) for s, c in calls if c.form != "dense" and s.name not in tied]

    if job.ranks is not None:
        ranks = job.ranks

        def spread(calls: list[tuple[Site, Choice]]) -> Any:
            return prebuilt_builder(ranks, spread_calls(calls), build, unit)

    def readers(indices: Sequence[int]) -> dict[str, set[int] | None] | None:
        """Per site of ``indices``, the ranks whose decompositions read its statistics.

        The builder of a spread layer; no rank for a layer kept dense; every rank for a
        tied reader (each builds the table). The same calls, in the same order, as
        ``swap_sites`` hands to ``spread``: the same owners.
        """
        if job.ranks is None:
            return None
        chosen = [sites[i] for i in indices]
        calls = [
            (s, the_plan.choice(s.name))
            for s in chosen
            if the_plan.choice(s.name).form != "dense" or s.held_params is not None
        ]
        owner = builders(job.ranks.world, spread_calls(calls), unit)
        out: dict[str, set[int] | None] = {}
        for s in chosen:
            if s.name in owner:
                out[s.name] = {owner[s.name]}
            elif the_plan.choice(s.name).form == "dense" and s.held_params is None:
                out[s.name] = set()
            else:
                out[s.name] = None
        return out

    def emit(indices: Sequence[int]) -> bool:
        chosen = [sites[i] for i in indices]
        builder: Any = build
        if spread is None and now:  # one process: each moment let go after its last reader
            chosen, builder = _releasing(chosen, the_plan, build, now)
        swap_sites(job.root, "module_swap", chosen, the_plan, builder, tied=tied, spread=spread)
        return any(the_plan.choice(s.name).form != "dense" for s in chosen)

    def release(indices: Sequence[int]) -> None:
        for i in indices:  # the dense weight goes with its module (unless a tied reader needs it)
            if sites[i].name not in tied:
                sites[i].weight = sites[i].weight.new_empty(0)

    prefix = [sites[i] for i in job.parts.prefix]
    if stream is not None and job.calibrated:
        now = stream.trace(prefix, needed=readers(job.parts.prefix))
    if emit(job.parts.prefix) and stream is not None and job.calibrated:
        stream.trace()  # the blocks' inputs from the factorized prefix
    release(job.parts.prefix)  # the vocabulary table's dense weight: not held to the end
    for k, members in enumerate(job.parts.blocks):
        with _on_device(job, k):
            if stream is not None and job.calibrated:
                now.clear()
                share = job.siblings.get(k, [])
                wanted = _to_decompose(sites, members, the_plan, share)
                now.update(stream.statistics(k, wanted, share, needed=readers(members)))
            emit(members)
            now.clear()
            if stream is not None and job.calibrated:
                stream.advance(k)
        release(members)
        _return_freed_memory()
        if progress is not None:
            progress.update(1)
    if stream is not None and job.calibrated:
        now.update(
            stream.finish([sites[i] for i in job.parts.suffix], needed=readers(job.parts.suffix))
        )
    emit(job.parts.suffix)
    release(job.parts.suffix)
    now.clear()


def factorize_sequential(
    model: nn.Module,
    budget: Any,
    *,
    blocks: str | None,
    example_inputs: Any,
    calibration: Any,
    forms: Sequence[str],
    kinds: Sequence[str],
    skip: Sequence[str],
    strategy: str,
    device_profile: DeviceProfile | None,
    verify: bool,
    progress: bool,
    plan: FactorizationPlan | None,
    calibration_mask: Any,
    inplace: bool,
    offload: str | None,
    device: str | torch.device | None,
    distributed: bool | None = None,
) -> nn.Module:
    """``tfx.factorize(..., sequential=...)``: see the module docstring and ``tfx.factorize``."""
    from . import _api
    from ._tied import tied_groups
    from .passes._emit import Emit, tie_groups
    from .passes._pass import Compilation

    start = time.perf_counter()
    check_model(model)
    _api._check_names(forms, _api.FORMS, "form")
    _api._check_names(kinds, _api.KINDS, "kind")
    _api._check_skip(model, skip)
    batches = _batches(calibration, example_inputs)
    ties = tie_groups(model)
    was_training = model.training
    model.eval()
    reference = None
    try:
        if example_inputs is not None and verify:
            with torch.no_grad():
                reference = call_with(model, example_inputs)
        root = model if inplace else copy.deepcopy(model)
    finally:
        model.train(was_training)
    root.eval()
    blocks_name, block_list = find_blocks(root, blocks)
    sites = find_module_sites(root, kinds=kinds, skip=skip)
    if not any(s.info.factorizable for s in sites) and not any(
        s.info.reason.startswith("tied weight") for s in sites
    ):
        raise nothing_to_factorize(model, kinds)
    check_weights(sites)
    mask_fn = calibration_mask if calibration_mask is not None else attention_mask
    ranks = resolve(distributed)
    stream = None
    if batches is not None:
        masks = _masks(batches, mask_fn)
        stream = BlockStream(root, block_list, batches, masks, offload, device, ranks)
    early = _prefix_names(stream, sites) if stream is not None else set()
    job = _Job(
        root,
        sites,
        _parts(sites, blocks_name, len(block_list), early),
        stream,
        forms,
        device_profile,
        calibration is not None,
        ranks,
        measure=calibration is not None and plan is None and strategy in ("auto", "sensitivity"),
        progress=progress,
    )
    _agree_tokens(job, job.parts.prefix)
    groups = tied_groups(sites, kinds, skip, root)
    timings: dict[str, float] = {"capture + match": time.perf_counter() - start}
    bar = _api._progress(len(block_list), progress, "tfx: blocks (spectra)")
    try:
        if plan is None:
            clock = time.perf_counter()
            options, kept, planned = _spectra(job, bar)
            timings["candidates (spectra, block by block)"] = (
                time.perf_counter() - clock - job.sensitivity_s
            )
            if job.measure:
                timings["calibration (sensitivity)"] = job.sensitivity_s
            planned = [_api._tied_node(g, sites, forms, device_profile) for g in groups] + planned
            nodes = [
                {
                    "itemsize": s.weight.element_size(),
                    "held": s.held_params,
                    "kept": k,
                    "weight": job.sensitivity.get(s.name, 1.0),
                }
                for s, k in zip(sites, kept, strict=True)
            ]
            graph = build_graph([s.info for s in sites], options, (), extra=nodes, groups=planned)
            clock = time.perf_counter()
            total = _api._count_params(root)

            def choose() -> FactorizationPlan:
                return plan_graph(
                    graph,
                    budget,
                    total=total,
                    strategy=strategy,
                    profile=device_profile,
                    outside=_outside(total, sites),
                )

            # Every rank plans from the same candidates; the ranks check that they agree.
            the_plan = choose() if ranks is None else ranks.step("plan", choose, digest=plan_digest)
            timings["choose"] = time.perf_counter() - clock
            for choice in the_plan.choices:
                choice.sensitivity = job.sensitivity.get(choice.site)
        else:
            the_plan = copy.deepcopy(plan)
            _api._check_plan(the_plan, sites)
        if bar is not None:
            bar.close()
        bar = _api._progress(len(block_list), progress, "tfx: blocks (decompose)")
        clock = time.perf_counter()
        _decompose(job, the_plan, groups, bar)
        timings["decompose (block by block)"] = time.perf_counter() - clock
    finally:
        if bar is not None:
            bar.close()
        if stream is not None:
            stream.close()
    the_plan.capture, the_plan.emit = "sequential", "modules"
    n = len(batches) if batches is not None else 0
    weighs = (
        "each site's error weighted by its sensitivity, measured on the first batch (sens)"
        if job.measure
        else "every site weighs the same"
    )
    note = f"sequential: {len(block_list)} blocks of {blocks_name!r} factorized one at a time" + (
        f", each calibrated on {n} batches as the factorized blocks before it give them "
        f"(errors are relative output errors on that data; {weighs})"
        if calibration is not None
        else " from their weights (no calibration)"
    )
    if plan is None:
        the_plan.notes.append(note)
    the_plan.timings = timings
    state = Compilation(model, example_inputs, ties=ties, reference=reference)
    state.plan, state.result, state.emission = the_plan, root, "modules"
    Emit(given=plan is not None, verify=verify)(state)
    timings["total"] = time.perf_counter() - start
    if ranks is not None:
        ranks.record(the_plan)
    return root
