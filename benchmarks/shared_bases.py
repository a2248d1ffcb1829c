"""Shared input bases against separate factors for query/key/value, at equal parameters.

``python benchmarks/shared_bases.py [--save]``. On the pretrained all-MiniLM-L6-v2
(offline), calibrated on the 300 sentences of ``tfx/_data/calibration.txt``, each layer's
query, key and value projections (one input, one input moment) are replaced at a fraction of
their 3 x 384 x 384 weights either

* **separately**: each projection by its own whitened truncated SVD (``[W L]_r L^-1``, what
  ``tfx.factorize`` builds for a calibrated low-rank site), the three ranks chosen together
  by the largest whitened singular values of the three (the energy-optimal split of
  ``sum r_k (out + in)`` parameters), or
* **jointly**: one whitened truncated SVD of the stacked ``[W_q; W_k; W_v]``, the shared
  input basis ``V`` and scale ``w`` stored once, built by tfx's own
  :func:`tfx.passes._decompose.shared_basis_layer` (``r (1 + 3 x 384 + 384)`` parameters).

Reported per layer and fraction: the relative output error of the three projections together
(``sum_k |(W_k - W'_k) X|^2 / sum_k |W_k X|^2``, square-rooted) on the calibration rows and on
the inputs of 200 held-out sentences (``benchmarks/data/heldout.txt``; real tokens only), and,
per fraction, the mean cosine of the sentence embeddings when every layer's projections are
replaced one way or the other (the rest of the model dense). ``--save`` writes
``benchmarks/results/shared_bases.md``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from typing import Any

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import HERE, git_commit, machine, stamp  # noqa: E402
from quality import (  # noqa: E402
    _sentences,
    _tokens,
    embedding_metrics,
    minilm_embeddings,
)

from tfx.passes import capture, find_sites  # noqa: E402
from tfx.passes._calibrate import _tall_low_rank, collect_statistics  # noqa: E402
from tfx.passes._decompose import shared_basis_layer  # noqa: E402

FRACTIONS = (0.25, 0.5)
PROJECTIONS = ("query", "key", "value")


def _inputs(model: nn.Module, names: list[str], batches: list[dict]) -> dict[str, torch.Tensor]:
    """Each named linear's input rows over ``batches``, real positions only (float64)."""
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = []
    mask: dict[str, torch.Tensor] = {}
    for name in names:

        def hook(module: nn.Module, args: Any, name: str = name) -> None:
            rows[name].append(args[0][mask["now"]].detach().double())

        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for batch in batches:
                mask["now"] = batch["attention_mask"].bool()
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return {n: torch.cat(r) for n, r in rows.items()}


def _separate(
    weights: list[torch.Tensor], stats: Any, total_rank: int
) -> tuple[list[torch.Tensor], list[int]]:
    """Each weight's whitened rank-``r_k`` approximation, ``sum r_k = total_rank`` split by the
    largest whitened singular values of the three."""
    whitening = stats.whitening()
    energies = []
    for k, w in enumerate(weights):
        wl = whitening.apply(w.double())
        s = torch.linalg.svdvals(wl)
        energies += [(float(v) ** 2, k) for v in s]
    ranks = [0] * len(weights)
    for _, k in sorted(energies, reverse=True)[:total_rank]:
        ranks[k] += 1
    out = []
    for w, r in zip(weights, ranks, strict=True):
        if r == 0:
            out.append(torch.zeros_like(w, dtype=torch.float64))
            continue
        u, s, vh = _tall_low_rank(w.double(), r, whitening=whitening)
        out.append((u * s) @ vh)
    return out, ranks


def _joint(members: list[Any], stats: Any, rank: int) -> list[torch.Tensor]:
    """The members' weights as tfx's shared-basis layers hold them (rank ``rank``)."""
    layers = shared_basis_layer(members, rank, stats)
    out = []
    for member in members:
        layer = layers[member.name].double()
        eye = torch.eye(member.weight.shape[1], dtype=torch.float64)
        with torch.no_grad():
            got = layer(eye)
            if layer.bias is not None:
                got = got - layer.bias
        out.append(got.T)
    return out


def _error(weights: list[torch.Tensor], approx: list[torch.Tensor], x: torch.Tensor) -> float:
    pairs = zip(weights, approx, strict=True)
    num = sum(float(((w.double() - a) @ x.T).square().sum()) for w, a in pairs)
    den = sum(float((w.double() @ x.T).square().sum()) for w in weights)
    return (num / den) ** 0.5


def run() -> dict[str, Any]:
    from tfx.demo import _minilm

    torch.manual_seed(0)
    model, tokenizer = _minilm()
    model.eval()
    calibration = _sentences("calibration.txt")
    heldout = _sentences("heldout.txt")
    cal_batches = [_tokens(tokenizer, calibration[i : i + 32]) for i in range(0, 300, 32)]
    held_batches = [_tokens(tokenizer, heldout[i : i + 100]) for i in range(0, len(heldout), 100)]
    captured = capture(model, cal_batches[0])
    sites = find_sites(captured.gm, path=captured.path, kinds=("linear",))
    by_name = {s.name: s for s in sites}
    stats = collect_statistics(captured.gm, sites, cal_batches)
    layers = len(model.encoder.layer)
    groups = [[f"encoder.layer.{i}.attention.self.{p}" for p in PROJECTIONS] for i in range(layers)]
    names = [n for g in groups for n in g]
    cal_x = _inputs(model, names[::3], cal_batches)
    held_x = _inputs(model, names[::3], held_batches)
    reference = minilm_embeddings(model, held_batches)
    rows, ends = [], []
    hidden = model.config.hidden_size
    for fraction in FRACTIONS:
        params = fraction * 3 * hidden * hidden
        total_rank = round(params / (2 * hidden))  # separate: r (out + in) each
        joint_rank = round(params / (1 + 4 * hidden))  # joint: r (1 + 3 out + in)
        swapped = {"separate": copy.deepcopy(model), "joint": copy.deepcopy(model)}
        for group in groups:
            members = [by_name[n] for n in group]
            weights = [m.weight.detach() for m in members]
            moment = stats[group[0]]
            sep, ranks = _separate(weights, moment, total_rank)
            joint = _joint(members, moment, joint_rank)
            row = {
                "layer": group[0].split(".")[2],
                "fraction": fraction,
                "separate_ranks": ranks,
                "separate_params": sum(r * 2 * hidden for r in ranks),
                "joint_rank": joint_rank,
                "joint_params": joint_rank * (1 + 4 * hidden),
            }
            for label, approx in (("separate", sep), ("joint", joint)):
                row[f"{label}_cal"] = _error(weights, approx, cal_x[group[0]])
                row[f"{label}_held"] = _error(weights, approx, held_x[group[0]])
                for name, w in zip(group, approx, strict=True):
                    with torch.no_grad():
                        swapped[label].get_submodule(name).weight.copy_(w.float())
            rows.append(row)
            print(
                f"  layer {row['layer']} at {fraction}: held-out error separate "
                f"{row['separate_held']:.3f} (ranks {ranks}), joint {row['joint_held']:.3f} "
                f"(rank {joint_rank})",
                flush=True,
            )
        for label, swapped_model in swapped.items():
            metrics = embedding_metrics(reference, minilm_embeddings(swapped_model, held_batches))
            ends.append({"fraction": fraction, "how": label, **metrics})
    return {"rows": rows, "ends": ends}


def markdown(results: dict[str, Any], head: str) -> str:
    out = [
        head,
        "",
        "| layer | kept | separate ranks (q / k / v) | params | joint rank | params | "
        "calibration error separate / joint | held-out error separate / joint |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        out.append(
            f"| {r['layer']} | {r['fraction']:.2f} | {' / '.join(map(str, r['separate_ranks']))} "
            f"| {r['separate_params']:,} | {r['joint_rank']} | {r['joint_params']:,} | "
            f"{r['separate_cal']:.3f} / {r['joint_cal']:.3f} | "
            f"{r['separate_held']:.3f} / {r['joint_held']:.3f} |"
        )
    out += [
        "",
        "Every layer's query/key/value replaced (the rest dense), held-out sentence embeddings:",
        "",
        "| kept | separate mean / p5 cos | joint mean / p5 cos |",
        "|---:|---:|---:|",
    ]
    for fraction in FRACTIONS:
        got = {e["how"]: e for e in results["ends"] if e["fraction"] == fraction}
        sep, joint = got["separate"], got["joint"]
        out.append(
            f"| {fraction:.2f} | {sep['mean_cos']:.3f} / {sep['p5_cos']:.3f} | "
            f"{joint['mean_cos']:.3f} / {joint['p5_cos']:.3f} |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--save", action="store_true", help="write results/shared_bases.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    results = run()
    head = stamp(
        f"tfx at {git_commit()}",
        machine(1),
        f"{time.perf_counter() - start:.0f} s",
    )
    text = markdown(results, head)
    print(text)
    if args.save:
        with open(os.path.join(HERE, "results", "shared_bases.md"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
