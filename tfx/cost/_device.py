"""Device profiles: the constants that turn FLOPs, bytes and kernel counts into seconds.

``seconds = flops / flops_per_s + bytes / bytes_per_s + steps * step_s``: a roofline-style
sum, with a fixed cost per kernel launch (host overhead on a CPU, launch latency on a GPU).
:func:`measure_device` fits the three constants with a short timing run (about a second:
one large matrix product, a matrix-vector product over a layer-sized weight, many tiny
GEMM steps and dense layer calls) and caches them on disk
(``$TFX_CACHE_DIR``, default ``~/.cache/tfx``), keyed by device name, dtype and thread count.

The estimate is coarse by design: it is used to compare a factorized layer with the dense
layer it replaces at the batch size the plan is made for, where the two differ by their
FLOPs, their bytes and their number of kernels.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["DeviceProfile", "measure_device"]

#: Bumped when what is measured changes, so cached profiles of an older kind are measured again.
_VERSION = 2


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    """Throughputs and per-kernel cost of one device and dtype.

    Example:
        >>> profile = DeviceProfile(
        ...     "cpu", "float32", 1, flops_per_s=1e11, bytes_per_s=1e10, step_s=5e-6
        ... )
        >>> round(profile.seconds(2e9, 4e8, 3) * 1e3, 3)   # 20 ms + 40 ms + 0.015 ms
        60.015
    """

    device: str
    dtype: str
    threads: int
    flops_per_s: float
    bytes_per_s: float
    step_s: float
    dense_step_s: float = 0.0

    def seconds(self, flops: float, nbytes: float, steps: int, dense: bool = False) -> float:
        """Estimated time of ``steps`` kernels doing ``flops`` and moving ``nbytes``.

        ``dense``: one ``F.linear`` / ``F.conv`` / gather call, whose host cost is
        ``dense_step_s``.
        """
        launch = self.dense_step_s if dense and self.dense_step_s else self.step_s
        return flops / self.flops_per_s + nbytes / self.bytes_per_s + steps * launch


def _cache_path(device: torch.device, dtype: torch.dtype) -> Path:
    root = Path(os.environ.get("TFX_CACHE_DIR", Path.home() / ".cache" / "tfx"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{os.cpu_count()}"
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    safe = "".join(
        c if c.isalnum() or c in "-_." else "_"
        for c in f"{name}-{str(dtype).replace('torch.', '')}-{threads}"
    )
    return root / "devices" / f"{safe}-v{_VERSION}.json"


def _timed(fn: Any, device: torch.device, repeat: int) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, (time.perf_counter() - start) / repeat)
    return best


def measure_device(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    cache: bool = True,
    refresh: bool = False,
) -> DeviceProfile:
    """Measure (or read from the cache) the :class:`DeviceProfile` of ``device`` for ``dtype``.

    Args:
        device: the device to profile.
        dtype: the weights' dtype.
        cache: read and write the on-disk cache (``$TFX_CACHE_DIR/devices``, default
            ``~/.cache/tfx/devices``).
        refresh: measure again even when a cached profile exists.

    Example:
        >>> profile = measure_device("cpu")          # doctest: +SKIP
        >>> gm = tfx.factorize(
        ...     model, 0.5, example_inputs=(x,), device_profile=profile
        ... )  # doctest: +SKIP
    """
    device = torch.device(device)
    path = _cache_path(device, dtype)
    if cache and not refresh and path.exists():
        try:
            return DeviceProfile(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            pass  # a damaged cache entry is measured again
    big = 2048 if device.type == "cuda" else 512
    a = torch.randn(big, big, device=device, dtype=dtype)
    b = torch.randn(big, big, device=device, dtype=dtype)
    gemm = _timed(lambda: torch.mm(a, b), device, 3 if device.type == "cpu" else 20)
    flops_per_s = 2 * big**3 / gemm
    # Bandwidth as a layer sees it: a matrix-vector product over a weight of typical size
    # (on a CPU it sits in the last-level cache between calls, as a model's weights do not
    # all; an estimate between the two).
    side = 4096 if device.type == "cuda" else 1024
    weight = torch.randn(side, side, device=device, dtype=dtype)
    vector = torch.randn(side, 1, device=device, dtype=dtype)
    gemv = _timed(lambda: torch.mm(weight, vector), device, 20)
    bytes_per_s = side * side * weight.element_size() / gemv
    # The per-kernel cost of what a factorized graph runs: each planned step is a GEMM on
    # views of its operands (a reshape or permute, then mm; see tfx/tensors/_contract.py).
    tiny = torch.randn(4, 4, device=device, dtype=dtype)
    step_s = _timed(lambda: torch.mm(tiny.reshape(4, 4), tiny.t()), device, 200)
    dense_step_s = _timed(lambda: torch.nn.functional.linear(tiny, tiny), device, 200)
    profile = DeviceProfile(
        str(device),
        str(dtype).replace("torch.", ""),
        torch.get_num_threads() if device.type == "cpu" else 0,
        flops_per_s,
        bytes_per_s,
        step_s,
        dense_step_s,
    )
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(dataclasses.asdict(profile), indent=1))
        except OSError:
            pass  # a read-only home: the profile still works, uncached
    return profile
