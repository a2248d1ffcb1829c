"""CUDA check of the core and the layers: correctness on the GPU, then a short timing table.

Self-contained: run from the repository root on a machine with one GPU,
``PYTHONPATH=. python benchmarks/gpu_check.py [--out DIR]``. Prints (and writes
to ``DIR/gpu_check.txt``) one line per check and a timing table of a 4096 x 4096
linear at about 10% of its parameters, fp32 and bf16, against ``nn.Linear``.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

import torch

import tfx

LINES: list[str] = []


def say(line: str) -> None:
    LINES.append(line)
    print(line, flush=True)


def check(name: str, fn) -> None:
    try:
        detail = fn()
        say(f"PASS {name}" + (f"  {detail}" if detail else ""))
    except Exception as err:  # noqa: BLE001
        say(f"FAIL {name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        traceback.print_exc()


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-9) -> str:
    err = float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)
    if not err <= tol:
        raise AssertionError(f"relative error {err:.3g} > {tol}")
    return f"rel.err {err:.1e}"


def core_checks(dev: torch.device) -> None:
    d = torch.float64
    for form in tfx.tensors.available():

        def plain(form=form):
            t = tfx.FactorizedTensor.new(
                (6, 7, 8), rank=0.5, factorization=form, device=dev, dtype=d
            )
            full = t.to_tensor()
            assert full.device.type == dev.type, full.device
            idx = torch.tensor([5, 0, 3], device=dev)
            out = []
            for index in [2, (slice(1, 5, 2), 3), (idx,), (1, idx, 0), (..., idx)]:
                got = t[index]
                got = got.to_tensor() if isinstance(got, tfx.FactorizedTensor) else got
                out.append(close(got, full[index]))
            return out[-1]

        check(f"core plain {form} (CUDA indexing)", plain)
    for form in tfx.tensors.available(tensorized=True):

        def tensorized(form=form):
            t = tfx.TensorizedTensor.new(
                (3, (4, 3, 2), (5, 3, 2)), rank=0.5, factorization=form, device=dev, dtype=d
            )
            full = t.to_matrix()
            idx = torch.tensor([1, 7, 20], device=dev)
            for index in [1, (1, 5), (0, slice(None), 7), (slice(None), idx), (2, slice(2, 20, 3))]:
                got = t[index]
                got = (
                    got.to_matrix()
                    if isinstance(got, tfx.TensorizedTensor)
                    else got.to_tensor()
                    if isinstance(got, tfx.FactorizedTensor)
                    else got
                )
                close(got, full[index])
            m = torch.randn(
                24, 30, device=dev, dtype=torch.complex128 if form.startswith("Complex") else d
            )
            full_rank = {
                "BlockTT": 10**6,
                "ComplexBlockTT": 10**6,
                "TT": 10**6,
                "ComplexTT": 10**6,
                "Tucker": (4, 3, 2, 5, 3, 2),
                "ComplexTucker": (4, 3, 2, 5, 3, 2),
            }.get(form, "same")
            if form in ("CP", "ComplexCP"):
                back = tfx.TensorizedTensor.from_matrix(
                    m, (24,), (30,), rank=24, factorization=form
                )
            else:
                back = tfx.TensorizedTensor.from_matrix(
                    m, (4, 3, 2), (5, 3, 2), rank=full_rank, factorization=form
                )
            assert back.to_matrix().device.type == dev.type
            return close(back.to_matrix(), m, 1e-8)

        check(f"core tensorized {form} (CUDA indexing, full-rank from_matrix)", tensorized)


def layer_checks(dev: torch.device) -> None:
    F = torch.nn.functional
    for dtype, tol in [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)]:
        for form in ["cp", "tucker", "tt", "blocktt", "dense"]:

            def linear(form=form, dtype=dtype, tol=tol):
                layer = tfx.FactorizedLinear(
                    (16, 16, 16),
                    (16, 16, 16),
                    factorization=form,
                    rank=0.1,
                    device=dev,
                    dtype=dtype,
                )
                x = torch.randn(64, 4096, device=dev, dtype=dtype)
                ref = F.linear(x.float(), layer.weight.to_matrix().float(), layer.bias.float())
                return close(layer(x).float(), ref, tol)

            check(f"FactorizedLinear {form} {dtype}", linear)
        for form in ["cp", "tucker", "tt"]:
            for impl in ["factorized", "reconstructed"] + (["mobilenet"] if form == "cp" else []):

                def conv(form=form, impl=impl, dtype=dtype, tol=tol):
                    layer = tfx.FactorizedConv(
                        64,
                        128,
                        3,
                        order=2,
                        padding=1,
                        stride=2,
                        factorization=form,
                        rank=0.3,
                        implementation=impl,
                        bias=True,
                        device=dev,
                        dtype=dtype,
                    )
                    x = torch.randn(8, 64, 32, 32, device=dev, dtype=dtype)
                    ref = F.conv2d(
                        x.float(),
                        layer.weight.to_tensor().float(),
                        layer.bias.float(),
                        stride=2,
                        padding=1,
                    )
                    return close(layer(x).float(), ref, tol)

                check(f"FactorizedConv {form}/{impl} {dtype}", conv)
        for form in ["blocktt", "cp", "tucker", "tt"]:

            def emb(form=form, dtype=dtype, tol=tol):
                layer = tfx.FactorizedEmbedding(
                    100000,
                    256,
                    factorization=form,
                    rank={"cp": 64, "tucker": 0.05}.get(form, 16),
                    device=dev,
                    dtype=dtype,
                )
                idx = torch.randint(0, 100000, (32, 128), device=dev)
                got = layer(idx)
                ref = layer.weight.to_matrix()[idx]
                return close(got.float(), ref.float(), tol)

            check(f"FactorizedEmbedding {form} {dtype} (CUDA indices)", emb)

    def compiled():
        layer = tfx.FactorizedLinear(
            (16, 16, 16), (16, 16, 16), factorization="blocktt", rank=0.1, device=dev
        )
        emb = tfx.FactorizedEmbedding(100000, 256, rank=16, device=dev)
        x, idx = torch.randn(64, 4096, device=dev), torch.randint(0, 100000, (4, 64), device=dev)
        a = torch.compile(layer, fullgraph=True)(x)
        b = torch.compile(emb, fullgraph=True)(idx)
        close(b, emb(idx), 1e-4)
        return close(a, layer(x), 1e-4)

    check("torch.compile(fullgraph=True, inductor) on CUDA: linear + embedding", compiled)

    def factorize():
        model = torch.nn.Sequential(
            torch.nn.Linear(512, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 512)
        ).to(dev)
        gm = tfx.factorize(
            model, 0.3, example_inputs=(torch.randn(16, 512, device=dev),), progress=False
        )
        devices = {p.device.type for p in gm.parameters()}
        assert devices == {dev.type}, devices
        return (
            f"params {sum(p.numel() for p in gm.parameters())}/"
            f"{sum(p.numel() for p in model.parameters())}, "
            f"out.err {gm.tfx_plan.output_error:.3f}"
        )

    check("tfx.factorize on CUDA keeps the device", factorize)


def bench(fn, warmup: int = 5, iters: int = 50) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def timing(dev: torch.device) -> None:
    say("\n| dtype | batch | dense ms | low-rank ms (x) | tucker ms (x) | blocktt ms (x) |")
    say("|---|---|---|---|---|---|")
    n = 4096
    r = round(0.1 * n * n / (2 * n + 1))
    for dtype in (torch.float32, torch.bfloat16):
        dense = torch.nn.Linear(n, n, device=dev, dtype=dtype)
        layers = {
            "low-rank": tfx.FactorizedLinear(
                (n,),
                (n,),
                factorization="cp",
                rank=r,
                device=dev,
                dtype=dtype,
                implementation="auto",
            ),
            **{
                form: tfx.FactorizedLinear(
                    (16, 16, 16),
                    (16, 16, 16),
                    factorization=form,
                    rank=0.1,
                    device=dev,
                    dtype=dtype,
                    implementation="auto",
                )
                for form in ("tucker", "blocktt")
            },
        }
        for batch in (1, 32, 2048):
            x = torch.randn(batch, n, device=dev, dtype=dtype)
            with torch.no_grad():
                base = bench(lambda dense=dense, x=x: dense(x))
                cells = []
                for layer in layers.values():
                    t = bench(lambda layer=layer, x=x: layer(x))
                    cells.append(f"{t:.3f} ({base / t:.2f}x)")
            say(
                f"| {str(dtype).split('.')[-1]} | {batch} | {base:.3f} | "
                + " | ".join(cells)
                + " |"
            )
    say(
        "params: "
        + ", ".join(
            f"{k} {sum(p.numel() for p in v.parameters()) / (n * n + n):.3f}"
            for k, v in layers.items()
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    dev = torch.device("cuda")
    say(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, tfx {tfx.__version__}")
    start = time.time()
    core_checks(dev)
    # fp32 references must not run on TF32 tensor cores (cuDNN convolutions default to TF32).
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    layer_checks(dev)
    torch.backends.cudnn.allow_tf32 = True
    timing(dev)
    n_fail = sum(line.startswith("FAIL") for line in LINES)
    say(
        f"\n{sum(line.startswith('PASS') for line in LINES)} "
        f"passed, {n_fail} failed in {time.time() - start:.0f} s"
    )
    if args.out:
        with open(f"{args.out}/gpu_check.txt", "w") as fh:
            fh.write("\n".join(LINES) + "\n")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
