"""Write ``benchmarks/data/calibration_docstrings.txt``: text of another kind for calibration.

The first lines of the docstrings of a fixed, sorted list of Python standard-library modules
and their public functions, classes and methods, read from the installed standard library with
:mod:`inspect` (nothing is downloaded). ``benchmarks/quality.py --goals`` calibrates MiniLM on
them to measure how tfx does when the calibration data is not like the text the model will see
(its held-out sentences are everyday English).

The file is generated once and kept, so the benchmark does not depend on the Python version
that runs it. Run from the repository root::

    .venv/bin/python benchmarks/make_docstrings.py            # rewrites the file
    .venv/bin/python benchmarks/make_docstrings.py --check    # exits 1 if it would change
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "calibration_docstrings.txt"

# Pure-Python and C modules of the standard library, sorted; all import without side effects.
MODULES = (
    "argparse",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "cmd",
    "codecs",
    "collections",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "dis",
    "email.message",
    "email.utils",
    "enum",
    "filecmp",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html.parser",
    "http.client",
    "http.cookies",
    "imaplib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "locale",
    "logging",
    "lzma",
    "mailbox",
    "math",
    "mimetypes",
    "operator",
    "optparse",
    "os",
    "os.path",
    "pathlib",
    "pickle",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "signal",
    "smtplib",
    "socket",
    "sqlite3",
    "ssl",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "time",
    "timeit",
    "tokenize",
    "trace",
    "traceback",
    "types",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "xml.dom.minidom",
    "zipfile",
    "zlib",
)
# A C function's docstring opens with its signature ("acos(x, /)"); the summary follows it.
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->\s*.*)?$")


def summary(obj: object) -> str | None:
    """The first line of ``obj``'s own docstring (after a C signature), or None."""
    doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else None
    if not doc:
        return None
    lines = [line.strip() for line in inspect.cleandoc(doc).splitlines()]
    lines = [line for line in lines if line]
    while lines and _SIGNATURE.match(lines[0]):
        lines.pop(0)
    if not lines:
        return None
    line = lines[0]
    # Short fragments ("Return self.") say little; keep lines of 4 to 40 words.
    return line if 4 <= len(line.split()) <= 40 else None


def members(module: object) -> list[object]:
    """``module``, its public functions and classes (defined in it), and their public methods."""
    out: list[object] = [module]
    name = getattr(module, "__name__", "")
    for attr in sorted(vars(module)):
        value = vars(module)[attr]
        if attr.startswith("_") or getattr(value, "__module__", None) != name:
            continue
        if inspect.isclass(value):
            out.append(value)
            out += [
                vars(value)[m]
                for m in sorted(vars(value))
                if not m.startswith("_") and callable(vars(value)[m])
            ]
        elif callable(value):
            out.append(value)
    return out


def docstring_lines() -> list[str]:
    """Every module's summary lines in module order, first occurrence only."""
    seen: set[str] = set()
    out = []
    for name in MODULES:
        module = importlib.import_module(name)
        for obj in members(module):
            line = summary(obj)
            if line is not None and line not in seen:
                seen.add(line)
                out.append(line)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file would change")
    args = parser.parse_args(argv)
    text = "\n".join(docstring_lines()) + "\n"
    if args.check:
        same = OUT.exists() and OUT.read_text() == text
        print(f"{OUT.name}: {'up to date' if same else 'would change'}")
        return 0 if same else 1
    OUT.write_text(text)
    print(f"wrote {text.count(chr(10))} lines to {OUT} (Python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
