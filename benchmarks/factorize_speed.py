"""How long ``tfx.factorize`` takes on a BERT-base-sized encoder (random init), per stage.

``python benchmarks/factorize_speed.py [--layers 12] [--budget 0.5]``. Builds a
Hugging Face ``BertModel`` with BERT-base's configuration (about 110M
parameters; random weights, nothing downloaded), factorizes it with
``example_inputs`` of 8 x 128 tokens, and prints the per-stage timings the plan
records. Goal (issue 4): at most 30 s on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--forms", default="svd,tucker,tt,blocktt,cp")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertConfig, BertModel

    import tfx

    torch.manual_seed(0)
    model = BertModel(BertConfig(num_hidden_layers=args.layers)).eval()
    ids = torch.randint(0, 30522, (8, 128))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    n = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    gm = tfx.factorize(
        model,
        args.budget,
        example_inputs=inputs,
        forms=tuple(args.forms.split(",")),
        progress=False,
    )
    total = time.perf_counter() - start
    plan = gm.tfx_plan
    print(
        f"BERT-base-sized encoder ({args.layers} layers, {n / 1e6:.1f}M params), budget {args.budget}: "
        f"{plan.total_params_after / 1e6:.1f}M params after, factorize {total:.1f} s "
        f"(torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f})"
    )
    for stage, seconds in plan.timings.items():
        print(f"  {stage:<22} {seconds:7.2f} s")


if __name__ == "__main__":
    main()
