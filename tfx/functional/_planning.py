"""Plans for contracting an input with a factorized weight, per batch bucket.

A layer's contraction is one einsum over the input and the weight's factors.
Its best pairwise order depends on the batch size, so plans are made per
bucket of batch sizes (powers of 4), in the engine's one cache
(``tfx.tensors._contract``: keyed on the weight's plan, the input modes and the
bucket). Eager forwards run the engine's eager code; under ``torch.fx`` tracing or
``torch.compile`` the batch size is not known (or should not be specialised on),
so the plan of a default bucket is replayed by the engine's traced renderer, the
number of rows left symbolic. ``compile_linear`` builds ``FactorizedLinear``'s
eager fast path around the same program.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from typing import Any, Final

import torch

from ..tensors import FactorizedTensor, TensorizedTensor
from ..tensors._contract import (
    ContractionPlan,
    Layout,
    cached,
    common_dtype,
    make_function,
    plan_einsum,
    program,
    promote,
    replay,
)

__all__ = [
    "DEFAULT_BATCH",
    "FastCache",
    "batch_bucket",
    "compile_linear",
    "contract_input",
    "input_plan",
    "is_tracing",
    "matrix_layout",
    "operand_sources",
    "planned_batch",
    "traced_batch",
    "weight_shapes",
]

#: Batch size planned for when it cannot be read (fx tracing, torch.compile).
DEFAULT_BATCH = 128
_TRACE_BATCH: list[int] = []


class planned_batch:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Plan traced contractions for ``batch`` rows instead of :data:`DEFAULT_BATCH`.

    The compiler traces each site's layer inside this context with the batch
    size the site sees in the example inputs, so the contraction order baked
    into the graph is the one that is best for it.
    """

    def __init__(self, batch: int) -> None:
        self.batch = batch_bucket(max(1, int(batch)))

    def __enter__(self) -> None:
        _TRACE_BATCH.append(self.batch)

    def __exit__(self, *exc: object) -> None:
        _TRACE_BATCH.pop()


def traced_batch() -> int:
    """The batch size to plan for while tracing."""
    return _TRACE_BATCH[-1] if _TRACE_BATCH else DEFAULT_BATCH


def is_tracing(x: Any) -> bool:
    """Whether shapes must not be read: an fx Proxy, or inside torch.compile."""
    return isinstance(x, torch.fx.Proxy) or torch.compiler.is_compiling()


def batch_bucket(n: int) -> int:
    """Round a batch size up to a power of 4 (1, 4, 16, 64, ...)."""
    bucket = 1
    while bucket < n:
        bucket *= 4
    return bucket


def weight_shapes(weight: FactorizedTensor) -> tuple[str, tuple[tuple[int, ...], ...]]:
    """The weight's reconstruction equation and operand shapes, from static metadata."""
    plan: ContractionPlan = weight._plan
    return plan.equation, plan.shapes


def _free_letter(used: str) -> str:
    for letter in string.ascii_letters:
        if letter not in used:
            return letter
    raise RuntimeError("no free einsum letter left")  # pragma: no cover - > 52 modes


def input_plan(
    weight: FactorizedTensor, in_modes: tuple[int, ...], batch: int
) -> tuple[ContractionPlan, tuple[int, ...], tuple[int, ...]]:
    """Plan ``y[b, rest] = sum_in x[b, in] * W[...]`` over the weight's factors.

    Args:
        weight: a factorized tensor whose reconstruction has modes ``tensor_shape``
            (``shape`` for plain tensors).
        in_modes: positions of the modes contracted with the input, in the
            input's order.
        batch: the batch size to plan for.

    Returns:
        ``(plan, input sizes, output sizes)``; the plan takes ``(x, *operands)``
        with ``x`` of shape ``(batch, *input sizes)`` and returns
        ``(batch, *output sizes)``.
    """
    equation, shapes = weight_shapes(weight)
    sizes = weight.tensor_shape if isinstance(weight, TensorizedTensor) else weight.shape
    full, in_sizes, out_sizes = _input_equation(equation, tuple(sizes), tuple(in_modes))
    # No intermediate-size limit: activations may be larger than any input, and the
    # cheapest order (possibly rebuilding the weight first) is what the FLOP count says.
    return plan_einsum(full, (batch, *in_sizes), *shapes, memory_limit=None), in_sizes, out_sizes


@torch._dynamo.assume_constant_result
def _input_equation(
    equation: str, sizes: tuple[int, ...], in_modes: tuple[int, ...]
) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    lhs, out = equation.split("->")
    b = _free_letter(equation)
    x_letters = "".join(out[m] for m in in_modes)
    rest = "".join(c for i, c in enumerate(out) if i not in in_modes)
    in_sizes = tuple(sizes[m] for m in in_modes)
    out_sizes = tuple(s for i, s in enumerate(sizes) if i not in in_modes)
    return f"{b}{x_letters},{lhs}->{b}{rest}", in_sizes, out_sizes


_MSG_DTYPE: Final = (
    "a factorized contraction got an input of dtype {x} and a weight of dtype {w}: like "
    "F.linear, it does not mix them.\nFix: cast one of them, e.g. x.to({w}) or module.to({x})."
)


def _autocast(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # pragma: no cover - torch < 2.4 takes no device type
        return bool(torch.is_autocast_enabled())


def _check_dtype(x: torch.Tensor, operands: Sequence[torch.Tensor]) -> None:
    """The input and the weight share a dtype (the weight's own operands are promoted)."""
    dtype, weight = x.dtype, common_dtype(operands)
    if weight is not dtype and not _autocast(x.device.type):
        raise RuntimeError(_MSG_DTYPE.format(x=dtype, w=weight))


def matrix_layout(
    equation: str, shapes: tuple[tuple[int, ...], ...], *, symbolic: bool, bias: bool
) -> Layout:
    """An input plan's layout: ``x`` as a (rows, features) matrix, the result as one too.

    With ``symbolic`` the number of rows is left to run time (a traced graph, a batch bucket).
    """
    inputs, out = equation.split("->")
    terms = inputs.split(",")
    groups = ((1, len(terms[0]) - 1), *(tuple(1 for _ in t) for t in terms[1:]))
    return Layout(
        shapes,
        groups=groups,
        want=(out, (1, len(out) - 1)),
        symbolic=out[0] if symbolic else None,
        bias=bias,
    )


@torch._dynamo.assume_constant_result
def _traced_input_program(
    equation: str, shapes: tuple[tuple[int, ...], ...], steps: tuple[Any, ...], bias: bool
) -> tuple[tuple[Any, ...], Any]:
    # Constant in its arguments: torch.compile runs it at trace time (no emitter in the graph).
    made = program(equation, steps, matrix_layout(equation, shapes, symbolic=True, bias=bias))
    return made.stmts, made.result


def contract_input(
    x: torch.Tensor,
    weight: FactorizedTensor,
    in_modes: tuple[int, ...],
    n_in_dims: int,
    out_shape: tuple[int, ...] | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Contract the last ``n_in_dims`` dims of ``x`` with the weight modes ``in_modes``.

    Leading dims of ``x`` are batch dims and are kept; the result's trailing
    dims are the weight's remaining modes (or ``out_shape``, their merged sizes); ``bias``
    (broadcast over them) is added.
    """
    sizes = weight.tensor_shape if isinstance(weight, TensorizedTensor) else weight.shape
    lead = x.shape[:-n_in_dims]
    operands = weight.contraction()[1]
    if is_tracing(x):
        # The traced renderer of the engine's program: GEMMs on views with a symbolic number
        # of rows, the optional bias fused into the last GEMM when it can be.
        plan, in_sizes, out_sizes = input_plan(weight, in_modes, traced_batch())
        if not isinstance(x, torch.fx.Proxy):
            operands = list(promote(operands))  # dtypes are known under dynamo
        with_bias = bias is not None
        stmts, result = _traced_input_program(plan.equation, plan.shapes, plan.steps, with_bias)
        y = replay(stmts, result, (x.reshape(-1, math.prod(in_sizes)), *operands, bias))
        out = out_sizes if out_shape is None else out_shape
        return y.reshape(lead + out)  # type: ignore[no-any-return]
    in_features = math.prod([sizes[m] for m in in_modes])
    batch = batch_bucket(x.numel() // max(in_features, 1))
    # By content: a stacked layer's sub-weights are new objects (with equal plans) each call.
    key = ("input", weight._plan.equation, weight._plan.shapes, in_modes, batch)
    entry = cached(key, input_plan, weight, in_modes, batch)
    planned: ContractionPlan = entry[0]
    in_sizes, out_sizes = entry[1], entry[2]
    rows = x.reshape((-1,) + in_sizes)
    y = planned.same_dtype(rows, *operands)
    if y is None:  # the weight's operands are promoted together; the input must match them
        _check_dtype(x, operands)
        y = planned(rows, *operands)
    y = y.reshape(lead + (out_sizes if out_shape is None else out_shape))
    return y if bias is None else y + bias


# ------------------------------------------------------------------------ eager fast path
# A layer's eager forward, once per (input shape, batch bucket), is compiled into one generated
# function around the engine's program for its plan (``tfx.tensors._contract.program``, its
# eager rendering inlined, so no extra call): it checks in a few attribute reads that
# nothing it depends on changed (the weight object and its plan, hooks, dtype), reads the
# factors straight from the modules' parameter dicts, and runs the planned steps with every
# size precomputed. Parameters are read on every call, never cached, so in-place optimizer
# steps, ``load_state_dict``, ``.to()`` and re-registered parameters are always seen.

_TRANSFORMS = ("[0]", "[..., 0]", "[0, :, 0]")


class FastCache(dict):
    """A layer's fast-path entries by input shape, plus ``programs`` by (plan, bucket, ...).

    Generated functions cannot be pickled or deep-copied meaningfully (they hold the weight
    they were made for), so copies and unpickled layers start with an empty cache.
    """

    def __init__(self) -> None:
        super().__init__()
        self.programs: dict[Any, Any] = {}

    def clear(self) -> None:
        """Forget every entry and program."""
        super().clear()
        self.programs.clear()

    def __reduce__(self) -> tuple[Any, ...]:
        return (FastCache, ())


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.data_ptr() == b.data_ptr()
        and a.device == b.device
    )


def operand_sources(weight: FactorizedTensor) -> tuple[list[str], list[str]] | None:
    """Code reading ``weight.contraction()[1]`` from ``w`` without its Python-level methods.

    Returns ``(setup lines, one expression per operand)``, checked against
    ``contraction()`` now; None when an operand is not a stored tensor or a fixed index of one.
    """
    try:
        operands = weight.contraction()[1]
    except (AttributeError, NotImplementedError):
        return None
    if getattr(weight, "_complex", False):
        return None
    stored: list[tuple[str, torch.Tensor]] = []
    setup: list[str] = []
    for name, param in weight._parameters.items():
        if param is not None:
            stored.append((f"w._parameters[{name!r}]", param))
    for name, value in weight.__dict__.items():
        if isinstance(value, torch.Tensor):
            stored.append((f"w.__dict__[{name!r}]", value))
    factors = weight._modules.get("factors")
    if factors is not None:
        from ..tensors._factor_list import FactorList

        if type(factors) is not FactorList:
            return None
        setup.append("fl = w._modules['factors']")
        for key in factors._keys:
            if key in factors._parameters:
                param = factors._parameters[key]
                stored.append((f"fl._parameters[{key!r}]", param))  # type: ignore[arg-type]
            elif isinstance(factors._views.get(key), torch.Tensor):
                stored.append((f"fl._views[{key!r}]", factors._views[key]))
    exprs = []
    for op in operands:
        found = next((expr for expr, t in stored if t is op), None)
        if found is None:
            for expr, t in stored:
                for index in _TRANSFORMS:
                    try:
                        view = eval(f"t{index}", {"t": t})  # noqa: S307 - a literal index
                    except IndexError:
                        continue
                    if _same_view(view, op):
                        found = expr + index
                        break
                if found is not None:
                    break
        if found is None:
            return None
        exprs.append(found)
    return setup, exprs


def compile_linear(
    layer: Any,
    weight: FactorizedTensor,
    in_modes: tuple[int, ...],
    batch: int,
    x_ndim: int,
    implementation: str,
) -> Any:
    """Generated ``run(x, layer, out_shape)`` for a ``FactorizedLinear``-like layer, or None.

    ``layer`` has ``weight``, ``bias``, ``training`` and ``checkpointing``; ``run`` returns None
    when the fast path does not apply (hooks, a new weight or plan, mixed dtypes, checkpointing
    while training), and the caller takes the general path.
    """
    from torch.nn.modules import module as torch_module

    sources = operand_sources(weight)
    if sources is None:
        return None
    setup, exprs = sources
    n_in = (
        math.prod(weight.tensor_shape[m] for m in in_modes)
        if isinstance(weight, TensorizedTensor)
        else weight.shape[1]
    )
    factorized = implementation != "reconstructed"
    names = [f"o{i + factorized}" for i in range(len(exprs))]  # o0 is the input when factorized
    body = [
        "w = layer._modules['weight']",
        "if type(w) is not CLS or w is not W or w._plan is not PLAN or w._forward_hooks "
        "or w._forward_pre_hooks or HOOKS or PRE_HOOKS "
        "or (layer.training and layer.checkpointing):",
        "    return None",
        *setup,
        *(f"{n} = {e}" for n, e in zip(names, exprs, strict=True)),
        # Mixed dtypes: the general path promotes the weight's operands or rejects the input.
        "if " + " or ".join(f"{n}.dtype is not x.dtype" for n in names) + ":",
        "    return None",
        # Where the bias lives now (a KeyError once it moves sends the caller to the general path).
        "bias = layer._parameters['bias']"
        if "bias" in layer._parameters
        else "bias = layer.__dict__['bias']",
    ]
    if x_ndim != 2:
        body.append(f"x = x.reshape(-1, {n_in})")
    if factorized:
        plan = input_plan(weight, in_modes, batch)[0]
        # Bucket 1 holds batch 1 only: its row count is fixed; other buckets share one program.
        layout = matrix_layout(plan.equation, plan.shapes, symbolic=batch > 1, bias=True)
        body += ["o0 = x", *program(plan.equation, plan.steps, layout).lines("y")]
    else:
        plan = weight._plan
        _, out = plan.equation.split("->")
        rows = "".join(c for i, c in enumerate(out) if i not in in_modes)
        cols = "".join(out[m] for m in in_modes)
        layout = Layout(plan.shapes, want=(rows + cols, (len(rows), len(cols))))
        body += program(plan.equation, plan.steps, layout).lines("matrix")
        body.append("y = torch.nn.functional.linear(x, matrix, bias)")
    body.append("return y" if x_ndim == 2 else "return y.reshape(out_shape)")
    scope = {
        "CLS": type(weight),
        "W": weight,
        "PLAN": weight._plan,
        "HOOKS": torch_module._global_forward_hooks,
        "PRE_HOOKS": torch_module._global_forward_pre_hooks,
    }
    return make_function("linear_forward", ["x", "layer", "out_shape"], body, scope)
