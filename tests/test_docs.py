"""The documentation stays true: guide examples run, and the site builds strictly.

Each page's ```python blocks are executed in order in one fresh namespace (a
page reads like a session), and ``mkdocs build --strict`` must succeed, so a
renamed function, a changed default or a docstring mkdocstrings cannot parse
fails the suite instead of rotting in the docs. The guide's subfolders
(``guide/layers/``, ``guide/compiler/``) are included.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

import tfx
from tfx.cost import _choose

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDE_PAGES = sorted((DOCS / "guide").rglob("*.md"))
EXAMPLE_PAGES = [DOCS / "index.md", *GUIDE_PAGES]

# A fenced block opened by ```python (not ```pycon, ```text, ...) up to its closing fence.
_PYTHON_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_DIRECTIVE = re.compile(r"^:::\s+(\S+)", re.MULTILINE)


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """The ``python`` code blocks of a Markdown page, with their first line numbers."""
    text = page.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, match.start(1)) + 1, match.group(1))
        for match in _PYTHON_BLOCK.finditer(text)
    ]


def test_guide_pages_exist() -> None:
    names = {page.relative_to(DOCS / "guide").with_suffix("").as_posix() for page in GUIDE_PAGES}
    expected = {
        "factorized-tensors",
        "tensorized-matrices",
        "ranks",
        "complex",
        "initialisation",
        "errors",
        "tltorch-differences",
        # one page per layer, with a runnable example each
        "layers/factorized-linear",
        "layers/factorized-conv",
        "layers/factorized-embedding",
        "layers/trl-tcl",
        "layers/hooks",
        "layers/functional",
        # one page per compiler stage
        "compiler/overview",
        "compiler/capture",
        "compiler/match",
        "compiler/cost-model",
        "compiler/strategies",
        "compiler/plans",
        "compiler/rewrite-and-emit",
    }
    assert expected - names == set()


@pytest.fixture
def registries() -> Iterator[None]:
    """Undo what a page registers (a strategy, a form), so later tests see the stock registries."""
    saved = [
        (registry, dict(registry))
        for registry in (
            _choose._STRATEGIES,
            tfx.FactorizedTensor._factorizations,
            tfx.TensorizedTensor._factorizations,
        )
    ]
    yield
    for registry, content in saved:
        registry.clear()
        registry.update(content)


@pytest.mark.parametrize("page", EXAMPLE_PAGES, ids=lambda p: str(p.relative_to(DOCS)))
@pytest.mark.usefixtures("registries")
def test_docs_examples_run(page: Path) -> None:
    blocks = python_blocks(page)
    assert blocks, f"{page.relative_to(ROOT)} has no ```python example"
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    for line, source in blocks:
        where = f"{page.relative_to(ROOT)}:{line}"
        code = compile(source, where, "exec")
        try:
            exec(code, namespace)
        except Exception as err:
            raise AssertionError(f"the example at {where} failed: {err!r}") from err


def _resolve(path: str) -> object:
    """The object a ``::: dotted.path`` directive documents."""
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def test_api_pages_document_every_public_name() -> None:
    """Every name in ``tfx.__all__`` has a ``:::`` stub; so has each name of a subpackage's."""
    directives = [
        path
        for page in (DOCS / "api").glob("*.md")
        for path in _DIRECTIVE.findall(page.read_text())
    ]
    documented = {id(_resolve(path)) for path in directives}
    missing = []
    for name in tfx.__all__:
        if name == "__version__":
            continue
        value = getattr(tfx, name)
        if isinstance(value, types.ModuleType):
            missing += [
                f"tfx.{name}.{member}"
                for member in value.__all__
                if id(getattr(value, member)) not in documented
            ]
        elif id(value) not in documented:
            missing.append(f"tfx.{name}")
    assert missing == []


def test_nav_lists_every_page() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = [
        path.relative_to(DOCS).as_posix()
        for path in DOCS.rglob("*.md")
        if not any(part.startswith("_") for part in path.relative_to(DOCS).parts)
    ]
    missing = [page for page in pages if page not in config]
    assert missing == []


def test_docs_build_strict(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).parent / "mkdocs"
    if not mkdocs.exists():
        pytest.fail(f"mkdocs is not installed next to {sys.executable}: pip install -e '.[docs]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = f"{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{output}"
    assert (tmp_path / "site" / "index.html").exists()
    for page in ("tensors", "nn", "functional", "compiler"):
        assert (tmp_path / "site" / "api" / page / "index.html").exists()
    assert (tmp_path / "site" / "guide" / "compiler" / "overview" / "index.html").exists()
