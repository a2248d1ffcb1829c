"""Host overhead of tfx's factorized layers in eager mode: time per call beyond the aten ops.

Run (from the repository root):

    .venv/bin/python benchmarks/overhead.py             # every layer and form, both modes
    .venv/bin/python benchmarks/overhead.py --only linear --rounds 3

For each small layer (where every kernel takes a microsecond or two, so a forward is mostly
host time) this script

1. records the aten ops one forward dispatches (a ``TorchDispatchMode``: the ops below autograd,
   after composite ops such as ``reshape`` are decomposed),
2. generates a straight-line Python function that calls exactly those ops again, through their
   ``OpOverload`` (so through the dispatcher and autograd, like the layer), on the same inputs
   and parameters, with the outputs of one op fed to the next ("aten replay"), and a second one
   that calls only the ops that are not views (``mm``, ``addmm``, ``mul``, ``conv``, ``index``,
   copies; "kernels only", called on the recorded operands, ``torch.no_grad()`` only),
3. times the layer's forward, the aten replay and the kernels-only replay interleaved in one
   process, on one thread, with the thread's CPU time, and reports the least of ``--rounds``
   medians.

``overhead`` = forward - aten replay: the Python (and hook, cache, dispatch-to-Python) time the
layer spends beside the aten ops it runs. ``beyond kernels`` = forward - kernels only: that plus
the view ops (``view``, ``t``, ``permute``, ...), each of which costs about a microsecond of host
time. With grad, the replay records the same autograd graph as the layer (its forward cost is
included in both), so ``overhead`` is still the layer's own host time.

Nothing here asserts a speed: the numbers are noisy on a shared machine (read them as +-3 us).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import git_commit, load_average, machine, save, stamp
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.benchmark import Timer

import tfx

# ----------------------------------------------------------------------------- recording


class _Recorder(TorchDispatchMode):
    """Records every aten op call with its (tensor) arguments and outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, tuple[Any, ...], dict[str, Any], Any]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.calls.append((func, args, kwargs, out))
        return out


def _binding(func: Any, args: Any, kwargs: Any, out: Any) -> Any:
    """The Python binding (``torch.mm``, ``Tensor.view``) that runs ``func``, or ``func`` itself.

    ``OpOverload.__call__`` matches the schema generically and costs 2-3 us more per call than
    the binding a user (or tfx) calls, so the replay calls the binding when one gives the same
    result.
    """
    name = func.overloadpacket.__name__
    for owner in (torch, torch.Tensor, torch.nn.functional):
        candidate = getattr(owner, name, None)
        if candidate is None:
            continue
        try:
            got = candidate(*args, **kwargs)
        except Exception:  # noqa: BLE001 - a binding with another signature
            continue
        same = tree_flatten(got)[0], tree_flatten(out)[0]
        if len(same[0]) == len(same[1]) and all(
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and a.stride() == b.stride()
            for a, b in zip(*same, strict=False)
        ):
            return candidate
    return func


def _literal(value: Any, consts: dict[str, Any]) -> str:
    if value is None or isinstance(value, bool | int | float | str):
        return repr(value)
    if isinstance(value, list | tuple):
        inner = ", ".join(_literal(v, consts) for v in value)
        return (
            f"[{inner}]"
            if isinstance(value, list)
            else f"({inner}{',' if len(value) == 1 else ''})"
        )
    name = f"c{len(consts)}"
    consts[name] = value
    return name


def record(fn: Callable[[], Any]) -> list[tuple[Any, tuple[Any, ...], dict[str, Any], Any]]:
    """The aten calls of one ``fn()``."""
    recorder = _Recorder()
    with recorder:
        fn()
    return recorder.calls


def aten_replay(calls: list[Any], grad: bool) -> Callable[[], Any]:
    """A straight-line function calling the recorded ops again, outputs feeding later ops."""
    consts: dict[str, Any] = {}
    names: dict[int, str] = {}  # id(tensor) -> variable holding it
    keep: list[Any] = []  # recorded tensors stay alive, so their ids stay unique
    lines = ["def replay():"]

    def arg(value: Any) -> str:
        if isinstance(value, torch.Tensor):
            if id(value) not in names:  # an input or parameter: a constant of the replay
                names[id(value)] = _literal(value, consts)
            return names[id(value)]
        if isinstance(value, list | tuple) and any(isinstance(v, torch.Tensor) for v in value):
            inner = ", ".join(arg(v) for v in value)
            return f"[{inner}]"
        return _literal(value, consts)

    for k, (func, args, kwargs, out) in enumerate(calls):
        keep.append((args, kwargs, out))
        op = _literal(_binding(func, args, kwargs, out), consts)
        text = ", ".join([arg(a) for a in args] + [f"{n}={arg(v)}" for n, v in kwargs.items()])
        lines.append(f"    v{k} = {op}({text})")
        flat, _ = tree_flatten(out)
        for j, o in enumerate(flat):
            if isinstance(o, torch.Tensor):
                names[id(o)] = f"v{k}" if len(flat) == 1 else f"v{k}[{j}]"
    lines.append(f"    return v{len(calls) - 1}")
    # The parameters (and inputs) keep requires_grad, so with grad the replay builds the same
    # autograd graph as the layer.
    scope: dict[str, Any] = dict(consts)
    exec(compile("\n".join(lines), "<aten replay>", "exec"), scope)  # noqa: S102 - our own source
    replay = scope["replay"]
    replay.keep = keep  # type: ignore[attr-defined]
    return replay  # type: ignore[no-any-return]


def kernels_replay(calls: list[Any]) -> tuple[Callable[[], Any], int]:
    """Only the non-view ops, each called on its recorded operands (no data flow, no grad)."""
    consts: dict[str, Any] = {}
    lines = ["def replay():"]
    n = 0
    for func, args, kwargs, _ in calls:
        if func.is_view or func in _FREE:
            continue
        n += 1
        op = _literal(_binding(func, args, kwargs, _), consts)
        detached = tree_map(
            lambda t: t.detach() if isinstance(t, torch.Tensor) else t, (args, kwargs)
        )
        text = ", ".join(
            [_literal(a, consts) for a in detached[0]]
            + [f"{k}={_literal(v, consts)}" for k, v in detached[1].items()]
        )
        lines.append(f"    {op}({text})")
    lines.append("    return None")
    scope: dict[str, Any] = dict(consts)
    exec(compile("\n".join(lines), "<kernels replay>", "exec"), scope)  # noqa: S102
    return scope["replay"], n


#: Metadata-only ops that are not views by schema but move no data.
_FREE = {torch.ops.aten._unsafe_view.default, torch.ops.aten.detach.default}

# ----------------------------------------------------------------------------- timing


def _median(fn: Callable[[], Any], min_run_time: float) -> float:
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=1, timer=time.thread_time)
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e6


def measure(
    layer: torch.nn.Module, x: torch.Tensor, grad: bool, rounds: int, min_run_time: float
) -> dict[str, Any]:
    """Microseconds per call of the layer, its aten replay and its kernels-only replay."""
    mode = torch.enable_grad if grad else torch.no_grad

    def forward() -> Any:
        with mode():
            return layer(x)

    for _ in range(3):  # warm up: plans, caches
        forward()
    calls = record(forward)
    aten = aten_replay(calls, grad)
    kern, n_kernels = kernels_replay(calls)

    def replay() -> Any:
        with mode():
            return aten()

    def kernels() -> Any:
        with torch.no_grad():
            return kern()

    with mode():
        torch.testing.assert_close(aten(), layer(x))  # the replay computes the same thing
    best = {"fwd": float("inf"), "aten": float("inf"), "kernels": float("inf")}
    for _ in range(rounds):  # interleaved: a burst of load hits all three alike
        for name, fn in (("fwd", forward), ("aten", replay), ("kernels", kernels)):
            best[name] = min(best[name], _median(fn, min_run_time))
    return {**best, "n_ops": len(calls), "n_kernels": n_kernels}


# ----------------------------------------------------------------------------- cases


def linear_cases() -> list[tuple[str, str, torch.nn.Module, torch.Tensor]]:
    """64 x 64 linears, batch 1: low-rank (CP of the plain matrix), Tucker, TT, BlockTT."""
    x = torch.randn(1, 64)
    shape = (4, 4, 4)
    specs = [
        (
            "low-rank",
            dict(
                in_tensorized_features=(64,),
                out_tensorized_features=(64,),
                factorization="cp",
                rank=4,
            ),
        ),
        (
            "tucker",
            dict(
                in_tensorized_features=shape,
                out_tensorized_features=shape,
                factorization="tucker",
                rank=(2,) * 6,
            ),
        ),
        (
            "tt",
            dict(
                in_tensorized_features=shape,
                out_tensorized_features=shape,
                factorization="tt",
                rank=(1, 2, 4, 4, 4, 2, 1),
            ),
        ),
        (
            "blocktt",
            dict(
                in_tensorized_features=shape,
                out_tensorized_features=shape,
                factorization="blocktt",
                rank=(1, 4, 4, 1),
            ),
        ),
    ]
    return [
        ("FactorizedLinear 64x64 B=1", name, tfx.FactorizedLinear(**kw), x) for name, kw in specs
    ]


def conv_cases() -> list[tuple[str, str, torch.nn.Module, torch.Tensor]]:
    """16 -> 16 channels on 8 x 8, batch 1: 1x1 and 3x3 kernels, CP, Tucker, TT."""
    x = torch.randn(1, 16, 8, 8)
    out = []
    for k in (1, 3):
        for form, rank in (
            ("cp", 4),
            ("tucker", (4, 4, k, k)),
            ("tt", (1, 4, 1, 1, 1) if k == 1 else (1, 4, 4, 3, 1)),
        ):
            layer = tfx.FactorizedConv(
                16, 16, k, order=2, padding=k // 2, factorization=form, rank=rank
            )
            out.append((f"FactorizedConv {k}x{k} 16->16 8x8 B=1", form, layer, x))
    return out


def embedding_cases() -> list[tuple[str, str, torch.nn.Module, torch.Tensor]]:
    """A 1000 x 16 table ((10, 10, 10) x (2, 2, 4)), 8 lookups."""
    index = torch.randint(0, 1000, (8,))
    kw = dict(
        tensorized_num_embeddings=(10, 10, 10),
        tensorized_embedding_dim=(2, 2, 4),
        auto_tensorize=False,
    )
    out = []
    for form, rank in (
        ("cp", 4),
        ("tucker", (2, 2, 2, 2, 2, 2)),
        ("tt", (1, 2, 4, 4, 4, 2, 1)),
        ("blocktt", (1, 4, 4, 1)),
    ):
        out.append(
            (
                "FactorizedEmbedding 1000x16, 8 lookups",
                form,
                tfx.FactorizedEmbedding(1000, 16, factorization=form, rank=rank, **kw),
                index,
            )
        )
    return out


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", default="linear,conv,embedding", help="comma-separated: linear, conv, embedding"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds; the least median is kept"
    )
    parser.add_argument("--min-run-time", type=float, default=0.05, help="seconds per Timer median")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    parts = {"linear": linear_cases, "conv": conv_cases, "embedding": embedding_cases}
    head = stamp(
        machine(1),
        f"torch {torch.__version__}",
        f"commit {git_commit()}",
        f"thread CPU time, least of {args.rounds} interleaved medians",
        f"load average before: {load_average()}",
    )
    lines = [
        head,
        "",
        "| layer | form | grad | fwd us | aten replay us | kernels only "
        "us | overhead us | beyond kernels us | aten ops (kernels) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for part in args.only.split(","):
        for case, form, layer, x in parts[part.strip()]():
            for grad in (False, True):
                r = measure(layer, x, grad, args.rounds, args.min_run_time)
                line = (
                    f"| {case} | {form} | {'yes' if grad else 'no'} | {r['fwd']:.1f} | "
                    f"{r['aten']:.1f} | {r['kernels']:.1f} | {r['fwd'] - r['aten']:.1f} "
                    f"| {r['fwd'] - r['kernels']:.1f} | {r['n_ops']} ({r['n_kernels']}) |"
                )
                lines.append(line)
                print(line, flush=True)
    lines.append(f"\nload average after: {load_average()}")
    print(lines[-1])
    return save("\n".join(lines) + "\n", args.out, echo=False)


if __name__ == "__main__":
    sys.exit(main() and 0)
