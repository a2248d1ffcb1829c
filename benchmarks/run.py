"""``make bench``: the layer benchmark (benchmarks/layers.py), the decomposition timings, the planned
layers against dense (benchmarks/profile_check.py: issue 5's minimum speedup), the model
table (benchmarks/models.py, eager; ``--compiled`` adds inductor columns when run alone), then quality.

The quality benchmark (benchmarks/quality.py) factorizes MiniLM and a digits CNN with five
methods at three budgets each and rewrites docs/img/quality*.png and
benchmarks/results/quality.json.

Run: HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/run.py
See benchmarks/README.md for the tltorch comparison and for running each part alone.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import decompose_speed  # noqa: E402
import layers  # noqa: E402
import models  # noqa: E402
import profile_check  # noqa: E402
import quality  # noqa: E402


def main() -> None:
    print("== benchmarks/layers.py: factorized layers vs dense (and tltorch), 1 CPU thread ==")
    layers.main(["--full"])  # issue 3's table and goals, then issue 5's layer list (forward only)
    if hasattr(decompose_speed, "main"):
        print()
        print(
            "== benchmarks/decompose_speed.py: decompositions of a 4096 x 4096 matrix ==",
            flush=True,
        )
        sys.argv = sys.argv[:1]  # decompose_speed parses its own (empty) command line
        decompose_speed.main()
    print()
    print(
        "== benchmarks/profile_check.py: planned layers against dense, with and without a device profile ==",
        flush=True,
    )
    profile_check.main([])
    print()
    print(
        "== benchmarks/models.py: ResNet-50, BERT-base, GPT-2 small factorized at 0.5 / 0.25 / 0.1 "
        "(eager; add --compiled alone) ==",
        flush=True,
    )
    models.main([])
    print()
    print(
        "== benchmarks/quality.py: quality after factorization (MiniLM, digits CNN) ==", flush=True
    )
    quality.main([])


if __name__ == "__main__":
    main()
