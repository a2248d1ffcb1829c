"""``tfx.factorize(..., distributed=...)``: one factorization spread over a process group.

Under ``torchrun`` (or any initialised ``torch.distributed`` process group) every rank runs
``tfx.factorize`` on the same model with the same ``calibration`` iterable, and:

* each rank runs its shard of the calibration batches (batch ``i`` on rank ``i % world``);
  the input statistics are combined exactly (:meth:`Distributed.combine_stats`): their
  float64 sums are compensated pairs (:mod:`tfx.cost._compensated`), so the combined moment
  has the bits one process gets on all the batches; where the readers of a moment are known
  beforehand (sequential mode), it is combined on those ranks only;
* per-site work (sensitivities, candidates and spectra, decompositions) is assigned to ranks
  by estimated cost (:func:`assign`: largest first onto the least loaded rank), done once by
  its owner and sent to every rank (:meth:`Distributed.map_assigned`);
* the plan is made on every rank from the same inputs, and the ranks check that they agree;
* every rank ends with the identical factorized model.

Every distributed step ends with a status exchange (:meth:`Distributed.step`): a rank whose
local work raised sends its error instead of its result, and every rank then raises
:class:`~tfx.DistributedError` naming it, instead of waiting for it forever. A rank that dies
outright (killed, out of memory) sends nothing: the others wait for it up to the process
group's ``timeout`` (``init_process_group(..., timeout=...)``), then torch raises.

The primitives (``shard``, ``step``, ``map_assigned``, ``combine_stats``) take plain lists of
work items and functions, so that other drivers (the sequential mode) can use them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import time
import traceback
from collections.abc import Callable, Collection, Sequence
from typing import Any, Final, TypeVar

import torch

from ._errors import DistributedError, OptionError
from .cost._whiten import InputStats, RowCounts

__all__ = [
    "Distributed",
    "assign",
    "builders",
    "group_cost",
    "prebuilt_builder",
    "resolve",
    "work_cost",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

_MSG_NOT_INITIALISED: Final = """\
distributed=True needs an initialised torch.distributed process group, and there is none \
(torch.distributed.is_available() = {available}, is_initialized() = {initialized}).
Fix: start the processes with torchrun and initialise the group before tfx.factorize:
    torch.distributed.init_process_group("gloo")   # or "nccl", one GPU per rank
    result = tfx.factorize(model, 0.5, calibration=batches, distributed=True)
or leave distributed=None (the default) to run in one process when there is no group."""

_MSG_FAILED: Final = """\
{ranks} of {world} failed in {what}; every rank stops here.
rank {rank}: {error}
Fix: fix the cause on that rank (tfx.factorize(..., distributed=False) runs the same work in \
one process and raises the error there)."""

_MSG_DISAGREE: Final = """\
the ranks' results of {what!r} differ although their inputs are the same (digests \
{digests}); the factorized models would differ between ranks.
Fix: run every rank with the same model, calibration batches, options and torch version, \
and the same torch.set_num_threads (float results can depend on the thread count)."""


@dataclasses.dataclass
class Distributed:
    """One rank's view of the process group tfx spreads its work over.

    Attributes:
        rank: this process's rank in ``group``.
        world: the number of processes in ``group``.
        group: the process group (None: the default one).
        waited: seconds spent in exchanges, per step (for the plan's timings).

    Example:
        >>> ranks = Distributed(rank=0, world=1)  # normally resolve(None) under torchrun
        >>> ranks.shard(list(range(5)))
        [0, 1, 2, 3, 4]
    """

    rank: int
    world: int
    group: Any = None
    waited: dict[str, float] = dataclasses.field(default_factory=dict)

    # ------------------------------------------------------------------ sharding
    def shard(self, items: Sequence[T]) -> Sequence[T]:
        """This rank's share of ``items``: item ``i`` goes to rank ``i % world``."""
        return items[self.rank :: self.world]

    # ------------------------------------------------------------ status exchange
    def step(
        self, what: str, fn: Callable[[], T], *, digest: Callable[[T], str] | None = None
    ) -> T:
        """Run ``fn()`` here, then exchange its status with every rank.

        Every rank calls ``step`` with the same ``what``. If ``fn`` raised on some ranks,
        every rank raises :class:`~tfx.DistributedError` naming the first failing rank and
        its error (chained to it on that rank); if it raised on every rank with errors of
        one type (the same user error a single process would raise), each rank re-raises its
        own. With ``digest``, the ranks also check that ``digest(result)`` is the same
        everywhere (work every rank does in full, such as the plan).

        Returns:
            ``fn()``'s result on this rank.
        """
        result, failure = _attempt(fn)
        mark = None if failure is not None or digest is None else digest(result)  # type: ignore[arg-type]
        statuses = self._gather(what, (_describe(failure), type(failure).__name__, mark))
        self._raise_failures(what, statuses, failure)
        marks = [m for _, _, m in statuses]
        if digest is not None and len(set(marks)) > 1:
            raise DistributedError(_MSG_DISAGREE.format(what=what, digests=marks))
        return result  # type: ignore[return-value]

    def exchange(self, what: str, fn: Callable[[], T]) -> list[T]:
        """Run ``fn()`` here and return every rank's result, in rank order.

        The results come with :meth:`step`'s status exchange: a failure anywhere raises
        everywhere. They travel as ``torch.save`` bytes: tensors that share storage, and
        modules that share parameters, still do after the exchange; tensors on a GPU arrive on
        this rank's current CUDA device.
        """
        payload, failure = _attempt(lambda: _dumps(fn()))
        size = 0 if payload is None else len(payload)
        statuses = self._gather(what, (_describe(failure), type(failure).__name__, size))
        self._raise_failures(what, statuses, failure)
        sizes = [status[2] for status in statuses]
        if self.world == 1:
            return [_loads(payload)]  # type: ignore[arg-type]
        # the bytes themselves travel as tensors, not pickled objects (several times faster)
        local = torch.frombuffer(bytearray(payload), dtype=torch.uint8)  # type: ignore[arg-type]
        parts = self._swap(local.to(self._device()), [(n,) for n in sizes], what)
        return [_loads(memoryview(part.cpu().numpy())) for part in parts]

    def map_assigned(
        self, items: Sequence[T], costs: Sequence[float], fn: Callable[[T], R], *, what: str
    ) -> list[R]:
        """``[fn(item) for item in items]``: each item done once, every result on every rank.

        Each item is computed by the rank :func:`assign` gives it (by ``costs``).
        Items whose results must stay together (modules sharing a Parameter) are put in one
        item: one rank's results are sent in one piece, so what they share stays shared.

        Example:
            >>> Distributed(rank=0, world=1).map_assigned([3, 1, 2], [3, 1, 2], str, what="demo")
            ['3', '1', '2']
        """
        owners = assign(costs, self.world)
        mine = [i for i, owner in enumerate(owners) if owner == self.rank]
        parts = self.exchange(what, lambda: {i: fn(items[i]) for i in mine})
        results: dict[int, R] = {}
        for part in parts:
            results.update(part)
        return [results[i] for i in range(len(items))]

    # --------------------------------------------------------------- statistics
    def sum_ints(self, values: Sequence[int], *, what: str) -> list[int]:
        """Every rank's ``values`` added up, element by element."""
        parts = self._gather(what, [int(v) for v in values])
        return [sum(column) for column in zip(*parts, strict=True)]

    def combine_stats(
        self,
        stats: Sequence[InputStats | RowCounts],
        needed: Sequence[Collection[int] | None] | None = None,
    ) -> list[InputStats | RowCounts | None]:
        """Statistics holding every rank's rows: ``stats[k]`` of all ranks added up.

        Every rank passes its statistics of the same sites, in the same order. Moments are
        added as compensated pairs, so the result has the bits that one process gets from all
        the rows, whatever the order of the parts (see :mod:`tfx.cost._compensated`); row
        counts of embeddings are whole numbers, added exactly.

        ``needed[k]``: the ranks that use ``stats[k]`` (None, or ``needed`` None: every rank).
        Each rank's part travels only to those ranks, which add the other ranks' parts into
        their own (no third copy); the other ranks get None for it. With two processes and
        each moment read by one of them, that is half the bytes and half the additions.
        """
        meta = self._gather("statistics", [(s.count, bool(s.unsupported)) for s in stats])
        everyone = set(range(self.world))
        out: list[InputStats | RowCounts | None] = []
        sends: list[torch.Tensor] = []  # (to each destination) this rank's parts
        targets: list[int] = []
        receives: list[tuple[int, int, list[torch.Tensor]]] = []  # (k, from rank, parts)
        for k, local in enumerate(stats):
            counts = [rank_meta[k][0] for rank_meta in meta]
            unsupported = any(rank_meta[k][1] for rank_meta in meta)
            dest = everyone if needed is None or needed[k] is None else set(needed[k])
            if dest == everyone:
                merged = self._combined(local, counts)
                merged.unsupported = unsupported
                out.append(merged)
                continue
            local.unsupported = unsupported
            out.append(local if self.rank in dest else None)
            if not any(counts):
                continue
            parts = _parts(local)
            for r in sorted(dest - {self.rank}):  # to each rank that reads it
                sends += parts
                targets += [r] * len(parts)
            if self.rank in dest:
                for r in sorted(everyone - {self.rank}):
                    receives.append((k, r, [torch.empty_like(t) for t in parts]))
        self._send_receive(sends, targets, receives)
        for k, r, parts in receives:  # the other ranks' parts, added into this rank's
            local = stats[k]
            count = meta[r][k][0]
            if isinstance(local, RowCounts):
                local.merge(parts[0], count)
            else:
                local.merge(parts[0], parts[1], count)
        return out

    def _combined(
        self, local: InputStats | RowCounts, counts: Sequence[int]
    ) -> InputStats | RowCounts:
        """New statistics of every rank's parts (each rank gets every part)."""
        if isinstance(local, RowCounts):
            merged: InputStats | RowCounts = RowCounts(local.rows)
            if any(counts):
                for table, count in zip(self._all_gather(local.counts), counts, strict=True):
                    merged.merge(table, count)
            return merged
        merged = InputStats(local.features, full=local.full)
        if any(counts):  # hi and lo apart: no stacked copy of the pair
            hi, lo = local.pair()
            his, los = self._all_gather(hi), self._all_gather(lo)
            for part_hi, part_lo, count in zip(his, los, counts, strict=True):
                merged.merge(part_hi, part_lo, count)
        return merged

    def _send_receive(
        self,
        sends: Sequence[torch.Tensor],
        targets: Sequence[int],
        receives: Sequence[tuple[int, int, list[torch.Tensor]]],
    ) -> None:
        """Send ``sends[i]`` to rank ``targets[i]`` and receive every ``receives`` part, at once."""
        import torch.distributed as dist

        if self.world == 1 or (not sends and not receives):
            return
        clock = time.perf_counter()
        device = self._device()
        outgoing = [t.to(device).contiguous() for t in sends]
        incoming = [(part, part.to(device)) for _, _, parts in receives for part in parts]
        sources = [r for _, r, parts in receives for _ in parts]
        requests = [
            dist.isend(t, self._global(r), group=self.group)
            for t, r in zip(outgoing, targets, strict=True)
        ]
        requests += [
            dist.irecv(buffer, self._global(r), group=self.group)
            for (_, buffer), r in zip(incoming, sources, strict=True)
        ]
        for request in requests:
            request.wait()
        for part, buffer in incoming:
            if buffer is not part:
                part.copy_(buffer)
        self._waited("statistics", clock)

    def record(self, plan: Any) -> None:
        """Note the process group in ``plan`` and add this rank's exchange waits to its timings.

        The stages' own timings (calibration, candidates, decompositions) are this rank's.
        """
        import torch.distributed as dist

        backend = dist.get_backend(self.group) if dist.is_initialized() else "no group"
        plan.notes.append(
            f"spread over {self.world} process{'es' if self.world != 1 else ''} "
            f"(torch.distributed, {backend}): calibration "
            f"batch i on rank i % {self.world}, statistics combined exactly; sensitivities, "
            "spectra and decompositions each made once, by rank, and shared; timings are one "
            "rank's"
        )
        plan.timings.update({f"exchange: {what}": s for what, s in self.waited.items()})

    # ---------------------------------------------------------------- internals
    def _gather(self, what: str, obj: Any) -> list[Any]:
        import torch.distributed as dist

        if self.world == 1:  # nothing to exchange (and no process group needed)
            return [obj]
        clock = time.perf_counter()
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        self._waited(what, clock)
        return out

    def _all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (same shape and dtype everywhere), on ``tensor``'s device."""
        import torch.distributed as dist

        if self.world == 1:
            return [tensor]
        device = self._device()
        local = tensor.detach().to(device).contiguous()
        if device.type == "cuda":  # NCCL's collective
            clock = time.perf_counter()
            out = [torch.empty_like(local) for _ in range(self.world)]
            dist.all_gather(out, local, group=self.group)
            self._waited("statistics", clock)
        else:
            out = self._swap(local, [tuple(local.shape)] * self.world, "statistics")
        return [t.to(tensor.device) for t in out]

    def _swap(
        self, local: torch.Tensor, shapes: Sequence[tuple[int, ...]], what: str
    ) -> list[torch.Tensor]:
        """Every rank's tensor (of ``shapes[rank]``, ``local``'s dtype), by point-to-point sends.

        Gloo's ``all_gather`` moves a few hundred MB/s on one thread per process; sending to
        each peer and receiving from each at once moves several times that.
        """
        import torch.distributed as dist

        clock = time.perf_counter()
        out = [
            local if r == self.rank else torch.empty(shape, dtype=local.dtype, device=local.device)
            for r, shape in enumerate(shapes)
        ]
        peers = [r for r in range(self.world) if r != self.rank]
        requests = [dist.isend(local, self._global(r), group=self.group) for r in peers]
        requests += [dist.irecv(out[r], self._global(r), group=self.group) for r in peers]
        for request in requests:
            request.wait()
        self._waited(what, clock)
        return out

    def _global(self, rank: int) -> int:
        """The global rank of ``rank`` in ``group`` (point-to-point calls take global ranks)."""
        import torch.distributed as dist

        if self.group is None:
            return rank
        return dist.get_global_rank(self.group, rank)

    def _waited(self, what: str, clock: float) -> None:
        self.waited[what] = self.waited.get(what, 0.0) + time.perf_counter() - clock

    def _device(self) -> torch.device:
        import torch.distributed as dist

        if dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _raise_failures(
        self, what: str, statuses: list[tuple[Any, ...]], failure: BaseException | None
    ) -> None:
        failed = [(rank, status) for rank, status in enumerate(statuses) if status[0] is not None]
        if not failed:
            return
        if failure is not None and len(failed) == self.world:
            if len({status[1] for _, status in failed}) == 1:
                raise failure  # the same kind of error everywhere: raise it as one process would
        rank, (text, _, _) = failed[0]
        ranks = "rank " + str(rank) if len(failed) == 1 else f"ranks {[r for r, _ in failed]}"
        error = DistributedError(
            _MSG_FAILED.format(ranks=ranks, world=self.world, what=what, rank=rank, error=text)
        )
        error.rank = rank
        raise error from failure


def resolve(distributed: bool | None) -> Distributed | None:
    """The process group ``tfx.factorize(..., distributed=...)`` runs over, or None (one process).

    Args:
        distributed: ``None``: the default process group when one is initialised with more
            than one process; ``True``: the default group, which must be initialised;
            ``False``: one process.

    Raises:
        OptionError: ``distributed=True`` without an initialised process group, or a value
            that is not a bool or None.

    Example:
        >>> resolve(False) is None
        True
    """
    import torch.distributed as dist

    if distributed is not None and not isinstance(distributed, bool):
        raise OptionError(
            f"distributed={distributed!r} is not one of None, True, False.\n"
            "Fix: distributed=None (use a process group when there is one), True or False."
        )
    if distributed is False:
        return None
    ready = dist.is_available() and dist.is_initialized()
    if not ready:
        if distributed:
            raise OptionError(
                _MSG_NOT_INITIALISED.format(
                    available=dist.is_available(),
                    initialized=dist.is_available() and dist.is_initialized(),
                )
            )
        return None
    world = dist.get_world_size()
    if distributed is None and world == 1:
        return None
    return Distributed(rank=dist.get_rank(), world=world)


def assign(costs: Sequence[float], world: int) -> list[int]:
    """The owner of each item: largest cost first, onto the least loaded rank (LPT).

    Ties go to the lower index and the lower rank, so every rank computes the same owners.

    Example:
        >>> assign([5, 1, 4, 2, 3], world=2)  # loads: rank 0 5+2+1, rank 1 4+3
        [0, 0, 1, 0, 1]
    """
    load = [0.0] * world
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owners[i] = rank
        load[rank] += costs[i]
    return owners


def work_cost(shape: Sequence[int]) -> float:
    """The relative cost of one site's spectra or decomposition, as :func:`assign` balances it.

    The weight is read as a matrix ``(m, n) = (shape[0], rest)``. Fitted to measured times on a
    CPU (one thread): the ``min(m, n)`` eigen-solve, the ``m x n x n`` products of the
    whitened weight with its Gram, and the ``n x n`` moment's factorization, in units of
    ``n**3`` at ``m = n``. A wide weight (``m < n``) costs more than its transpose: its input
    moment is the larger one.

    Example:
        >>> work_cost((2048, 5632)) > work_cost((5632, 2048)) > work_cost((2048, 2048))
        True
    """
    m = shape[0] if shape else 0
    n = 1
    for size in shape[1:]:
        n *= size
    return float(min(m, n) ** 3 + 0.15 * m * n * n + 0.1 * n**3)


def group_cost(shapes: Sequence[Sequence[int]]) -> float:
    """The relative cost of a sibling group's joint spectra (see :func:`work_cost`).

    ``shapes``: the members' weights, one input width ``n``: an ``n x n`` eigen-solve with
    vectors, and per member its Gram, whitened on both sides, and its energies.

    Example:
        >>> group_cost([(2048, 2048)] * 3) > work_cost((2048, 2048))
        True
    """
    n = 1
    for size in shapes[0][1:]:
        n *= size
    return float(2 * n**3 + sum(0.15 * shape[0] * n * n + 0.6 * n**3 for shape in shapes))


def prebuilt_builder(
    ranks: Distributed,
    calls: Sequence[tuple[Any, Any]],
    build: Callable[[Any, Any], torch.nn.Module],
    unit_of: Callable[[Any, Any], str],
) -> Callable[[Any, Any], torch.nn.Module]:
    """``build``, with the layers of ``calls`` made beforehand, spread over the ranks.

    ``calls`` are ``(site, choice)`` pairs. Each unit (the calls with one ``unit_of``: a
    tied table's readers, siblings over one basis) is built whole by one rank, so the
    Parameters its layers share stay shared on every rank. Other calls are built locally.
    """
    work, costs = _units(calls, unit_of)
    made = ranks.map_assigned(
        work,
        costs,
        lambda unit: [build(site, choice) for site, choice in unit],
        what="decompositions",
    )
    layers = {
        site.name: layer
        for unit, built in zip(work, made, strict=True)
        for (site, _), layer in zip(unit, built, strict=True)
    }

    def build_one(site: Any, choice: Any) -> torch.nn.Module:
        layer = layers.get(site.name)
        return build(site, choice) if layer is None else layer

    return build_one


def _units(
    calls: Sequence[tuple[Any, Any]], unit_of: Callable[[Any, Any], str]
) -> tuple[list[list[tuple[Any, Any]]], list[float]]:
    """``calls`` grouped into the units built together, and each unit's cost."""
    units: dict[str, list[tuple[Any, Any]]] = {}
    for site, choice in calls:
        units.setdefault(unit_of(site, choice), []).append((site, choice))
    work = list(units.values())
    return work, [sum(work_cost(site.info.weight_shape) for site, _ in unit) for unit in work]


def builders(
    world: int, calls: Sequence[tuple[Any, Any]], unit_of: Callable[[Any, Any], str]
) -> dict[str, int]:
    """Per site name of ``calls``, the rank :func:`prebuilt_builder` builds its layer on.

    Known before the layers' input statistics are combined: each moment goes to its builder.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> site = lambda name, shape: NS(name=name, info=NS(weight_shape=shape))
        >>> calls = [(site("a", (8, 8)), None), (site("b", (4, 4)), None)]
        >>> builders(2, calls, lambda s, c: s.name)
        {'a': 0, 'b': 1}
    """
    work, costs = _units(calls, unit_of)
    return {
        site.name: owner
        for unit, owner in zip(work, assign(costs, world), strict=True)
        for site, _ in unit
    }


def plan_digest(plan: Any) -> str:
    """A digest of what a plan decides (its timings left out: they differ between ranks)."""
    data = plan.to_dict()
    data["timings"] = None
    return hashlib.sha256(repr(sorted(data.items())).encode()).hexdigest()[:16]


# -------------------------------------------------------------------- helpers
def _attempt(fn: Callable[[], T]) -> tuple[T | None, Exception | None]:
    try:
        return fn(), None
    except Exception as err:  # every error is reported to the other ranks, then re-raised
        return None, err


def _describe(err: BaseException | None) -> str | None:
    """``Type: message (at file:line in function)``, or None."""
    if err is None:
        return None
    text = "".join(traceback.format_exception_only(type(err), err)).strip()
    frames = traceback.extract_tb(err.__traceback__)
    if frames:
        last = frames[-1]
        text += f"\n  (raised at {last.filename}:{last.lineno} in {last.name})"
    return text


def _parts(stats: InputStats | RowCounts) -> list[torch.Tensor]:
    """What a rank sends of its statistics: a moment's compensated pair, or row counts."""
    if isinstance(stats, RowCounts):
        return [stats.counts]
    return list(stats.pair())


def _dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _loads(data: bytes | memoryview) -> Any:
    # The bytes come from the other ranks of this job (torch.save of tfx's own results).
    return torch.load(io.BytesIO(data), map_location=_local_device, weights_only=False)


def _local_device(storage: Any, location: str) -> Any:
    """Tensors saved on any GPU arrive on this rank's current one; others stay where they were."""
    if location.startswith("cuda") and torch.cuda.is_available():
        return storage.cuda(torch.cuda.current_device())
    return None  # torch's default restore location
