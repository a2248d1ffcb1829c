"""Pieces the benchmark scripts share: the machine they ran on, the report's first line and
its output, and TT ranks for a budget."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from collections.abc import Sequence

from tfx.tensors import form_spec
from tfx.tensors._rank import tt_rank_bounds

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "unknown CPU"


def git_commit() -> str:
    """The repository's short commit, or 'unknown'."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=HERE,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def machine(threads: int) -> str:
    """``'<CPU model>, <n> CPUs, <threads> torch thread(s)'``."""
    return f"{cpu_name()}, {os.cpu_count()} CPUs, {threads} torch thread(s)"


def stamp(*parts: str) -> str:
    """A report's first line: the time to the minute, then ``parts``, joined by ``'; '``."""
    return "; ".join([datetime.datetime.now().isoformat(timespec="minutes"), *parts])


def save(text: str, out: str | None, echo: bool = True) -> str:
    """Write ``text`` to the file ``out`` (when given), print it (``echo``) and return it."""
    if out:
        with open(out, "w") as f:
            f.write(text)
    if echo:
        print(text)
    return text


def fill_block(page: str, name: str, table: str) -> None:
    """Put ``table`` between ``<!-- NAME -->`` and ``<!-- /NAME -->`` of the file ``page``."""
    import re

    with open(page) as f:
        text = f.read()
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = re.sub(
        re.escape(start) + ".*?" + re.escape(end),
        lambda _m: f"{start}\n{table}{end}",
        text,
        flags=re.DOTALL,
    )
    with open(page, "w") as f:
        f.write(text)


def tt_ranks(shape: Sequence[int], budget: int) -> tuple[int, ...]:
    """Largest uniform cap R with TT ranks ``min(R, unfolding bound)`` within ``budget`` params."""
    bounds = tt_rank_bounds(tuple(shape))

    def ranks(cap: int) -> tuple[int, ...]:
        return tuple(min(cap, b) for b in bounds)

    cap = 1
    while cap < max(bounds) and form_spec("tt", shape, ranks(cap + 1)).n_params <= budget:
        cap += 1
    return ranks(cap)
