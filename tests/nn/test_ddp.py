"""DistributedDataParallel over 2 CPU processes (gloo) trains like one process on the whole batch.

Each rank runs 3 SGD steps on its half of a batch; DDP averages the
gradients, and the loss is a mean, so the parameters must end where a
single process lands after the same steps on the concatenated batch. The
two processes are started by the test itself (torch.multiprocessing.spawn).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import tfx

FORMS = ["CP", "ComplexCP"]
WORLD = 2
STEPS = 3


def _model(form: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        tfx.FactorizedLinear((2, 4), (3, 2), factorization=form, rank=4, dtype=torch.float64),
        tfx.FactorizedLinear(
            (3, 2), (2, 2), factorization=form, rank=3, bias=False, dtype=torch.float64
        ),
    )


def _batch(form: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    dtype = torch.complex128 if form.startswith("Complex") else torch.float64
    x = torch.randn(8, 8, dtype=dtype, generator=generator)
    y = torch.randn(8, 4, dtype=torch.float64, generator=generator)
    return x, y


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(STEPS):
        optimizer.zero_grad()
        out = model(x)
        out = out.real if out.is_complex() else out
        nn.functional.mse_loss(out, y).backward()
        optimizer.step()


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        for form in FORMS:
            model = _model(form)
            x, y = _batch(form)
            half = x.shape[0] // WORLD
            rows = slice(rank * half, (rank + 1) * half)
            _train(nn.parallel.DistributedDataParallel(model), x[rows], y[rows])
            torch.save(model.state_dict(), Path(out_dir) / f"{form}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return out_dir


@pytest.mark.parametrize("form", FORMS)
def test_ddp_two_processes_match_one_process_on_the_whole_batch(
    form: str, ddp_results: Path
) -> None:
    single = _model(form)
    initial = {k: v.clone() for k, v in single.state_dict().items()}
    _train(single, *_batch(form))
    for rank in range(WORLD):
        trained = torch.load(ddp_results / f"{form}-rank{rank}.pt", weights_only=True)
        assert trained.keys() == single.state_dict().keys()
        for name, value in single.state_dict().items():
            torch.testing.assert_close(trained[name], value, msg=f"rank {rank}: {name}")
            assert not torch.equal(trained[name], initial[name]), f"{name} did not train"
