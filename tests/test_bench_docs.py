"""docs/performance.md holds the tables ``make bench`` writes (benchmarks/run.py), nothing typed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "performance.md"


def _run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_block_of_the_performance_page_has_a_benchmark_and_back() -> None:
    run = _run()
    names = run.blocks(PAGE.read_text())
    assert len(names) == len(set(names))
    assert set(names) == {name for name, part in run.PARTS.items() if part.in_docs}


def test_fill_replaces_the_named_block_only() -> None:
    run = _run()
    text = (
        "intro\n<!-- bench:a -->\nold a\n<!-- /bench:a -->\nmiddle\n"
        "<!-- bench:b -->\nold b\n<!-- /bench:b -->\nend\n"
    )
    filled = run.fill(text, "a", "| new | table |\n")
    assert filled == text.replace("old a", "| new | table |")
    assert run.fill(filled, "a", "| new | table |") == filled  # idempotent


def test_fill_refuses_a_page_without_the_block() -> None:
    run = _run()
    with pytest.raises(KeyError, match=r"0 blocks named 'models'.*<!-- bench:models -->"):
        run.fill("no blocks here\n", "models", "table")


def test_run_checks_the_page_before_timing_anything(tmp_path: Path) -> None:
    run = _run()
    page = tmp_path / "performance.md"
    page.write_text("<!-- bench:layers -->\n<!-- /bench:layers -->\n")
    with pytest.raises(SystemExit):
        run.main(["--only", "layers,models", "--docs", str(page)])
