"""convcli: convert trained models into checked deployment artifacts.

The Python API (``convcli.convert``, ``convcli.check``, docs/python-api.md) is imported on first use, so
``import convcli`` stays light: no torch, onnxruntime or TensorFlow until a job needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["ConversionFailed", "ConvcliError", "GateFailed", "InputError", "JobReport", "check", "convert"]

if TYPE_CHECKING:
    from convcli.api import JobReport, check, convert
    from convcli.core.errors import ConvcliError, ConversionFailed, GateFailed, InputError

_LAZY = {"convert": "convcli.api", "check": "convcli.api", "JobReport": "convcli.api",
         "ConvcliError": "convcli.core.errors", "InputError": "convcli.core.errors",
         "GateFailed": "convcli.core.errors", "ConversionFailed": "convcli.core.errors"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'convcli' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(module), name)
