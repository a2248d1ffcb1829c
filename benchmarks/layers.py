"""Forward and forward+backward time of tfx's layers, side by side with dense and tltorch.

Run (from the repository root):

    .venv/bin/python benchmarks/layers.py                 # tfx vs dense (and hand-written code)
    /tmp/tlbench/bin/python benchmarks/layers.py          # the same, plus tltorch 0.5
    .venv/bin/python benchmarks/layers.py --only linear --quick --out /tmp/table.md

Everything runs in this one process on ONE CPU thread (``torch.set_num_threads(1)``), float32.
Each number is the least of 3 medians of ``torch.utils.benchmark.Timer.blocked_autorange``
blocks (after two warm-up calls), timed with the thread's CPU time (``--clock cpu``; robust to
other processes on a shared machine). "fwd" is an inference forward (``torch.no_grad()``);
"fwd+bwd" is a forward with autograd recording followed by ``torch.autograd.grad`` of the output
with respect to the input (linear, conv) and every parameter. Calls over a second are timed once.

Columns: ``params`` (stored scalars, and % of the dense layer's), ``ideal`` (dense FLOPs /
FLOPs of the best contraction order: the speedup the arithmetic allows), ``ms`` (time per call),
``x dense`` (dense time / this time; > 1 is faster than dense), ``x tltorch`` (the same tltorch
layer's time / this time; > 1 is faster than tltorch).

Cases (from issue 3): linear 1024x1024 and 4096x4096 at ~10% of the parameters for B = 1, 32, 512
(low-rank = CP of the untensorized matrix, Tucker, BlockTT and TT, implementation 'factorized'
and 'auto', plus hand-written low-rank and Tucker code); conv 3x3 64->128 on 32x32, batch 16
(CP factorized and mobilenet, Tucker); embedding 100000x256 (BlockTT rank 16) with 4096 lookups.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import opt_einsum
import torch
from _common import git_commit, load_average, machine, save, stamp, tt_ranks
from torch import nn
from torch.utils.benchmark import Timer

import tfx
from tfx.functional import linear_flops
from tfx.functional._conv import conv_flops
from tfx.functional._planning import _input_equation, weight_shapes

try:  # tltorch is not a dependency of tfx: it is compared against only when installed.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tltorch
except Exception:  # pragma: no cover - depends on the environment
    tltorch = None

SIZES = ((1024, (4, 16, 16)), (4096, (16, 16, 16)))
BATCHES = (1, 32, 512)
FRACTION = 0.10
#: tfx vs tltorch ratios within [NOISE, 1) count as ties (run-to-run noise on a shared machine).
NOISE = 0.9
#: Tucker ranks for the linear cases, ~10% of the parameters (rank=0.1 gives 12.6% at 1024).
TUCKER_RANKS = {1024: (3, 10, 11, 3, 10, 11), 4096: (11,) * 6}
#: Where and in what dtype everything runs (``--device``, ``--dtype``); CPU float32 by default.
DEVICE = torch.device("cpu")
DTYPE = torch.float32
#: ``cpu``: the calling thread's CPU time (robust to other processes on a shared machine;
#: with one torch thread all the work runs on it); ``wall``: wall-clock time (CUDA: synchronized).
CLOCK = "cpu"
#: Each timing is the least of this many medians (``--repeats``), sharing ``--min-run-time``.
REPEATS = 3


def put(module: nn.Module) -> nn.Module:
    """``module`` on the benchmark's device and dtype."""
    return module.to(device=DEVICE, dtype=DTYPE)


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).to(device=DEVICE, dtype=DTYPE)


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- timing
def clock() -> float:
    """The benchmark's clock: this thread's CPU time (``--clock cpu``) or wall time (``wall``)."""
    if CLOCK == "cpu":
        return time.thread_time()
    _sync()
    return time.perf_counter()


def measure(fn: Callable[[], Any], min_run_time: float) -> float:
    """Milliseconds per ``fn()``: the least of ``REPEATS`` Timer medians (calls over 1 s: once)."""
    fn()
    start = clock()
    fn()
    once = clock() - start
    if once > 1.0:
        start = clock()
        fn()
        return 1e3 * min(once, clock() - start)
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=1, timer=clock)
    # The least of REPEATS medians: a burst of contention on a shared machine inflates one
    # measurement, rarely all of them.
    medians = [
        timer.blocked_autorange(min_run_time=min_run_time / REPEATS).median for _ in range(REPEATS)
    ]
    return 1e3 * min(medians)


def time_both(row: Any, module: nn.Module, x: torch.Tensor, min_run_time: float) -> None:
    """Set ``row.fwd`` and ``row.bwd``: forward, and forward + backward, of ``module`` on ``x``."""
    row.fwd = measure(forward_fn(module, x), min_run_time)
    row.bwd = measure(backward_fn(module, x), min_run_time)


def forward_fn(module: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return module(x)

    return run


def backward_fn(module: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    params = [p for p in module.parameters() if p.requires_grad]
    inputs = ([x] if x.is_floating_point() else []) + params
    if x.is_floating_point():
        x = x.detach().requires_grad_(True)
        inputs[0] = x
    with torch.no_grad():
        grad_out = torch.randn_like(module(x))

    def run() -> Any:
        out = module(x)
        return torch.autograd.grad(out, inputs, grad_out)

    return run


# ----------------------------------------------------------------------------- results
@dataclass
class Row:
    case: str
    layer: str
    params: int
    dense_params: int
    ideal: float | None = None  # dense FLOPs / factorized FLOPs
    fwd: float | None = None
    bwd: float | None = None
    note: str = ""
    kind: str = "tfx"  # tfx, dense, tltorch, hand
    tl: Row | None = field(default=None, repr=False)  # the same tltorch layer
    dense: Row | None = field(default=None, repr=False)


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _ratio(ref: float | None, v: float | None) -> str:
    if ref is None or v is None:
        return "-"
    r = ref / v
    return f"{r:.2f}" if r < 10 else f"{r:.1f}"


def markdown(rows: Sequence[Row]) -> str:
    head = (
        "| case | layer | params (% dense) | ideal | fwd ms | fwd x dense | fwd x tltorch "
        "| fwd+bwd ms | f+b x dense | f+b x tltorch | note |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        dense = r.dense
        pct = f"{r.params:,} ({100 * r.params / r.dense_params:.1f}%)"
        ideal = "-" if r.ideal is None else (f"{r.ideal:.2f}" if r.ideal < 10 else f"{r.ideal:.1f}")
        ideal = ideal if r.ideal is None or r.ideal >= 0.01 else f"{r.ideal:.0e}"
        lines.append(
            f"| {r.case} | {r.layer} | {pct} | {ideal} | {_fmt_ms(r.fwd)} "
            f"| {_ratio(dense.fwd if dense else None, r.fwd) if r.kind != 'dense' else ''} "
            f"| {_ratio(r.tl.fwd if r.tl else None, r.fwd)} | {_fmt_ms(r.bwd)} "
            f"| {_ratio(dense.bwd if dense else None, r.bwd) if r.kind != 'dense' else ''} "
            f"| {_ratio(r.tl.bwd if r.tl else None, r.bwd)} | {r.note} |"
        )
    return "\n".join(lines)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- hand-written code
class HandLowRank(nn.Module):
    """``y = (x @ V) @ U.T + b`` with two ``torch.mm`` calls: the best a rank-r matrix allows."""

    def __init__(self, layer: tfx.FactorizedLinear) -> None:
        super().__init__()
        weights, (u, v) = layer.weight.decomposition
        self.u_t = nn.Parameter((u * weights).detach().t().contiguous())  # (r, out)
        self.v = nn.Parameter(v.detach().clone())  # (in, r)
        self.bias = nn.Parameter(layer.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, torch.mm(x, self.v), self.u_t)


class HandTucker(nn.Module):
    """Mode products by hand for a tensorized Tucker matrix (three input modes, three output modes).

    ``x (B, i1, i2, i3)``: input factors mode by mode with matmuls on natural layouts (no
    permute copies), the core as one ``(R_in -> R_out)`` matmul, then output factors.
    """

    def __init__(self, layer: tfx.FactorizedLinear) -> None:
        super().__init__()
        core, factors = layer.weight.decomposition
        self.out_shape = layer.out_tensorized_features
        self.in_shape = layer.in_tensorized_features
        ro, ri = core.shape[:3], core.shape[3:]
        self.ro, self.ri = tuple(ro), tuple(ri)
        self.core_t = nn.Parameter(
            core.detach().reshape(math.prod(ro), math.prod(ri)).t().contiguous()
        )
        self.o1, self.o2, self.o3 = (
            nn.Parameter(f.detach().clone()) for f in factors[:3]
        )  # (o_k, q_k)
        self.i1_t, self.i2_t = (
            nn.Parameter(f.detach().t().contiguous()) for f in factors[3:5]
        )  # (r_k, i_k)
        self.i3 = nn.Parameter(factors[5].detach().clone())  # (i3, r3)
        self.bias = nn.Parameter(layer.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        (i1, i2, i3), (r1, r2, r3), (q1, q2, q3), (o1, o2, o3) = (
            self.in_shape,
            self.ri,
            self.ro,
            self.out_shape,
        )
        t = torch.matmul(self.i1_t, x.reshape(b, i1, i2 * i3))  # (B, r1, i2 i3)
        t = torch.matmul(self.i2_t, t.reshape(b * r1, i2, i3))  # (B r1, r2, i3)
        t = torch.mm(t.reshape(-1, i3), self.i3)  # (B r1 r2, r3)
        t = torch.mm(t.reshape(b, r1 * r2 * r3), self.core_t)  # (B, q1 q2 q3)
        t = torch.matmul(self.o1, t.reshape(b, q1, q2 * q3))  # (B, o1, q2 q3)
        t = torch.matmul(self.o2, t.reshape(b * o1, q2, q3))  # (B o1, o2, q3)
        t = torch.mm(t.reshape(-1, q3), self.o3.t())  # (B o1 o2, o3)
        return t.reshape(b, o1 * o2 * o3) + self.bias


# ----------------------------------------------------------------------------- cases


def best_flops(weight: Any, batch: int) -> int:
    """FLOPs of the best pairwise order for ``x @ W.T`` (opt_einsum, no memory limit).

    This is the arithmetic a factorized forward needs at best, independent of tfx's own plan
    (which bounds intermediates and may be worse).
    """
    equation, shapes = weight_shapes(weight)
    order = len(weight.tensor_shape)
    n_in = len(weight.tensorized_shape[-1])
    full, in_sizes, _ = _input_equation(
        equation, tuple(weight.tensor_shape), tuple(range(order - n_in, order))
    )
    _, info = opt_einsum.contract_path(
        full, (batch, *in_sizes), *shapes, shapes=True, optimize="optimal"
    )
    return int(info.opt_cost)


def _tl_linear(**kwargs: Any) -> nn.Module | None:
    if tltorch is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return put(tltorch.FactorizedLinear(**kwargs))


def linear_cases(min_run_time: float, log: Callable[[str], None]) -> list[Row]:
    rows: list[Row] = []
    for n, tshape in SIZES:
        budget = int(FRACTION * n * n)
        dense = put(nn.Linear(n, n))
        dense_params = n_params(dense)
        cp_rank = round(budget / (2 * n))
        specs: list[tuple[str, dict[str, Any], str | None]] = [
            (
                "low-rank",
                dict(
                    in_tensorized_features=(n,),
                    out_tensorized_features=(n,),
                    factorization="cp",
                    rank=cp_rank,
                ),
                "cp",
            ),
            (
                "Tucker",
                dict(
                    in_tensorized_features=tshape,
                    out_tensorized_features=tshape,
                    factorization="tucker",
                    rank=TUCKER_RANKS[n],
                ),
                "tucker",
            ),
            (
                "BlockTT",
                dict(
                    in_tensorized_features=tshape,
                    out_tensorized_features=tshape,
                    factorization="blocktt",
                    rank=FRACTION,
                ),
                "blocktt",
            ),
            (
                "TT",
                dict(
                    in_tensorized_features=tshape,
                    out_tensorized_features=tshape,
                    factorization="tt",
                    rank=tt_ranks(tshape + tshape, budget),
                ),
                None,
            ),
        ]
        layers: list[tuple[str, dict[str, nn.Module], nn.Module | None, str]] = []
        for name, kwargs, tl_form in specs:
            torch.manual_seed(0)
            made = {
                impl: put(tfx.FactorizedLinear(**kwargs, implementation=impl))
                for impl in ("factorized", "auto")
            }
            made["auto"].load_state_dict(made["factorized"].state_dict())
            tl_layer = None
            if tl_form is not None and DEVICE.type == "cpu" and DTYPE == torch.float32:
                tl_kwargs = dict(kwargs, factorization=tl_form, rank=made["factorized"].rank)
                tl_layer = _tl_linear(**tl_kwargs, implementation="factorized")
            layers.append(
                (
                    name,
                    made,
                    tl_layer,
                    "" if tl_form or tltorch is None else "tltorch has no tensorized TT",
                )
            )
        hands = {
            "low-rank": HandLowRank(layers[0][1]["factorized"]),
            "Tucker": HandTucker(layers[1][1]["factorized"]),
        }
        # sanity: the hand-written code computes the same layer
        x = randn(3, n)
        for name, hand in hands.items():
            ref = next(m for nm, m, _, _ in layers if nm == name)["factorized"]
            with torch.no_grad():
                tol = 1e-4 if DTYPE == torch.float32 else 5e-2
                torch.testing.assert_close(hand(x), ref(x), rtol=tol, atol=tol)

        for batch in BATCHES:
            case = f"linear {n}x{n} B={batch}"
            torch.manual_seed(1)
            x = randn(batch, n)
            log(f"{case}: dense")
            d = Row(case, "nn.Linear", dense_params, dense_params, 1.0, kind="dense")
            time_both(d, dense, x, min_run_time)
            d.dense = d
            rows.append(d)
            dense_flops = 2 * batch * n * n
            for name, made, tl_layer, note in layers:
                weight = made["factorized"].weight
                fact_flops, rebuild_flops = linear_flops(
                    weight, batch
                )  # tfx's own estimates ('auto' uses them)
                best = best_flops(weight, batch)
                tl_row = None
                if tl_layer is not None:
                    log(f"{case}: tltorch {name}")
                    tl_row = Row(
                        case,
                        f"tltorch {name} factorized",
                        n_params(tl_layer),
                        dense_params,
                        dense_flops / best,
                        kind="tltorch",
                        dense=d,
                    )
                    tl_row.fwd = measure(forward_fn(tl_layer, x), min_run_time)
                    tl_row.bwd = measure(backward_fn(tl_layer, x), min_run_time)
                for impl, layer in made.items():
                    notes = [note] if note else []
                    chosen = impl
                    if impl == "auto":
                        chosen = "factorized" if fact_flops <= rebuild_flops else "reconstructed"
                        notes.append(f"auto -> {chosen}")
                    if chosen == "factorized" and fact_flops > 4 * best:
                        notes.append(
                            f"tfx plan estimates {fact_flops / best:.0f}x the best order's FLOPs"
                        )
                    flops = best if chosen == "factorized" else rebuild_flops
                    row = Row(
                        case,
                        f"tfx {name} {impl}",
                        n_params(layer),
                        dense_params,
                        dense_flops / flops,
                        note="; ".join(notes),
                        tl=tl_row,
                        dense=d,
                    )
                    log(f"{case}: tfx {name} {impl}")
                    row.fwd = measure(forward_fn(layer, x), min_run_time)
                    row.bwd = measure(backward_fn(layer, x), min_run_time)
                    rows.append(row)
                if tl_row is not None:
                    rows.append(tl_row)
                if name in hands:
                    hand = hands[name]
                    ideal = (
                        dense_flops / (2 * batch * cp_rank * 2 * n) if name == "low-rank" else None
                    )
                    if name == "Tucker":
                        ideal = dense_flops / flops_tucker_hand(
                            batch, hand.in_shape, hand.ri, hand.out_shape, hand.ro
                        )
                    h = Row(
                        case,
                        f"hand-written {name}",
                        n_params(hand),
                        dense_params,
                        ideal,
                        kind="hand",
                        dense=d,
                    )
                    log(f"{case}: hand {name}")
                    time_both(h, hand, x, min_run_time)
                    rows.append(h)
    return rows


def flops_tucker_hand(
    batch: int, ins: Sequence[int], ri: Sequence[int], outs: Sequence[int], ro: Sequence[int]
) -> int:
    """FLOPs of the mode-product order used by :class:`HandTucker`."""
    (i1, i2, i3), (r1, r2, r3), (o1, o2, o3), (q1, q2, q3) = ins, ri, outs, ro
    f = r1 * i1 * i2 * i3 + r1 * r2 * i2 * i3 + r1 * r2 * r3 * i3
    f += r1 * r2 * r3 * q1 * q2 * q3
    f += o1 * q1 * q2 * q3 + o1 * o2 * q2 * q3 + o1 * o2 * o3 * q3
    return 2 * batch * f


def conv_cases(min_run_time: float, log: Callable[[str], None]) -> list[Row]:
    rows: list[Row] = []
    batch, cin, cout, size = 16, 64, 128, 32
    case = f"conv 3x3 {cin}->{cout} {size}x{size} B={batch}"
    torch.manual_seed(0)
    x = randn(batch, cin, size, size)
    dense = put(nn.Conv2d(cin, cout, 3, padding=1, bias=False))
    dense_params = n_params(dense)
    d = Row(case, "nn.Conv2d", dense_params, dense_params, 1.0, kind="dense")
    log(f"{case}: dense")
    time_both(d, dense, x, min_run_time)
    d.dense = d
    rows.append(d)
    dense_flops = 2 * batch * size * size * cout * cin * 9
    specs = [
        ("CP", "factorized", dict(factorization="cp", rank=FRACTION)),
        ("CP", "mobilenet", dict(factorization="cp", rank=FRACTION)),
        (
            "Tucker",
            "factorized",
            dict(factorization="tucker", rank=FRACTION, fixed_rank_modes=(2, 3)),
        ),
    ]
    for name, impl, kwargs in specs:
        torch.manual_seed(0)
        layer = put(
            tfx.FactorizedConv(cin, cout, 3, order=2, padding=1, implementation=impl, **kwargs)
        )
        flops = conv_flops(layer.weight, size * size, batch)[
            impl if impl != "auto" else "factorized"
        ]
        tl_row = None
        if tltorch is not None and DEVICE.type == "cpu" and DTYPE == torch.float32:
            tl_kwargs = dict(kwargs, factorization=name.lower(), rank=layer.rank)
            if name == "CP":
                tl_kwargs.pop("fixed_rank_modes", None)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tl_layer = put(
                    tltorch.FactorizedConv(
                        cin, cout, 3, order=2, padding=1, implementation=impl, **tl_kwargs
                    )
                )
            tl_row = Row(
                case,
                f"tltorch {name} {impl}",
                n_params(tl_layer),
                dense_params,
                dense_flops / flops,
                kind="tltorch",
                dense=d,
            )
            log(f"{case}: tltorch {name} {impl}")
            time_both(tl_row, tl_layer, x, min_run_time)
        row = Row(
            case,
            f"tfx {name} {impl}",
            n_params(layer),
            dense_params,
            dense_flops / flops,
            note=f"rank {layer.rank}",
            tl=tl_row,
            dense=d,
        )
        log(f"{case}: tfx {name} {impl}")
        time_both(row, layer, x, min_run_time)
        rows.append(row)
        if tl_row is not None:
            rows.append(tl_row)
    return rows


def embedding_cases(min_run_time: float, log: Callable[[str], None]) -> list[Row]:
    rows: list[Row] = []
    num, dim, lookups, rank = 100_000, 256, 4096, 16
    case = f"embedding {num}x{dim}, {lookups} lookups"
    torch.manual_seed(0)
    index = torch.randint(0, num, (lookups,), device=DEVICE)
    dense = put(nn.Embedding(num, dim))
    dense_params = n_params(dense)
    d = Row(case, "nn.Embedding", dense_params, dense_params, kind="dense")
    log(f"{case}: dense")
    time_both(d, dense, index, min_run_time)
    d.dense = d
    rows.append(d)
    layer = put(tfx.FactorizedEmbedding(num, dim, factorization="blocktt", rank=rank))
    shapes = dict(
        tensorized_num_embeddings=layer.tensorized_num_embeddings,
        tensorized_embedding_dim=layer.tensorized_embedding_dim,
    )
    tl_row = None
    if tltorch is not None and DEVICE.type == "cpu" and DTYPE == torch.float32:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tl_layer = put(
                tltorch.FactorizedEmbedding(
                    num, dim, auto_tensorize=False, factorization="blocktt", rank=rank, **shapes
                )
            )
        tl_row = Row(
            case, "tltorch BlockTT", n_params(tl_layer), dense_params, kind="tltorch", dense=d
        )
        log(f"{case}: tltorch")
        time_both(tl_row, tl_layer, index, min_run_time)
    row = Row(
        case,
        "tfx BlockTT",
        n_params(layer),
        dense_params,
        tl=tl_row,
        dense=d,
        note=f"{layer.tensorized_num_embeddings}x{layer.tensorized_embedding_dim}, "
        f"rank {layer.rank}",
    )
    log(f"{case}: tfx")
    time_both(row, layer, index, min_run_time)
    rows.append(row)
    if tl_row is not None:
        rows.append(tl_row)
    return rows


# ----------------------------------------------------------------------------- --full
#: Issue 5's layer list: linear (out, in), conv (cin, cout, kernel, stride, size), embeddings.
FULL_LINEARS = ((768, 768), (3072, 768), (4096, 4096), (11008, 4096))
FULL_FRACTIONS = (0.5, 0.25, 0.1)  # 2x / 4x / 10x compression
FULL_BATCHES = (1, 32, 512, 2048)
FULL_CONVS = (  # ResNet-50's 3x3 and 1x1 convolutions, by stage (batch 8)
    (64, 64, 3, 1, 56),
    (256, 256, 3, 1, 14),
    (256, 64, 1, 1, 56),
    (1024, 256, 1, 1, 14),
)
FULL_EMBEDDINGS = ((30522, 768), (1_000_000, 64))


def full_cases(min_run_time: float, log: Callable[[str], None]) -> list[Row]:
    """``--full``: forward only; tfx rows have kind "full" (not checked against issue 3's goals).

    Linears: low-rank (rank rounded to 8) and Tucker (``rank=fraction``) against dense and
    hand-written low-rank; ResNet-50 convs: CP and Tucker at 10%; embeddings: BlockTT rank 16
    with 4096 lookups."""
    rows: list[Row] = []
    for out_f, in_f in FULL_LINEARS:
        torch.manual_seed(0)
        dense = put(nn.Linear(in_f, out_f))
        dense_params = n_params(dense)
        made = {}
        for frac in FULL_FRACTIONS:
            rank = max(8, 8 * round(frac * out_f * in_f / (out_f + in_f) / 8))
            low = put(
                tfx.FactorizedLinear.from_linear(
                    dense,
                    rank=rank,
                    factorization="cp",
                    in_tensorized_features=(in_f,),
                    out_tensorized_features=(out_f,),
                    implementation="auto",
                )
            )
            tucker = put(
                tfx.FactorizedLinear.from_linear(
                    dense, rank=frac, factorization="tucker", implementation="auto"
                )
            )
            made[frac] = (rank, low, HandLowRank(low), tucker)
        for batch in FULL_BATCHES:
            x = randn(batch, in_f)
            case = f"linear {out_f}x{in_f} B={batch}"
            log(f"{case}: dense")
            d = Row(case, "nn.Linear", dense_params, dense_params, 1.0, kind="dense")
            d.fwd = measure(forward_fn(dense, x), min_run_time)
            d.dense = d
            rows.append(d)
            for frac, (rank, low, hand, tucker) in made.items():
                ideal = out_f * in_f / (rank * (out_f + in_f))
                for name, layer, kind in (
                    ("tfx low-rank auto", low, "full"),
                    ("hand-written low-rank", hand, "hand"),
                    ("tfx Tucker auto", tucker, "full"),
                ):
                    shown = tucker.rank if "Tucker" in name else rank
                    note = f"{1 / frac:g}x compression, rank {shown}"
                    r = Row(
                        case,
                        name,
                        n_params(layer),
                        dense_params,
                        None if "Tucker" in name else ideal,
                        note=note,
                        kind=kind,
                        dense=d,
                    )
                    log(f"{case}: {name} at {frac:g}")
                    r.fwd = measure(forward_fn(layer, x), min_run_time)
                    rows.append(r)
    for cin, cout, k, stride, size in FULL_CONVS:
        batch = 8
        case = f"conv {k}x{k} {cin}->{cout} {size}x{size} B={batch} (ResNet-50)"
        torch.manual_seed(0)
        x = randn(batch, cin, size, size)
        dense = put(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False))
        d = Row(case, "nn.Conv2d", n_params(dense), n_params(dense), 1.0, kind="dense")
        log(f"{case}: dense")
        d.fwd = measure(forward_fn(dense, x), min_run_time)
        d.dense = d
        rows.append(d)
        forms = [("CP", dict(factorization="cp"))]
        if k > 1:
            forms.append(("Tucker", dict(factorization="tucker", fixed_rank_modes=(2, 3))))
        for name, kwargs in forms:
            layer = put(
                tfx.FactorizedConv(
                    cin,
                    cout,
                    k,
                    order=2,
                    stride=stride,
                    padding=k // 2,
                    rank=FRACTION,
                    implementation="auto",
                    **kwargs,
                )
            )
            r = Row(
                case,
                f"tfx {name} auto",
                n_params(layer),
                d.params,
                note=f"rank {layer.rank}",
                kind="full",
                dense=d,
            )
            log(f"{case}: {name}")
            r.fwd = measure(forward_fn(layer, x), min_run_time)
            rows.append(r)
    for num, dim in FULL_EMBEDDINGS:
        case = f"embedding {num}x{dim}, 4096 lookups"
        torch.manual_seed(0)
        index = torch.randint(0, num, (4096,), device=DEVICE)
        dense = put(nn.Embedding(num, dim))
        d = Row(case, "nn.Embedding", n_params(dense), n_params(dense), kind="dense")
        log(f"{case}: dense")
        d.fwd = measure(forward_fn(dense, index), min_run_time)
        d.dense = d
        layer = put(tfx.FactorizedEmbedding(num, dim, factorization="blocktt", rank=16))
        r = Row(
            case,
            "tfx BlockTT",
            n_params(layer),
            d.params,
            kind="full",
            dense=d,
            note=f"{layer.tensorized_num_embeddings}x{layer.tensorized_embedding_dim}, rank 16",
        )
        log(f"{case}: tfx BlockTT")
        r.fwd = measure(forward_fn(layer, index), min_run_time)
        rows += [d, r]
        del dense
    return rows


# ----------------------------------------------------------------------------- goals
def goals(rows: Sequence[Row]) -> list[str]:
    """Issue 3's goals, checked against the measured rows (forward times; fwd+bwd shown too)."""
    out: list[str] = []

    def speed(r: Row, attr: str) -> float | None:
        v, ref = getattr(r, attr), getattr(r.dense, attr) if r.dense else None
        return None if v is None or ref is None else ref / v

    for name, target in (("low-rank", 8.0), ("Tucker", 5.0)):
        for r in rows:
            linear = r.case.startswith("linear") and not r.case.endswith("B=1")
            if r.kind == "tfx" and linear and r.layer.startswith(f"tfx {name} "):
                f, b = speed(r, "fwd"), speed(r, "bwd")
                if f is None:
                    out.append(
                        f"- MISSED {name} >= {target:g}x dense: {r.case}, {r.layer}: not run"
                    )
                    continue
                ok = "met" if f >= target else "MISSED"
                out.append(
                    f"- {ok}: {name} >= {target:g}x dense at {r.case}, {r.layer}: fwd {f:.2f}x"
                    f" (fwd+bwd {b:.2f}x, FLOP-ideal {r.ideal:.1f}x)"
                )
    slower: list[str] = []  # below NOISE x tltorch's speed: slower beyond this machine's noise
    ties: list[str] = []  # between NOISE and 1: slower, but within the noise
    compared = 0
    for r in rows:
        if r.kind == "tfx" and r.tl is not None:
            for attr in ("fwd", "bwd"):
                mine, theirs = getattr(r, attr), getattr(r.tl, attr)
                if theirs is None:
                    continue
                compared += 1
                ratio = None if mine is None else theirs / mine
                if ratio is None or ratio < 1.0:
                    text = "not run" if ratio is None else f"{ratio:.2f}x"
                    line = (
                        f"  - {r.case}, {r.layer} {'fwd' if attr == 'fwd' else 'fwd+bwd'}: "
                        f"{text} tltorch's speed"
                    )
                    (ties if ratio is not None and ratio >= NOISE else slower).append(line)
    if compared == 0:
        out.append("- not checked: no tfx layer slower than tltorch's (tltorch not installed)")
    else:
        verdict = "MISSED" if slower else "met"
        out.append(
            f"- {verdict}: no tfx layer slower than the same tltorch layer: of {compared} "
            f"timings, {len(slower)} below {NOISE:g}x tltorch's speed, {len(ties)} between "
            f"{NOISE:g}x and 1x (within noise)"
        )
        out.extend(slower + ties)
    for r in rows:
        if r.kind == "tfx" and r.case.startswith("embedding"):
            if r.tl is None:
                out.append(
                    "- not checked: embedding lookups >= 50x faster than tltorch's "
                    "(tltorch not installed)"
                )
            else:
                f, b = r.tl.fwd / r.fwd, r.tl.bwd / r.bwd  # type: ignore[operator]
                out.append(
                    f"- {'met' if f >= 50 else 'MISSED'}: embedding lookups >= 50x faster than "
                    f"tltorch: fwd {f:.1f}x (fwd+bwd {b:.1f}x)"
                )
    return out


def header() -> str:
    tl = f"tltorch {tltorch.__version__}" if tltorch is not None else "tltorch not installed"
    where = machine(1)
    if DEVICE.type == "cuda":
        where = f"{torch.cuda.get_device_name(DEVICE)} (host: {where})"
    clock = "thread CPU time" if CLOCK == "cpu" else "wall-clock time"
    return stamp(
        where,
        clock,
        str(DTYPE).replace("torch.", ""),
        f"torch {torch.__version__}",
        tl,
        f"commit {git_commit()}",
        f"load average before: {load_average()}",
    )


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", default="linear,conv,embedding", help="comma-separated: linear, conv, embedding"
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="also issue 5's layer list, forward only: linear 768x768, 3072x768, 4096x4096, "
        "11008x4096 at 2x/4x/10x, batch 1-2048; ResNet-50 convs; embeddings 30522x768, 10^6x64 "
        "(about 10 more minutes)",
    )
    parser.add_argument(
        "--min-run-time", type=float, default=0.3, help="seconds per Timer measurement"
    )
    parser.add_argument(
        "--quick", action="store_true", help="--min-run-time 0.05 (rough numbers, fast)"
    )
    parser.add_argument("--out", default=None, help="also write the markdown report to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu (default) or cuda; tltorch is compared on CPU float32 only",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="report the least of this many medians (default 3; they share --min-run-time)",
    )
    parser.add_argument(
        "--clock",
        default=None,
        choices=("cpu", "wall"),
        help="cpu: this thread's CPU time (default on CPU, robust to a shared machine); "
        "wall: wall-clock (default on CUDA)",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="parameter and input dtype",
    )
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)  # callers (benchmarks/run.py) get their thread count back


def _run(args: argparse.Namespace) -> str:
    global DEVICE, DTYPE, CLOCK, REPEATS
    REPEATS = max(1, args.repeats)
    DEVICE, DTYPE = torch.device(args.device), getattr(torch, args.dtype)
    CLOCK = args.clock or ("wall" if DEVICE.type == "cuda" else "cpu")
    if CLOCK == "cpu" and DEVICE.type == "cuda":
        raise SystemExit("--clock cpu cannot time CUDA kernels; use --clock wall")
    min_run_time = 0.05 if args.quick else args.min_run_time
    log = (
        (lambda s: None)
        if args.quiet
        else (lambda s: print(f"  timing {s}", file=sys.stderr, flush=True))
    )
    head = header()
    print(head, flush=True)
    rows: list[Row] = []
    parts = {"linear": linear_cases, "conv": conv_cases, "embedding": embedding_cases}
    for part in args.only.split(","):
        if part.strip():
            rows += parts[part.strip()](min_run_time, log)
    if args.full:
        rows += full_cases(min_run_time, log)
    table = markdown(rows)
    checks = "\n".join(goals(rows))
    load = load_average()
    title = f"Goals (issue 3, forward; measured on {DEVICE.type}, {str(DTYPE)[6:]}):"
    report = f"{head}; load average after: {load}\n\n{table}\n\n{title}\n{checks}\n"
    print()
    print(table)
    print()
    print(title)
    print(checks, flush=True)
    return save(report, args.out, echo=False)


if __name__ == "__main__":
    main()
