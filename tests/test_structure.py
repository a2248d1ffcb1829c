"""The package's seams: no module reaches into another package's private names.

A name starting with ``_`` is private to its package (``tfx.tensors``, ``tfx.cost``,
``tfx.passes``, ...): another package imports the public name that replaces it (the form
specs of ``tfx.tensors.form_spec``, ``plan_einsum``, ``tfx.cost.penalty``, ...). Private
*modules* of a package may be imported by their public names (``from ..tensors._decompose
import cp_als``): what is private is the underscore name.
"""

from __future__ import annotations

import ast
import pathlib

import tfx

ROOT = pathlib.Path(tfx.__file__).parent


def _package(path: pathlib.Path) -> pathlib.Path:
    return path.parent


def _target(path: pathlib.Path, node: ast.ImportFrom) -> pathlib.Path:
    base = path.parent
    for _ in range(node.level - 1):
        base = base.parent
    for part in (node.module or "").split("."):
        if part:
            base = base / part
    return base if base.is_dir() else base.parent


def _reach_ins() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            private = [
                a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")
            ]
            # importing a private *module* of a package (``from ..tensors import _init``) is
            # allowed: it names a module, not a private object
            target = _target(path, node)
            private = [n for n in private if not (target / n).is_dir()]
            private = [n for n in private if not (target / f"{n}.py").exists()]
            if private and target != _package(path):
                where = path.relative_to(ROOT.parent)
                found.append(f"{where}: from {'.' * node.level}{node.module or ''} {private}")
    return found


def test_no_module_imports_another_packages_private_names() -> None:
    assert _reach_ins() == []


def test_the_check_sees_a_reach_in() -> None:
    # the walker resolves relative imports: a private name of a sibling package is found
    fake = ROOT / "cost" / "_flops.py"
    node = ast.parse("from ..tensors._cp import _private").body[0]
    assert isinstance(node, ast.ImportFrom)
    assert _target(fake, node) == ROOT / "tensors"
    assert _target(fake, node) != _package(fake)
