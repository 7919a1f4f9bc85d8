"""Cache keys: what a cached step output or measurement depends on. A key that misses an input that changes
the result lets a stale entry be reused, so every key lists its inputs here, in one place."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from convcli.core.cache import make_key
from convcli.core.fsutil import sha256_tree
from convcli.core.lazy import package_version
from convcli.core.planner import Plan
from convcli.core.source import SourceLoader
from convcli.recipes.schema import JobSpec


def file_digest(path: Path | None) -> str | None:
    return sha256_tree(path) if path is not None and path.exists() else None


def source_key(spec: JobSpec, loader: type[SourceLoader]) -> str:
    """From file contents only (no model import): the model file (and, for a factory, every .py file beside
    it, since it may import them), weights and the input description."""
    text = spec.source.model
    files: dict[str, str | None] = {}
    target = text.rpartition(":")[0] if ":" in text else text
    if target.endswith(".py") or Path(target).exists():
        path = Path(target)
        files["model"] = file_digest(path)
        if path.suffix == ".py" and path.parent.is_dir():
            for py in sorted(path.parent.glob("*.py")):
                files[py.name] = file_digest(py)
    else:
        found = importlib.util.find_spec(target.split(".")[0]) if target else None
        origin = found.origin if found else None
        files["module"] = file_digest(Path(origin)) if origin else target
    return make_key("source", loader.name, text, files, file_digest(spec.source.weights),
                    spec.source.inputs, package_version("torch"))


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
        keys[sid] = make_key("step", upstream, step.name, planned.options.model_dump(mode="json"), versions,
                             calibration_key if calibration else None, validation_key if validation else None)
    return keys


