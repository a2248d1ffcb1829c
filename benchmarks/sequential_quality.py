"""Sequential mode against one shot on a trained model: what each keeps, and how long it takes.

``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sequential_quality.py [--save]``

all-MiniLM-L6-v2 (pretrained, offline), its encoder linears factorized at 0.5 and 0.25 of
their weights (the convention of ``benchmarks/quality.py --goals``), calibrated on the
in-domain sentences and on Python docstrings (text of another kind), batches of 32 padded to
48 tokens. Three ways: one shot (the default), sequential mode (``sequential=True``: block by
block, each block fitted to the factorized blocks before it, sensitivities from one backward
pass), and sequential mode with every layer's error weighted the same
(``strategy="greedy"``: what the sensitivities add). Quality: held-out sentence embeddings
against the original's (mean and 5th-percentile cosine, nearest-neighbour agreement), and the
cosine between the one-shot and the sequential embeddings. ``--save`` writes
``benchmarks/results/sequential_quality.{md,json}`` and the table into
docs/guide/large-models.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import quality  # noqa: E402
from _common import fill_block, git_commit, machine, stamp  # noqa: E402

import tfx  # noqa: E402

MODES: dict[str, tuple[str, dict[str, Any]]] = {
    "one-shot": ("one shot (default)", {}),
    "sequential": ("sequential", {"sequential": True}),
    "sequential-greedy": (
        "sequential, every layer weighed the same",
        {"sequential": True, "strategy": "greedy"},
    ),
}


def run(threads: int) -> dict[str, Any]:
    """Every case, source and mode; the rows and the setting's notes."""
    torch.set_num_threads(threads)
    setup = quality.goal_setup(quality.parse(["--goals"]))
    cases = [c for c in quality.GOAL_CASES if not c.whole and c.calibrated]
    rows = []
    for case in cases:
        for source in ("in-domain", "out-of-domain"):
            batches = setup.calibration[source]
            embeddings = {}
            for mode, (_, options) in MODES.items():
                kwargs: dict[str, Any] = {
                    "example_inputs": batches[0],
                    "calibration": batches,
                    "skip": setup.skip,
                    "kinds": ("linear",),
                    "progress": False,
                    **options,
                }
                clock = time.perf_counter()
                result = tfx.factorize(setup.model, setup.budget(case), **kwargs).eval()
                seconds = time.perf_counter() - clock
                embeddings[mode] = quality.minilm_embeddings(result, setup.heldout)
                row = {
                    "case": case.key,
                    "label": case.label,
                    "source": source,
                    "mode": mode,
                    "params": quality.n_params(result),
                    "kept": quality.n_params(result) / setup.total,
                    "factorize_s": seconds,
                    **quality.embedding_metrics(setup.reference, embeddings[mode]),
                }
                if mode != "one-shot":
                    row["cos_to_one_shot"] = float(
                        (embeddings[mode] * embeddings["one-shot"]).sum(-1).mean()
                    )
                rows.append(row)
                print(
                    f"{case.key:<12} {source:<14} {mode:<18} mean cos {row['mean_cos']:.3f} "
                    f"p5 {row['p5_cos']:.3f} nn {row['nn_agree']:.3f}  {seconds:.1f} s",
                    flush=True,
                )
    return {
        "rows": rows,
        "notes": setup.notes,
        "commit": git_commit(),
        "machine": machine(threads),
        "stamp": stamp(f"tfx {git_commit()}", f"torch {torch.__version__}"),
    }


def markdown(results: dict[str, Any]) -> str:
    notes = results["notes"]
    head = (
        f"Measured {results['stamp']}; {results['machine']}. all-MiniLM-L6-v2, encoder "
        f"linears factorized; calibration: in-domain {notes['in-domain']}, out-of-domain "
        f"{notes['out-of-domain']}, {notes['padding']}; held-out: {notes['heldout']}. Cosines "
        "are of the held-out sentence embeddings against the original model's; the last "
        "column, against the one-shot result's.\n\n"
    )
    lines = [
        "| encoder linears kept | calibrated on | mode | mean cos | p5 cos | nn agreement "
        "| factorize s | cos to one shot |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        kept = r["label"].split("kept at ")[1].split(",")[0]
        to_one_shot = f"{r['cos_to_one_shot']:.3f}" if "cos_to_one_shot" in r else ""
        lines.append(
            f"| {kept} | {r['source']} | {MODES[r['mode']][0]} | {r['mean_cos']:.3f} | "
            f"{r['p5_cos']:.3f} | {r['nn_agree']:.3f} | {r['factorize_s']:.1f} | {to_one_shot} |"
        )
    return head + "\n".join(lines) + "\n"


def _fill_docs(table: str) -> None:
    page = os.path.join(HERE, "..", "docs", "guide", "large-models.md")
    fill_block(page, "sequential-quality:table", table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args(argv)
    results = run(args.threads)
    table = markdown(results)
    print(table)
    if args.save:
        out = os.path.join(HERE, "results", "sequential_quality")
        with open(out + ".json", "w") as f:
            json.dump(results, f, indent=1)
        with open(out + ".md", "w") as f:
            f.write(table)
        _fill_docs(table)


if __name__ == "__main__":
    main()
