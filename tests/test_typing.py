"""The public API type-checks: mypy over the modules behind ``tfx.__all__`` and a typed usage file.

``tests/typing/usage.py`` calls the API as a user would, pins return types with
``assert_type`` and marks misspelt option names with ``# type: ignore[arg-type]`` (an unused
ignore is an error, so each must really be rejected). mypy's settings are in pyproject.toml;
its cache (``.mypy_cache``) makes a rerun take seconds (the first run reads torch's types).
The ``Literal`` option sets of ``tfx._types`` must equal the names the runtime checks accept.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import get_args

import pytest

import tfx
import tfx._api
import tfx._distill
import tfx.cost._options
import tfx.functional._conv
import tfx.functional._linear
import tfx.nn._conv
import tfx.nn._embedding
import tfx.nn._hooks
import tfx.nn._linear
from tfx import _types
from tfx.cost._choose import _STRATEGIES

ROOT = Path(__file__).resolve().parents[1]
USAGE = ROOT / "tests" / "typing" / "usage.py"


def public_modules() -> list[Path]:
    """``tfx/__init__.py``, ``tfx/_types.py`` and the file of every module in ``tfx.__all__``."""
    names = {"tfx", "tfx._types"}
    for name in tfx.__all__:
        value = getattr(tfx, name)
        if isinstance(value, types.ModuleType):
            names.add(value.__name__)
        elif isinstance(value, type | types.FunctionType):
            names.add(value.__module__)
    return sorted(Path(sys.modules[n].__file__ or "") for n in names)


@pytest.fixture(scope="module")
def mypy_errors() -> list[str]:
    """mypy's error lines for the public modules and the usage file, from one run."""
    files = [str(p.relative_to(ROOT)) for p in public_modules()] + [str(USAGE.relative_to(ROOT))]
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "pyproject.toml", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert done.returncode == (1 if errors else 0), done.stdout + done.stderr
    return errors


def test_public_modules_type_check(mypy_errors: list[str]) -> None:
    assert [e for e in mypy_errors if e.startswith("tfx")] == []


def test_typed_usage_type_checks_and_misspelt_options_are_rejected(mypy_errors: list[str]) -> None:
    assert [e for e in mypy_errors if e.startswith("tests")] == []


def test_public_modules_include_the_layers_and_the_compiler() -> None:
    paths = {p.relative_to(ROOT).as_posix() for p in public_modules()}
    assert {"tfx/__init__.py", "tfx/_api.py", "tfx/nn/_linear.py", "tfx/tensors/_cp.py"} <= paths


@pytest.mark.parametrize(
    ("literal", "runtime"),
    [
        (_types.Form, tfx.cost._options.FORMS),
        (_types.Kind, tfx._api.KINDS),
        (_types.Emit, tfx._api.EMITS),
        (_types.Strategy, tuple(_STRATEGIES)),
        (_types.Implementation, tfx.nn._linear.IMPLEMENTATIONS),
        (_types.Implementation, tfx.nn._embedding.IMPLEMENTATIONS),
        (_types.Implementation, tfx.functional._linear.IMPLEMENTATIONS),
        (_types.ConvImplementation, tfx.nn._conv.IMPLEMENTATIONS),
        (_types.ConvImplementation, tfx.functional._conv.CONV_IMPLEMENTATIONS),
        (_types.DropoutImplementation, tfx.nn._hooks._IMPLEMENTATIONS),
        (_types.Loss, tfx._distill.LOSSES),
    ],
    ids=[
        "forms",
        "kinds",
        "emit",
        "strategies",
        "linear",
        "embedding",
        "functional-linear",
        "conv",
        "functional-conv",
        "tensor-dropout",
        "distill-loss",
    ],
)
def test_literal_option_names_equal_the_names_accepted_at_run_time(
    literal: object, runtime: tuple[str, ...]
) -> None:
    assert get_args(literal) == tuple(runtime)


def test_py_typed_marks_the_package_as_typed() -> None:
    assert (ROOT / "tfx" / "py.typed").is_file()
