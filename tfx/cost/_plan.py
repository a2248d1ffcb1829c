"""FactorizationPlan: what the compiler decided, as data (a table, JSON)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ._records import Choice

__all__ = ["FactorizationPlan"]


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


# The note a row gets for its contraction order ('factors' is the default and says nothing).
_ORDER_NOTE = {"reconstruct": "rebuilds weight"}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple) and value and all(isinstance(v, tuple) for v in value):
        return "x".join(str(v).replace(" ", "") for v in value)
    return str(value).replace(" ", "")


@dataclasses.dataclass
class FactorizationPlan:
    """The plan: one :class:`Choice` per site, and the totals.

    Attributes:
        choices: one per site, in graph order.
        total_params_before: the whole model's parameters.
        fixed_params: parameters outside the sites (norms, biases, dense-only layers).
        budget_params: the parameter budget the plan was made for.
        strategy: the allocation strategy.
        capture: the capture path of the model (``'symbolic_trace'``, ``'export'``,
            ``'module_swap'``).
        output_error: with ``verify=True``, the max relative error of the outputs.
        version: the plan format version.
        timings: seconds spent in each stage of the ``factorize`` call that made it.
        notes: what the user should know about the result (e.g. modes frozen by capture).
        emit: how the result was emitted: ``'graph'`` (a ``torch.fx.GraphModule``) or
            ``'modules'`` (the model itself, its layers replaced by ``tfx.nn`` layers).

    Example:
        >>> plan = tfx.plan(model, 0.5, example_inputs=(x,))   # doctest: +SKIP
        >>> print(plan)                                         # doctest: +SKIP
        >>> tfx.factorize(model, plan=FactorizationPlan.from_json(plan.to_json()))  # doctest: +SKIP
    """

    choices: list[Choice]
    total_params_before: int
    fixed_params: int
    budget_params: float
    strategy: str = "auto"
    capture: str = "symbolic_trace"
    output_error: float | None = None
    version: int = 1
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    emit: str = "graph"

    @property
    def total_params_after(self) -> int:
        """Parameters of the factorized model."""
        return self.fixed_params + sum(c.params_after for c in self.choices)

    @property
    def total_flops_before(self) -> int:
        """FLOPs of the sites before (for the example inputs' shapes)."""
        return sum(c.flops_before for c in self.choices)

    @property
    def total_flops_after(self) -> int:
        """FLOPs of the sites after."""
        return sum(c.flops_after for c in self.choices)

    @property
    def total_bytes_before(self) -> int:
        """Estimated memory traffic of the sites before (0 for plans saved without it)."""
        return sum(c.bytes_before for c in self.choices)

    @property
    def total_bytes_after(self) -> int:
        """Estimated memory traffic of the sites after."""
        return sum(c.bytes_after for c in self.choices)

    def choice(self, site: str) -> Choice:
        """The choice made for ``site``.

        Raises:
            PlanMismatchError: the plan has no such site (the message names the closest ones).
        """
        for c in self.choices:
            if c.site == site:
                return c
        import difflib

        from .._errors import PlanMismatchError

        close = difflib.get_close_matches(site, [c.site for c in self.choices], n=3)
        raise PlanMismatchError(
            f"the plan has no site {site!r}"
            + (f"; did you mean {', '.join(map(repr, close))}?" if close else ".")
            + "\nFix: use a name from [c.site for c in plan.choices]."
        )

    # ------------------------------------------------------------------ output
    def table(self) -> str:
        """The plan as an aligned text table with totals."""
        header: tuple[str, ...] = (
            "site",
            "kind",
            "weight",
            "form",
            "tensorized",
            "rank",
            "params",
            "-> after",
            "FLOPs",
            "-> after",
            "bytes",
            "-> after",
            "est. error",
            "note",
        )
        rows: list[tuple[str, ...]] = [
            (
                c.site,
                c.kind,
                "x".join(map(str, c.weight_shape)),
                c.form,
                _fmt(c.tensorized_shape),
                _fmt(c.rank),
                _human(c.params_before),
                _human(c.params_after),
                _human(c.flops_before),
                _human(c.flops_after),
                _human(c.bytes_before),
                _human(c.bytes_after),
                f"{c.error:.3f}",
                " ".join(filter(None, (c.reason, _ORDER_NOTE.get(c.order, "")))),
            )
            for c in self.choices
        ]
        before, after = self.total_params_before, self.total_params_after
        rows.append(
            (
                "TOTAL (model)",
                "",
                "",
                "",
                "",
                "",
                _human(before),
                _human(after),
                _human(self.total_flops_before),
                _human(self.total_flops_after),
                _human(self.total_bytes_before),
                _human(self.total_bytes_after),
                "",
                f"{100 * after / max(before, 1):.1f}% of params",
            )
        )
        if any(
            c.sensitivity is not None for c in self.choices
        ):  # strategy="sensitivity": a column of its own
            header = (*header[:-1], "sens.", header[-1])
            sens = [
                f"{c.sensitivity:.3g}" if c.sensitivity is not None else "-" for c in self.choices
            ] + [""]
            rows = [(*r[:-1], v, r[-1]) for r, v in zip(rows, sens, strict=False)]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        line = "  ".join(f"{{:<{w}}}" for w in widths)
        out = [line.format(*header), line.format(*("-" * w for w in widths))]
        out += [line.format(*r) for r in rows]
        tail = (
            f"capture: {self.capture}, emit: {self.emit}, strategy: {self.strategy}, "
            f"budget: {_human(self.budget_params)} params"
        )
        if self.output_error is not None:
            tail += f", verified max relative output error: {self.output_error:.3g}"
        lines = [*out, tail, *(f"note: {n}" for n in self.notes)]
        if self.timings:
            lines.append("time: " + ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items()))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    # -------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        data = dataclasses.asdict(self)
        data["choices"] = [c.to_dict() for c in self.choices]
        return data

    def to_json(self, **kwargs: Any) -> str:
        """The plan as JSON."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FactorizationPlan:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["choices"] = [Choice.from_dict(c) for c in data["choices"]]
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> FactorizationPlan:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))
