"""Time tfx.tensors._decompose on a 4096 x 4096 float32 matrix (and CP-ALS on 256 x 256).

Run: .venv/bin/python benchmarks/decompose_speed.py [--threads N] [--out FILE]
Prints a markdown table: per case, the best wall time of 3 runs after a warm-up (and that
run's process CPU time), and the relative error (CP-ALS: its fit). The first line names the
machine, the thread count and the load average: other processes slow torch's threads down a
lot, so compare runs made at similar loads, or with --threads 1.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import torch
from _common import git_commit, load_average, machine, save, stamp, tt_ranks

from tfx.tensors._decompose import block_tt_svd, cp_als, hosvd, truncated_svd, tt_svd

T = TypeVar("T")
TARGET = 0.10  # fraction of the dense parameter count


class Timing(float):
    """A wall time that prints with the CPU time of the same run."""

    cpu: float = 0.0

    def __format__(self, spec: str) -> str:
        return f"{float(self):{spec}} s wall, {self.cpu:{spec}} s cpu"


def best_of(fn: Callable[[], T], repeats: int = 3) -> tuple[Timing, T]:
    out = fn()  # warm-up
    best = Timing(math.inf)
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        out = fn()
        wall = Timing(time.perf_counter() - start)
        wall.cpu = time.process_time() - cpu
        best = min(best, wall)
    return best, out


def rel(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(approx - exact) / torch.linalg.vector_norm(exact))


def tt_dense(cores: list[torch.Tensor]) -> torch.Tensor:
    out = cores[0]
    for core in cores[1:]:
        out = torch.tensordot(out, core, dims=([-1], [0]))
    return out


def main(argv: list[str] | None = None) -> str:
    """Time every decomposition; print and return the markdown report (first line: the run)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--out", default=None, help="also write the markdown report to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = 4096
    # A spectrum decaying like a trained weight's (power law), so errors are meaningful.
    u, _ = torch.linalg.qr(torch.randn(n, n))
    v, _ = torch.linalg.qr(torch.randn(n, n))
    w = (u * torch.arange(1, n + 1).pow(-0.5)) @ v.T
    budget = int(TARGET * n * n)
    threads = torch.get_num_threads()
    head = stamp(
        machine(threads),
        "float32",
        f"torch {torch.__version__}",
        f"commit {git_commit()}",
        f"load average before: {load_average()}",
    )
    rows: list[str] = []

    def row(name: str, shape: str, ranks: object, t: Timing, error: str) -> None:
        rows.append(f"| {name} | {shape} | {ranks} | {float(t):.3f} | {t.cpu:.3f} | {error} |")
        print(rows[-1], file=sys.stderr, flush=True)

    rank = budget // (2 * n)
    t, (uu, s, vh) = best_of(partial(truncated_svd, w, rank))
    row("truncated_svd", f"{n} x {n}", rank, t, f"rel. err {rel((uu * s) @ vh, w):.4f}")

    x4 = w.reshape(64, 64, 64, 64)
    r = 1
    while (r + 1) ** 4 + 4 * 64 * (r + 1) <= budget:
        r += 1
    t, (core, factors) = best_of(partial(hosvd, x4, (r,) * 4))
    rec = torch.einsum("abcd,ia,jb,kc,ld->ijkl", core, *factors)
    row("hosvd", "64 x 64 x 64 x 64", (r,) * 4, t, f"rel. err {rel(rec, x4):.4f}")

    for shape in ((16,) * 6, (8,) * 8):
        ranks = tt_ranks(shape, budget)
        t, cores = best_of(partial(tt_svd, w.reshape(shape), ranks))
        err = rel(tt_dense(cores).reshape(n, n), w)
        row("tt_svd", " x ".join(map(str, shape)), ranks, t, f"rel. err {err:.4f}")

    for half in ((8, 8, 8, 8), (16, 16, 16)):
        ranks = tt_ranks(tuple(a * a for a in half), budget)
        t, cores = best_of(partial(block_tt_svd, w.reshape(*half, *half), (half, half), ranks))
        flat = [c.reshape(c.shape[0], -1, c.shape[-1]) for c in cores]
        d = len(half)
        dense = tt_dense(flat).reshape(*(s for h in half for s in (h, h)))
        dense = dense.permute(*range(0, 2 * d, 2), *range(1, 2 * d, 2)).reshape(n, n)
        shown = f"{' x '.join(map(str, half))} by {' x '.join(map(str, half))}"
        row("block_tt_svd", shown, ranks, t, f"rel. err {rel(dense, w):.4f}")

    m = w[:256, :256].contiguous()
    for cp_rank in (13, 64, 128, 256, 512):
        t, (_, _, fit) = best_of(partial(cp_als, m, cp_rank))
        row("cp_als", "256 x 256", cp_rank, t, f"fit {fit:.4f}")
    x3 = w.reshape(256, 256, 256)[:64, :64, :64].contiguous()
    for cp_rank in (10, 100):
        t, (_, _, fit) = best_of(partial(cp_als, x3, cp_rank), repeats=1)
        row("cp_als", "64 x 64 x 64", cp_rank, t, f"fit {fit:.4f}")

    table = "\n".join(
        [
            "| decomposition | input | ranks | wall s | CPU s | error |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    report = f"{head}; load average after: {load_average()}\n\n{table}\n"
    return save(report, args.out)


if __name__ == "__main__":
    main()
