"""The contraction engine (``tfx.tensors._contract``) against ``torch.einsum``, in float64.

Equations are drawn by Hypothesis: 2-5 operands over up to 7 letters of sizes 1-5, letters
shared between operands and summed, free letters kept in the output in any order, letters
summed inside one operand, and optionally a batch letter in every operand (a ``bmm`` batch)
and a leading row letter in the first operand only (what a traced graph leaves symbolic).
Each plan runs through both renderers of the engine's one program: the eager code, and the
traced renderer (recorded by torch.fx on Proxies, or built as a standalone GraphModule).
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import tfx
from tfx import ShapeError
from tfx.tensors import _contract
from tfx.tensors._contract import (
    ContractionPlan,
    Layout,
    batch_letter,
    plan_einsum,
    program,
)

F64 = torch.float64
LETTERS = "abcdefg"
ROWS = "z"  # the row letter: first operand only, first in the output


# ------------------------------------------------------------------ strategies
@st.composite
def equations(draw: st.DrawFn) -> tuple[str, list[tuple[int, ...]]]:
    """An explicit einsum equation and operand shapes (see the module docstring)."""
    n_letters = draw(st.integers(1, len(LETTERS)))
    letters = draw(st.permutations(LETTERS))[:n_letters]
    sizes = {c: draw(st.integers(1, 5), label=f"size {c}") for c in (*letters, ROWS)}
    n_operands = draw(st.integers(2, 5))
    term = st.lists(st.sampled_from(letters), unique=True, min_size=1, max_size=min(4, n_letters))
    terms = [draw(term) for _ in range(n_operands)]
    batch = letters[0] if draw(st.booleans(), label="batch letter") else None
    if batch is not None:
        for t in terms:
            if batch not in t:
                t.insert(draw(st.integers(0, len(t))), batch)
    used = sorted({c for t in terms for c in t})
    out = draw(st.lists(st.sampled_from(used), unique=True, max_size=4))
    if batch is not None and batch not in out:
        out.insert(draw(st.integers(0, len(out))), batch)
    if draw(st.booleans(), label="row letter"):
        terms[0].insert(0, ROWS)
        out.insert(0, ROWS)
    equation = ",".join("".join(t) for t in terms) + "->" + "".join(out)
    return equation, [tuple(sizes[c] for c in t) for t in terms]


MEMORY_LIMITS = st.sampled_from(["max_io", None])


def operands(shapes: Sequence[Sequence[int]], dtypes: Sequence[torch.dtype] = ()) -> list[Any]:
    dtypes = list(dtypes) or [F64] * len(shapes)
    return [torch.randn(*s, dtype=F64).to(d) for s, d in zip(shapes, dtypes, strict=True)]


def traced(plan: ContractionPlan, n: int) -> torch.fx.GraphModule:
    """``plan`` called on fx Proxies: the graph torch.fx records for it inside a model."""
    graph = torch.fx.Graph()
    tracer = torch.fx.proxy.GraphAppendingTracer(graph)
    proxies = [torch.fx.Proxy(graph.placeholder(f"o{i}"), tracer) for i in range(n)]
    graph.output(plan(*proxies).node)
    graph.lint()
    return torch.fx.GraphModule(torch.nn.Module(), graph)


def with_rows(equation: str, shapes: list[tuple[int, ...]], rows: int) -> list[tuple[int, ...]]:
    """``shapes`` with the row letter (see ``batch_letter``) resized to ``rows``."""
    letter = batch_letter(equation)
    terms = equation.split("->")[0].split(",")
    return [
        tuple(rows if c == letter else s for c, s in zip(t, shape, strict=True))
        for t, shape in zip(terms, shapes, strict=True)
    ]


# ------------------------------------------------------------------ eager renderer
@given(equations(), MEMORY_LIMITS)
def test_eager_program_matches_einsum(case: tuple[str, list[Any]], limit: Any) -> None:
    equation, shapes = case
    ops = operands(shapes)
    plan = plan_einsum(equation, *shapes, memory_limit=limit)
    torch.testing.assert_close(plan(*ops), torch.einsum(equation, *ops))


@given(equations())
def test_eager_program_is_replayed_from_the_cache(case: tuple[str, list[Any]]) -> None:
    equation, shapes = case
    plan = plan_einsum(equation, *shapes)
    first, second = operands(shapes), operands(shapes)
    plan(*first)
    key = (plan.equation, plan.steps, *[torch.Size(s) for s in shapes])
    made = _contract._CACHE[key]
    torch.testing.assert_close(plan(*second), torch.einsum(equation, *second))
    assert _contract._CACHE[key] is made


@given(equations())
def test_gradients_match_einsum(case: tuple[str, list[Any]]) -> None:
    equation, shapes = case
    ops = [o.requires_grad_() for o in operands(shapes)]
    grad_out = torch.randn(torch.einsum(equation, *ops).shape, dtype=F64)
    got = torch.autograd.grad(plan_einsum(equation, *shapes)(*ops), ops, grad_out)
    want = torch.autograd.grad(torch.einsum(equation, *ops), ops, grad_out)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


# ------------------------------------------------------------------ traced renderer
@given(equations(), MEMORY_LIMITS)
def test_fx_traced_plan_matches_einsum(case: tuple[str, list[Any]], limit: Any) -> None:
    equation, shapes = case
    ops = operands(shapes)
    plan = plan_einsum(equation, *shapes, memory_limit=limit)
    module = traced(plan, len(shapes))
    torch.testing.assert_close(module(*ops), torch.einsum(equation, *ops))


@given(equations(), st.integers(1, 7))
def test_fx_traced_plan_runs_any_number_of_rows(case: tuple[str, list[Any]], rows: int) -> None:
    equation, shapes = case
    module = traced(plan_einsum(equation, *shapes), len(shapes))
    ops = operands(with_rows(equation, shapes, rows))
    torch.testing.assert_close(module(*ops), torch.einsum(equation, *ops))


@given(equations())
def test_graph_module_and_eager_code_render_one_program(case: tuple[str, list[Any]]) -> None:
    equation, shapes = case
    plan = plan_einsum(equation, *shapes)
    made = program(plan.equation, plan.steps, Layout(tuple(shapes)))
    ops = operands(shapes)
    module = made.graph_module()
    module.graph.lint()
    want = torch.einsum(equation, *ops)
    torch.testing.assert_close(made.function(*ops), want)
    torch.testing.assert_close(module(*ops), want)
    gemms = {"mm", "bmm", "addmm", "einsum"}
    in_graph = sum(getattr(n.target, "__name__", "") in gemms for n in module.graph.nodes)
    in_code = sum(made.function.source.count(f"torch.{op}(") for op in gemms)
    assert in_graph == in_code


@st.composite
def linear_cases(draw: st.DrawFn) -> tuple[str, list[tuple[int, ...]], int]:
    """A layer's input plan ``z<in>,<weight terms>->z<out>`` and a number of rows to run."""
    letters = draw(st.permutations(LETTERS))
    n_in, n_out, n_bond = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(0, 2))
    x, y = letters[:n_in], letters[n_in : n_in + n_out]
    pool = letters[: n_in + n_out + n_bond]
    n_terms = draw(st.integers(1, 4))
    term = st.lists(st.sampled_from(pool), unique=True, min_size=1, max_size=3)
    terms = [draw(term) for _ in range(n_terms)]
    for c in (*x, *y):  # the weight has every input and output mode
        if not any(c in t for t in terms):
            terms[draw(st.integers(0, n_terms - 1))].append(c)
    sizes = {c: draw(st.integers(1, 5)) for c in pool}
    planned, rows = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    weights = ",".join("".join(t) for t in terms)
    equation = f"{ROWS}{''.join(x)},{weights}->{ROWS}{''.join(y)}"
    shapes = [(planned, *(sizes[c] for c in x)), *[tuple(sizes[c] for c in t) for t in terms]]
    return equation, shapes, rows


@given(linear_cases(), st.booleans())
def test_matrix_layout_with_bias_matches_einsum(
    case: tuple[str, list[tuple[int, ...]], int], fx: bool
) -> None:
    """The layer layout: x as (rows, features), symbolic rows, the bias fused or added."""
    equation, shapes, rows = case
    plan = plan_einsum(equation, *shapes, memory_limit=None)
    inputs, out = equation.split("->")
    terms = inputs.split(",")
    layout = Layout(
        plan.shapes,
        groups=((1, len(terms[0]) - 1), *(tuple(1 for _ in t) for t in terms[1:])),
        want=(out, (1, len(out) - 1)),
        symbolic=ROWS,
        bias=True,
    )
    made = program(plan.equation, plan.steps, layout)
    ops = operands(with_rows(equation, shapes, rows))
    dense = torch.einsum(equation, *ops).reshape(rows, -1)
    bias = torch.randn(dense.shape[1], dtype=F64)
    run = made.graph_module() if fx else made.function
    x = ops[0].reshape(rows, -1)
    torch.testing.assert_close(run(x, *ops[1:], bias), dense + bias)
    if not fx:  # eager code takes a layer's bias as it is now (None: no bias); a graph fixes it
        torch.testing.assert_close(run(x, *ops[1:], None), dense)


# ------------------------------------------------------------------ dynamo
@pytest.mark.parametrize(
    "equation",
    ["zab,bc,cd->zad", "ab,bc->", "zi,ia,ja,ka->zjk", "abc,cd,db->a", "zab,zbc->zac"],
)
def test_compiled_plan_matches_einsum(equation: str) -> None:
    torch._dynamo.reset()
    sizes = dict(zip("zabcdijk", (6, 2, 3, 4, 5, 3, 2, 4), strict=True))
    shapes = [tuple(sizes[c] for c in t) for t in equation.split("->")[0].split(",")]
    plan = plan_einsum(equation, *shapes)
    compiled = torch.compile(lambda *ops: plan(*ops), fullgraph=True, backend="eager")
    ops = operands(shapes)
    torch.testing.assert_close(compiled(*ops), torch.einsum(equation, *ops))
    torch._dynamo.reset()


# ------------------------------------------------------------------ mixed dtypes
DTYPES = st.sampled_from([torch.float32, F64, torch.complex64, torch.complex128])


@given(equations(), st.data())
def test_mixed_dtypes_are_promoted_at_the_boundary(
    case: tuple[str, list[Any]], data: st.DataObject
) -> None:
    equation, shapes = case
    dtypes = data.draw(st.lists(DTYPES, min_size=len(shapes), max_size=len(shapes)))
    dtypes[data.draw(st.integers(0, len(shapes) - 1))] = data.draw(
        st.sampled_from([F64, torch.complex128])  # one double: the result is double precision
    )
    ops = operands(shapes, dtypes)
    common = functools.reduce(torch.promote_types, dtypes)
    got = plan_einsum(equation, *shapes)(*ops)
    assert got.dtype == common
    torch.testing.assert_close(got, torch.einsum(equation, *[o.to(common) for o in ops]))


# ------------------------------------------------------------------ the cache
def test_program_cache_keeps_at_most_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_contract, "_CACHE", {})
    monkeypatch.setattr(_contract, "_MAX_PROGRAMS", 4)
    plan = plan_einsum("zi,ij->zj", (1, 3), (3, 2))
    firsts = []
    for rows in range(1, 11):
        ops = operands([(rows, 3), (3, 2)])
        torch.testing.assert_close(plan(*ops), ops[0] @ ops[1])
        firsts.append(next(iter(_contract._CACHE)))
        assert len(_contract._CACHE) <= 4
    assert len(_contract._CACHE) == 4
    assert firsts[-1][2:] == (torch.Size([7, 3]), torch.Size([3, 2]))  # oldest dropped first


def test_equal_plans_of_new_objects_share_cache_entries() -> None:
    """A stacked layer builds a new sub-weight per call: its plans must hit, not pile up."""
    layer = tfx.FactorizedLinear((2, 3), (3, 2), factorization="cp", rank=3, n_layers=2)
    layer.double()
    x = torch.randn(5, 6, dtype=F64)
    want = F.linear(x, layer.weight[1].to_matrix(), layer.bias[1])
    torch.testing.assert_close(layer(x, indices=1), want)
    size = len(_contract._CACHE)
    for _ in range(3):
        torch.testing.assert_close(layer(x, indices=1), want)
    assert len(_contract._CACHE) == size


def test_cache_bounds_are_the_documented_ones() -> None:
    assert _contract._MAX_PROGRAMS == 4096
    assert _contract._limited.cache_info().maxsize == _contract._MAX_PLANS == 4096
    doc = _contract.__doc__ or ""
    assert "_MAX_PROGRAMS" in doc and "_MAX_PLANS" in doc


# ------------------------------------------------------------------ plans
def test_plan_survives_pickling() -> None:
    plan = plan_einsum("zab,bc,cd->zad", (4, 2, 3), (3, 5), (5, 2))
    again = pickle.loads(pickle.dumps(plan))
    ops = operands(plan.shapes)
    assert (again.equation, again.shapes, again.steps) == (plan.equation, plan.shapes, plan.steps)
    torch.testing.assert_close(again(*ops), plan(*ops))


@pytest.mark.parametrize(
    ("shapes", "why"),
    [
        ([(2, 3), (4, 5)], r"'j' is 3 in one operand and 4 in another"),
        ([(2, 3, 1), (3, 5)], r"operand 0 has shape \(2, 3, 1\) for the term 'ij'"),
    ],
    ids=["sizes", "rank"],
)
def test_operands_that_do_not_fit_raise_shape_error(
    shapes: list[tuple[int, ...]], why: str
) -> None:
    plan = plan_einsum("ij,jk->ik", (2, 3), (3, 5))
    with pytest.raises(ShapeError, match=why):
        plan(*operands(shapes))


@pytest.mark.parametrize(
    ("equation", "letter"),
    [("zi,ij->zj", "z"), ("ij,zj->zi", None), ("zi,zj->zij", None), ("i->", None)],
)
def test_batch_letter_is_the_leading_row_letter_of_the_first_operand(
    equation: str, letter: str | None
) -> None:
    assert batch_letter(equation) == letter
