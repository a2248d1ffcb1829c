"""The public surface: __all__ matches the namespace, the error tree, no global side effects."""

from __future__ import annotations

import builtins
import re
import subprocess
import sys
import types

import pytest
import tensorly
import torch

import tfx
import tfx._errors

# tfx's own packages, and the modules that carry tltorch's module paths.
PACKAGES = [tfx, tfx.tensors, tfx.factorized_layers, tfx.factorized_tensors, tfx.tensor_hooks]
_TREE_LINE = re.compile(r"(\w+)\((\w+)(?:, (\w+))?\)")


def _public_names(module: types.ModuleType) -> set[str]:
    return {
        name
        for name in dir(module)
        if not name.startswith("_") and not isinstance(getattr(module, name), types.ModuleType)
    }


def _declared(module: types.ModuleType) -> set[str]:
    return {
        name
        for name in module.__all__
        if not name.startswith("_")
        and not isinstance(getattr(module, name, None), types.ModuleType)
    }


def _tree() -> list[tuple[str, str, str | None]]:
    """(class, first base, second base) for each line of the _errors docstring's tree."""
    doc = tfx._errors.__doc__ or ""
    return [m.groups() for m in _TREE_LINE.finditer(doc) if m.group(1)[0].isupper()]


@pytest.mark.parametrize("name", tfx.__all__)
def test_every_name_in_tfx_all_exists(name: str) -> None:
    assert hasattr(tfx, name)


@pytest.mark.parametrize("name", tfx.tensors.__all__)
def test_every_name_in_tfx_tensors_all_exists(name: str) -> None:
    assert hasattr(tfx.tensors, name)


@pytest.mark.parametrize("module", PACKAGES, ids=lambda m: m.__name__)
def test_public_namespace_equals_all(module: types.ModuleType) -> None:
    assert _public_names(module) == _declared(module)


@pytest.mark.parametrize("module", PACKAGES, ids=lambda m: m.__name__)
def test_all_has_no_duplicates(module: types.ModuleType) -> None:
    assert len(module.__all__) == len(set(module.__all__))


def test_tfx_exports_every_tensor_form_and_initialiser() -> None:
    forms = {
        n
        for n in tfx.tensors.__all__
        if n
        not in {"register", "available", "ContractionPlan", "plan_einsum", "FormSpec", "form_spec"}
    }
    assert forms - set(tfx.__all__) == set()


def test_version_is_a_string() -> None:
    assert isinstance(tfx.__version__, str) and tfx.__version__.count(".") >= 1


def test_error_tree_docstring_lists_every_error_class() -> None:
    documented = {cls for cls, _, _ in _tree()}
    exported = {n for n in tfx._errors.__all__ if isinstance(getattr(tfx._errors, n), type)}
    assert documented == exported


@pytest.mark.parametrize(("name", "first", "second"), _tree(), ids=[t[0] for t in _tree()])
def test_error_class_inherits_the_documented_bases(
    name: str, first: str, second: str | None
) -> None:
    cls = getattr(tfx, name)
    bases = [getattr(tfx, first, None) or getattr(builtins, first)]
    if second is not None:
        bases.append(getattr(builtins, second))
    assert all(issubclass(cls, base) for base in bases)


@pytest.mark.parametrize(
    ("name", "first", "second"), [t for t in _tree() if t[1] == "TfxError"], ids=lambda v: str(v)
)
def test_tfx_errors_are_also_builtin_exceptions(name: str, first: str, second: str | None) -> None:
    assert second is not None and issubclass(getattr(tfx, name), getattr(builtins, second))


def test_tfx_warning_is_a_user_warning() -> None:
    assert issubclass(tfx.TfxWarning, UserWarning)


def test_import_does_not_change_the_tensorly_backend() -> None:
    code = (
        "import tensorly; before = tensorly.get_backend(); import tfx; "
        "print(before, tensorly.get_backend())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["numpy", "numpy"]


def test_decompositions_do_not_change_the_tensorly_backend() -> None:
    rank_one = torch.einsum("a,b,c->abc", torch.randn(3), torch.randn(4), torch.randn(2))
    tfx.FactorizedTensor.from_tensor(rank_one, rank=1, factorization="cp")
    tfx.FactorizedTensor.from_tensor(torch.randn(4, 5, 6), rank=(2, 2, 2), factorization="tucker")
    tfx.TensorizedTensor.from_matrix(
        torch.randn(6, 6), (2, 3), (3, 2), rank=0.5, factorization="blocktt"
    )
    assert tensorly.get_backend() == "numpy"
