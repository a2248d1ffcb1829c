"""Contractions planned once, replayed many times.

An einsum over several operands is split by opt_einsum into pairwise steps
once, when a factorized tensor is built (like einops caches its recipes).
Replaying the plan is a straight sequence of ``torch.einsum`` calls on two
operands each: no path search at call time, and every step is an ordinary
torch call that ``torch.fx`` records and ``torch.compile`` traces.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import opt_einsum
import torch

__all__ = ["ContractionPlan", "plan_einsum"]

Step = tuple[tuple[int, ...], str]

#: Generated eager replays, by (equation, operand shapes), shared by every plan (see compile_plan).
_PROGRAMS: dict[tuple[Any, ...], Any] = {}
_MAX_PROGRAMS = 4096


class ContractionPlan:
    """A fixed, picklable sequence of pairwise einsum steps.

    Attributes:
        equation: the full einsum equation the plan computes.
        steps: ``(positions, equation)`` pairs; each step pops the operands at
            ``positions`` (in that order) and appends the result.
        flops: opt_einsum's estimate of the floating point operations.
    """

    __slots__ = ("equation", "shapes", "steps", "flops")

    def __init__(
        self,
        equation: str,
        shapes: tuple[tuple[int, ...], ...],
        steps: tuple[Step, ...],
        flops: int,
    ) -> None:
        self.equation = equation
        self.shapes = shapes
        self.steps = steps
        self.flops = flops

    def __call__(self, *operands: torch.Tensor) -> torch.Tensor:
        """Contract ``operands`` following the plan."""
        stack = list(operands)
        # Traced (fx / dynamo): record plain einsum calls, readable and compiler-friendly.
        # Eager: each pairwise step as permute + (b)mm + reshape, about 4x less host
        # overhead than torch.einsum's per-call equation parsing.
        eager = not (torch.compiler.is_compiling() or isinstance(operands[0], torch.fx.Proxy))
        if eager:
            # Eager: a generated straight-line function per operand shapes (see compile_plan).
            key = (self.equation, *[o.shape for o in operands])
            program = _PROGRAMS.get(key)
            if program is None:
                if len(_PROGRAMS) >= _MAX_PROGRAMS:
                    _PROGRAMS.clear()
                try:
                    program = compile_plan(self, [tuple(o.shape) for o in operands])
                except ValueError:  # pragma: no cover - operands that do not fit the plan
                    program = False
                _PROGRAMS[key] = program
            if program:
                result = program(*operands)
                if result is not None:
                    return result  # type: ignore[no-any-return]
        for positions, equation in self.steps:
            picked = [stack.pop(p) for p in positions]
            if eager and len(picked) == 2:
                stack.append(_pairwise(equation, picked[0], picked[1]))
            else:
                stack.append(torch.einsum(equation, *picked))
        return stack[0]

    def __getstate__(self) -> tuple[object, ...]:
        return self.equation, self.shapes, self.steps, self.flops

    def __setstate__(self, state: tuple[object, ...]) -> None:
        self.equation, self.shapes, self.steps, self.flops = state  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ContractionPlan({self.equation!r}, steps={len(self.steps)}, flops={self.flops})"


@functools.lru_cache(maxsize=4096)
def _recipe(equation: str, big: int) -> tuple[Any, ...] | None:
    """How to run a two-operand einsum with views and one (b)mm (None: use einsum).

    The contracted and batch letters take the order of operand ``big`` (the larger,
    usually a parameter), so that operand is only ever viewed (reshaped, maybe
    transposed), never copied; the other one is permuted if it has to be.
    """
    inputs, out = equation.split("->")
    la, lb = inputs.split(",")
    if len(set(la)) != len(la) or len(set(lb)) != len(lb) or len(set(out)) != len(out):
        return None  # repeated letters (traces, diagonals)
    if any(c not in lb and c not in out for c in la) or any(
        c not in la and c not in out for c in lb
    ):
        return None  # a letter summed inside one operand
    ref = la if big == 0 else lb
    batch = [c for c in ref if c in la and c in lb and c in out]
    contracted = [c for c in ref if c in la and c in lb and c not in out]
    a_only = [c for c in la if c not in lb]
    b_only = [c for c in lb if c not in la]
    if not contracted and (not a_only or not b_only):
        # Broadcast product (e.g. scaling by CP weights): one operand's letters are all in the other's.
        return ("mul", _broadcast(la, lb, out))
    plan_a = _layout(la, batch, a_only, contracted)
    plan_b = _layout(lb, batch, b_only, contracted, k_first=True)
    produced = batch + a_only + b_only
    perm_out = tuple(produced.index(c) for c in out)
    return (
        "mm",
        plan_a,
        plan_b,
        [la.index(c) for c in batch],
        [la.index(c) for c in a_only],
        [lb.index(c) for c in b_only],
        [la.index(c) for c in contracted],
        None if perm_out == tuple(range(len(out))) else perm_out,
    )


def _layout(
    letters: str, batch: list[str], own: list[str], contracted: list[str], k_first: bool = False
) -> tuple[Any, bool]:
    """(permutation or None, transpose) putting an operand as (batch, rows, cols) for bmm."""
    want = batch + (contracted + own if k_first else own + contracted)
    swapped = batch + (own + contracted if k_first else contracted + own)
    if list(letters) == want:
        return None, False
    if list(letters) == swapped:
        return None, True  # a transposed view: (b)mm reads it without a copy
    return tuple(letters.index(c) for c in want), False


def _broadcast(la: str, lb: str, out: str) -> tuple[Any, ...]:
    big, small, swap = (la, lb, False) if len(la) >= len(lb) else (lb, la, True)
    order = [c for c in big if c in small]
    perm = tuple(small.index(c) for c in order)
    view = [c in small for c in big]
    perm_out = tuple(big.index(c) for c in out)
    return (
        swap,
        None if perm == tuple(range(len(small))) else perm,
        view,
        (None if perm_out == tuple(range(len(out))) else perm_out),
    )


def _pairwise(equation: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype != b.dtype:  # einsum promotes mixed dtypes; mm does not
        return torch.einsum(equation, a, b)
    recipe = _recipe(equation, 0 if a.numel() >= b.numel() else 1)
    if recipe is None:
        return torch.einsum(equation, a, b)
    if recipe[0] == "mul":
        swap, perm, view, perm_out = recipe[1]
        big, small = (b, a) if swap else (a, b)
        small = small.permute(perm) if perm is not None else small
        shape = iter(small.shape)
        small = small.reshape([next(shape) if keep else 1 for keep in view])
        y = big * small
        return y.permute(perm_out) if perm_out is not None else y
    _, plan_a, plan_b, batch, a_only, b_only, contracted, perm_out = recipe
    sa, sb = a.shape, b.shape
    bsz = [sa[i] for i in batch]
    msz = [sa[i] for i in a_only]
    nsz = [sb[i] for i in b_only]
    k = math.prod([sa[i] for i in contracted])
    nb, m, n = math.prod(bsz), math.prod(msz), math.prod(nsz)
    a = _as_matrix(a, plan_a, nb, m, k, bool(batch))
    b = _as_matrix(b, plan_b, nb, k, n, bool(batch))
    y = torch.bmm(a, b) if batch else torch.mm(a, b)
    y = y.reshape(bsz + msz + nsz)
    return y.permute(perm_out) if perm_out is not None else y


def _as_matrix(
    x: torch.Tensor, layout: tuple[Any, bool], nb: int, rows: int, cols: int, batched: bool
) -> torch.Tensor:
    perm, transpose = layout
    if perm is not None:
        x = x.permute(perm)
    if transpose:
        x = x.reshape((nb, cols, rows) if batched else (cols, rows)).transpose(-1, -2)
    else:
        x = x.reshape((nb, rows, cols) if batched else (rows, cols))
    return x


@functools.lru_cache(maxsize=4096)
def _search(
    equation: str, shapes: tuple[tuple[int, ...], ...], memory_limit: int | None
) -> tuple[tuple[Step, ...], int]:
    if len(shapes) == 1:
        return (((0,), equation),), math.prod(shapes[0])
    optimize = "optimal" if len(shapes) <= 5 else "dp" if len(shapes) <= 12 else "greedy"
    try:
        _, info = opt_einsum.contract_path(
            equation, *shapes, shapes=True, optimize=optimize, memory_limit=memory_limit
        )
    except RuntimeError:
        # dp finds no path under the memory limit: greedy always returns one
        # (falling back to a single einsum of what is left).
        _, info = opt_einsum.contract_path(
            equation, *shapes, shapes=True, optimize="greedy", memory_limit=memory_limit
        )
    steps = tuple((tuple(c[0]), c[2]) for c in info.contraction_list)
    return steps, int(info.opt_cost)


def plan_einsum(
    equation: str, *shapes: Sequence[int], memory_limit: int | str | None = "max_io"
) -> ContractionPlan:
    """Plan ``equation`` over operands of the given shapes, once.

    Args:
        equation: an explicit einsum equation (with ``->``).
        *shapes: the operands' shapes.
        memory_limit: the largest intermediate allowed, in elements.
            ``"max_io"`` (default) bounds every intermediate by the largest
            input or output, so that e.g. a CP reconstruction never builds a
            Khatri-Rao product larger than the tensor it reconstructs.

    Returns:
        A :class:`ContractionPlan`, cached per (equation, shapes).

    Example:
        >>> plan = plan_einsum("r,ar,br->ab", (4,), (8, 4), (6, 4))
        >>> plan(torch.ones(4), torch.ones(8, 4), torch.ones(6, 4)).shape
        torch.Size([8, 6])
    """
    shapes_t, steps, flops = _constant_plan(equation, shapes, memory_limit)
    return ContractionPlan(equation, shapes_t, steps, flops)


@torch._dynamo.assume_constant_result
def _constant_plan(
    equation: str, shapes: Sequence[Sequence[int]], memory_limit: int | str | None
) -> tuple[tuple[tuple[int, ...], ...], tuple[Step, ...], int]:
    # Pure in its (constant, shape-only) arguments: torch.compile runs it at trace
    # time and bakes the result into the graph instead of tracing opt_einsum.
    shapes_t = tuple(tuple(int(s) for s in shape) for shape in shapes)
    return _limited(equation, shapes_t, memory_limit)


@functools.lru_cache(maxsize=4096)
def _limited(
    equation: str, shapes_t: tuple[tuple[int, ...], ...], memory_limit: int | str | None
) -> tuple[tuple[tuple[int, ...], ...], tuple[Step, ...], int]:
    if memory_limit == "max_io":
        inputs, output = equation.split("->")
        sizes: dict[str, int] = {}
        for term, shape in zip(inputs.split(","), shapes_t, strict=False):
            sizes.update(zip(term, shape, strict=False))
        out_size = math.prod(sizes[c] for c in output)
        limit: int | None = max([out_size, *(math.prod(s) for s in shapes_t)])
    else:
        limit = memory_limit  # type: ignore[assignment]
    steps, flops = _search(equation, shapes_t, limit)
    return shapes_t, steps, flops


# ---------------------------------------------------------------------------- straight-line code
# A plan's eager replay is generated once per operand layout as Python source: one line per
# pairwise step, with every reshape size, permutation and GEMM orientation decided at compile
# time. Values are tracked as (logical letter order, physical grouping): the output of a GEMM
# stays grouped (rows, cols) and is only reshaped or permuted when a later step needs another
# view of it, so most steps are a (b)mm on views, with no unflatten / permute / flatten in between.

#: A host op (one view or kernel launch, ~1-2 us here) weighs like copying this many elements.
_OP_COST = 2000


class _Value:
    """A value in generated code: its variable, letters (logical order) and physical grouping.

    ``groups[k]`` is the number of letters merged into physical dim ``k`` (0: a size-1 dim).
    """

    __slots__ = ("name", "letters", "groups")

    def __init__(self, name: str, letters: str, groups: tuple[int, ...]) -> None:
        self.name, self.letters, self.groups = name, letters, groups


def _split(letters: str, groups: Sequence[int]) -> list[str]:
    out, at = [], 0
    for g in groups:
        out.append(letters[at : at + g])
        at += g
    return out


class _Emitter:
    """Generates the lines of a straight-line contraction (see the section comment)."""

    def __init__(self, sizes: dict[str, int | None], hint: int) -> None:
        self.sizes = sizes  # None: the symbolic batch size (-1 in reshapes)
        self.hint = hint  # the batch size assumed when weighing copies
        self.lines: list[str] = []
        self.count = 0

    # ----------------------------------------------------------------- sizes
    def _dim(self, letters: str) -> int | None:
        sizes = [self.sizes[c] for c in letters]
        return None if None in sizes else math.prod(sizes)  # type: ignore[arg-type]

    def numel(self, letters: str) -> int:
        return math.prod(self.hint if self.sizes[c] is None else self.sizes[c] for c in letters)  # type: ignore[misc]

    def shape(self, letters: str, groups: Sequence[int]) -> str:
        dims = [self._dim(part) for part in _split(letters, groups)]
        if not dims:
            return "(())"
        return (
            "("
            + ", ".join("-1" if d is None else str(d) for d in dims)
            + ("," if len(dims) == 1 else "")
            + ")"
        )

    def new(self, expr: str) -> str:
        name = f"t{self.count}"
        self.count += 1
        self.lines.append(f"{name} = {expr}")
        return name

    # ----------------------------------------------------------------- views
    def arrangement(
        self, v: _Value, letters: str, groups: tuple[int, ...]
    ) -> tuple[list[str], int]:
        """Method calls turning ``v`` into (``letters``, ``groups``) and their cost."""
        if v.letters == letters:
            if v.groups == groups:
                return [], 0
            return [f".reshape{self.shape(letters, groups)}"], _OP_COST
        pos = {c: i for i, c in enumerate(letters)}
        runs: list[str] = []  # pieces of v's physical dims that stay together, in order
        for part in _split(v.letters, v.groups):
            fresh = True
            for c in part:
                if not fresh and pos[c] == pos[runs[-1][-1]] + 1:
                    runs[-1] += c
                else:
                    runs.append(c)
                fresh = False
        calls, cost = [], 0
        split = tuple(len(r) for r in runs)
        if split != v.groups:
            calls.append(f".reshape{self.shape(v.letters, split)}")
            cost += _OP_COST
        perm = sorted(range(len(runs)), key=lambda i: pos[runs[i][0]])
        calls.append(f".permute{tuple(perm)}")
        cost += _OP_COST
        permuted = tuple(len(runs[i]) for i in perm)
        if permuted != groups:
            calls.append(f".reshape{self.shape(letters, groups)}")
            run_of = {c: i for i, r in enumerate(runs) for c in r}
            # Merging pieces of two different runs (both longer than 1) copies the data.
            copies = any(
                len({run_of[c] for c in part if self.sizes[c] != 1}) > 1
                for part in _split(letters, groups)
            )
            cost += _OP_COST + (self.numel(letters) if copies else 0)
        return calls, cost

    # ----------------------------------------------------------------- steps
    def step(
        self, values: list[_Value], out: str, want: tuple[str, tuple[int, ...]] | None
    ) -> tuple[_Value, tuple[str, str] | None]:
        """Emit one planned step; with ``want`` (the last step), also the final layout.

        Returns the result and, when the last step is a plain 2-D ``mm`` already in the
        ``want`` layout, its two operand expressions instead of the emitted ``mm`` (so the
        caller can fuse a bias with ``addmm``).
        """
        if len(values) == 2:
            # Summing only size-1 letters is an outer product: a broadcast multiply, as
            # torch.einsum runs it and the cost model prices it.
            shared = (set(values[0].letters) & set(values[1].letters)) - set(out)
            outer = bool(shared) and all(self.sizes[c] == 1 for c in shared)
            p, q = (self._squeeze(v, w, out, outer) for v, w in (values, values[::-1]))
            lp, lq = set(p.letters), set(q.letters)
            pure = (
                len(lp) == len(p.letters)
                and len(lq) == len(q.letters)
                and len(set(out)) == len(out)
            )
            if pure and lp | lq == set(out) | (lp & lq) and set(out) <= lp | lq:
                contracted = (lp & lq) - set(out)
                if not contracted and (lp <= lq or lq <= lp):
                    return self._mul(p, q), None
                if (
                    not contracted
                ):  # a broadcast multiply, as einsum runs (and the cost model prices) it
                    return self._outer(p, q, out), None
                return self._matmul(p, q, out, want)
        return self._einsum(values, out), None

    def _squeeze(self, v: _Value, other: _Value, out: str, outer: bool = False) -> _Value:
        """``v`` without its size-1 letters that are summed inside it (e.g. a TT end bond), or
        (``outer``) summed with ``other`` too.

        Their physical dims stay, as dims of no letter (size 1), so no op is needed.
        """
        gone = {
            c
            for c in v.letters
            if self.sizes[c] == 1 and c not in out and (outer or c not in other.letters)
        }
        if not gone:
            return v
        groups = tuple(
            len([c for c in part if c not in gone]) for part in _split(v.letters, v.groups)
        )
        return _Value(v.name, "".join(c for c in v.letters if c not in gone), groups)

    def _mul(self, p: _Value, q: _Value) -> _Value:
        big, small = (p, q) if len(p.letters) >= len(q.letters) else (q, p)
        inside = set(small.letters)
        # Physical dims of the big operand must not mix letters of the small one with others.
        parts = []
        for part in _split(big.letters, big.groups):
            run = ""
            for c in part:
                if run and (c in inside) != (run[-1] in inside):
                    parts.append(run)
                    run = ""
                run += c
            parts.append(run)
        groups = tuple(len(r) for r in parts)
        name = big.name
        if groups != big.groups:
            name = self.new(f"{big.name}.reshape{self.shape(big.letters, groups)}")
        target = "".join(c for c in big.letters if c in inside)
        dims = [self._dim(r) if r and set(r) <= inside else 1 for r in parts]
        while dims and dims[0] == 1:  # broadcasting supplies leading ones
            dims.pop(0)
        shape_now = [self._dim(r) for r in _split(small.letters, small.groups)]
        expr = small.name
        if small.letters != target:
            calls, _ = self.arrangement(small, target, tuple(1 for _ in target))
            expr += "".join(calls)
            shape_now = [self.sizes[c] for c in target]
        if shape_now != dims:
            listed = ", ".join("-1" if d is None else str(d) for d in dims)
            expr += f".reshape({listed},)" if dims else ".reshape(())"
        return _Value(self.new(f"{name} * {expr}"), big.letters, groups)

    def _outer(self, p: _Value, q: _Value, out: str) -> _Value:
        """The elementwise product of two operands, broadcast over the letters each lacks, as ``out``."""
        exprs = []
        for v in (p, q):
            mine = "".join(c for c in out if c in v.letters)
            calls, _ = self.arrangement(v, mine, tuple(1 for _ in mine))
            dims = [
                "-1" if self.sizes[c] is None else str(self.sizes[c]) if c in v.letters else "1"
                for c in out
            ]
            exprs.append(v.name + "".join(calls) + f".reshape({', '.join(dims)},)")
        return _Value(self.new(f"{exprs[0]} * {exprs[1]}"), out, tuple(1 for _ in out))

    def _matmul(
        self, p: _Value, q: _Value, out: str, want: tuple[str, tuple[int, ...]] | None
    ) -> tuple[_Value, tuple[str, str] | None]:
        batch_sets = set(p.letters) & set(q.letters) & set(out)
        k_set = (set(p.letters) & set(q.letters)) - set(out)
        best: tuple[int, list[str], _Value, tuple[str, str] | None] | None = None
        for a, b in ((p, q), (q, p)):
            m = "".join(c for c in a.letters if c not in batch_sets and c not in k_set)
            n = "".join(c for c in b.letters if c not in batch_sets and c not in k_set)
            for bt in {"".join(c for c in v.letters if c in batch_sets) for v in (p, q)}:
                for k in {"".join(c for c in v.letters if c in k_set) for v in (p, q)}:
                    for ta in (False, True):
                        for tb in (False, True):
                            cand = self._mm_candidate(a, b, bt, m, k, n, ta, tb, want)
                            if best is None or cand[0] < best[0]:
                                best = cand
            if not batch_sets:
                cand = self._broadcast_candidate(a, b, k_set, want)
                if cand is not None and (best is None or cand[0] < best[0]):
                    best = cand
        assert best is not None
        _, lines, value, fused = best
        self.lines.extend(lines)
        self.count += 1
        return value, fused

    def _operand(
        self, v: _Value, letters: str, groups: tuple[int, ...], transpose: bool
    ) -> tuple[str, int]:
        calls, cost = self.arrangement(v, letters, groups)
        if transpose:
            calls.append(".transpose(-1, -2)" if len(groups) == 3 else ".t()")
            cost += _OP_COST
        return v.name + "".join(calls), cost

    def _finish_cost(
        self, letters: str, groups: tuple[int, ...], want: tuple[str, tuple[int, ...]] | None
    ) -> int:
        if want is None:
            return 0
        return self.arrangement(_Value("", letters, groups), *want)[1]

    def _mm_candidate(
        self,
        a: _Value,
        b: _Value,
        bt: str,
        m: str,
        k: str,
        n: str,
        ta: bool,
        tb: bool,
        want: tuple[str, tuple[int, ...]] | None,
    ) -> tuple[int, list[str], _Value, tuple[str, str] | None]:
        lead = (len(bt),) if bt else ()
        ea, ca = self._operand(
            a,
            bt + (k + m if ta else m + k),
            lead + ((len(k), len(m)) if ta else (len(m), len(k))),
            ta,
        )
        eb, cb = self._operand(
            b,
            bt + (n + k if tb else k + n),
            lead + ((len(n), len(k)) if tb else (len(k), len(n))),
            tb,
        )
        letters, groups = bt + m + n, lead + (len(m), len(n))
        name = f"t{self.count}"
        fused = None
        if want is not None and not bt and (letters, groups) == want:
            fused = (ea, eb)
        line = f"{name} = torch.{'bmm' if bt else 'mm'}({ea}, {eb})"
        cost = ca + cb + _OP_COST + self._finish_cost(letters, groups, want)
        return cost, [line], _Value(name, letters, groups), fused

    def _broadcast_candidate(
        self, f: _Value, x: _Value, k_set: set[str], want: tuple[str, tuple[int, ...]] | None
    ) -> tuple[int, list[str], _Value, None] | None:
        """``matmul(F (N, K), X (O, K, R))``: K in the middle of X, F broadcast over O."""
        if not k_set or not set(f.letters) - k_set:
            return None
        at = [i for i, c in enumerate(x.letters) if c in k_set]
        if at[-1] - at[0] + 1 != len(at) or at[0] == 0 or at[-1] == len(x.letters) - 1:
            return None
        o, k, r = x.letters[: at[0]], x.letters[at[0] : at[-1] + 1], x.letters[at[-1] + 1 :]
        nf = "".join(c for c in f.letters if c not in k_set)
        best = None
        for tf in (False, True):
            ef, cf = self._operand(
                f, k + nf if tf else nf + k, (len(k), len(nf)) if tf else (len(nf), len(k)), tf
            )
            if best is None or cf < best[1]:
                best = (ef, cf)
        letters = o + nf + r
        name = f"t{self.count}"
        if self._dim(o) == 1:  # one matrix: mm (the size-1 letters ride along in the rows)
            ex, cx = self._operand(x, x.letters, (len(o) + len(k), len(r)), False)
            groups: tuple[int, ...] = (len(o) + len(nf), len(r))
            lines = [f"{name} = torch.mm({best[0]}, {ex})"]
            ops = 1
        else:  # bmm with F expanded (a stride-0 view) over O: matmul's own dispatch costs more
            ex, cx = self._operand(x, x.letters, (len(o), len(k), len(r)), False)
            groups = (len(o), len(nf), len(r))
            n_rows, n_k = (
                -1 if d is None else d for d in (self._dim(nf), self._dim(k))
            )  # -1: F's own size
            lines = [
                f"{name} = {ex}",
                f"{name} = torch.bmm({best[0]}.expand({name}.shape[0], {n_rows}, {n_k}), {name})",
            ]
            ops = 2
        cost = best[1] + cx + ops * _OP_COST + self._finish_cost(letters, groups, want)
        return cost, lines, _Value(name, letters, groups), None

    def _einsum(self, values: list[_Value], out: str) -> _Value:
        exprs = []
        for v in values:
            calls, _ = self.arrangement(v, v.letters, tuple(1 for _ in v.letters))
            exprs.append(v.name + "".join(calls))
        equation = ",".join(v.letters for v in values) + "->" + out
        return _Value(
            self.new(f"torch.einsum({equation!r}, {', '.join(exprs)})"), out, tuple(1 for _ in out)
        )

    def finish(self, v: _Value, letters: str, groups: tuple[int, ...]) -> str:
        calls, _ = self.arrangement(v, letters, groups)
        return v.name + "".join(calls)


def emit_steps(
    steps: Sequence[Step],
    values: list[_Value],
    sizes: dict[str, int | None],
    *,
    hint: int = 1,
    want: tuple[str, tuple[int, ...]] | None = None,
) -> tuple[list[str], _Value, tuple[str, str] | None]:
    """Lines replaying ``steps`` on ``values``; the final value and the fusable last ``mm``.

    Raises ``ValueError`` when a step's operands do not carry the letters it expects.
    """
    emitter = _Emitter(sizes, hint)
    stack = list(values)
    fused = None
    for i, (positions, equation) in enumerate(steps):
        picked = [stack.pop(p) for p in positions]
        inputs, out = equation.split("->")
        if [set(t) for t in inputs.split(",")] != [set(v.letters) for v in picked]:
            raise ValueError(f"step {equation!r} does not match the operands' letters")
        last = i == len(steps) - 1
        value, fused = emitter.step(picked, out, want if last else None)
        stack.append(value)
    return emitter.lines, stack[0], fused


def compile_plan(plan: ContractionPlan, shapes: Sequence[Sequence[int]]) -> Any:
    """A generated function ``f(*operands)`` replaying ``plan`` for operands of ``shapes``.

    It returns None when the operands' dtypes differ (the caller falls back to einsum, which
    promotes). The source is kept as ``f.source``.
    """
    inputs, out = plan.equation.split("->")
    terms = inputs.split(",")
    sizes: dict[str, int | None] = {}
    for term, shape in zip(terms, shapes, strict=False):
        sizes.update(zip(term, (int(s) for s in shape), strict=False))
    names = [f"o{i}" for i in range(len(terms))]
    values = [_Value(n, t, tuple(1 for _ in t)) for n, t in zip(names, terms, strict=False)]
    want = (out, tuple(1 for _ in out))
    lines, result, _ = emit_steps(plan.steps, values, sizes, hint=1, want=want)
    final = _Emitter(sizes, 1).finish(result, *want)
    guard = " or ".join(f"{n}.dtype is not o0.dtype" for n in names[1:]) or "False"
    body = [f"if {guard}:", "    return None", *lines, f"return {final}"]
    return make_function("replay", names, body, {})


def make_function(
    name: str, args: Sequence[str], body: Sequence[str], scope: dict[str, Any]
) -> Any:
    """Compile ``def name(*args): body`` (lines without indentation) with ``torch`` and ``scope``."""
    source = f"def {name}({', '.join(args)}):\n" + "\n".join("    " + line for line in body) + "\n"
    namespace: dict[str, Any] = {"torch": torch, **scope}
    exec(compile(source, f"<tfx {name}>", "exec"), namespace)  # noqa: S102 - source generated above
    fn = namespace[name]
    fn.source = source
    return fn
