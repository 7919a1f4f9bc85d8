"""Rich progress for long steps: a spinner while a step runs, one line per finished step (CI logs keep it)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.status import Status


class RichProgress:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.status: Status | None = None
        self.started = 0.0

    def begin(self, label: str) -> None:
        self.started = time.perf_counter()
        if self.console.is_terminal:
            self.status = self.console.status(f"{label} ...")
            self.status.start()

    def end(self, label: str, ok: bool, seconds: float, note: str = "") -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None
        seconds = seconds or (time.perf_counter() - self.started)
        mark = "[green]ok[/]" if ok else "[red]failed[/]"
        tail = f" [dim]{note}[/]" if note else ""
        self.console.print(f"  {mark} {label} [dim]{seconds:.1f}s[/]{tail}", highlight=False)
