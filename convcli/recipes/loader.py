"""Recipe files: YAML -> the typed recipe model -> a JobSpec.

Errors point at the YAML path and line and say what was expected ("quickstart.yaml:14: targets[2].precisions[0]:
'int4' is not one of 'fp32', 'fp16', 'bf16', 'int8', 'auto'"). Paths in a recipe are relative to the recipe file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from convcli.core.errors import InputError
from convcli.core.registry import Registry, default_registry
from convcli.recipes.schema import JobSpec
from convcli.recipes.typed import typed_job_model


def loc_text(loc: tuple[Any, ...], tags: set[str] | None = None) -> str:
    """('targets', 2, 'openvino', 'precisions', 0) -> 'targets[2].precisions[0]' (union tags dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif (tags and part in tags) or "[" in str(part) or str(part).startswith(("function-", "tagged-")):
            continue  # pydantic's union tags and validator names are not YAML keys
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def describe_error(err: Any) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "extra_forbidden":
        return "unknown key (not allowed here)"
    if kind == "missing":
        return "required but missing"
    if kind == "literal_error":
        return f"{value!r} is not one of {str(ctx.get('expected', '')).replace(' or ', ', ')}"
    if kind == "union_tag_invalid":
        return f"{ctx.get('tag')!r} is not one of {str(ctx.get('expected_tags', '')).replace(' or ', ', ')}"
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{msg} (got {value!r})" if value is not None and not isinstance(value, (dict, list)) else msg


def yaml_line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (or the deepest ancestor found)."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
            key = next((k for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
            if match is None:
                continue
            node = match
            line = (key or match).start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
    return line


def validation_error(exc: ValidationError, where: str, root: yaml.Node | None = None,
                     tags: set[str] | None = None) -> InputError:
    """One InputError listing every problem as 'where[:line]: path: what was expected'."""
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        line = yaml_line(root, loc) if root is not None else None
        prefix = f"{where}:{line}" if line else where
        problems.append(f"{prefix}: {loc_text(loc, tags)}: {describe_error(err)}")
    first, rest = problems[0], problems[1:]
    return InputError(first + (f" (and {len(rest)} more: {'; '.join(rest)})" if rest else ""),
                      hint="see `convcli recipe schema` for every field")


def _resolve(base: Path, value: str | Path | None) -> Any:
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _resolve_model(base: Path, model: str) -> str:
    """A file path (``x.onnx``, ``models/m.py:build``) is made relative to the recipe; a module path is not."""
    target, sep, attr = model.rpartition(":") if ":" in model else (model, "", "")
    if not sep:
        return str(_resolve(base, model))
    if target.endswith(".py") or "/" in target:
        return f"{_resolve(base, target)}:{attr}"
    return model


def load_recipe(path: Path, registry: Registry | None = None) -> JobSpec:
    """Read, validate and resolve one recipe file. InputError (exit 2) for anything wrong with it."""
    registry = registry or default_registry()
    if not path.is_file():
        raise InputError(f"recipe {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise InputError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a recipe is a YAML mapping with at least 'source' and 'targets'")
    model = typed_job_model(registry)
    try:
        typed: BaseModel = model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, str(path), root, tags=set(registry.formats)) from None
    spec = JobSpec.model_validate(typed.model_dump(exclude_unset=True, exclude_none=False, by_alias=True))
    base = path.resolve().parent
    spec.source.model = _resolve_model(base, spec.source.model)
    spec.source.weights = _resolve(base, spec.source.weights)
    for field in ("parity", "validation", "calibration", "train"):
        setattr(spec.data, field, _resolve(base, getattr(spec.data, field)))
    if "output" in data:
        spec.output = _resolve(base, spec.output)
    else:
        spec.output = base / "out" / (spec.name or path.stem)
    spec.cache_dir = _resolve(base, spec.cache_dir)
    if spec.package is not None:
        spec.package.triton = _resolve(base, spec.package.triton)
    if spec.name is None:
        spec.name = path.stem
    _check_files(spec, path, root)
    return spec


def _check_files(spec: JobSpec, path: Path, root: yaml.Node | None) -> None:
    checks: list[tuple[tuple[Any, ...], Path | None]] = [
        (("source", "weights"), spec.source.weights),
        (("data", "parity"), spec.data.parity), (("data", "validation"), spec.data.validation),
        (("data", "calibration"), spec.data.calibration), (("data", "train"), spec.data.train)]
    model_file = spec.source.model.rpartition(":")[0] if ".py:" in spec.source.model else (
        spec.source.model if ":" not in spec.source.model else None)
    if model_file:
        checks.insert(0, (("source", "model"), Path(model_file)))
    for loc, p in checks:
        if p is not None and not Path(p).exists():
            line = yaml_line(root, loc)
            raise InputError(f"{path}:{line}: {'.'.join(loc)}: file {p} does not exist",
                             hint="paths in a recipe are relative to the recipe file")


def dump_recipe(spec: JobSpec) -> str:
    data = spec.model_dump(mode="json", exclude_defaults=True)
    return yaml.safe_dump(data, sort_keys=False)
