"""``tfx.factorize(..., distributed=...)`` over 2 CPU processes (gloo) equals one process.

The spawned ranks (torch.multiprocessing.spawn, one thread each, as the parent) factorize
the same models on the same calibration batches and save their plans and state dicts; the
parent compares them, bit for bit, with one process's result on the same data. One spawn
in all (each start imports torch and tfx): after the results, the ranks run two failures (a
rank whose shard or assigned work raises makes both raise :class:`tfx.DistributedError`,
within the group's timeout), the last of which ends the spawn.

The order-independent accumulator under the statistics is tested here too, without
processes: any order and any sharding of the same terms gives the same bits.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tfx
import tfx.passes._decompose as decompose_stage
from tfx._distributed import Distributed, assign, resolve
from tfx.cost._compensated import CompensatedSum
from tfx.cost._whiten import InputStats

from .zoo.models import ZOO

WORLD = 2
# Bounds a rank that never reaches an exchange; a test that hangs fails after this.
TIMEOUT = datetime.timedelta(seconds=60)
FORMS = ("svd", "tucker", "tt", "blocktt")  # CP fits are time-boxed: not reproducible
NOTE = "spread over"  # the note only a distributed run adds


# ------------------------------------------------------------------ the cases
def _mlp_case() -> tuple[nn.Module, dict[str, Any]]:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Linear(24, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 16)
    ).eval()
    gen = torch.Generator().manual_seed(4)
    batches = [(torch.randn(int(n), 24, generator=gen),) for n in (6, 9, 5, 8, 7)]
    return model, {"example_inputs": batches[0], "calibration": batches}


class _Heads(nn.Module):
    """Three linears reading one input whose weights share a row space: with calibration the
    plan gives them one input basis (shared Parameters), as it does to attention's Q/K/V.
    """

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(24, 64), nn.Linear(64, 16)
        self.q, self.k, self.v = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64)
        basis = torch.randn(8, 64) / 8
        with torch.no_grad():
            for linear in (self.q, self.k, self.v):
                linear.weight.copy_(torch.randn(64, 8) @ basis + 1e-3 * torch.randn(64, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        return self.out(torch.relu(self.q(h)) * self.k(h) + self.v(h))


def _heads_case() -> tuple[nn.Module, dict[str, Any]]:
    _, data = _mlp_case()
    torch.manual_seed(5)
    return _Heads().eval(), {**data, "emit": "modules"}


def _hf_case(name: str) -> tuple[nn.Module, dict[str, Any]]:
    arch = ZOO[name]
    batches = []
    for i in range(5):  # an odd count: the shards differ in size
        batch = arch.inputs(2, 6 + i)
        mask = torch.ones_like(batch["input_ids"])
        mask[0, -2:] = 0  # padding: left out of the statistics
        batches.append({**batch, "attention_mask": mask})
    return arch.build(), {"example_inputs": batches[0], "calibration": batches}


def _sequential(case: tuple[nn.Module, dict[str, Any]]) -> tuple[nn.Module, dict[str, Any]]:
    model, data = case
    return model, {**data, "sequential": True}


def _gpt2_tied_case() -> tuple[nn.Module, dict[str, Any]]:
    """A GPT-2 whose tied table is large enough for the plan to factorize it (vocab 512)."""
    import transformers

    torch.manual_seed(6)
    config = transformers.GPT2Config(
        vocab_size=512, n_embd=64, n_layer=2, n_head=2, n_positions=32, bos_token_id=0
    )
    gen = torch.Generator().manual_seed(7)
    batches = [{"input_ids": torch.randint(0, 512, (2, 8 + i), generator=gen)} for i in range(3)]
    return transformers.GPT2LMHeadModel(config).eval(), {"calibration": batches}


CASES: dict[str, Callable[[], tuple[nn.Module, dict[str, Any]]]] = {
    "mlp": _mlp_case,  # symbolic_trace: a graph result
    "heads": _heads_case,  # modules, three linears over one shared basis
    "gpt2": lambda: _hf_case("gpt2"),  # export: modules, a tied embedding and LM head
    # sequential mode: block by block, batches sharded, each block's statistics combined
    "llama-seq": lambda: _sequential(_hf_case("llama")),
    # a tied table read before (embedding) and after (LM head) the blocks
    "gpt2-seq": lambda: _sequential(_gpt2_tied_case()),
}


def _factorize(case: str, distributed: bool | None) -> nn.Module:
    model, data = CASES[case]()
    return tfx.factorize(model, 0.5, forms=FORMS, progress=False, distributed=distributed, **data)


def _plan_json(plan: tfx.FactorizationPlan) -> str:
    """The plan without what differs by run: its timings, and the distributed note."""
    data = plan.to_dict()
    data["timings"] = None
    data["notes"] = [n for n in data["notes"] if not n.startswith(NOTE)]
    return json.dumps(data, sort_keys=True)


def _shared_names(model: nn.Module) -> list[list[str]]:
    """Names of the parameters that are one tensor (a tied table's factors, a basis)."""
    by_tensor: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(p), []).append(name)
    return sorted(sorted(names) for names in by_tensor.values() if len(names) > 1)


def _summary(result: nn.Module) -> dict[str, Any]:
    return {
        "plan": _plan_json(result.tfx_plan),
        "notes": result.tfx_plan.notes,
        "state": result.state_dict(),
        "shared": _shared_names(result),
    }


# ------------------------------------------------------------ spawned ranks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _results(rank: int, out: Path) -> None:
    for case in CASES:
        torch.save(_summary(_factorize(case, None)), out / f"{case}-{rank}.pt")
    single = _factorize("mlp", False)  # one process's work, under the group
    torch.save(_summary(single), out / f"mlp-alone-{rank}.pt")
    model, data = CASES["mlp"]()
    planned = tfx.plan(model, 0.5, forms=FORMS, progress=False, **data)
    (out / f"plan-{rank}.json").write_text(_plan_json(planned))
    # Statistics sent only to the ranks that read them.
    parts = _stats_parts()
    mine = [_stats_of(rows[rank::WORLD], kind) for kind, rows in parts]
    got = Distributed(rank=rank, world=WORLD).combine_stats(mine, [{0}, {1}, None, {1}, set()])
    torch.save([None if g is None else _stats_value(g) for g in got], out / f"stats-{rank}.pt")


def _stats_parts() -> list[tuple[str, list[torch.Tensor]]]:
    """Row batches of five statistics (moments, and row counts of a table)."""
    gen = torch.Generator().manual_seed(7)
    moments = [[torch.randn(5 + i, 300, generator=gen) * 10**i for i in range(5)] for _ in range(3)]
    lookups = [torch.randint(0, 50, (9,), generator=gen) for _ in range(4)]
    return [("moment", m) for m in moments[:2]] + [
        ("moment", moments[2]),
        ("counts", lookups),
        ("moment", moments[0]),
    ]


def _stats_of(rows: list[torch.Tensor], kind: str) -> Any:
    from tfx.cost._whiten import RowCounts

    stats: Any = InputStats(300) if kind == "moment" else RowCounts(50)
    for part in rows:
        stats.update(part)
    return stats


def _stats_value(stats: Any) -> tuple[torch.Tensor, int]:
    from tfx.cost._whiten import RowCounts

    return (stats.counts if isinstance(stats, RowCounts) else stats.moment, stats.count)


def _record(out: Path, name: str, rank: int, err: BaseException) -> None:
    cause = err.__cause__
    report = {
        "type": type(err).__name__,
        "rank": getattr(err, "rank", None),
        "message": str(err),
        "cause": None if cause is None else type(cause).__name__,
    }
    (out / f"{name}-{rank}.json").write_text(json.dumps(report))


def _failures(rank: int, out: Path) -> None:
    # 0. Work every rank does in full gives different results (as a nondeterministic one would).
    try:
        Distributed(rank=rank, world=WORLD).step("a plan", lambda: rank, digest=str)
    except tfx.TfxError as err:
        _record(out, "disagree", rank, err)
    # 1. Calibration batch 3 does not fit the model: it is rank 1's shard (3 % 2).
    model, data = CASES["mlp"]()
    data["calibration"][3] = (torch.randn(4, 25),)
    try:
        tfx.factorize(model, 0.5, forms=FORMS, progress=False, **data)
    except tfx.TfxError as err:
        _record(out, "calibration", rank, err)
    # 2. Rank 1's decompositions raise (as running out of memory would). Its share of the
    # MLP's decompositions by cost is the layer "0" (rank 0 has the larger "2").
    if rank == 1:

        def broken(site: Any, choice: Any) -> nn.Module:
            raise MemoryError(f"cannot allocate the factors of {site.name}")

        decompose_stage.build_layer = broken  # this process only
    model, data = CASES["mlp"]()
    try:
        tfx.factorize(model, 0.5, forms=FORMS, progress=False, **data)
    except tfx.TfxError as err:
        _record(out, "decompose", rank, err)
        raise  # and the spawn reports it


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=TIMEOUT)
    try:
        _results(rank, Path(out_dir))
        _failures(rank, Path(out_dir))
    finally:
        dist.destroy_process_group()


@dataclasses.dataclass
class Spawned:
    """Where the ranks wrote their results, and what the spawn raised (its last step fails)."""

    out: Path
    raised: str

    def load(self, name: str) -> dict[str, Any]:
        path = self.out / name
        if not path.exists():
            pytest.fail(f"no {name} from the ranks; the spawn raised:\n{self.raised}")
        return torch.load(path, weights_only=False)


@pytest.fixture(scope="module")
def spawned(tmp_path_factory: pytest.TempPathFactory) -> Spawned:
    """One spawn of two ranks for every process test (each start imports torch and tfx)."""
    out_dir = tmp_path_factory.mktemp("distributed")
    try:
        mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, join=True)
    except mp.ProcessRaisedException as err:
        return Spawned(out_dir, str(err))
    return Spawned(out_dir, "")


def _assert_same(got: dict[str, Any], want: dict[str, Any], where: str) -> None:
    assert got["plan"] == want["plan"], f"{where}: the plans differ"
    assert got["state"].keys() == want["state"].keys(), f"{where}: the parameters differ"
    for name, value in want["state"].items():
        assert torch.equal(got["state"][name], value), f"{where}: {name} differs"
    assert got["shared"] == want["shared"], f"{where}: the shared parameters differ"


# ------------------------------------------------------------ process tests
@pytest.mark.parametrize("case", list(CASES))
def test_distributed_factorize_matches_one_process_bit_for_bit(case: str, spawned: Spawned) -> None:
    want = _summary(_factorize(case, None))
    for rank in range(WORLD):
        got = spawned.load(f"{case}-{rank}.pt")
        _assert_same(got, want, f"{case}, rank {rank}")
        assert any(n.startswith(f"{NOTE} {WORLD} processes") for n in got["notes"])


@pytest.mark.parametrize(
    ("case", "prefix"), [("gpt2", "lm_head."), ("heads", "k."), ("gpt2-seq", "lm_head.")]
)
def test_distributed_groups_keep_their_parameters_shared_on_every_rank(
    case: str, prefix: str, spawned: Spawned
) -> None:
    for rank in range(WORLD):
        shared = spawned.load(f"{case}-{rank}.pt")["shared"]
        assert any(any(n.startswith(prefix) for n in names) for names in shared), shared


def test_statistics_reach_only_the_ranks_that_read_them(spawned: Spawned) -> None:
    """``combine_stats(..., needed)``: a reader gets the sum of every rank's rows, with the bits
    of one pass over all of them; a rank that does not read it gets None."""
    expected = [_stats_value(_stats_of(rows, kind)) for kind, rows in _stats_parts()]
    readers = [{0}, {1}, {0, 1}, {1}, set()]
    for rank in range(WORLD):
        got = spawned.load(f"stats-{rank}.pt")
        for k, (value, want) in enumerate(zip(got, expected, strict=True)):
            if rank not in readers[k]:
                assert value is None, (rank, k)
                continue
            assert value[1] == want[1], (rank, k)
            assert torch.equal(value[0], want[0]), (rank, k)


def test_distributed_false_runs_alone_under_a_process_group(spawned: Spawned) -> None:
    want = _summary(_factorize("mlp", None))
    for rank in range(WORLD):
        got = spawned.load(f"mlp-alone-{rank}.pt")
        _assert_same(got, want, f"rank {rank}")
        assert not any(n.startswith(NOTE) for n in got["notes"])


def test_distributed_plan_matches_one_process(spawned: Spawned) -> None:
    model, data = CASES["mlp"]()
    want = _plan_json(tfx.plan(model, 0.5, forms=FORMS, progress=False, **data))
    for rank in range(WORLD):
        assert (spawned.out / f"plan-{rank}.json").read_text() == want


def test_distributed_ranks_that_disagree_raise_on_every_rank(spawned: Spawned) -> None:
    for rank in range(WORLD):
        path = spawned.out / f"disagree-{rank}.json"
        assert path.exists(), f"rank {rank} raised no TfxError: {spawned.raised}"
        report = json.loads(path.read_text())
        assert report["type"] == "DistributedError", report
        assert "the ranks' results of 'a plan' differ" in report["message"]


def test_distributed_failing_rank_raises_on_every_rank(spawned: Spawned) -> None:
    assert "DistributedError" in spawned.raised, spawned.raised or "the spawn raised nothing"
    for name, cause, text in (
        ("calibration", "OptionError", "calibration batch 3 does not fit the model"),
        # the decompose stage names the site: a SiteError, the MemoryError chained to it
        ("decompose", "SiteError", "while factorizing '0' (linear 48x24, "),
        ("decompose", "SiteError", "MemoryError: cannot allocate the factors of 0"),
    ):
        for rank in range(WORLD):
            path = spawned.out / f"{name}-{rank}.json"
            assert path.exists(), f"rank {rank} raised no TfxError in {name}: {spawned.raised}"
            report = json.loads(path.read_text())
            assert report["type"] == "DistributedError", (name, rank, report)
            assert report["rank"] == 1, (name, rank, report)
            assert "rank 1:" in report["message"] and text in report["message"], report
            assert report["cause"] == (cause if rank == 1 else None), (name, rank, report)


# --------------------------------------------------------- one-process tests
def test_resolve_true_without_a_process_group_says_how_to_start_one() -> None:
    with pytest.raises(tfx.OptionError, match=r"init_process_group\(\"gloo\"\)"):
        resolve(True)


def test_resolve_rejects_a_value_that_is_not_a_bool() -> None:
    with pytest.raises(tfx.OptionError, match="distributed='yes' is not one of"):
        resolve("yes")  # type: ignore[arg-type]


def test_resolve_none_without_a_process_group_is_one_process() -> None:
    assert resolve(None) is None and resolve(False) is None


def test_factorize_distributed_true_without_a_group_raises() -> None:
    model, data = CASES["mlp"]()
    with pytest.raises(tfx.OptionError, match="distributed=True needs"):
        tfx.factorize(model, 0.5, progress=False, distributed=True, **data)


def test_map_assigned_keeps_parameters_shared_within_an_item() -> None:
    def pair(width: int) -> list[nn.Linear]:
        first, second = nn.Linear(width, width), nn.Linear(width, width)
        second.weight = first.weight
        return [first, second]

    made = Distributed(rank=0, world=1).map_assigned([3, 5], [1.0, 1.0], pair, what="test")
    assert [m[0].in_features for m in made] == [3, 5]
    assert all(m[0].weight is m[1].weight for m in made)


@given(st.lists(st.floats(0, 1e6), max_size=30), st.integers(1, 8))
def test_assign_balances_within_the_largest_item(costs: list[float], world: int) -> None:
    owners = assign(costs, world)
    loads = [sum(c for c, o in zip(costs, owners, strict=True) if o == r) for r in range(world)]
    assert all(0 <= o < world for o in owners)
    assert max(loads) <= sum(costs) / world + max(costs, default=0.0) + 1e-9


def test_assign_puts_the_largest_item_first_on_rank_zero() -> None:
    assert assign([1.0, 9.0, 2.0, 8.0], world=2) == [0, 0, 1, 1]


# --------------------------------------------- the order-independent accumulator
# float32 values from 2**-10 to 2**10 (and zero), as a GEMM in float32 gives: the pair then holds
# their exact sum (see tfx.cost._compensated for the span it covers).
_value = st.one_of(
    st.just(0.0),
    st.tuples(st.booleans(), st.floats(2.0**-10, 2.0**10, width=32)).map(
        lambda t: -t[1] if t[0] else t[1]
    ),
)
_terms = st.lists(st.lists(_value, min_size=3, max_size=3), min_size=1, max_size=12)


@given(_terms, st.randoms(use_true_random=False), st.integers(1, 4))
def test_compensated_sum_is_the_correctly_rounded_sum_in_any_order_and_sharding(
    terms: list[list[float]], rnd: Any, shards: int
) -> None:
    order = list(range(len(terms)))
    rnd.shuffle(order)
    parts = [CompensatedSum((3,)) for _ in range(shards)]
    for k, i in enumerate(order):
        parts[k % shards].add(torch.tensor(terms[i], dtype=torch.float64))
    total = CompensatedSum((3,))
    for part in parts:
        total.merge(part.hi, part.lo)
    exact = [math.fsum(term[j] for term in terms) for j in range(3)]  # correctly rounded
    assert total.value().tolist() == exact
    assert total.collapse().tolist() == exact  # in place: the same bits
    with pytest.raises(AttributeError):
        total.add(torch.zeros(3, dtype=torch.float64))  # spent


@given(
    st.lists(st.integers(1, 9), min_size=1, max_size=8),
    st.randoms(use_true_random=False),
    st.integers(1, 3),
)
def test_input_stats_sharded_and_merged_has_the_bits_of_one_pass(
    sizes: list[int], rnd: Any, shards: int
) -> None:
    gen = torch.Generator().manual_seed(len(sizes) * 10 + shards)
    batches = [torch.randn(n, 5, generator=gen) * 10 ** rnd.uniform(-4, 4) for n in sizes]
    whole = InputStats(5)
    for rows in batches:
        whole.update(rows)
    order = list(range(len(batches)))
    rnd.shuffle(order)
    local = [InputStats(5) for _ in range(shards)]
    for k, i in enumerate(order):
        local[k % shards].update(batches[i])
    merged = InputStats(5)
    for part in local:
        merged.merge(*part.pair(), part.count)
    assert merged.count == whole.count
    assert torch.equal(merged.moment, whole.moment)  # type: ignore[arg-type]


def test_input_stats_settled_keeps_its_moment_and_can_continue() -> None:
    rows = torch.randn(7, 4)
    stats = InputStats(4)
    stats.update(rows[:3])
    stats.settle()
    stats.update(rows[3:])
    again = InputStats(4)
    again.update(rows[:3])
    again.update(rows[3:])
    assert stats.total is not None and torch.equal(stats.moment, again.moment)  # type: ignore[arg-type]


def test_compensated_sum_keeps_what_a_plain_float64_sum_loses() -> None:
    total = CompensatedSum((1,))
    for term in (1e16, 1.0, -1e16, 1.0):
        total.add(torch.tensor([term], dtype=torch.float64))
    assert total.value().item() == 2.0


def test_compensated_sum_rejects_a_term_of_another_shape() -> None:
    with pytest.raises(ValueError, match=r"a term of shape \(2,\) cannot be added"):
        CompensatedSum((3,)).add(torch.zeros(2))


def test_compensated_sum_adds_a_slice_as_a_whole_term_holding_it() -> None:
    gen = torch.Generator().manual_seed(3)
    terms = [torch.randn(40, generator=gen, dtype=torch.float64) * 10**k for k in range(-8, 9, 4)]
    whole, sliced = CompensatedSum((40,)), CompensatedSum((40,))
    for term in terms:
        for a, b in ((0, 13), (13, 31), (31, 40)):
            padded = torch.full((40,), -0.0, dtype=torch.float64)
            padded[a:b] = term[a:b]
            whole.add(padded)
            sliced.add(term[a:b].reshape(1, -1), offset=a)
    assert torch.equal(whole.hi, sliced.hi) and torch.equal(whole.lo, sliced.lo)
    with pytest.raises(ValueError, match="do not fit"):
        sliced.add(torch.zeros(5), offset=36)
