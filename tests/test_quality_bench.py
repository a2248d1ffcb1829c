"""Smoke test of benchmarks/quality.py (slow: trains the digits CNN); run by ``make test-slow``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def _quality():
    spec = importlib.util.spec_from_file_location("quality_bench", ROOT / "benchmarks" / "quality.py")
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
    results = quality.main(["--quick", "--only", "digits", "--methods", "uniform-svd,energy-svd,tfx", "--json", str(out)])
    rows = results["digits"]["rows"]
    assert [r["method"] for r in rows] == ["uniform-svd", "energy-svd", "tfx"]
    assert all(r["params"] <= 0.1 * results["digits"]["setup"]["total_params"] + 1 for r in rows)
    assert json.loads(out.read_text())["digits"]["setup"]["dense_accuracy"] > 0.9
