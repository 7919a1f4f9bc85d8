"""Factories for the coverage run: every torchvision classifier by name, random weights, zero heads re-initialised."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes" / "models"))
from torchvision_models import by_name  # noqa: E402


def __getattr__(name: str):  # file.py:<model name> resolves here
    if name.startswith("__"):
        raise AttributeError(name)
    return lambda: by_name(name)
