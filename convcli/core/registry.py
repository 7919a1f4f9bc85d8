"""The one registry of formats, converters, passes, runners and source loaders.

Built-ins register through the same entry-point group third-party packages use (``convcli.plugins``): each
entry point names a module or callable with ``register(registry)``. A plugin that fails to load is
recorded (``plugin_errors``) and shown by ``convcli doctor`` instead of breaking the CLI.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from convcli.core.errors import InputError
from convcli.core.formats import FormatSpec
from convcli.core.runner import Runner
from convcli.core.source import SourceLoader
from convcli.core.step import Converter, Pass, Step

ENTRY_POINT_GROUP = "convcli.plugins"


@dataclass
class Registry:
    formats: dict[str, FormatSpec] = field(default_factory=dict)
    converters: dict[str, type[Converter]] = field(default_factory=dict)
    passes: dict[str, type[Pass]] = field(default_factory=dict)
    runners: dict[str, type[Runner]] = field(default_factory=dict)
    sources: dict[str, type[SourceLoader]] = field(default_factory=dict)
    plugins: dict[str, str] = field(default_factory=dict)  # entry point name -> "ok" or error line

    # -- registration (the plugin door) -------------------------------------------------
    def add_format(self, spec: FormatSpec) -> None:
        self.formats[spec.name] = spec

    def add_step(self, step: type[Step]) -> None:
        for fmt in (step.source, step.target):
            if fmt not in self.formats:
                raise ValueError(f"step {step.name} uses unregistered format '{fmt}'")
        if issubclass(step, Pass):
            self.passes[step.name] = step
        elif issubclass(step, Converter):
            self.converters[step.name] = step
        else:
            raise TypeError(f"{step!r} is neither a Converter nor a Pass")

    def add_runner(self, runner: type[Runner]) -> None:
        self.runners[runner.name] = runner

    def add_source(self, loader: type[SourceLoader]) -> None:
        self.sources[loader.name] = loader

    # -- lookup ---------------------------------------------------------------------------
    def format_named(self, name: str) -> FormatSpec:
        key = name.strip().lower()
        for spec in self.formats.values():
            if key == spec.name or key in spec.aliases:
                return spec
        raise InputError(f"unknown format '{name}'", hint=f"known formats: {', '.join(sorted(self.formats))}")

    def step_named(self, name: str) -> type[Step]:
        step = self.converters.get(name) or self.passes.get(name)
        if step is None:
            raise InputError(f"unknown step '{name}'", hint="see `convcli doctor` for registered steps")
        return step

    def runner_for(self, fmt: str) -> type[Runner] | None:
        """The first available runner for ``fmt`` (or the first registered one, to report why not)."""
        candidates = [r for r in self.runners.values() if fmt in r.formats]
        for r in candidates:
            if r.availability().available:
                return r
        return candidates[0] if candidates else None

    def steps(self) -> list[type[Step]]:
        return [*self.converters.values(), *self.passes.values()]


def load_plugins(registry: Registry, group: str = ENTRY_POINT_GROUP) -> Registry:
    """Call ``register(registry)`` of every entry point in ``group``; built-ins come through here too."""
    eps = sorted(importlib.metadata.entry_points(group=group), key=lambda e: (e.name != "builtin", e.name))
    found_builtin = False
    for ep in eps:
        found_builtin |= ep.value.startswith("convcli.plugins_builtin")
        try:
            _call_register(ep.load(), registry)
            registry.plugins[ep.name] = "ok"
        except Exception as exc:  # a broken third-party plugin must not break the CLI
            registry.plugins[ep.name] = f"failed to load: {type(exc).__name__}: {exc}"
    if not found_builtin:
        # Running from a source tree that was never pip-installed: load the built-ins the same way.
        import convcli.plugins_builtin as builtin

        _call_register(builtin, registry)
        registry.plugins["builtin"] = "ok (not installed; loaded from source tree)"
    return registry


def _call_register(obj: Any, registry: Registry) -> None:
    register: Callable[[Registry], None] | None = getattr(obj, "register", None)
    if register is None and callable(obj):
        register = obj
    if register is None:
        raise TypeError(f"{obj!r} has no register(registry) function")
    register(registry)


_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry with all plugins loaded (built once, on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_plugins(Registry())
    return _DEFAULT
