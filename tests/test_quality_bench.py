"""Smoke test of benchmarks/quality.py (slow: trains the digits CNN); run by ``make test-slow``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def _quality():
    spec = importlib.util.spec_from_file_location(
        "quality_bench", ROOT / "benchmarks" / "quality.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quality_energy_ranks_fit_the_budget():
    quality = _quality()
    layers = {"a": nn.Linear(64, 32), "b": nn.Linear(32, 64), "c": nn.Conv2d(4, 8, 3)}
    budget = 0.3 * sum(m.weight.numel() for m in layers.values())
    ranks = quality.energy_ranks(layers, budget)
    cost = 0
    for name, m in layers.items():
        rows, cols = m.weight.shape[0], m.weight[0].numel()
        cost += rows * cols if ranks[name] is None else ranks[name] * (rows + cols)
    assert cost <= budget


@pytest.mark.slow
def test_quality_quick_digits_run(tmp_path):
    quality = _quality()
    out = tmp_path / "quality.json"
    results = quality.main(
        [
            "--quick",
            "--only",
            "digits",
            "--methods",
            "uniform-svd,energy-svd,tfx",
            "--json",
            str(out),
        ]
    )
    rows = results["digits"]["rows"]
    assert [r["method"] for r in rows] == ["uniform-svd", "energy-svd", "tfx"]
    assert all(r["params"] <= 0.1 * results["digits"]["setup"]["total_params"] + 1 for r in rows)
    assert json.loads(out.read_text())["digits"]["setup"]["dense_accuracy"] > 0.9


def test_quality_whitening_damping_is_restored():
    from tfx.cost import _whiten

    quality = _quality()
    before = _whiten.InputStats.whitening.__defaults__
    with quality.whitening_damping(0.25):
        assert _whiten.InputStats.whitening.__defaults__[-1] == 0.25
        assert _whiten.Whitening.from_covariance.__func__.__defaults__ == (0.25,)
        assert _whiten.DAMPING == 0.25
    assert _whiten.InputStats.whitening.__defaults__ == before
    assert _whiten.DAMPING == before[-1]


def test_quality_docstring_lines_span_the_file():
    quality = _quality()
    every = quality.docstring_lines(10**9)
    picked = quality.docstring_lines(300)
    assert len(picked) == 300 and len(set(picked)) == 300
    assert picked[0] == every[0] and picked[-1] in every[-len(every) // 300 - 1 :]


def test_quality_goals_markdown_marks_goals():
    quality = _quality()
    row = {
        "kept": 0.5,
        "mean_cos": 0.95,
        "p5_cos": 0.9,
        "tune_mean_cos": 0.9,
        "factorize_s": 1.0,
        "batches": 10,
    }
    results = {
        "env": {"date": "today", "line": "machine", "seconds": 60.0},
        "goals": {
            "setup": {
                "in-domain": "a",
                "out-of-domain": "b",
                "padding": "c",
                "heldout": "d",
                "tuning": "e",
            },
            "rows": [
                {**row, "case": "whole-0.5", "source": "in-domain"},
                {**row, "case": "whole-0.5", "source": "out-of-domain", "p5_cos": 0.8},
            ],
            "levers": [{**row, "case": "whole-0.5", "source": "out-of-domain", "lever": "greedy"}],
            "damping": [{**row, "case": "whole-0.5", "damping": 0.1, "default": False}],
        },
    }
    text = quality.goals_markdown(results)
    assert "**missed** (in-domain: met)" in text  # out-of-domain p5 0.80 < 0.85
    assert "strategy='greedy'" in text and "**0.1**" in text
