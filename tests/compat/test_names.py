"""Every public name of tltorch 0.5 exists in tfx, at the matching import path.

The lists below were generated once from tltorch 0.5.0's modules (names imported
by each package ``__init__``, then the public names each module file defines) and
are kept here as data: tltorch is never imported by the tests.

A name defined in one of tltorch's module files (``tltorch.factorized_layers.
factorized_convolution.tensor_to_kernel``) lives in tfx at the level of its package
(``tfx.factorized_layers.tensor_to_kernel``), except where tfx mirrors the module
itself (``tfx.functional.convolution``). Names tfx leaves out on purpose are listed
in ``OMITTED`` and explained in the guide's "Differences from tltorch" page.
"""

from __future__ import annotations

import importlib
import types
from pathlib import Path
from typing import Any

import pytest

import tfx

# tltorch 0.5.0: public names per module (modules themselves excluded).
TLTORCH_NAMES: dict[str, tuple[str, ...]] = {
    "tltorch": (
        "BlockTT",
        "CPTensor",
        "CPTensorized",
        "ComplexBlockTT",
        "ComplexCPTensor",
        "ComplexCPTensorized",
        "ComplexDenseTensor",
        "ComplexDenseTensorized",
        "ComplexTTTensor",
        "ComplexTuckerTensor",
        "ComplexTuckerTensorized",
        "DenseTensor",
        "DenseTensorized",
        "FactorizedConv",
        "FactorizedEmbedding",
        "FactorizedLinear",
        "FactorizedTensor",
        "TCL",
        "TRL",
        "TTTensor",
        "TensorizedTensor",
        "TuckerTensor",
        "TuckerTensorized",
        "remove_tensor_dropout",
        "remove_tensor_lasso",
        "tensor_dropout",
        "tensor_init",
        "tensor_lasso",
    ),
    "tltorch.factorized_layers": (
        "FactorizedConv",
        "FactorizedEmbedding",
        "FactorizedLinear",
        "TCL",
        "TRL",
    ),
    "tltorch.factorized_layers.factorized_convolution": (
        "FactorizedConv",
        "SubFactorizedConv",
        "factorization_shape_to_kernel_shape",
        "kernel_shape_to_factorization_shape",
        "kernel_to_tensor",
        "tensor_to_kernel",
    ),
    "tltorch.factorized_layers.factorized_embedding": (
        "FactorizedEmbedding",
        "SubFactorizedEmbedding",
    ),
    "tltorch.factorized_layers.factorized_linear": ("FactorizedLinear", "SubFactorizedLinear"),
    "tltorch.factorized_layers.tensor_contraction_layers": ("TCL",),
    "tltorch.factorized_layers.tensor_regression_layers": ("TRL",),
    "tltorch.factorized_tensors": (
        "BlockTT",
        "CPTensor",
        "CPTensorized",
        "ComplexBlockTT",
        "ComplexCPTensor",
        "ComplexCPTensorized",
        "ComplexDenseTensor",
        "ComplexDenseTensorized",
        "ComplexTTTensor",
        "ComplexTuckerTensor",
        "ComplexTuckerTensorized",
        "DenseTensor",
        "DenseTensorized",
        "FactorizedTensor",
        "TTTensor",
        "TensorizedTensor",
        "TuckerTensor",
        "TuckerTensorized",
        "block_tt_init",
        "cp_init",
        "tensor_init",
        "tt_init",
        "tucker_init",
    ),
    "tltorch.factorized_tensors.complex_factorized_tensors": (
        "ComplexCPTensor",
        "ComplexDenseTensor",
        "ComplexHandler",
        "ComplexTTTensor",
        "ComplexTuckerTensor",
    ),
    "tltorch.factorized_tensors.complex_tensorized_matrices": (
        "ComplexBlockTT",
        "ComplexCPTensorized",
        "ComplexDenseTensorized",
        "ComplexTuckerTensorized",
    ),
    "tltorch.factorized_tensors.core": (
        "FactorizedTensor",
        "MetaFactorizedTensor",
        "TensorizedTensor",
    ),
    "tltorch.factorized_tensors.factorized_tensors": (
        "CPTensor",
        "DenseTensor",
        "TTTensor",
        "TuckerTensor",
    ),
    "tltorch.factorized_tensors.init": (
        "block_tt_init",
        "cp_init",
        "tensor_init",
        "tt_init",
        "tucker_init",
    ),
    "tltorch.factorized_tensors.tensorized_matrices": (
        "BlockTT",
        "CPTensorized",
        "DenseTensorized",
        "TuckerTensorized",
        "is_tensorized_shape",
        "tensorized_shape_to_shape",
        "validate_block_tt_rank",
    ),
    "tltorch.functional": ("convolve", "factorized_linear", "tucker_conv"),
    "tltorch.functional.convolution": (
        "convNd",
        "convolve",
        "cp_conv",
        "cp_conv_mobilenet",
        "general_conv1d",
        "general_conv1d_",
        "tt_conv",
        "tucker_conv",
    ),
    "tltorch.functional.factorized_linear": ("linear_blocktt", "linear_cp", "linear_tucker"),
    "tltorch.functional.factorized_tensordot": ("tensor_dot_cp", "tensor_dot_tucker"),
    "tltorch.functional.linear": ("factorized_linear",),
    "tltorch.functional.tensor_regression": ("trl", "tucker_trl"),
    "tltorch.tensor_hooks": (
        "TensorDropout",
        "TensorLasso",
        "remove_tensor_dropout",
        "remove_tensor_lasso",
        "tensor_dropout",
        "tensor_lasso",
    ),
    "tltorch.tensor_hooks._tensor_dropout": (
        "CPDropout",
        "TTDropout",
        "TensorDropout",
        "TuckerDropout",
        "remove_tensor_dropout",
        "tensor_dropout",
    ),
    "tltorch.tensor_hooks._tensor_lasso": (
        "CPLasso",
        "TTLasso",
        "TensorLasso",
        "TuckerLasso",
        "remove_tensor_lasso",
        "tensor_lasso",
    ),
    "tltorch.utils": ("ComplexFactorList", "FactorList", "ParameterList", "get_tensorized_shape"),
    "tltorch.utils.parameter_list": ("ComplexFactorList", "FactorList", "ParameterList"),
    "tltorch.utils.tensorize_shape": ("factorize", "get_tensorized_shape", "merge_ints"),
}

# tltorch 0.5.0: the modules each package imports into its namespace.
TLTORCH_MODULES: dict[str, tuple[str, ...]] = {
    "tltorch": (
        "factorized_layers",
        "factorized_tensors",
        "functional",
        "init",
        "tensor_hooks",
        "utils",
    ),
    "tltorch.factorized_layers": (
        "factorized_convolution",
        "factorized_embedding",
        "factorized_linear",
        "tensor_contraction_layers",
        "tensor_regression_layers",
    ),
    "tltorch.factorized_tensors": (
        "complex_factorized_tensors",
        "complex_tensorized_matrices",
        "core",
        "factorized_tensors",
        "init",
        "tensorized_matrices",
    ),
    "tltorch.functional": ("convolution", "factorized_tensordot", "linear", "tensor_regression"),
    "tltorch.utils": ("parameter_list", "tensorize_shape"),
}

# Where tfx keeps each tltorch module's names.
TFX_HOME: dict[str, str] = {
    "tltorch": "tfx",
    "tltorch.factorized_layers": "tfx.factorized_layers",
    "tltorch.factorized_layers.factorized_convolution": "tfx.factorized_layers",
    "tltorch.factorized_layers.factorized_embedding": "tfx.factorized_layers",
    "tltorch.factorized_layers.factorized_linear": "tfx.factorized_layers",
    "tltorch.factorized_layers.tensor_contraction_layers": "tfx.factorized_layers",
    "tltorch.factorized_layers.tensor_regression_layers": "tfx.factorized_layers",
    "tltorch.factorized_tensors": "tfx.factorized_tensors",
    "tltorch.factorized_tensors.complex_factorized_tensors": "tfx.factorized_tensors",
    "tltorch.factorized_tensors.complex_tensorized_matrices": "tfx.factorized_tensors",
    "tltorch.factorized_tensors.core": "tfx.factorized_tensors",
    "tltorch.factorized_tensors.factorized_tensors": "tfx.factorized_tensors",
    "tltorch.factorized_tensors.init": "tfx.factorized_tensors",
    "tltorch.factorized_tensors.tensorized_matrices": "tfx.factorized_tensors",
    "tltorch.functional": "tfx.functional",
    "tltorch.functional.convolution": "tfx.functional.convolution",
    "tltorch.functional.factorized_linear": "tfx.functional",
    "tltorch.functional.factorized_tensordot": "tfx.functional",
    "tltorch.functional.linear": "tfx.functional.linear",
    "tltorch.functional.tensor_regression": "tfx.functional",
    "tltorch.tensor_hooks": "tfx.tensor_hooks",
    "tltorch.tensor_hooks._tensor_dropout": "tfx.tensor_hooks",
    "tltorch.tensor_hooks._tensor_lasso": "tfx.tensor_hooks",
    "tltorch.utils": "tfx.utils",
    "tltorch.utils.parameter_list": "tfx.utils",
    "tltorch.utils.tensorize_shape": "tfx.utils",
}

# Deliberately absent from tfx (qualified tltorch name -> why); each is on the guide page.
OMITTED: dict[str, str] = {
    "tltorch.factorized_tensors.core.MetaFactorizedTensor": (
        "tfx registers forms with __init_subclass__, no metaclass"
    ),
}

# Expected but not in tfx yet (qualified tltorch name -> what is missing). Strict xfails:
# when the name lands the test passes unexpectedly and fails, so its entry goes.
PENDING: dict[str, str] = {}

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide" / "tltorch-differences.md"


def _expected() -> list[Any]:
    return [
        pytest.param(
            module,
            name,
            id=f"{module}.{name}",
            marks=[pytest.mark.xfail(strict=True, reason=PENDING[f"{module}.{name}"])]
            if f"{module}.{name}" in PENDING
            else [],
        )
        for module, names in TLTORCH_NAMES.items()
        for name in names
        if f"{module}.{name}" not in OMITTED
    ]


def _expected_modules() -> list[tuple[str, str]]:
    """(tltorch package, module name) pairs tfx has as modules: tltorch's top-level
    subpackages, and the module files tfx mirrors (those whose home is their own path)."""
    mirrored = {
        path for path, home in TFX_HOME.items() if home == path.replace("tltorch", "tfx", 1)
    }
    return [
        (package, name)
        for package, names in TLTORCH_MODULES.items()
        for name in names
        if package == "tltorch" or f"{package}.{name}" in mirrored
    ]


@pytest.mark.parametrize(("module", "name"), _expected())
def test_tltorch_name_exists_in_tfx(module: str, name: str) -> None:
    home = importlib.import_module(TFX_HOME[module])
    assert hasattr(home, name), f"{module}.{name} has no counterpart {TFX_HOME[module]}.{name}"


@pytest.mark.parametrize(("package", "name"), _expected_modules(), ids=lambda v: v)
def test_tltorch_module_path_exists_in_tfx(package: str, name: str) -> None:
    home = importlib.import_module(TFX_HOME[package])
    assert isinstance(getattr(home, name, None), types.ModuleType)


def test_every_tltorch_module_has_a_tfx_home() -> None:
    assert set(TFX_HOME) == set(TLTORCH_NAMES)


@pytest.mark.parametrize("qualified", sorted(OMITTED))
def test_omitted_names_are_explained_in_the_guide(qualified: str) -> None:
    assert qualified.rsplit(".", 1)[1] in GUIDE.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "alias", ["tfx.factorized_layers", "tfx.factorized_tensors", "tfx.tensor_hooks", "tfx.utils"]
)
def test_alias_modules_reexport_tfx_objects(alias: str) -> None:
    module = importlib.import_module(alias)
    # tfx.utils.factorize is tltorch's integer helper; tfx.factorize is the compiler.
    shared = [
        n
        for n in module.__all__
        if hasattr(tfx, n)
        and not isinstance(getattr(tfx, n), types.ModuleType)
        and n != "factorize"
    ]
    assert shared and all(getattr(module, n) is getattr(tfx, n) for n in shared)


def test_tfx_init_is_the_initialiser_module() -> None:
    assert (
        tfx.init.tensor_init is tfx.tensor_init
        and tfx.init.block_tt_init is tfx.tensors.block_tt_init
    )
