"""Shared fixtures: a CLI runner around the typer app, and the model catalogue."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from convcli.cli.app import app
from tests.models.catalogue import CATALOGUE, ModelCase

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
FAST = ["--runs", "3", "--threads", "2"]


@dataclass
class CliResult:
    exit_code: int
    output: str

    def report(self, outdir: Path) -> dict[str, Any]:
        return json.loads((outdir / "report.json").read_text())


class Cli:
    """Runs ``convcli ARGS`` in-process through typer's runner."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str) -> CliResult:
        result = self.runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        return CliResult(result.exit_code, result.output)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets an empty step/measurement cache, outside its tmp_path."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("CONVCLI_CACHE_DIR", str(path))
    return path


@pytest.fixture
def cli() -> Cli:
    return Cli()


@pytest.fixture
def catalogue() -> dict[str, ModelCase]:
    return CATALOGUE
