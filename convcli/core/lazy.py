"""Lazy imports of optional backend packages, with a message that says what to install.

Modeled on Polygraphy's importer: heavy packages are imported only when a step or runner really runs,
so ``convcli --help`` stays fast and a missing backend becomes "unavailable: <reason>" instead of a crash.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from types import ModuleType

from convcli.core.errors import UnavailableError

# import name -> distribution name, where they differ
DISTRIBUTIONS = {
    "onnxruntime": "onnxruntime",
    "ai_edge_litert": "ai-edge-litert",
    "tensorflow": "tensorflow",
    "onnx2tf": "onnx2tf",
    "tf_keras": "tf-keras",
    "torch_pruning": "torch-pruning",
    "onnx_graphsurgeon": "onnx-graphsurgeon",
    "tensorrt": "tensorrt",
}


def distribution_of(module: str) -> str:
    return DISTRIBUTIONS.get(module, module)


def package_version(module: str) -> str | None:
    """The installed version of the distribution that provides ``module``, or None when missing."""
    try:
        return importlib.metadata.version(distribution_of(module))
    except importlib.metadata.PackageNotFoundError:
        return None


def is_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise UnavailableError naming the package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = f" (needed for {purpose})" if purpose else ""
        raise UnavailableError(
            f"python package '{distribution_of(module)}' cannot be imported{what}: {exc}",
            hint=f"install it with: pip install -c constraints.txt {distribution_of(module)}",
        ) from exc
