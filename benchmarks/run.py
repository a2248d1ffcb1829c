"""``make bench``: run the benchmarks and write their tables into docs/performance.md.

Each part is a script that also runs alone (see benchmarks/README.md); its markdown report
replaces the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in the page as
soon as the part finishes, so a run cut short keeps the tables it finished:

- ``layers``: benchmarks/layers.py, factorized layers against dense (and tltorch 0.5 when it
  is installed), forward and forward+backward, one CPU thread;
- ``layers-full``: layers.py --only "" --full, the layer sizes of common models, forward only;
- ``decompose``: benchmarks/decompose_speed.py, the decompositions of a 4096 x 4096 matrix;
- ``profile``: benchmarks/profile_check.py, layers planned by tfx.factorize with and without a
  device profile, against dense;
- ``models``: benchmarks/models.py, ResNet-50, BERT-base and GPT-2 small factorized at
  0.5 / 0.25 / 0.1, eager (``models.py --compiled`` alone adds inductor columns);
- ``overhead``: benchmarks/overhead.py, host time of small layers beside their aten ops;
- ``gpu``: benchmarks/gpu.py, only on a machine with CUDA (skipped otherwise);
- ``quality``: benchmarks/quality.py, which writes benchmarks/results/quality.json and
  docs/img/quality*.png (its tables belong to the quality guide, not to this page);
- ``scale``: benchmarks/scale.py, a 1.1B-parameter Llama decoder factorized in each mode
  (about an hour on 2 cores); its table goes into docs/guide/large-models.md;
- ``sequential-quality``: benchmarks/sequential_quality.py, sequential mode against one shot
  on the pretrained MiniLM (a few minutes); its table goes into docs/guide/large-models.md.

Run: HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/run.py [--only layers,models] [--quick]
[--docs FILE | --no-docs]. ``--quick`` passes each script's smoke-run option: rough numbers,
for checking the pipeline, not for the page.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "performance.md"
_BLOCK = re.compile(
    r"(?P<open><!-- bench:(?P<name>[\w-]+) -->\n).*?(?P<close><!-- /bench:(?P=name) -->)",
    re.DOTALL,
)


@dataclass(frozen=True)
class Part:
    """One benchmark: its banner, and ``run(quick)`` returning its markdown report."""

    title: str
    run: Callable[[bool], str | None]
    in_docs: bool = True


def _layers(quick: bool) -> str:
    import layers

    return layers.main(["--quick"] if quick else [])


def _layers_full(quick: bool) -> str:
    import layers

    return layers.main(["--only", "", "--full", *(["--quick"] if quick else [])])


def _decompose(quick: bool) -> str:
    import decompose_speed

    return decompose_speed.main(["--threads", "1"])


def _profile(quick: bool) -> str:
    import profile_check

    return profile_check.main(["--quick"] if quick else [])


def _models(quick: bool) -> str:
    import models

    return models.main(["--quick"] if quick else [])


def _overhead(quick: bool) -> str:
    import overhead

    return overhead.main(["--rounds", "1"] if quick else [])


def _gpu(quick: bool) -> str | None:
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: the GPU table is left as it is")
        return None
    import tempfile

    import gpu

    with tempfile.TemporaryDirectory() as out:
        if gpu.main(["--out", out, *(["--quick"] if quick else [])]) != 0:
            return None
        return Path(out, "gpu.md").read_text()


def _scale(quick: bool) -> None:
    import scale

    if quick:  # a small decoder, not saved: checks the pipeline only
        small = ["--layers", "2", "--hidden", "128", "--intermediate", "352", "--heads", "4"]
        scale.main([*small, "--vocab", "1000", "--tokens", "32", "--batches", "2"])
    else:
        scale.main(["--save"])


def _sequential_quality(quick: bool) -> None:
    import sequential_quality

    sequential_quality.main([] if quick else ["--save"])


def _quality(quick: bool) -> None:
    import quality

    quality.main(["--quick"] if quick else [])


PARTS: dict[str, Part] = {
    "layers": Part("benchmarks/layers.py: factorized layers against dense", _layers),
    "layers-full": Part("benchmarks/layers.py --full: layer sizes of common models", _layers_full),
    "decompose": Part("benchmarks/decompose_speed.py: decompositions, 4096 x 4096", _decompose),
    "profile": Part("benchmarks/profile_check.py: plans with and without a profile", _profile),
    "models": Part("benchmarks/models.py: ResNet-50, BERT-base, GPT-2 small (eager)", _models),
    "overhead": Part("benchmarks/overhead.py: host time of small layers", _overhead),
    "gpu": Part("benchmarks/gpu.py: linear layers on one GPU", _gpu),
    "quality": Part("benchmarks/quality.py: quality after factorization", _quality, False),
    "scale": Part("benchmarks/scale.py: a 1B decoder, time and peak memory", _scale, False),
    "sequential-quality": Part(
        "benchmarks/sequential_quality.py: sequential mode against one shot on MiniLM",
        _sequential_quality,
        False,
    ),
}


def blocks(text: str) -> list[str]:
    """The names of the ``<!-- bench:NAME -->`` blocks of a page, in order."""
    return [m.group("name") for m in _BLOCK.finditer(text)]


def fill(text: str, name: str, content: str) -> str:
    """``text`` with the block ``name`` holding ``content`` (the markers kept).

    Raises:
        KeyError: the page has no block ``name``, or more than one.
    """
    found = [m for m in _BLOCK.finditer(text) if m.group("name") == name]
    if len(found) != 1:
        raise KeyError(
            f"{len(found)} blocks named {name!r}; the page needs exactly one "
            f"'<!-- bench:{name} -->' ... '<!-- /bench:{name} -->' pair"
        )
    m = found[0]
    body = content.strip("\n") + "\n"
    return text[: m.start()] + m.group("open") + body + m.group("close") + text[m.end() :]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    parser.add_argument("--quick", action="store_true", help="each script's smoke-run option")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the page the tables go into")
    parser.add_argument("--no-docs", action="store_true", help="print the tables only")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; the parts are {list(PARTS)}")
    page = None if args.no_docs else args.docs
    if page is not None:
        # Check every block before an hour of timing, not after it.
        missing = [n for n in names if PARTS[n].in_docs and n not in blocks(page.read_text())]
        if missing:
            parser.error(f"{page} has no block for {missing}")
    sys.path.insert(0, HERE)  # the parts import their scripts as modules
    for name in names:
        part = PARTS[name]
        print(f"\n== {part.title} ==", flush=True)
        report = part.run(args.quick)
        if page is not None and part.in_docs and report:
            page.write_text(fill(page.read_text(), name, report))
            print(f"(written into {page}, block {name!r})", flush=True)


if __name__ == "__main__":
    main()
