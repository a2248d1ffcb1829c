"""Does ``device_profile=`` keep factorized layers from running slower than dense?

``python benchmarks/profile_check.py [--quick] [--out FILE]``. Measures this machine's
:class:`tfx.cost.DeviceProfile` (cached), then for single linear layers of issue 5's sizes,
budgets of 50 / 25 / 10 % of the layer and batches 1 / 32 / 512, plans with and without the
profile and times the dense layer and all its factorized versions in one process, interleaved
(one thread, least of three rounds of ``torch.utils.benchmark`` block medians). Prints a
markdown table with the speedups over dense, the profile's estimate, and the smallest speedup
of each column: issue 5 asks for at least 0.95 over the suite.
"""

from __future__ import annotations

import argparse
import sys

import torch
from _common import git_commit, machine, save, stamp
from torch import nn
from torch.utils import benchmark

import tfx
from tfx.cost import measure_device

SIZES = [(768, 768), (3072, 768), (4096, 4096)]
BUDGETS = [0.5, 0.25, 0.1]
BATCHES = [1, 32, 512]


def _time(layer: nn.Module, x: torch.Tensor, min_run_time: float) -> float:
    with torch.no_grad():
        timer = benchmark.Timer("layer(x)", globals={"layer": layer, "x": x}, num_threads=1)
        return timer.blocked_autorange(min_run_time=min_run_time).median


def _interleaved(
    layers: list[nn.Module], x: torch.Tensor, min_run_time: float, rounds: int = 3
) -> list[float]:
    """Least median of each layer over ``rounds``, the layers timed in turn in every round, so
    that a slow spell of a shared machine hits them all alike."""
    with torch.no_grad():
        for layer in layers:
            layer(x)
    best = [float("inf")] * len(layers)
    for _ in range(rounds):
        for i, layer in enumerate(layers):
            best[i] = min(best[i], _time(layer, x, min_run_time))
    return best


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="the 768 x 768 layer only, shorter timing"
    )
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    profile = measure_device("cpu")
    sizes = SIZES[:1] if args.quick else SIZES
    min_run = 0.05 if args.quick else 0.2
    rows = []
    worst = {"plain": float("inf"), "profile": float("inf")}
    for out_f, in_f in sizes:
        dense = nn.Linear(in_f, out_f).eval()
        for batch in BATCHES:
            x = torch.randn(batch, in_f)
            plans = []
            for budget in BUDGETS:
                # the bias stays: the budget counts it, so ask for the weight's share plus the bias
                params = int(budget * in_f * out_f) + out_f
                for kwargs in ({}, {"device_profile": profile}):
                    plans.append(
                        tfx.factorize(
                            dense,
                            params,
                            example_inputs=(x,),
                            forms=("svd", "tucker", "tt", "blocktt"),
                            progress=False,
                            verify=False,
                            **kwargs,
                        )
                    )
            t_dense, *times = _interleaved([dense, *plans], x, min_run)
            for b, budget in enumerate(BUDGETS):
                cells = [f"{out_f}x{in_f}", str(batch), f"{budget:.0%}", f"{1e3 * t_dense:.3f}"]
                for k, name in enumerate(("plain", "profile")):
                    gm, t = plans[2 * b + k], times[2 * b + k]
                    choice = gm.tfx_plan.choices[0]
                    speedup = t_dense / t
                    worst[name] = min(worst[name], speedup)
                    est = (
                        choice.seconds_before / choice.seconds_after
                        if choice.seconds_after
                        else float("nan")
                    )
                    rank = choice.rank if isinstance(choice.rank, int) else max(choice.rank)
                    cells += [f"{choice.form}:{choice.order} r{rank}", f"{speedup:.2f}x"] + (
                        [f"{est:.2f}x"] if name == "profile" else []
                    )
                rows.append(cells)
                print(" | ".join(cells), file=sys.stderr, flush=True)
    header = [
        "layer",
        "batch",
        "budget",
        "dense ms",
        "plain: form",
        "plain: speedup",
        "profile: form",
        "profile: speedup",
        "profile: est.",
    ]
    lines = [
        stamp(machine(1), f"torch {torch.__version__}", f"commit {git_commit()}"),
        f"device profile: {profile.flops_per_s / 1e9:.1f} GFLOP/s, "
        f"{profile.bytes_per_s / 1e9:.1f} GB/s, {profile.step_s * 1e6:.1f} us per kernel",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        f"smallest speedup over dense: without a profile {worst['plain']:.2f}x, "
        f"with it {worst['profile']:.2f}x (goal >= 0.95x)",
    ]
    return save("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
