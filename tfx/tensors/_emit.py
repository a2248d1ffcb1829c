"""The emitter: a plan's pairwise steps as straight-line statements (GEMMs on views).

Stage: plan (``_contract.plan_einsum``) -> **emit** -> render (``_contract.Program``).
Pure Python: no tensor is touched here, so the result is data (nested tuples of str and int),
which the renderers turn into eager code or an fx graph, and which ``torch.compile`` can take
as a constant.

Values are tracked as (logical letter order, physical grouping): the output of a GEMM stays
grouped (rows, cols) and is only reshaped or permuted when a later step needs another view of
it, so most steps are a (b)mm on views, with no unflatten / permute / flatten in between.
Every reshape size, permutation and GEMM orientation is decided here, once per program.

The statements (``Stmt``) are ``(name, fn, args)``; an argument that is a value is a ``Ref``,
``(name, calls)``, where ``calls`` are tensor methods applied in order: ``("reshape", shape)``,
``("permute", perm)``, ``("transpose", (-1, -2))``, ``("t", ())``. The functions are:

==============  ============================================  ================================
fn              args                                          computes
==============  ============================================  ================================
``view``        ``(a,)``                                      ``a``
``mm``/``bmm``  ``(a, b)``                                    ``torch.mm(a, b)`` / ``bmm``
``mul``         ``(a, b)``                                    ``a * b``
``einsum``      ``(equation, *operands)``                     ``torch.einsum``
``bmm_expand``  ``(f, x, rows, k)``                           ``bmm(f.expand(len(x), rows, k), x)``
``mm_bias``     ``(bias, a, b)``                              ``addmm(bias, a, b)`` (``mm`` if None)
``add_bias``    ``(y, bias)``                                 ``y + bias`` (``y`` if None)
==============  ============================================  ================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

from .._errors import ShapeError

__all__ = ["Ref", "Stmt", "emit"]

Ref = tuple[str, tuple[tuple[str, tuple[int, ...]], ...]]
Stmt = tuple[str, str, tuple[Any, ...]]
Step = tuple[tuple[int, ...], str]
Want = tuple[str, tuple[int, ...]]

_MSG_OPERANDS: Final = (
    "the operands do not fit the planned contraction {equation!r}: {why}.\n"
    "Fix: pass operands of the shapes the plan was made for (planned contractions do not "
    "broadcast; use torch.einsum for that)."
)

#: A host op (one view or kernel launch, ~1-2 us here) weighs like copying this many elements.
_OP_COST: Final = 2000


class _Value:
    """A value in the program: its variable, letters (logical order) and physical grouping.

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


def _ones(letters: str) -> tuple[int, ...]:
    return tuple(1 for _ in letters)


class _Emitter:
    """Appends the statements of a straight-line contraction (see the module docstring)."""

    def __init__(self, sizes: dict[str, int | None], hint: int) -> None:
        self.sizes = sizes  # None: the symbolic batch size (-1 in reshapes)
        self.hint = hint  # the batch size assumed when weighing copies
        self.stmts: list[Stmt] = []
        self.count = 0

    # ----------------------------------------------------------------- sizes
    def _dim(self, letters: str) -> int | None:
        sizes = [self.sizes[c] for c in letters]
        return None if None in sizes else math.prod(sizes)  # type: ignore[arg-type]

    def numel(self, letters: str) -> int:
        return math.prod(
            self.hint if self.sizes[c] is None else self.sizes[c]  # type: ignore[misc]
            for c in letters
        )

    def shape(self, letters: str, groups: Sequence[int]) -> tuple[int, ...]:
        dims = [self._dim(part) for part in _split(letters, groups)]
        return tuple(-1 if d is None else d for d in dims)

    def new(self, fn: str, args: tuple[Any, ...]) -> str:
        name = f"t{self.count}"
        self.count += 1
        self.stmts.append((name, fn, args))
        return name

    # ----------------------------------------------------------------- views
    def arrangement(
        self, v: _Value, letters: str, groups: tuple[int, ...]
    ) -> tuple[list[tuple[str, tuple[int, ...]]], int]:
        """Method calls turning ``v`` into (``letters``, ``groups``) and their cost."""
        if v.letters == letters:
            if v.groups == groups:
                return [], 0
            return [("reshape", self.shape(letters, groups))], _OP_COST
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
        calls: list[tuple[str, tuple[int, ...]]] = []
        cost = 0
        split = tuple(len(r) for r in runs)
        if split != v.groups:
            calls.append(("reshape", self.shape(v.letters, split)))
            cost += _OP_COST
        perm = sorted(range(len(runs)), key=lambda i: pos[runs[i][0]])
        calls.append(("permute", tuple(perm)))
        cost += _OP_COST
        permuted = tuple(len(runs[i]) for i in perm)
        if permuted != groups:
            calls.append(("reshape", self.shape(letters, groups)))
            run_of = {c: i for i, r in enumerate(runs) for c in r}
            # Merging pieces of two different runs (both longer than 1) copies the data.
            copies = any(
                len({run_of[c] for c in part if self.sizes[c] != 1}) > 1
                for part in _split(letters, groups)
            )
            cost += _OP_COST + (self.numel(letters) if copies else 0)
        return calls, cost

    def ref(self, v: _Value, letters: str, groups: tuple[int, ...]) -> Ref:
        """``v`` viewed as (``letters``, ``groups``)."""
        return v.name, tuple(self.arrangement(v, letters, groups)[0])

    # ----------------------------------------------------------------- steps
    def step(
        self, values: list[_Value], out: str, want: Want | None
    ) -> tuple[_Value, tuple[Ref, Ref] | None]:
        """Emit one planned step; with ``want`` (the last step), also the final layout.

        Returns the result and, when the last step is a plain 2-D ``mm`` already in the
        ``want`` layout, its two operands (so that a bias can be fused with ``addmm``).
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
                if not contracted:  # a broadcast multiply, as einsum runs (and prices) it
                    return self._outer(p, q, out), None
                return self._matmul(p, q, out, want)
        return self._einsum(values, out), None

    def _squeeze(self, v: _Value, other: _Value, out: str, outer: bool = False) -> _Value:
        """``v`` without its size-1 letters that no other value reads.

        Those are letters summed inside ``v`` (e.g. a TT end bond) or, with ``outer``,
        summed with ``other`` too. Their physical dims stay, as dims of no letter (size 1),
        so no op is needed.
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
            name = self.new("view", ((big.name, (("reshape", self.shape(big.letters, groups)),)),))
        target = "".join(c for c in big.letters if c in inside)
        dims = [self._dim(r) if r and set(r) <= inside else 1 for r in parts]
        while dims and dims[0] == 1:  # broadcasting supplies leading ones
            dims.pop(0)
        shape_now = [self._dim(r) for r in _split(small.letters, small.groups)]
        calls: list[tuple[str, tuple[int, ...]]] = []
        if small.letters != target:
            calls += self.arrangement(small, target, _ones(target))[0]
            shape_now = [self.sizes[c] for c in target]
        if shape_now != dims:
            calls.append(("reshape", tuple(-1 if d is None else d for d in dims)))
        out = self.new("mul", ((name, ()), (small.name, tuple(calls))))
        return _Value(out, big.letters, groups)

    def _outer(self, p: _Value, q: _Value, out: str) -> _Value:
        """The elementwise product of two operands, broadcast over the letters each lacks."""
        refs = []
        for v in (p, q):
            mine = "".join(c for c in out if c in v.letters)
            calls = self.arrangement(v, mine, _ones(mine))[0]
            dims = tuple(
                (-1 if self.sizes[c] is None else self.sizes[c]) if c in v.letters else 1
                for c in out
            )
            refs.append((v.name, (*calls, ("reshape", dims))))
        return _Value(self.new("mul", tuple(refs)), out, _ones(out))

    def _matmul(
        self, p: _Value, q: _Value, out: str, want: Want | None
    ) -> tuple[_Value, tuple[Ref, Ref] | None]:
        batch_sets = set(p.letters) & set(q.letters) & set(out)
        k_set = (set(p.letters) & set(q.letters)) - set(out)
        best: tuple[int, list[Stmt], _Value, tuple[Ref, Ref] | None] | None = None
        for a, b in ((p, q), (q, p)):
            m = "".join(c for c in a.letters if c not in batch_sets and c not in k_set)
            n = "".join(c for c in b.letters if c not in batch_sets and c not in k_set)
            for bt in {"".join(c for c in v.letters if c in batch_sets) for v in (p, q)}:
                for k in {"".join(c for c in v.letters if c in k_set) for v in (p, q)}:
                    for ta in (False, True):
                        for tb in (False, True):
                            cand = self._mm_candidate(a, b, (bt, m, k, n), (ta, tb), want)
                            if best is None or cand[0] < best[0]:
                                best = cand
            if not batch_sets:
                alt = self._broadcast_candidate(a, b, k_set, want)
                if alt is not None and (best is None or alt[0] < best[0]):
                    best = alt
        if best is None:  # pragma: no cover - a contracted letter always gives a candidate
            raise ValueError("no GEMM layout for this step")
        _, stmts, value, fused = best
        self.stmts.extend(stmts)
        self.count += 1
        return value, fused

    def _operand(
        self, v: _Value, letters: str, groups: tuple[int, ...], transpose: bool
    ) -> tuple[Ref, int]:
        calls, cost = self.arrangement(v, letters, groups)
        if transpose:
            calls.append(("transpose", (-1, -2)) if len(groups) == 3 else ("t", ()))
            cost += _OP_COST
        return (v.name, tuple(calls)), cost

    def _finish_cost(self, letters: str, groups: tuple[int, ...], want: Want | None) -> int:
        if want is None:
            return 0
        return self.arrangement(_Value("", letters, groups), *want)[1]

    def _mm_candidate(
        self,
        a: _Value,
        b: _Value,
        letters: tuple[str, str, str, str],
        transposed: tuple[bool, bool],
        want: Want | None,
    ) -> tuple[int, list[Stmt], _Value, tuple[Ref, Ref] | None]:
        bt, m, k, n = letters
        ta, tb = transposed
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
        out_letters, groups = bt + m + n, lead + (len(m), len(n))
        name = f"t{self.count}"
        fused = None
        if want is not None and not bt and (out_letters, groups) == want:
            fused = (ea, eb)
        cost = ca + cb + _OP_COST + self._finish_cost(out_letters, groups, want)
        stmt = (name, "bmm" if bt else "mm", (ea, eb))
        return cost, [stmt], _Value(name, out_letters, groups), fused

    def _broadcast_candidate(
        self, f: _Value, x: _Value, k_set: set[str], want: Want | None
    ) -> tuple[int, list[Stmt], _Value, None] | None:
        """``matmul(F (N, K), X (O, K, R))``: K in the middle of X, F broadcast over O."""
        if not k_set or not set(f.letters) - k_set:
            return None
        at = [i for i, c in enumerate(x.letters) if c in k_set]
        if at[-1] - at[0] + 1 != len(at) or at[0] == 0 or at[-1] == len(x.letters) - 1:
            return None
        o, k, r = x.letters[: at[0]], x.letters[at[0] : at[-1] + 1], x.letters[at[-1] + 1 :]
        nf = "".join(c for c in f.letters if c not in k_set)
        best: tuple[Ref, int] | None = None
        for tf in (False, True):
            ef, cf = self._operand(
                f, k + nf if tf else nf + k, (len(k), len(nf)) if tf else (len(nf), len(k)), tf
            )
            if best is None or cf < best[1]:
                best = (ef, cf)
        assert best is not None  # the loop ran
        letters = o + nf + r
        name = f"t{self.count}"
        stmt: Stmt
        if self._dim(o) == 1:  # one matrix: mm (the size-1 letters ride along in the rows)
            ex, cx = self._operand(x, x.letters, (len(o) + len(k), len(r)), False)
            groups: tuple[int, ...] = (len(o) + len(nf), len(r))
            stmt, ops = (name, "mm", (best[0], ex)), 1
        else:  # bmm with F expanded (a stride-0 view) over O: matmul's own dispatch costs more
            ex, cx = self._operand(x, x.letters, (len(o), len(k), len(r)), False)
            groups = (len(o), len(nf), len(r))
            n_rows, n_k = (-1 if d is None else d for d in (self._dim(nf), self._dim(k)))
            stmt, ops = (name, "bmm_expand", (best[0], ex, n_rows, n_k)), 2
        cost = best[1] + cx + ops * _OP_COST + self._finish_cost(letters, groups, want)
        return cost, [stmt], _Value(name, letters, groups), None

    def _einsum(self, values: list[_Value], out: str) -> _Value:
        refs = [self.ref(v, v.letters, _ones(v.letters)) for v in values]
        equation = ",".join(v.letters for v in values) + "->" + out
        return _Value(self.new("einsum", (equation, *refs)), out, _ones(out))


def _sizes(terms: Sequence[str], shapes: Sequence[Sequence[int]]) -> dict[str, int | None]:
    """Each letter's size; a ShapeError when the operands do not fit the equation."""
    sizes: dict[str, int | None] = {}
    why = f"{len(shapes)} operands for {len(terms)} terms" if len(terms) != len(shapes) else ""
    for i, (term, shape) in enumerate(zip(terms, shapes, strict=False)):
        if len(term) != len(shape):
            why = why or f"operand {i} has shape {tuple(shape)} for the term {term!r}"
        for letter, size in zip(term, shape, strict=False):
            if sizes.setdefault(letter, int(size)) != int(size):
                why = why or f"{letter!r} is {sizes[letter]} in one operand and {size} in another"
    if why:
        raise ShapeError(_MSG_OPERANDS.format(equation=",".join(terms), why=why))
    return sizes


def emit(
    equation: str,
    steps: Sequence[Step],
    shapes: Sequence[Sequence[int]],
    *,
    groups: Sequence[tuple[int, ...]] | None = None,
    want: Want | None = None,
    symbolic: str | None = None,
    bias: bool = False,
) -> tuple[tuple[Stmt, ...], Ref]:
    """The statements replaying ``steps`` on operands ``o0, o1, ...`` (and ``bias``).

    Args:
        equation: the plan's einsum equation.
        steps: the plan's ``(positions, equation)`` pairs.
        shapes: the operands' shapes (for ``symbolic``, the size to weigh copies with).
        groups: each operand's physical grouping of its letters (default: one dim each).
        want: the result's letters and grouping (default: the equation's output, one dim each).
        symbolic: a letter whose size is not fixed (``-1`` in reshapes), e.g. the batch rows.
        bias: whether a ``bias`` operand is added to the result (fused into a last ``mm``).

    Returns:
        ``(statements, result)``.

    Raises:
        ValueError: when an operand does not carry the letters its step expects.
    """
    inputs, out = equation.split("->")
    terms = inputs.split(",")
    sizes = _sizes(terms, shapes)
    hint = 1
    if symbolic is not None:
        hint, sizes[symbolic] = sizes[symbolic] or 1, None
    groups = list(groups) if groups is not None else [_ones(t) for t in terms]
    want = want if want is not None else (out, _ones(out))
    emitter = _Emitter(sizes, hint)
    stack = [_Value(f"o{i}", t, g) for i, (t, g) in enumerate(zip(terms, groups, strict=True))]
    fused = None
    for i, (positions, step) in enumerate(steps):
        picked = [stack.pop(p) for p in positions]
        step_inputs, step_out = step.split("->")
        if [set(t) for t in step_inputs.split(",")] != [set(v.letters) for v in picked]:
            raise ValueError(f"step {step!r} does not match the operands' letters")
        last = i == len(steps) - 1
        value, fused = emitter.step(picked, step_out, want if last else None)
        stack.append(value)
    bias_ref: Ref = ("bias", ())
    if bias and fused is not None:
        name = emitter.stmts.pop()[0]  # the last mm, fused with the bias
        emitter.stmts.append((name, "mm_bias", (bias_ref, *fused)))
        return tuple(emitter.stmts), (name, ())
    result = emitter.ref(stack[0], *want)
    if bias:
        result = (emitter.new("add_bias", (result, bias_ref)), ())
    return tuple(emitter.stmts), result
