"""The typed recipe model, generated from the registry: each target's ``options`` is the real options model
of the converters into that format (a union discriminated by ``format``), and ``step_options`` has one typed
field per registered step. Plugins' steps appear in the schema the same way as built-ins."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from convcli.core.registry import Registry
from convcli.recipes.schema import JobSpec, TargetSpec


def _class_name(fmt: str) -> str:
    return "".join(part.capitalize() for part in fmt.replace("_", "-").split("-"))


def _target_options_model(registry: Registry, fmt: str) -> type[BaseModel]:
    """Fields of every converter into ``fmt`` (except ``precision``, which targets set with ``precisions``)."""
    fields: dict[str, Any] = {}
    for conv in registry.converters.values():
        if conv.target != fmt:
            continue
        for name, info in conv.Options.model_fields.items():
            if name != "precision" and name not in fields:
                fields[name] = (info.annotation, info)
    return create_model(f"{_class_name(fmt)}TargetOptions", __config__=ConfigDict(extra="forbid"), **fields)


_MODELS: dict[int, type[BaseModel]] = {}


def _build(registry: Registry) -> type[BaseModel]:
    target_models = []
    for fmt in sorted(registry.formats):
        if not any(c.target == fmt for c in registry.converters.values()) and not any(
                p.source == fmt for p in registry.passes.values()):
            continue
        options = _target_options_model(registry, fmt)
        target_models.append(create_model(
            f"{_class_name(fmt)}Target", __base__=TargetSpec,
            format=(Literal[fmt], Field(description=registry.formats[fmt].description)),  # type: ignore[arg-type]
            options=(options, Field(default_factory=options, description=f"Options of the converter into {fmt}."))))
    union: Any = (target_models[0] if len(target_models) == 1
                  else Annotated[Union[tuple(target_models)], Field(discriminator="format")])  # noqa: UP007
    step_fields: dict[str, Any] = {
        step.name: (step.Options | None, Field(default=None, description=step.summary or step.__doc__ or ""))
        for step in registry.steps() if not step.job_level}
    step_options = create_model("StepOptions", __config__=ConfigDict(extra="forbid"), **step_fields)
    return create_model(
        "Recipe", __base__=JobSpec,
        targets=(list[union], Field(description="What to produce: a format, its precisions and options.")),
        step_options=(step_options, Field(default_factory=step_options,
                                          description="Options by step name, wherever the plan uses that step.")))


def typed_job_model(registry: Registry) -> type[BaseModel]:
    """Built once per registry (the registry does not change after plugins are loaded)."""
    if id(registry) not in _MODELS:
        _MODELS[id(registry)] = _build(registry)
    return _MODELS[id(registry)]


def recipe_json_schema(registry: Registry) -> dict[str, Any]:
    schema = typed_job_model(registry).model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "convcli recipe (version 1)"
    return schema
