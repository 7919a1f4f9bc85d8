"""Running many recipes: stable sharding for CI matrices and parallel local runs in child processes."""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from convcli.core.errors import EXIT_CONVERSION_FAILED, EXIT_GATE_FAILED, EXIT_OK, InputError

SEVERITY = {EXIT_OK: 0, EXIT_GATE_FAILED: 1, EXIT_CONVERSION_FAILED: 2}


def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise InputError(f"--shard '{text}': expected I/N with 1 <= I <= N, e.g. --shard 2/4")
    return int(m.group(1)), int(m.group(2))


def select_shard(paths: list[Path], index: int, count: int) -> list[Path]:
    """Shard ``index`` of ``count`` (1-based): round-robin over the paths sorted by name, so every machine of
    a CI matrix that globs the same recipes gets a disjoint subset and together they cover all of them."""
    ordered = sorted(paths, key=lambda p: p.as_posix())
    return [p for i, p in enumerate(ordered) if i % count == index - 1]


def combined_exit_code(codes: list[int]) -> int:
    """The most severe outcome wins: conversion failure (3) over gate failure (1) over success (0)."""
    return max(codes, key=lambda c: SEVERITY.get(c, 3), default=EXIT_OK)


@dataclass
class ChildRun:
    recipe: Path
    exit_code: int
    output: str


def run_in_children(recipes: list[Path], extra_args: list[str], jobs: int) -> list[ChildRun]:
    """``convcli run RECIPE`` for each recipe in its own process, ``jobs`` at a time."""

    def one(path: Path) -> ChildRun:
        cmd = [sys.executable, "-m", "convcli", "run", str(path), *extra_args]
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        return ChildRun(path, proc.returncode, proc.stdout + proc.stderr)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, recipes))
