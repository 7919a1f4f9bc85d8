"""convcli doctor: every format, converter, pass, runner and source loader, with package versions and
whether it can run here (and why not)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from convcli.cli.common import handle_errors, out


def doctor(json_out: bool = typer.Option(False, "--json", help="Machine-readable output (versioned JSON).")) -> None:
    """List registered converters, passes, runners and sources with availability and package versions.

    Example:\n
      convcli doctor --json | jq '.steps[] | select(.available == false)'
    """
    handle_errors(_doctor)(json_out)


def _doctor(json_out: bool) -> None:
    from convcli import __version__
    from convcli.core.registry import default_registry

    registry = default_registry()
    rows = []
    for kind, items in (("converter", registry.converters.values()), ("pass", registry.passes.values()),
                        ("runner", registry.runners.values()), ("source", registry.sources.values())):
        for item in items:
            avail = item.availability()
            edge = (f"{item.source} -> {item.target}" if kind in ("converter", "pass")  # type: ignore[union-attr]
                    else ", ".join(getattr(item, "formats", ())) or getattr(item, "format", ""))
            rows.append({"kind": kind, "name": item.name, "edge": edge, "available": avail.available,
                         "reason": avail.reason, "packages": avail.versions})
    if json_out:
        print(json.dumps({"schema": "convcli.doctor/v1", "convcli_version": __version__,
                          "formats": sorted(registry.formats), "plugins": registry.plugins, "steps": rows},
                         indent=2))
        return
    table = Table(title=f"convcli {__version__}: registered steps, runners and sources", title_justify="left")
    for col in ("kind", "name", "formats", "status", "packages"):
        table.add_column(col)
    for r in rows:
        status = "[green]available[/]" if r["available"] else f"[yellow]unavailable: {r['reason']}[/]"
        pkgs = ", ".join(f"{k} {v or 'missing'}" for k, v in r["packages"].items())
        table.add_row(r["kind"], r["name"], r["edge"], status, pkgs)
    out.print(table)
    out.print("plugins: " + ", ".join(f"{k} ({v})" for k, v in registry.plugins.items()), highlight=False)
