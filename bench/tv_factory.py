"""Factories for the coverage run: every torchvision classifier by name, random weights, zero heads re-initialised."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes" / "models"))
from torchvision_models import by_name  # noqa: E402


def __getattr__(name: str) -> Callable[[], Any]:  # `tv_factory.py:<model name>` resolves here
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise AttributeError(name)
    return lambda: by_name(name)
