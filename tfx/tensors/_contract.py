"""The contraction engine: plans made once, one program per plan, rendered eager or traced.

Data flow::

    plan_einsum(equation, *shapes)          opt_einsum path search, memoised (``_limited``)
     -> ContractionPlan(equation, shapes, steps, flops)
        -> program(plan, layout)            the emitter (``_emit.emit``): pairwise steps as
                                            straight-line statements (GEMMs on views), data only
           -> Program.function              renderer 1, eager: Python source, compiled once
           -> Program.run / graph_module()  renderer 2, traced: the statements replayed on
                                            fx Proxies or dynamo's fake tensors, or built into
                                            a ``torch.fx.GraphModule``

Both renderers read the same statements, so a traced graph runs exactly the ops the eager
code runs. ``ContractionPlan.__call__`` picks the renderer: eager code for real tensors (the
program specialised to the operands' shapes), the traced renderer under ``torch.fx`` or
``torch.compile`` (the plan's shapes, with a batch letter left symbolic; see
:func:`batch_letter`). Layers reach the same programs through :func:`program` with a layout
(the input as a matrix of rows, a bias fused into the last GEMM).

Mixed dtypes are promoted once, at the boundary: the eager code returns None when its operands'
dtypes differ, and the call casts them to their common dtype (``torch.promote_types``) and runs
it again, so programs only ever see one dtype.

Caches. One policy, two bounded tables (4096 entries each):

* ``_limited``: the path search, an ``lru_cache`` of ``_MAX_PLANS`` entries keyed on
  ``(equation, shapes, memory_limit)``: what a plan is made from (the cost model reads it too,
  without running anything).
* ``_CACHE``: everything derived from a plan, ``_MAX_PROGRAMS`` entries, oldest dropped first.
  Keys: ``(equation, steps, *operand shapes)`` for a plan's eager program;
  ``(equation, steps, Layout)`` for a program with a layout; ``("input", equation, shapes,
  in_modes, bucket)`` for a layer's input plan (``tfx.functional._planning``): all by
  content, so the many equal plans of per-call sub-tensors (stacked layers) share entries.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

import opt_einsum
import torch

from ._emit import Ref, Stmt, emit

__all__ = [
    "ContractionPlan",
    "Layout",
    "Program",
    "batch_letter",
    "cached",
    "common_dtype",
    "plan_einsum",
    "program",
    "promote",
    "replay",
]

Step = tuple[tuple[int, ...], str]

#: Bound of the path-search memo (``_limited``).
_MAX_PLANS: Final = 4096
#: Bound of the program cache (``_CACHE``).
_MAX_PROGRAMS: Final = 4096
_CACHE: dict[Any, Any] = {}


def cached(key: Any, make: Callable[..., Any], *args: Any) -> Any:
    """``_CACHE[key]``, made by ``make(*args)`` on a miss (dropping the oldest entry when full)."""
    value = _CACHE.get(key)
    if value is None:
        value = make(*args)
        if len(_CACHE) >= _MAX_PROGRAMS:
            del _CACHE[next(iter(_CACHE))]
        _CACHE[key] = value
    return value


# -------------------------------------------------------------------------------- plans
class ContractionPlan:
    """A fixed, picklable sequence of pairwise einsum steps.

    Attributes:
        equation: the full einsum equation the plan computes.
        shapes: the operand shapes it was planned for.
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
        """Contract ``operands`` following the plan (eager code, or traced; see the module)."""
        if isinstance(operands[0], torch.fx.Proxy) or torch.compiler.is_compiling():
            return self.traced(*operands)  # type: ignore[no-any-return]
        result = self.same_dtype(*operands)
        if result is None:  # mixed dtypes: promoted once, at the boundary
            return self.same_dtype(*promote(operands))  # type: ignore[return-value]
        return result

    def same_dtype(self, *operands: torch.Tensor) -> torch.Tensor | None:
        """The eager code on real tensors of one dtype; None (nothing run) when dtypes differ."""
        key = (self.equation, self.steps, *[o.shape for o in operands])
        run = _CACHE.get(key)
        if run is None:
            shapes = tuple(tuple(o.shape) for o in operands)
            run = cached(key, _eager_program, self.equation, self.steps, shapes)
        return run(*operands)  # type: ignore[no-any-return]

    def traced(self, *operands: Any) -> Any:
        """The traced renderer: the plan's program replayed on ``operands`` (fx or dynamo)."""
        if not isinstance(operands[0], torch.fx.Proxy):
            operands = promote(operands)  # dtypes are known under dynamo (fake tensors)
        stmts, result = _traced_program(self.equation, self.steps, self.shapes)
        return replay(stmts, result, operands)

    def __getstate__(self) -> tuple[object, ...]:
        return self.equation, self.shapes, self.steps, self.flops

    def __setstate__(self, state: tuple[object, ...]) -> None:
        self.equation, self.shapes, self.steps, self.flops = state  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ContractionPlan({self.equation!r}, steps={len(self.steps)}, flops={self.flops})"


def batch_letter(equation: str) -> str | None:
    """The letter left symbolic when a plan is traced: a leading batch of rows, or None.

    That is the output's first letter when only the first operand has it (as in
    ``"bi,ij->bj"``): planned for one batch size (a bucket), a traced graph must run on any.
    """
    inputs, out = equation.split("->")
    terms = inputs.split(",")
    if not out or out[0] not in terms[0] or any(out[0] in t for t in terms[1:]):
        return None
    return out[0]


def common_dtype(operands: Sequence[Any]) -> torch.dtype:
    """The dtype ``operands`` are promoted to (``torch.promote_types`` over them)."""
    dtype: torch.dtype = functools.reduce(torch.promote_types, [o.dtype for o in operands])
    return dtype


def promote(operands: Sequence[Any]) -> tuple[Any, ...]:
    """``operands`` cast to their common dtype (the boundary's one promotion)."""
    dtype = common_dtype(operands)
    return tuple(o if o.dtype is dtype else o.to(dtype) for o in operands)


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
        A :class:`ContractionPlan`; the path search is cached per (equation, shapes).

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


@functools.lru_cache(maxsize=_MAX_PLANS)
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


# ----------------------------------------------------------------------------- programs
class Layout(NamedTuple):
    """How a program receives its operands and returns its result (see ``_emit.emit``).

    Attributes:
        shapes: the operands' shapes (the symbolic letter's size is the one planned for).
        groups: each operand's physical grouping of its letters (None: one dim per letter).
        want: the result's letters and grouping (None: the equation's output, as is).
        symbolic: the letter whose size is only known at run time (None: all fixed).
        bias: whether the program takes a ``bias`` operand, added to (or fused into) the result.
    """

    shapes: tuple[tuple[int, ...], ...]
    groups: tuple[tuple[int, ...], ...] | None = None
    want: tuple[str, tuple[int, ...]] | None = None
    symbolic: str | None = None
    bias: bool = False


class Program:
    """A plan's straight-line statements (from the emitter) and their two renderings.

    Attributes:
        stmts: the statements, ``(name, fn, args)`` (see ``tfx.tensors._emit``).
        result: the reference holding the result.
        args: the argument names: ``o0, o1, ...`` and, with a bias, ``bias``.
    """

    __slots__ = ("stmts", "result", "args", "_function")

    def __init__(
        self, stmts: tuple[Stmt, ...], result: Ref, n_operands: int, *, bias: bool = False
    ) -> None:
        self.stmts, self.result = stmts, result
        self.args = tuple(f"o{i}" for i in range(n_operands)) + (("bias",) if bias else ())
        self._function: Any = None

    # ------------------------------------------------------------ renderer 1: eager code
    def lines(self, result: str = "y") -> list[str]:
        """Python source of the statements, ending in ``result = ...`` (to inline or compile)."""
        body = [_source(stmt) for stmt in self.stmts]
        return [*body, f"{result} = {_ref_source(self.result)}"]

    @property
    def function(self) -> Callable[..., torch.Tensor]:
        """The eager rendering: a compiled ``f(o0, o1, ...[, bias])``; its source is ``.source``."""
        if self._function is None:
            self._function = make_function("program", self.args, [*self.lines(), "return y"], {})
        return self._function  # type: ignore[no-any-return]

    # ----------------------------------------------------------- renderer 2: traced graph
    def run(self, *operands: Any) -> Any:
        """The statements replayed on ``operands``: records them on fx Proxies (or dynamo)."""
        return replay(self.stmts, self.result, operands)

    def graph_module(self) -> torch.fx.GraphModule:
        """The traced rendering as a standalone ``torch.fx.GraphModule``."""
        graph = torch.fx.Graph()
        tracer = torch.fx.proxy.GraphAppendingTracer(graph)
        inputs = [torch.fx.Proxy(graph.placeholder(name), tracer) for name in self.args]
        graph.output(self.run(*inputs).node)
        return torch.fx.GraphModule(torch.nn.Module(), graph)

    def __repr__(self) -> str:
        return "\n".join(self.lines())


def program(equation: str, steps: tuple[Step, ...], layout: Layout) -> Program:
    """The program of ``(equation, steps)`` for ``layout``, from the cache (or emitted now)."""
    made = cached((equation, steps, layout), _make_program, equation, steps, layout)
    return made  # type: ignore[no-any-return]


def _make_program(equation: str, steps: tuple[Step, ...], layout: Layout) -> Program:
    stmts, result = emit(
        equation,
        steps,
        layout.shapes,
        groups=layout.groups,
        want=layout.want,
        symbolic=layout.symbolic,
        bias=layout.bias,
    )
    return Program(stmts, result, len(layout.shapes), bias=layout.bias)


@torch._dynamo.assume_constant_result
def _traced_program(
    equation: str, steps: tuple[Step, ...], shapes: tuple[tuple[int, ...], ...]
) -> tuple[tuple[Stmt, ...], Ref]:
    # Constant in its arguments: torch.compile runs it at trace time (no emitter in the graph).
    made = program(equation, steps, Layout(shapes, symbolic=batch_letter(equation)))
    return made.stmts, made.result


def _eager_program(
    equation: str, steps: tuple[Step, ...], shapes: tuple[tuple[int, ...], ...]
) -> Callable[..., torch.Tensor | None]:
    """A plan's eager code for operands of ``shapes``; None when their dtypes differ."""
    made = Program(*emit(equation, steps, shapes), len(shapes))
    mixed = " or ".join(f"{name}.dtype is not o0.dtype" for name in made.args[1:])
    guard = [f"if {mixed}:", "    return None"] if mixed else []
    body = [*guard, *made.lines(), "return y"]
    return make_function("program", made.args, body, {})  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- rendering
_FUNCTIONS: Final = {"mm": "torch.mm", "bmm": "torch.bmm", "einsum": "torch.einsum"}


def _ref_source(ref: Ref) -> str:
    name, calls = ref
    for method, args in calls:
        listed = ", ".join(map(str, args)) if args or method != "reshape" else "()"
        name += f".{method}({listed})"
    return name


def _source(stmt: Stmt) -> str:
    name, fn, args = stmt
    if fn == "view":
        return f"{name} = {_ref_source(args[0])}"
    if fn == "mul":
        return f"{name} = {_ref_source(args[0])} * {_ref_source(args[1])}"
    if fn == "einsum":
        return f"{name} = torch.einsum({args[0]!r}, {', '.join(map(_ref_source, args[1:]))})"
    if fn == "bmm_expand":
        f, x = _ref_source(args[0]), _ref_source(args[1])
        expanded = f"{f}.expand({name}.shape[0], {args[2]}, {args[3]})"
        return f"{name} = {x}; {name} = torch.bmm({expanded}, {name})"
    if fn == "mm_bias":
        bias, a, b = map(_ref_source, args)
        return f"{name} = torch.mm({a}, {b}) if {bias} is None else torch.addmm({bias}, {a}, {b})"
    if fn == "add_bias":
        y, bias = map(_ref_source, args)
        return f"{name} = {y} if {bias} is None else {y} + {bias}"
    return f"{name} = {_FUNCTIONS[fn]}({', '.join(map(_ref_source, args))})"


def _value(ref: Ref, env: dict[str, Any]) -> Any:
    name, calls = ref
    value = env[name]
    for method, args in calls:
        if method in ("reshape", "permute"):
            value = getattr(value, method)(args)
        else:
            value = getattr(value, method)(*args)
    return value


def replay(stmts: Sequence[Stmt], result: Ref, operands: Sequence[Any]) -> Any:
    """Run the statements by calling torch on ``operands`` (the traced renderer's core)."""
    env: dict[str, Any] = {f"o{i}": o for i, o in enumerate(operands)}
    env["bias"] = operands[-1]  # only read by programs that take a bias
    for name, fn, args in stmts:
        if fn == "einsum":
            value = torch.einsum(args[0], *[_value(a, env) for a in args[1:]])
        elif fn == "bmm_expand":
            f, x = _value(args[0], env), _value(args[1], env)
            value = torch.bmm(f.expand(x.shape[0], args[2], args[3]), x)
        else:
            vals = [_value(a, env) for a in args]
            if fn == "view":
                value = vals[0]
            elif fn == "mul":
                value = vals[0] * vals[1]
            elif fn == "mm":
                value = torch.mm(*vals)
            elif fn == "bmm":
                value = torch.bmm(*vals)
            elif fn == "mm_bias":
                value = torch.mm(*vals[1:]) if vals[0] is None else torch.addmm(*vals)
            else:  # add_bias
                value = vals[0] if vals[1] is None else vals[0] + vals[1]
        env[name] = value
    return _value(result, env)


def make_function(
    name: str, args: Sequence[str], body: Sequence[str], scope: dict[str, Any]
) -> Any:
    """Compile ``def name(*args): body`` (unindented lines) with ``torch`` and ``scope``."""
    source = f"def {name}({', '.join(args)}):\n" + "\n".join("    " + line for line in body) + "\n"
    namespace: dict[str, Any] = {"torch": torch, **scope}
    exec(compile(source, f"<tfx {name}>", "exec"), namespace)  # noqa: S102 - source generated above
    fn = namespace[name]
    fn.source = source
    return fn
