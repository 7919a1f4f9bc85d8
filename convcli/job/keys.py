"""Cache keys: what a cached step output or measurement depends on. A key that misses an input that changes
the result lets a stale entry be reused, so every key lists its inputs here, in one place."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from convcli.core.cache import make_key
from convcli.core.fsutil import sha256_py_tree, sha256_tree
from convcli.core.lazy import package_version
from convcli.core.planner import Plan
from convcli.core.source import SourceLoader
from convcli.recipes.schema import JobSpec


def file_digest(path: Path | None) -> str | None:
    return sha256_tree(path) if path is not None and path.exists() else None


def source_key(spec: JobSpec, loader: type[SourceLoader]) -> str:
    """From file contents only (no model import): the model file (and, for ``file.py:factory``, every .py file
    beside it, since it may import them; for ``package.module:factory``, every .py file of the top-level
    package; for an in-memory model, the loader's ``content_digest``), weights, the input description and the
    versions of the packages the loader uses."""
    text = spec.source.model
    files: dict[str, str | None] = {}
    target = text.rpartition(":")[0] if ":" in text else text
    digest = loader.content_digest(text)
    if digest is not None:
        files["object"] = digest
    elif target.endswith(".py") or Path(target).exists():
        path = Path(target)
        files["model"] = file_digest(path)
        if path.suffix == ".py" and path.parent.is_dir():
            beside = sorted(path.parent.glob("*.py"))
            for py in beside:
                files[py.name] = file_digest(py)
            files["imports"] = make_key("imports", imported_versions(beside))
    else:
        files["module"] = module_digest(target) or target
    return make_key("source", loader.name, text, files, file_digest(spec.source.weights),
                    spec.source.inputs, source_versions(loader))


def imported_versions(paths: list[Path]) -> dict[str, str]:
    """Versions of the installed distributions the factory files import (``import transformers``): a model built
    by a library (random initialisation included) changes with the library's version, which the files' hashes
    cannot see. Read with ``ast``, nothing imported; modules without a distribution (the standard library, the
    files beside) are left out."""
    import ast

    names: set[str] = set()
    for path in paths:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return {n: v for n in sorted(names) if (v := package_version(n)) is not None}


def module_digest(dotted: str) -> str | None:
    """Hash of the code behind ``package.module``: every .py file of its top-level package (the factory may
    import any of them), or the one file of a top-level module; None when it cannot be found. Found without
    importing it."""
    try:
        found = importlib.util.find_spec(dotted.split(".")[0]) if dotted else None
    except (ImportError, ValueError):
        return None
    if found is None:
        return None
    folders = [Path(p) for p in found.submodule_search_locations or [] if Path(p).is_dir()]
    if folders:
        return make_key("package", [sha256_py_tree(f) for f in folders])
    return file_digest(Path(found.origin)) if found.origin else None


def source_versions(loader: type[SourceLoader]) -> dict[str, str | None]:
    """Versions of the packages that load and run the source (``requires`` + ``also_uses``)."""
    return {m: package_version(m) for m in dict.fromkeys((*loader.requires, *loader.also_uses))}


def data_key(spec: JobSpec) -> str:
    d = spec.data
    parity = file_digest(d.parity) if d.parity else ("random", d.seed)
    return make_key("data", parity, d.samples, file_digest(d.validation), d.validation_samples,
                    d.preprocess.model_dump())


def step_keys(the_plan: Plan, root_key: str, calibration_key: str | None,
              validation_key: str | None = None) -> dict[str, str]:
    keys: dict[str, str] = {}
    for sid, planned in the_plan.steps.items():
        upstream = root_key if planned.input_id == "source" else keys[planned.input_id]
        step = planned.step
        versions = {m: package_version(m) for m in step.requires}
        calibration, validation = step.data_inputs(planned.options)
        machine = step.machine_key()
        keys[sid] = make_key("step", upstream, step.name, planned.options.model_dump(mode="json"), versions,
                             calibration_key if calibration else None, validation_key if validation else None,
                             *([machine] if machine is not None else []))
    return keys


