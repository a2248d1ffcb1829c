"""Device profiles: measurement and cache, time estimates, and plans not slower than dense."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import tfx
from tfx.cost import DeviceProfile, SiteInfo, candidates, measure_device
from tfx.cost._flops import order_costs


def test_measure_device_caches_on_disk(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("TFX_CACHE_DIR", str(tmp_path))
    profile = measure_device("cpu")
    assert profile.flops_per_s > 0 and profile.bytes_per_s > 0 and profile.step_s > 0
    files = list((tmp_path / "devices").glob("*.json"))
    assert len(files) == 1
    assert DeviceProfile(**json.loads(files[0].read_text())) == profile
    # read back, not measured again: a doctored cache entry comes back as written
    doctored = {**json.loads(files[0].read_text()), "step_s": 123.0}
    files[0].write_text(json.dumps(doctored))
    assert measure_device("cpu").step_s == 123.0
    assert measure_device("cpu", refresh=True).step_s != 123.0
    files[0].write_text("not json")  # a damaged entry is measured again
    assert measure_device("cpu").step_s > 0


def test_seconds_is_the_roofline_sum() -> None:
    p = DeviceProfile("cpu", "float32", 1, flops_per_s=1e9, bytes_per_s=1e8, step_s=1e-3)
    assert p.seconds(2e9, 1e8, 4) == pytest.approx(2.0 + 1.0 + 0.004)


def test_option_seconds_price_its_order_and_kernels() -> None:
    site = SiteInfo("fc", "linear", (256, 128), tokens=64)
    weight = torch.randn(256, 128)
    profile = DeviceProfile("cpu", "float32", 1, flops_per_s=1e10, bytes_per_s=1e9, step_s=1e-5)
    for option in [
        o
        for o in candidates(site, weight, forms=("svd", "tucker"), profile=profile)
        if o.form != "dense"
    ]:
        costs = order_costs(site, option)
        times = {k: profile.seconds(c.flops, c.elements * 4, c.steps) for k, c in costs.items()}
        assert option.order in times
        assert option.seconds == pytest.approx(times[option.order])
        assert option.seconds <= min(times.values()) * (1 + 1e-12)  # the faster order
        assert option.steps == costs[option.order].steps >= 2


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 128)).eval()


def test_plan_leaves_out_options_slower_than_dense() -> None:
    """A profile where each kernel launch costs a second: every factorized option (two or more
    kernels) is slower than the dense layer (one), so at a budget dense fits, nothing is
    factorized."""
    slow_launch = DeviceProfile("cpu", "float32", 1, flops_per_s=1e12, bytes_per_s=1e12, step_s=1.0)
    x = torch.randn(8, 128)
    plan = tfx.plan(_mlp(), 1.0, example_inputs=(x,), device_profile=slow_launch, progress=False)
    assert all(c.form == "dense" for c in plan.choices)
    assert all(c.seconds_after == c.seconds_before > 0 for c in plan.choices)
    # at 0.5 the budget forces factorized options: they are taken, and the plan says so
    tight = tfx.plan(_mlp(), 0.5, example_inputs=(x,), device_profile=slow_launch, progress=False)
    assert any(c.form != "dense" for c in tight.choices)
    assert any("slower than their dense" in n for n in tight.notes)
    assert any("x dense time" in c.reason for c in tight.choices if c.form != "dense")


class _TwoBranches(nn.Module):
    """``big`` sees 4096 rows per call, ``small`` one; ``small``'s weight is exactly rank 8."""

    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Linear(128, 256, bias=False)
        self.small = nn.Linear(128, 256, bias=False)
        with torch.no_grad():
            self.small.weight.copy_(torch.randn(256, 8) @ torch.randn(8, 128) / 8)

    def forward(self, many: torch.Tensor, one: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.big(many), self.small(one)


def test_profile_moves_compression_to_where_it_is_faster() -> None:
    """Without a profile the budget is met by compressing ``small`` (exact at rank 8). On a
    device where a kernel launch costs a millisecond, ``small``'s factorized forms (one row,
    two or more kernels) are slower than its dense layer, so ``big`` is compressed instead."""
    model = _TwoBranches().eval()
    inputs = (torch.randn(4096, 128), torch.randn(1, 128))
    budget = 2 * 256 * 128 - 256 * 128 // 2
    plain = tfx.plan(model, budget, example_inputs=inputs, forms=("svd",), progress=False)
    assert plain.choice("small").form == "svd" and plain.choice("big").form == "dense"
    device = DeviceProfile("cpu", "float32", 1, flops_per_s=1e9, bytes_per_s=1e12, step_s=1e-3)
    timed = tfx.plan(
        model, budget, example_inputs=inputs, forms=("svd",), device_profile=device, progress=False
    )
    assert timed.choice("small").form == "dense" and timed.choice("big").form == "svd"
    assert timed.choice("big").seconds_after < timed.choice("big").seconds_before
    assert timed.total_params_after <= budget


def test_plan_with_a_fast_device_keeps_factorizing() -> None:
    """Kernels cost nothing, FLOPs everything: low-rank options are faster than dense and stay."""
    flops_bound = DeviceProfile("cpu", "float32", 1, flops_per_s=1e9, bytes_per_s=1e15, step_s=0.0)
    x = torch.randn(64, 128)
    plan = tfx.plan(_mlp(), 0.5, example_inputs=(x,), device_profile=flops_bound, progress=False)
    factorized = [c for c in plan.choices if c.form != "dense"]
    assert factorized and all(c.seconds_after < c.seconds_before for c in factorized)
    assert not any("slower" in n for n in plan.notes)
    gm = tfx.factorize(_mlp(), plan=plan, progress=False)
    assert sum(p.numel() for p in gm.parameters()) == plan.total_params_after
