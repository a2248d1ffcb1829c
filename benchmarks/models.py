"""Model-level table: params, FLOPs, latency against dense and ``tfx.factorize`` time, per budget.

Run (from the repository root):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/models.py                # eager only (~10 min)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/models.py --compiled     # + inductor columns
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/models.py --quick        # tiny configs, one budget
    .venv/bin/python benchmarks/models.py --only bert --budgets 0.5 --out /tmp/models.md

Models, built from configurations with random weights (nothing is downloaded):

* ``cnn``: a ResNet-50-sized CNN written below (bottleneck blocks 3-4-6-3, 25.6M parameters;
  torchvision is not a dependency), one 3 x 224 x 224 image;
* ``bert``: ``transformers.BertModel(BertConfig())`` (BERT-base, 109M), one sequence of 128 tokens;
* ``gpt2``: ``GPT2LMHeadModel(GPT2Config(use_cache=False, tie_word_embeddings=False))``
  (GPT-2 small with an untied LM head, 163M), one sequence of 128 tokens. ``use_cache=False``
  because the default output holds a ``DynamicCache``, which ``torch.export`` cannot return, and
  tfx's fallback capture (module swap) does not see GPT-2's ``Conv1D`` layers; the head is untied
  because tfx keeps tied weights dense, so with the tied 38.6M-parameter embedding no budget
  under about 0.33 is reachable (``--gpt2-tied`` shows that).

For each model: the dense model, then ``tfx.factorize(model, budget, example_inputs=...)`` at
each budget (0.5, 0.25, 0.1; the example inputs are the timed ones, so the plan's FLOPs are
for that shape). Columns: parameters (and % of dense), FLOPs of one forward counted by
``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions; gathers count 0), the
plan's own estimate for the factorized sites, the verified output error the plan records,
latency in eager mode (``torch.no_grad()``) and, with ``--compiled``, after
``torch.compile(backend="inductor")`` (dense and factorized alike; first-call compile time in
its own column), each with its ratio to the dense model measured in this same run, and the
wall time of the ``tfx.factorize`` call with the per-stage breakdown from ``plan.timings``.

Timing, as in ``benchmarks/layers.py``: one process; ``--threads`` torch threads (1 by default)
for everything, ``tfx.factorize`` included (on a loaded 2-core machine, two threads made one
100 x 512 SVD 300x slower than one thread: OpenMP threads waiting on each other); two warm-up
calls, then ``--repeats`` rounds of at least three calls sharing ``--min-run-time``; each
number is the least of the rounds' medians. With one thread the clock is the calling thread's
CPU time (time-slicing by other processes on a shared machine is not counted); with more
threads it is wall-clock time. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch
from _common import git_commit, load_average, machine, save, stamp
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import tfx

BUDGETS = (0.5, 0.25, 0.1)
QUICK_BUDGETS = (0.25,)
MODELS = ("cnn", "bert", "gpt2")


# ----------------------------------------------------------------------------- ResNet-50
class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand (x4); a projection shortcut if needed."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = 4 * width
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + self.downsample(x))


class ResNet(nn.Module):
    """ResNet with bottleneck blocks; ``ResNet()`` has ResNet-50's layout (25.6M parameters)."""

    def __init__(
        self, blocks: Sequence[int] = (3, 4, 6, 3), base: int = 64, classes: int = 1000
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, base, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(base),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages: list[nn.Module] = []
        cin = base
        for i, n in enumerate(blocks):
            width = base * 2**i
            for j in range(n):
                stages.append(Bottleneck(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = 4 * width
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


# ----------------------------------------------------------------------------- models
@dataclasses.dataclass
class Built:
    label: str
    model: nn.Module
    inputs: Any  # a tuple of positional inputs or a dict of keyword inputs


def build(name: str, quick: bool, tied: bool = False) -> Built:
    """The model ``name`` (random init, eval mode) and its example inputs (batch 1)."""
    torch.manual_seed(0)
    if name == "cnn":
        if quick:
            model, size, label = ResNet((1, 1, 1, 1), base=16, classes=100), 64, "ResNet (tiny)"
        else:
            model, size, label = ResNet(), 224, "ResNet-50"
        return Built(f"{label}, 1x3x{size}x{size}", model.eval(), (torch.randn(1, 3, size, size),))
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    seq = 32 if quick else 128
    tiny = dict(vocab_size=1000, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if name == "bert":
        cfg = BertConfig(
            **(
                tiny
                | dict(
                    hidden_size=128,
                    num_hidden_layers=2,
                    num_attention_heads=2,
                    intermediate_size=512,
                )
                if quick
                else {}
            )
        )
        ids = torch.randint(0, cfg.vocab_size, (1, seq))
        label = "BERT (tiny)" if quick else "BERT-base"
        return Built(
            f"{label}, 1x{seq} tokens",
            BertModel(cfg).eval(),
            {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
        )
    if name == "gpt2":
        cfg = GPT2Config(
            use_cache=False,
            tie_word_embeddings=tied,
            **(tiny | dict(n_embd=128, n_layer=2, n_head=2) if quick else {}),
        )
        ids = torch.randint(0, cfg.vocab_size, (1, seq))
        label = ("GPT-2 (tiny)" if quick else "GPT-2 small") + (
            ", tied head" if tied else ", untied head"
        )
        return Built(f"{label}, 1x{seq} tokens", GPT2LMHeadModel(cfg).eval(), {"input_ids": ids})
    raise SystemExit(f"--only: unknown model {name!r}; choose from {', '.join(MODELS)}")


def call(model: nn.Module, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, dict) else model(*inputs)


def n_params(model: nn.Module) -> int:
    """Stored scalars, each shared parameter once."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, inputs: Any) -> int:
    """FLOPs of one inference forward as ``FlopCounterMode`` counts them (matmuls, convolutions)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        call(model, inputs)
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------- timing
@dataclasses.dataclass
class Clock:
    threads: int

    @property
    def name(self) -> str:
        return "thread CPU time" if self.threads == 1 else "wall-clock time"

    def __call__(self) -> float:
        # With one torch thread all the work runs on the calling thread, so its CPU time is
        # the work done, whatever else the machine runs; with more, only wall time sees it all.
        return time.thread_time() if self.threads == 1 else time.perf_counter()


def measure(fn: Callable[[], Any], clock: Clock, min_run_time: float, repeats: int) -> float:
    """Milliseconds per ``fn()``: least of ``repeats`` medians of >= 3 calls, after 2 warm-ups."""
    fn()
    fn()
    medians = []
    for _ in range(repeats):
        times: list[float] = []
        begin = clock()
        while len(times) < 3 or clock() - begin < min_run_time / repeats:
            start = clock()
            fn()
            times.append(clock() - start)
        medians.append(statistics.median(times))
    return 1e3 * min(medians)


def forward(model: nn.Module, inputs: Any) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return call(model, inputs)

    return run


# ----------------------------------------------------------------------------- results
@dataclasses.dataclass
class Result:
    model: str
    budget: float | None  # None: the dense model
    params: int = 0
    flops: int = 0
    plan_flops: tuple[int, int] | None = None  # the plan's site FLOPs, before and after
    output_error: float | None = None
    eager_ms: float | None = None
    compiled_ms: float | None = None
    compile_s: float | None = None
    factorize_s: float | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    note: str = ""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def time_compiled(
    model: nn.Module, inputs: Any, clock: Clock, args: argparse.Namespace
) -> tuple[float, float]:
    """(first-call seconds including compilation, ms per call) of ``torch.compile(model)``."""
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="inductor")
    start = time.perf_counter()
    forward(compiled, inputs)()
    compile_s = time.perf_counter() - start
    ms = measure(forward(compiled, inputs), clock, args.min_run_time, args.repeats)
    torch._dynamo.reset()
    return compile_s, ms


def run_model(
    name: str, args: argparse.Namespace, clock: Clock, log: Callable[[str], None]
) -> list[Result]:
    built = build(name, args.quick, tied=args.gpt2_tied)
    model, inputs = built.model, built.inputs
    dense = Result(built.label, None, n_params(model), count_flops(model, inputs))
    log(f"{built.label}: dense eager")
    dense.eager_ms = measure(forward(model, inputs), clock, args.min_run_time, args.repeats)
    if args.compiled:
        log(f"{built.label}: dense compiled")
        dense.compile_s, dense.compiled_ms = time_compiled(model, inputs, clock, args)
    rows = [dense]
    for budget in args.budget_list:
        row = Result(built.label, budget)
        rows.append(row)
        log(f"{built.label}: tfx.factorize at {budget}")
        start = time.perf_counter()
        try:
            gm = tfx.factorize(model, budget, example_inputs=inputs, progress=False)
        except Exception as err:  # noqa: BLE001 - a failed budget is a result, not the end of the run
            row.note = _first_line(err)
            if not isinstance(err, tfx.TfxError):
                traceback.print_exc()
            continue
        row.factorize_s = time.perf_counter() - start
        plan = gm.tfx_plan
        row.timings = dict(plan.timings)
        row.params, row.flops = n_params(gm), count_flops(gm, inputs)
        row.plan_flops = (plan.total_flops_before, plan.total_flops_after)
        row.output_error = plan.output_error
        forms: dict[str, int] = {}
        for c in plan.choices:
            if c.form != "dense":
                forms[c.form] = forms.get(c.form, 0) + 1
        row.note = ", ".join(f"{k} x{v}" for k, v in sorted(forms.items(), key=lambda kv: -kv[1]))
        if row.params != plan.total_params_after:
            row.note += f"; plan says {plan.total_params_after:,} params"
        log(f"{built.label}: budget {budget} eager")
        row.eager_ms = measure(forward(gm, inputs), clock, args.min_run_time, args.repeats)
        if args.compiled:
            log(f"{built.label}: budget {budget} compiled")
            try:
                row.compile_s, row.compiled_ms = time_compiled(gm, inputs, clock, args)
            except Exception as err:  # noqa: BLE001
                row.note += f"; compile failed: {_first_line(err)}"
                traceback.print_exc()
        del gm
    return rows


# ----------------------------------------------------------------------------- report
def _h(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _ms(v: float | None) -> str:
    return "-" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def _x(ref: float | None, v: float | None) -> str:
    if ref is None or v is None or v == 0:
        return "-"
    return f"{ref / v:.2f}x"


def markdown(rows: Sequence[Result], compiled: bool) -> str:
    head = [
        "model",
        "budget",
        "params (% dense)",
        "FLOPs (x fewer)",
        "plan site FLOPs",
        "out. err",
        "eager ms",
        "x dense",
    ]
    if compiled:
        head += ["compiled ms", "x dense compiled", "x dense eager", "compile s"]
    head += ["factorize s", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    dense: Result | None = None
    for r in rows:
        if r.budget is None:
            dense = r
        assert dense is not None
        if r.budget is not None and r.factorize_s is None:  # factorize failed
            cells = [r.model, f"{r.budget:g}"] + ["-"] * (len(head) - 3) + [r.note]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        is_dense = r.budget is None
        plan = "-" if r.plan_flops is None else f"{_h(r.plan_flops[0])} -> {_h(r.plan_flops[1])}"
        cells = [
            r.model,
            "dense" if is_dense else f"{r.budget:g}",
            f"{_h(r.params)} ({100 * r.params / dense.params:.1f}%)",
            _h(r.flops) + ("" if is_dense else f" ({_x(dense.flops, r.flops)})"),
            plan,
            "-" if r.output_error is None else f"{r.output_error:.3f}",
            _ms(r.eager_ms),
            "" if is_dense else _x(dense.eager_ms, r.eager_ms),
        ]
        if compiled:
            cells += [
                _ms(r.compiled_ms),
                "" if is_dense else _x(dense.compiled_ms, r.compiled_ms),
                _x(dense.eager_ms, r.compiled_ms),
                "-" if r.compile_s is None else f"{r.compile_s:.0f}",
            ]
        cells += ["-" if r.factorize_s is None else f"{r.factorize_s:.1f}", r.note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stage_table(rows: Sequence[Result]) -> str:
    """``plan.timings`` of every factorize call, one column per stage (seconds)."""
    done = [r for r in rows if r.timings]
    if not done:
        return ""
    stages: list[str] = []
    for r in done:
        stages += [s for s in r.timings if s not in stages and s != "total"]
    head = ["model", "budget", *stages, "total"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in done:
        cells = [r.model, f"{r.budget:g}"]
        cells += [f"{r.timings[s]:.2f}" if s in r.timings else "-" for s in stages]
        cells.append(f"{r.timings.get('total', r.factorize_s or 0):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header(args: argparse.Namespace, clock: Clock) -> str:
    return stamp(
        machine(clock.threads),
        f"latency: {clock.name}, least of {args.repeats} medians",
        "tfx.factorize: wall time",
        "float32",
        f"torch {torch.__version__}",
        f"commit {git_commit()}",
        f"load average before: {load_average()}",
    )


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(MODELS), help="comma-separated: cnn, bert, gpt2")
    parser.add_argument(
        "--budgets", default=None, help="comma-separated fractions (default 0.5,0.25,0.1)"
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="also time torch.compile(backend='inductor') of dense and factorized",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny configs, budget 0.25, --min-run-time 0.2 (smoke run, ~1 min)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for the whole run (default 1)"
    )
    parser.add_argument("--min-run-time", type=float, default=1.5, help="seconds per measurement")
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds; the least median is reported"
    )
    parser.add_argument(
        "--gpt2-tied",
        action="store_true",
        help="GPT-2 with its LM head tied to the token embedding (as published)",
    )
    parser.add_argument("--out", default=None, help="also write the markdown report to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    budgets = args.budgets or ",".join(map(str, QUICK_BUDGETS if args.quick else BUDGETS))
    args.budget_list = [float(b) for b in budgets.split(",")]
    if args.quick:
        args.min_run_time = min(args.min_run_time, 0.2)
    args.repeats = max(1, args.repeats)
    clock = Clock(max(1, args.threads))
    log = (
        (lambda s: None) if args.quiet else (lambda s: print(f"  {s}", file=sys.stderr, flush=True))
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(clock.threads)
    try:
        head = header(args, clock)
        print(head, flush=True)
        rows: list[Result] = []
        for name in [n.strip() for n in args.only.split(",") if n.strip()]:
            done = run_model(name, args, clock, log)
            rows += done
            if len(args.only.split(",")) > 1:  # partial results, in case a long run is cut short
                print(f"\n{markdown(done, args.compiled)}\n", flush=True)
    finally:
        torch.set_num_threads(threads)  # callers (benchmarks/run.py) get their thread count back
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    table, stages = markdown(rows, args.compiled), stage_table(rows)
    report = (
        f"{head}; load average after: {load}\n\n{table}\n\n"
        f"tfx.factorize stages (seconds, from plan.timings):\n\n{stages}\n"
    )
    print()
    print(table)
    print()
    print("tfx.factorize stages (seconds, from plan.timings):")
    print()
    print(stages, flush=True)
    return save(report, args.out, echo=False)


if __name__ == "__main__":
    main()
