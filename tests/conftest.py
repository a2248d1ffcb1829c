"""Shared test set-up: a fixed torch seed per test and the Hypothesis profiles.

Profiles (pick one with ``HYPOTHESIS_PROFILE``, default ``dev``):

* ``ci``: derandomized, 25 examples per property, failing examples printed as blobs.
* ``dev``: random, 50 examples per property.

Torch runs on one thread (``TFX_TEST_THREADS`` overrides): the suite is made of
thousands of tiny contractions and SVDs, for which a second intra-op thread only
adds synchronisation; on the 2-core CI machine one thread makes the suite 2-3x faster.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25, print_blob=True)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

THREADS = int(os.environ.get("TFX_TEST_THREADS", "1"))
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _test_threads() -> Iterator[None]:
    """Every test runs on ``THREADS`` torch threads, whatever the previous one left behind."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Every test starts from the same torch RNG state."""
    torch.manual_seed(0)
