"""Large models: time and peak memory of ``tfx.factorize`` on a Llama-architecture decoder.

``python benchmarks/scale.py [--layers 16 --hidden 2048 --intermediate 5632 --vocab 32000]
[--batches 8 --rows 4 --tokens 128] [--modes one-shot,sequential,...] [--save]``

Builds a ``LlamaForCausalLM`` from a config with random weights (the defaults: about 1.1B
parameters, float32 on the CPU; nothing downloaded), calibration batches of random token ids
(``--batches`` x ``--rows`` sequences of ``--tokens``), and factorizes it at ``--budget`` in
each mode, each in a fresh process so that its peak resident memory (``ru_maxrss``) is its own
(the reference logits wait on disk while ``factorize`` runs):

- ``one-shot``: the default (a copy of the model, captured whole, every site's statistics);
- ``sequential``: ``inplace=True, sequential=True`` (one block at a time, no copy);
- ``sequential-1thread``: the same on one torch thread;
- ``sequential-2proc``: the same in 2 processes of one thread each (gloo), ``distributed=True``.

``--device cuda`` moves each block to the GPU for its work in the sequential modes (the model
stays in host memory) and the model to the GPU in one shot; the rows then add the peak GPU
memory (``torch.cuda.max_memory_allocated``).

Each row reports the stages' wall times (``plan.timings``), the peak RSS against the model's
size, the parameters before and after, and the relative error of the logits on held-out
sequences (not calibrated on) against the original's. ``--save`` merges the rows into
``benchmarks/results/scale.{json,md}`` (a row replaces the saved one of the same mode and
settings; rows of other settings, e.g. fewer ``--layers``, stay) and puts the table into
docs/guide/large-models.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = ("one-shot", "sequential", "sequential-1thread", "sequential-2proc")
#: The settings that make a row's model and work: rows of other settings are kept beside it.
_CONFIG = ("layers", "hidden", "intermediate", "heads", "vocab", "batches", "rows", "tokens")
_CONFIG += ("budget", "forms", "device")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--forms", default="svd")
    parser.add_argument(
        "--device",
        default=None,
        help="sequential modes: the device each block moves to (e.g. cuda; the model stays on "
        "the CPU); one-shot: the model and batches move there. Peak device memory is reported",
    )
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--save", action="store_true")
    parser.add_argument(
        "--render", action="store_true", help="rewrite the table from results/scale.json only"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _model(args: argparse.Namespace) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=max(args.tokens, 128),
    )
    return LlamaForCausalLM(config).eval()


def _batches(args: argparse.Namespace, seed: int, n: int) -> list[dict[str, Any]]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(4, args.vocab, (args.rows, args.tokens), generator=gen)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def _logits(model: Any, batch: dict[str, Any]) -> Any:
    import torch

    with torch.no_grad():
        return model(**batch, use_cache=False).logits


def work(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One mode, in this process: build, factorize, measure."""
    import torch

    import tfx

    threads = 1 if mode in ("sequential-1thread", "sequential-2proc") else 2
    torch.set_num_threads(threads)
    distributed = mode == "sequential-2proc"
    if distributed:
        import torch.distributed as dist

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
        dist.init_process_group("gloo", rank=args.rank, world_size=2)
    base_rss = _peak_rss()
    clock = time.perf_counter()
    model = _model(args)
    build_s = time.perf_counter() - clock
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    before = sum(p.numel() for p in model.parameters())
    calibration = _batches(args, 1, args.batches)
    held = _batches(args, 2, 1)[0]
    # The reference logits (0.06 GB at the defaults) wait on disk: the peak is factorize's.
    saved = tempfile.NamedTemporaryFile(suffix=".pt", delete=False)
    saved.close()
    torch.save(_logits(model, held), saved.name)
    built_rss = _peak_rss()
    clock = time.perf_counter()
    kwargs: dict[str, Any] = dict(
        calibration=calibration,
        forms=tuple(args.forms.split(",")),
        progress=False,
        verify=False,
    )
    device = torch.device(args.device) if args.device else None
    if mode == "one-shot":
        if device is not None:
            model.to(device)
            kwargs["calibration"] = calibration = _on(calibration, device)
        kwargs["example_inputs"] = calibration[0]
    else:
        kwargs.update(sequential=True, inplace=True)
        if device is not None:
            kwargs["device"] = device
    if distributed:
        kwargs["distributed"] = True
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    result = tfx.factorize(model, args.budget, **kwargs)
    total = time.perf_counter() - clock
    peak = _peak_rss()
    peak_device = torch.cuda.max_memory_allocated(device) if cuda else None
    if mode == "one-shot" and device is not None:
        result.to("cpu")
    got = _logits(result, held)
    reference = torch.load(saved.name, weights_only=True)
    os.unlink(saved.name)
    error = float((got - reference).norm() / reference.norm())
    plan = result.tfx_plan
    sys.path.insert(0, HERE)
    from _common import git_commit

    row = {
        "mode": mode,
        "commit": git_commit(),
        "config": {k: getattr(args, k) for k in _CONFIG},
        "threads": threads,
        "processes": 2 if distributed else 1,
        "params_before": before,
        "params_after": sum(p.numel() for p in result.parameters()),
        "model_bytes": size,
        "build_s": build_s,
        "factorize_s": total,
        "timings": {k: float(v) for k, v in plan.timings.items()},
        "rss_before_model": base_rss,
        "rss_after_build": built_rss,
        "peak_rss": peak,
        "peak_over_model": peak / size,
        "peak_device": peak_device,
        "heldout_rel_error": error,
        "factorized_sites": sum(c.form != "dense" for c in plan.choices),
    }
    if distributed:
        import torch.distributed as dist

        dist.destroy_process_group()
    return row


def _on(batches: list[dict[str, Any]], device: Any) -> list[dict[str, Any]]:
    return [{k: v.to(device) for k, v in b.items()} for b in batches]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(mode: str, argv: list[str]) -> dict[str, Any]:
    """Run ``mode`` in fresh processes (two for the distributed mode); rank 0's row."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    ranks = 2 if mode == "sequential-2proc" else 1
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                *argv,
                "--worker",
                mode,
                "--rank",
                str(r),
                "--port",
                str(port),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**env, "OMP_NUM_THREADS": "1"} if ranks == 2 else env,
        )
        for r in range(ranks)
    ]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"{mode} failed: return codes {[p.returncode for p in procs]}")
    rows = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    row = rows[0]
    row["peak_rss_per_process"] = [r["peak_rss"] for r in rows]
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    def gib(n: float) -> str:
        return f"{n / 2**30:.2f}"

    stages = sorted(
        {k for r in rows for k in r["timings"] if k != "total" and not k.startswith("exchange")}
    )

    def exchanges(r: dict[str, Any]) -> str:
        times = [v for k, v in r["timings"].items() if k.startswith("exchange")]
        return f"{sum(times):.1f}" if times else ""

    on_device = any(r.get("peak_device") for r in rows)
    head = [
        "model",
        "tfx",
        "mode",
        "procs x threads",
        "factorize s",
        *stages,
        "exchanges s",
        "peak RSS GiB",
        "peak / model",
        *(["peak device GiB"] if on_device else []),
        "params after",
        "held-out error",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        c = r["config"]
        cells = [
            f"{c['layers']} layers, {gib(r['model_bytes'])} GiB",
            r.get("commit", ""),
            r["mode"],
            f"{r['processes']} x {r['threads']}",
            f"{r['factorize_s']:.1f}",
            *(f"{r['timings'][s]:.1f}" if s in r["timings"] else "" for s in stages),
            exchanges(r),
            gib(max(r.get("peak_rss_per_process", [r["peak_rss"]]))),
            f"{max(r.get('peak_rss_per_process', [r['peak_rss']])) / r['model_bytes']:.2f}",
            *([gib(r["peak_device"]) if r.get("peak_device") else ""] if on_device else []),
            f"{r['params_after'] / r['params_before']:.3f} of {r['params_before'] / 1e9:.2f}B",
            f"{r['heldout_rel_error']:.4f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    sys.path.insert(0, HERE)
    from _common import machine

    c = rows[0]["config"]
    return (
        f"Llama decoder, hidden {c['hidden']}, intermediate {c['intermediate']}, vocab "
        f"{c['vocab']}, float32 weights, random init; budget {c['budget']}, forms {c['forms']}; "
        f"calibration {c['batches']} batches x {c['rows']} x {c['tokens']} tokens. Machine: "
        f"{machine(2)}, otherwise idle while measured. "
        + (f"Blocks computed on {c['device']}. " if c.get("device") else "")
        + "Peak RSS is the process's (`ru_maxrss`, the largest rank's with 2 processes), the "
        "Python interpreter and torch included; stage times are `plan.timings`.\n\n"
        + "\n".join(lines)
        + "\n"
    )


def _merged(rows: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    """The saved rows with ``rows`` in place of those of the same mode and settings."""
    try:
        with open(path) as f:
            saved = json.load(f).get("rows", [])
    except (OSError, ValueError):
        saved = []

    def key(r: dict[str, Any]) -> str:
        config = {"device": None, **r.get("config", {})}  # rows saved before --device
        return json.dumps([r.get("mode"), config], sort_keys=True)

    new = {key(r) for r in rows}
    out = [r for r in saved if "config" in r and key(r) not in new] + rows
    order = {m: i for i, m in enumerate(MODES)}
    return sorted(out, key=lambda r: (-r["config"]["layers"], order.get(r["mode"], 99)))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.worker:
        print(json.dumps(work(args.worker, args)), flush=True)
        return
    if args.render:
        with open(os.path.join(HERE, "results", "scale.json")) as f:
            table = _table(json.load(f)["rows"])
        with open(os.path.join(HERE, "results", "scale.md"), "w") as f:
            f.write(table)
        _fill_docs(table)
        print(table)
        return
    passed = [a for a in argv if a not in ("--save",)]
    rows = []
    for mode in args.modes.split(","):
        print(f"== {mode} ==", flush=True)
        rows.append(_spawn(mode, passed))
        print(json.dumps(rows[-1], indent=1), flush=True)
    print(_table(rows))
    if args.save:
        out = os.path.join(HERE, "results")
        rows = _merged(rows, os.path.join(out, "scale.json"))
        table = _table(rows)
        with open(os.path.join(out, "scale.json"), "w") as f:
            json.dump({"rows": rows}, f, indent=1)
        with open(os.path.join(out, "scale.md"), "w") as f:
            f.write(table)
        _fill_docs(table)


def _fill_docs(table: str) -> None:
    """Put ``table`` between the markers of docs/guide/large-models.md."""
    sys.path.insert(0, HERE)
    from _common import fill_block

    fill_block(os.path.join(HERE, "..", "docs", "guide", "large-models.md"), "scale:table", table)


if __name__ == "__main__":
    main()
