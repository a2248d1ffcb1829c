"""How long ``tfx.factorize`` takes on a BERT-base-sized encoder (random init), per stage.

``python benchmarks/factorize_speed.py [--layers 12] [--budget 0.5] [--calibration 8]
[--repeat 3] [--save]``. Builds a Hugging Face ``BertModel`` with BERT-base's configuration
(about 110M parameters; random weights, nothing downloaded), factorizes it with
``example_inputs`` of 8 x 128 tokens and, with ``--calibration N``, on N batches of
real-looking token ids (Zipf-distributed ids, ``[CLS] ... [SEP]``, padded to the batch's
longest row with an ``attention_mask``: the calibrated path, the common one), and prints the
per-stage timings the plan records (``plan.timings``), the min of ``--repeat`` runs.
``--profile`` prints cProfile's top functions of one run; ``--processes 2`` runs it over a
``torch.distributed`` group of 2 local processes (gloo), the cores shared out. ``--save``
writes both configurations (with and without calibration) as a section ``--label`` of
``benchmarks/results/factorize_speed.md``.
Goal (issue 14): at most 15 s on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import HERE, git_commit, load_average, machine, stamp  # noqa: E402

VOCAB = 30522
CLS, SEP, PAD = 101, 102, 0


def token_batches(n: int, *, batch: int = 8, tokens: int = 128, seed: int = 1) -> list[dict]:
    """``n`` batches of Zipf-distributed token ids in ``[CLS] ... [SEP]`` rows of random
    lengths (half to all of ``tokens``), right-padded, with their ``attention_mask``."""
    gen = torch.Generator().manual_seed(seed)
    ranks = torch.arange(1, VOCAB - 999, dtype=torch.float64)
    zipf = 1.0 / ranks  # frequent ids first, as a tokenizer's vocabulary is ordered
    out = []
    for _ in range(n):
        lengths = torch.randint(tokens // 2, tokens + 1, (batch,), generator=gen)
        ids = torch.full((batch, tokens), PAD, dtype=torch.long)
        mask = torch.zeros((batch, tokens), dtype=torch.long)
        for row, length in enumerate(lengths.tolist()):
            body = torch.multinomial(zipf, length - 2, replacement=True, generator=gen) + 999
            ids[row, :length] = torch.cat([torch.tensor([CLS]), body, torch.tensor([SEP])])
            mask[row, :length] = 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def build(layers: int) -> tuple[torch.nn.Module, dict, int]:
    """The random-init BERT, its example inputs and its parameter count."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(num_hidden_layers=layers)).eval()
    ids = torch.randint(0, VOCAB, (8, 128), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return model, inputs, sum(p.numel() for p in model.parameters())


def run_once(model: torch.nn.Module, inputs: dict, args: Any, calibration: Any) -> Any:
    """One ``tfx.factorize`` call; its plan, with ``timings['wall']`` added."""
    import tfx

    start = time.perf_counter()
    result = tfx.factorize(
        model,
        args.budget,
        example_inputs=inputs,
        forms=tuple(args.forms.split(",")),
        calibration=calibration,
        progress=False,
    )
    plan = result.tfx_plan
    plan.timings["wall"] = time.perf_counter() - start
    return plan


def measure(args: Any, calibration_batches: int) -> tuple[dict[str, float], Any, list[str]]:
    """Min over ``args.repeat`` runs of each stage's seconds, the last plan, and the loads."""
    model, inputs, _ = build(args.layers)
    calibration = token_batches(calibration_batches) if calibration_batches else None
    best: dict[str, float] = {}
    loads = []
    plan = None
    for _ in range(args.repeat):
        loads.append(f"{os.getloadavg()[0]:.2f}")
        plan = run_once(model, inputs, args, calibration)
        for stage, seconds in plan.timings.items():
            best[stage] = min(best.get(stage, float("inf")), seconds)
    return best, plan, loads


def _rank_main(rank: int, world: int, port: int, args: Any, batches: int, out: str) -> None:
    """One process of ``--processes``: a gloo group over localhost, the cores shared out."""
    import json

    import torch.distributed as dist

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        best, plan, loads = measure(args, batches)
        if rank == 0:
            forms = sorted({c.form for c in plan.choices})
            with open(out, "w") as f:
                json.dump(
                    {
                        "best": best,
                        "loads": loads,
                        "forms": forms,
                        "params": plan.total_params_after,
                    },
                    f,
                )
    finally:
        dist.destroy_process_group()


def measure_processes(args: Any, batches: int) -> tuple[dict[str, float], Any, list[str]]:
    """:func:`measure` over ``args.processes`` processes (``tfx.factorize`` spreads its work
    over the process group); rank 0's timings, a stand-in for its plan, and its loads."""
    import json
    import socket
    import tempfile
    import types

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.json")
        mp.spawn(_rank_main, args=(args.processes, port, args, batches, out), nprocs=args.processes)
        with open(out) as f:
            got = json.load(f)
    choices = [types.SimpleNamespace(form=form) for form in got["forms"]]
    plan = types.SimpleNamespace(choices=choices, total_params_after=got["params"])
    return got["best"], plan, got["loads"]


def table(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per stage, one column per configuration."""
    names = list(rows)
    stages: list[str] = []
    for timings in rows.values():
        stages += [s for s in timings if s not in stages]
    lines = ["| stage | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for stage in stages:
        cells = [f"{rows[n][stage]:.2f}" if stage in rows[n] else "" for n in names]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def profile(args: Any) -> None:
    """cProfile's top functions (cumulative and own time) of one run."""
    model, inputs, _ = build(args.layers)
    calibration = token_batches(args.calibration) if args.calibration else None
    prof = cProfile.Profile()
    prof.enable()
    run_once(model, inputs, args, calibration)
    prof.disable()
    for key in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats(key).print_stats(args.profile)
        print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--forms", default="svd,tucker,tt,blocktt,cp")
    parser.add_argument(
        "--calibration", type=int, default=0, help="calibrate on N batches of 8 x 128 tokens"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs; each stage's min is shown")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--profile", type=int, default=0, help="print cProfile's top N")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="factorize over a gloo process group of N local processes (the cores shared out)",
    )
    parser.add_argument(
        "--save",
        nargs="?",
        const=os.path.join(HERE, "results", "factorize_speed.md"),
        help="run without and with --calibration (default 8) and write the table here",
    )
    parser.add_argument(
        "--label",
        default="",
        help="the saved section's heading (a section of that name is replaced)",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        profile(args)
        return
    configs = [0, args.calibration or 8] if args.save else [args.calibration]
    _, _, n = build(args.layers)
    rows: dict[str, dict[str, float]] = {}
    all_loads: dict[str, list[str]] = {}
    for batches in configs:
        if args.processes > 1:
            best, plan, loads = measure_processes(args, batches)
        else:
            best, plan, loads = measure(args, batches)
        name = f"calibration {batches} x 8 x 128" if batches else "no calibration"
        name += f", {args.processes} processes" if args.processes > 1 else ""
        rows[name], all_loads[name] = best, loads
        forms = sorted({c.form for c in plan.choices})
        print(
            f"BERT-base-sized encoder ({args.layers} layers, {n / 1e6:.1f}M params), "
            f"budget {args.budget}, {name}: {plan.total_params_after / 1e6:.2f}M params after, "
            f"forms {forms}, factorize {best['wall']:.1f} s (min of {args.repeat}; "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {loads})"
        )
        for stage, seconds in best.items():
            print(f"  {stage:<22} {seconds:7.2f} s")
    if args.save:
        head = stamp(
            f"tfx {git_commit()}", machine(torch.get_num_threads()), f"load {load_average()}"
        )
        runs = "; ".join(f"{name}: {', '.join(loads)}" for name, loads in all_loads.items())
        section = (
            f"## {args.label or 'run'}\n\n{head}\n\n"
            f"BERT-base (random init, {n / 1e6:.1f}M params), budget {args.budget}, seconds, "
            f"min of {args.repeat} runs per stage (1-minute load at each run's start: {runs})."
            f"\n\n{table(rows)}\n"
        )
        save_section(args.save, args.label or "run", section)
        print(section)


def save_section(path: str, label: str, section: str) -> None:
    """Write ``section`` into the markdown file at ``path``, replacing the section of the same
    ``label`` (``## label``) if there is one, else after the others."""
    text = open(path).read() if os.path.exists(path) else "# factorize speed\n"
    parts = text.split("\n## ")
    head, sections = parts[0], ["## " + part for part in parts[1:]]
    titles = [part.splitlines()[0] for part in sections]
    if f"## {label}" in titles:
        sections[titles.index(f"## {label}")] = section
    else:
        sections.append(section)
    with open(path, "w") as f:
        f.write(head.rstrip() + "\n\n" + "\n".join(part.rstrip() + "\n" for part in sections))


if __name__ == "__main__":
    main()
