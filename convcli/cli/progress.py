"""Rich progress for long steps: a spinner while a step runs, one line per finished step (CI logs keep it)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.status import Status


class RichProgress:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.status: Status | None = None
        self.started: dict[str, float] = {}

    def begin(self, label: str) -> None:
        self.started[label] = time.perf_counter()
        if self.console.is_terminal:
            self.status = self.console.status(f"{label} ...")
            self.status.start()

    def end(self, label: str, ok: bool, seconds: float, note: str = "") -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None
        started = self.started.pop(label, None)
        if not seconds and started is not None:
            seconds = time.perf_counter() - started
        mark = "[green]ok[/]" if ok else "[red]failed[/]"
        tail = f" [dim]{note}[/]" if note else ""
        self.console.print(f"  {mark} {label} [dim]{seconds:.1f}s[/]{tail}", highlight=False)
