"""A griffe extension that adapts tfx's docstrings to mkdocstrings' Markdown.

Two conventions of tfx's docstrings are not what griffe's Google parser and
Markdown expect; this extension rewrites them as each object is loaded, for
the rendered site only (tfx's sources are unchanged):

* ``Example:`` sections. STYLE.md and ruff's Google convention accept both
  ``Example:`` and ``Examples:``; griffe only recognises ``Examples:`` and
  renders ``Example:`` as an admonition of plain Markdown, where ``>>>``
  lines become nested block quotes. The header is renamed so the doctests
  render as code.
* Sphinx roles such as ``:class:`~tfx.RankError``` or ``:meth:`new```, which
  Markdown would print verbatim. They become inline code (the last dotted
  component when the target starts with ``~``, as Sphinx shows it).
* Grouped arguments, ``device, dtype: of the parameters.`` in an ``Args:``
  section: one entry documenting several parameters that share a meaning, as
  numpydoc allows and as tltorch's signatures invite. griffe's Google parser
  takes ``device, dtype`` for one (unknown) parameter name and warns, which
  fails ``mkdocs build --strict``; each name gets its own entry, with the
  shared description.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE_HEADER = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_SPHINX_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|obj|exc|data):`(~?)([^`]+)`")
_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Attributes):\s*$")
_GROUPED = re.compile(r"^(\s+)([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)+)\s*:(.*)$")


def _role_as_code(match: re.Match[str]) -> str:
    target = match.group(2)
    if match.group(1):
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _split_grouped(text: str) -> str:
    """Give each name of a grouped ``a, b: description`` entry its own entry."""
    lines = text.splitlines()
    out: list[str] = []
    section: int | None = None  # indent of the current Args-like header
    i = 0
    while i < len(lines):
        line = lines[i]
        header = _SECTION.match(line)
        if header:
            section = len(header.group(1))
        elif line.strip() and section is not None and _indent(line) <= section:
            section = None
        grouped = _GROUPED.match(line) if section is not None else None
        if grouped is None or _indent(line) <= section:  # type: ignore[operator]
            out.append(line)
            i += 1
            continue
        indent, names, first = grouped.groups()
        body = [first]
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(indent)):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            i -= 1
            body.pop()
        for name in (n.strip() for n in names.split(",")):
            out.append(f"{indent}{name}:{body[0]}")
            out.extend(body[1:])
    return "\n".join(out)


class TfxDocstrings(griffe.Extension):
    """Rewrite ``Example:`` headers, Sphinx roles and grouped arguments in every docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of each object as it is loaded."""
        if obj.docstring is not None:
            text = _EXAMPLE_HEADER.sub(r"\1Examples:", obj.docstring.value)
            text = _SPHINX_ROLE.sub(_role_as_code, text)
            obj.docstring.value = _split_grouped(text)
