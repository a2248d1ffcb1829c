"""Layer tests run their tiny float64 kernels on one thread.

On a loaded two-core machine torch's intra-op pool spends far longer waking
threads than computing a 2x3x6x6 convolution (12 ms vs 10 us measured), which
made gradcheck take minutes. Results do not depend on the thread count.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
