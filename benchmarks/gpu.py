"""GPU layer table: factorized linears against ``nn.Linear``, fp32 and bf16, events + CUDA graphs.

NOT YET RUN ON A GPU: the session that wrote this script had no GPU; it was checked only with
``--device cpu --quick``. Read the first real run's table with that in mind.

Self-contained (imports torch, tfx and the standard library only). From the repository root on
a machine with one GPU (well under 5 minutes on an H100 / H200):

    PYTHONPATH=. python benchmarks/gpu.py --out DIR          # the table; DIR/gpu.md, DIR/gpu.json
    PYTHONPATH=. python benchmarks/gpu.py --device cpu --quick   # smoke test without a GPU

Cases (issue 5): linear 768x768, 3072x768 (out x in), 4096x4096 and 11008x4096 at 10%, 25% and
50% of the dense parameters, batch 1, 32, 512 and 2048, in float32 and bfloat16. Each case
times, on the same input:

* ``nn.Linear`` (dense);
* ``tfx low-rank``: ``tfx.nn.FactorizedLinear.from_linear(dense, factorization="cp")`` on the
  untensorized matrix (a rank-r product), ``implementation="auto"``; the rank is the fraction's
  rank rounded to a multiple of 64 in bf16 (tensor-core tiles) and of 8 in fp32, at least one
  multiple, so the stored fraction can differ from the target (the ``params`` column);
* ``hand low-rank``: ``addmm(b, mm(x, V), U^T)`` with the tfx layer's own factors, stored
  contiguous: two GEMMs, what the arithmetic allows;
* ``tfx Tucker``: ``FactorizedLinear.from_linear(dense, factorization="tucker", rank=fraction)``
  on tfx's tensorization (Tucker ranks are per mode and not rounded).

Timing: each forward runs under ``torch.no_grad()``; it is captured once in a
``torch.cuda.CUDAGraph`` (after warm-up on a side stream) and the graph is replayed, timed with
CUDA events around a batch of replays (``graph`` column: GPU time without launch overhead);
the same forward is also timed eagerly with events (``eager``: what a Python loop pays). A
forward that cannot be captured is timed eagerly only and says so (``graph`` = "-", note
"capture failed"). fp32 matmuls use torch's default precision (TF32 off). The ``x`` columns
are dense time / layer time in the same mode (> 1: faster than dense). ``ideal`` = dense
FLOPs / low-rank FLOPs.

Goals from issue 5, checked at the end (nothing fails on a miss): a 4096 x 4096 linear at 10%
of the parameters at least 6x faster than dense at batch 2048 in bf16 (graph time); at batch
<= 32 never slower than dense.

On ``--device cpu`` (one thread) the clock is ``time.perf_counter`` around the same loop (no
events, no graphs): for catching bugs, not for numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

import tfx

#: (out_features, in_features)
SIZES = ((768, 768), (3072, 768), (4096, 4096), (11008, 4096))
FRACTIONS = (0.1, 0.25, 0.5)
BATCHES = (1, 32, 512, 2048)
DTYPES = ("float32", "bfloat16")
#: Rank multiples: tensor-core tiles for 16-bit types, 8 otherwise.
RANK_MULTIPLE = {"float32": 8, "bfloat16": 64, "float16": 64}


# ----------------------------------------------------------------------------- timing
class Timer:
    """Milliseconds per call of a forward, by CUDA events (eager or graph replay) or on the CPU."""

    def __init__(self, device: torch.device, target_ms: float) -> None:
        self.device = device
        self.target_ms = target_ms

    def _loop(self, fn: Callable[[], Any], iters: int) -> float:
        if self.device.type != "cuda":
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            return 1e3 * (time.perf_counter() - start) / iters
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        return begin.elapsed_time(end) / iters

    def __call__(self, fn: Callable[[], Any]) -> float:
        """Least of 3 timed batches, each sized to last about ``target_ms``, after warm-up."""
        for _ in range(3):
            fn()
        once = self._loop(fn, 3)
        iters = max(3, min(500, int(self.target_ms / max(once, 1e-3))))
        return min(self._loop(fn, iters) for _ in range(3))


def graphed(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` captured in a CUDA graph; returns the replay (raises when capture fails)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph: allocator, cuBLAS workspaces
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    return graph.replay


# ----------------------------------------------------------------------------- layers
class HandLowRank(nn.Module):
    """``addmm(b, mm(x, V), U^T)``: a rank-r linear as two GEMMs, factors stored contiguous."""

    def __init__(self, layer: tfx.FactorizedLinear) -> None:
        super().__init__()
        weights, (u, v) = layer.weight.decomposition
        self.v = nn.Parameter(v.detach().contiguous())  # (in, r)
        self.u_t = nn.Parameter((u * weights).detach().t().contiguous())  # (r, out)
        assert layer.bias is not None
        self.bias = nn.Parameter(layer.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, torch.mm(x, self.v), self.u_t)


def low_rank(out_f: int, in_f: int, fraction: float, multiple: int) -> int:
    """Rank for ``fraction`` of the dense parameters, rounded to ``multiple`` (at least one)."""
    exact = fraction * out_f * in_f / (out_f + in_f)
    return max(multiple, multiple * round(exact / multiple))


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclasses.dataclass
class Case:
    size: tuple[int, int]
    fraction: float
    dtype: str
    batch: int
    layer: str
    params: int
    dense_params: int
    rank: str
    ideal: float | None = None
    eager_ms: float | None = None
    graph_ms: float | None = None
    note: str = ""
    dense: Case | None = dataclasses.field(default=None, repr=False)

    def speedup(self, mode: str) -> float | None:
        mine = getattr(self, f"{mode}_ms")
        ref = getattr(self.dense, f"{mode}_ms") if self.dense else None
        return None if mine is None or ref is None or mine == 0 else ref / mine

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "dense"}
        out["x_dense_eager"], out["x_dense_graph"] = self.speedup("eager"), self.speedup("graph")
        return out


def time_forward(layer: nn.Module, x: torch.Tensor, timer: Timer, row: Case) -> None:
    """Fill ``row.eager_ms`` and (on CUDA, when capture works) ``row.graph_ms``."""

    def run() -> Any:
        with torch.no_grad():
            return layer(x)

    row.eager_ms = timer(run)
    if x.device.type != "cuda":
        return
    try:
        row.graph_ms = timer(graphed(run))
    except Exception as err:  # noqa: BLE001 - an uncapturable forward is a result, not a crash
        torch.cuda.synchronize()
        row.note = (row.note + "; " if row.note else "") + (
            f"capture failed ({type(err).__name__}): eager events only"
        )


def build(
    out_f: int, in_f: int, fraction: float, dtype_name: str, device: torch.device
) -> dict[str, nn.Module]:
    """The dense layer and its factorized versions, all from one random weight."""
    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    dense = nn.Linear(in_f, out_f, device=device, dtype=torch.float32)
    r = low_rank(out_f, in_f, fraction, RANK_MULTIPLE[dtype_name])
    lr = tfx.FactorizedLinear.from_linear(
        dense,
        rank=r,
        factorization="cp",
        in_tensorized_features=(in_f,),
        out_tensorized_features=(out_f,),
        implementation="auto",
    )
    tucker = tfx.FactorizedLinear.from_linear(
        dense, rank=fraction, factorization="tucker", implementation="auto"
    )
    made = {
        "nn.Linear": dense,
        "tfx low-rank": lr,
        "hand low-rank": HandLowRank(lr),
        "tfx Tucker": tucker,
    }
    return {k: m.to(dtype=dtype).eval() for k, m in made.items()}


def check(layers: dict[str, nn.Module], in_f: int, dtype: torch.dtype, device: torch.device) -> str:
    """The hand-written code computes the tfx layer (relative max error, raises when off)."""
    x = torch.randn(4, in_f, device=device, dtype=dtype)
    with torch.no_grad():
        a, b = layers["tfx low-rank"](x).float(), layers["hand low-rank"](x).float()
    err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
    if not err < (3e-2 if dtype != torch.float32 else 1e-4):
        raise AssertionError(f"tfx low-rank and hand low-rank differ: relative error {err:.2e}")
    return f"{err:.1e}"


def run_cases(
    args: argparse.Namespace, device: torch.device, log: Callable[[str], None]
) -> list[Case]:
    timer = Timer(device, args.target_ms)
    rows: list[Case] = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for out_f, in_f in args.sizes:
            dense_params = out_f * in_f + out_f
            dense_rows: dict[int, Case] = {}
            for fraction in args.fractions:
                log(f"{dtype_name} {out_f}x{in_f} at {fraction:g}: building")
                layers = build(out_f, in_f, fraction, dtype_name, device)
                err = check(layers, in_f, dtype, device)
                lr = layers["tfx low-rank"]
                for batch in args.batches:
                    torch.manual_seed(1)
                    x = torch.randn(batch, in_f, device=device, dtype=dtype)
                    common = dict(
                        size=(out_f, in_f),
                        fraction=fraction,
                        dtype=dtype_name,
                        batch=batch,
                        dense_params=dense_params,
                    )
                    if batch not in dense_rows:  # the dense layer does not depend on the fraction
                        d = Case(
                            **common, layer="nn.Linear", params=dense_params, rank="-", ideal=1.0
                        )
                        log(f"{dtype_name} {out_f}x{in_f} B={batch}: nn.Linear")
                        time_forward(layers["nn.Linear"], x, timer, d)
                        d.dense = d
                        dense_rows[batch] = d
                    d = dense_rows[batch]
                    rows.append(dataclasses.replace(d, fraction=fraction, dense=d))
                    ideal = out_f * in_f / (lr.rank * (out_f + in_f))  # type: ignore[operator]
                    for name in ("tfx low-rank", "hand low-rank", "tfx Tucker"):
                        layer = layers[name]
                        rank = str(layers["tfx Tucker"].rank if name == "tfx Tucker" else lr.rank)
                        row = Case(
                            **common,
                            layer=name,
                            params=n_params(layer),
                            rank=rank.replace(" ", ""),
                            ideal=ideal if "low-rank" in name else None,
                            dense=d,
                            note=f"check {err}" if name == "hand low-rank" else "",
                        )
                        log(f"{dtype_name} {out_f}x{in_f} at {fraction:g} B={batch}: {name}")
                        try:
                            time_forward(layer, x, timer, row)
                        except Exception as exc:  # noqa: BLE001
                            row.note = (
                                f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
                            )
                            traceback.print_exc()
                        rows.append(row)
                del layers
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------- report
def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}" if v < 0.1 else f"{v:.3f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def markdown(rows: Sequence[Case]) -> str:
    head = (
        "| dtype | linear (out x in) | params target | batch | layer | rank | params (% "
        "dense) | ideal | eager ms | eager x dense | graph ms | graph x dense | note |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        dense = r.layer == "nn.Linear"
        lines.append(
            f"| {r.dtype} | {r.size[0]}x{r.size[1]} | {r.fraction:g} | {r.batch} | "
            f"{r.layer} | {r.rank} | {r.params:,} ({100 * r.params / r.dense_params:.1f}%) "
            f"| {'-' if r.ideal is None else f'{r.ideal:.2f}'} | {_ms(r.eager_ms)} | "
            f"{'' if dense else _x(r.speedup('eager'))} | {_ms(r.graph_ms)} | "
            f"{'' if dense else _x(r.speedup('graph'))} | {r.note} |"
        )
    return "\n".join(lines)


def goals(rows: Sequence[Case]) -> list[str]:
    """Issue 5's GPU goals against the measured rows (graph time where there is one)."""
    out = []

    def best(r: Case) -> float | None:
        return r.speedup("graph") if r.graph_ms is not None else r.speedup("eager")

    big = [
        r
        for r in rows
        if r.size == (4096, 4096)
        and r.fraction == 0.1
        and r.batch == 2048
        and r.dtype == "bfloat16"
        and r.layer != "nn.Linear"
    ]
    for r in big:
        s = best(r)
        verdict = "not run" if s is None else ("met" if s >= 6 else "MISSED")
        out.append(
            f"- {verdict}: 4096x4096 at 10% >= 6x dense at batch 2048, bf16: {r.layer} "
            f"{_x(s)} (rank {r.rank}, {100 * r.params / r.dense_params:.1f}% params)"
        )
    if not big:
        out.append("- not checked: 4096x4096 at 10%, batch 2048, bf16 was not in this run")
    small = [r for r in rows if r.batch <= 32 and r.layer.startswith("tfx")]
    slower = [r for r in small if (best(r) or 0) < 1.0]
    out.append(
        f"- {'met' if not slower else 'MISSED'}: tfx layers at batch <= "
        f"32 never slower than dense: {len(slower)} of {len(small)} slower"
    )
    out += [
        f"  - {r.dtype} {r.size[0]}x{r.size[1]} at "
        f"{r.fraction:g}, B={r.batch}, {r.layer}: {_x(best(r))}"
        for r in slower
    ]
    return out


def header(device: torch.device) -> str:
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
        how = "CUDA events; CUDA graph replay where capture works"
    else:
        where = (
            f"{platform.processor() or 'CPU'} ({os.cpu_count()} CPUs, "
            f"{torch.get_num_threads()} threads)"
        )
        how = "time.perf_counter (CPU smoke test, not a GPU measurement)"
    return (
        f"{datetime.datetime.now().isoformat(timespec='minutes')}; "
        f"{where}; torch {torch.__version__}; tfx {tfx.__version__}; "
        f"{how}; TF32 matmul {torch.backends.cuda.matmul.allow_tf32}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="768x768 and 3072x768 at 10%%, batch 1 and 32 only (smoke test)",
    )
    parser.add_argument(
        "--dtypes", default=",".join(DTYPES), help="comma-separated: float32, bfloat16, float16"
    )
    parser.add_argument(
        "--target-ms", type=float, default=25.0, help="length of each timed batch of calls"
    )
    parser.add_argument("--out", default=None, help="directory for gpu.md and gpu.json")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; for a smoke test run: --device cpu --quick", file=sys.stderr)
        return 1
    if device.type == "cpu":
        torch.set_num_threads(
            1
        )  # a smoke test: two threads on a shared 2-core machine only add noise
    args.dtypes = [d.strip() for d in args.dtypes.split(",")]
    args.sizes, args.fractions, args.batches = SIZES, FRACTIONS, BATCHES
    if args.quick:
        args.sizes, args.fractions, args.batches = SIZES[:2], FRACTIONS[:1], BATCHES[:2]
        args.target_ms = min(args.target_ms, 5.0)
    log = (
        (lambda s: None) if args.quiet else (lambda s: print(f"  {s}", file=sys.stderr, flush=True))
    )
    head = header(device)
    print(head, flush=True)
    start = time.time()
    rows = run_cases(args, device, log)
    table, checks = markdown(rows), "\n".join(goals(rows))
    elapsed = f"{time.time() - start:.0f} s"
    print()
    print(table)
    print()
    print(f"Goals (issue 5, GPU):\n{checks}\n\n{len(rows)} timings in {elapsed}", flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu.md"), "w") as f:
            f.write(
                f"{head}\n\n{table}\n\nGoals (issue 5, GPU):\n"
                f"{checks}\n\n{len(rows)} timings in {elapsed}\n"
            )
        with open(os.path.join(args.out, "gpu.json"), "w") as f:
            json.dump(
                {"header": head, "elapsed": elapsed, "rows": [r.to_dict() for r in rows]},
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
