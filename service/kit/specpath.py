"""Dotted paths into an experiment spec: ``"model.activation"`` -> ``("model", "activation")``.

One walker for every place that names a spec field by its dotted path: list filters
(``?model.activation=sigmoid``), sweep grids (``{"model.depth": [4, 8]}``), suggested
patches and the location of a 422. A path names a *scalar* field when every part but
the last is a section (a nested model) and the last is neither a section nor a list.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Annotated, Any, get_origin

from pydantic import BaseModel

from service.specs import ExperimentSpec

SpecPath = tuple[str, ...]
_MISSING: Any = object()


class UnknownSpecFieldError(KeyError):
    """``dotted`` is not the path of a scalar field; ``reason`` says why, for a person."""

    def __init__(self, dotted: str, reason: str) -> None:
        super().__init__(dotted)
        self.dotted = dotted
        self.reason = reason


def parse(dotted: str) -> SpecPath:
    return tuple(dotted.split("."))


def dotted(path: SpecPath) -> str:
    return ".".join(path)


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def scalar_annotation(path: SpecPath, model: type[BaseModel] = ExperimentSpec) -> Any:
    """The type annotation of the scalar field at ``path``; UnknownSpecFieldError otherwise."""
    annotation: Any = None
    for i, part in enumerate(path):
        field = model.model_fields.get(part)
        if field is None:
            raise UnknownSpecFieldError(dotted(path[: i + 1]), "no such field")
        annotation = field.annotation
        if i < len(path) - 1:
            if not _is_section(annotation):
                raise UnknownSpecFieldError(dotted(path[: i + 2]), f"{part} has no fields")
            model = annotation
    if _is_section(annotation):
        raise UnknownSpecFieldError(dotted(path), "a section, not a field")
    if annotation is list or get_origin(annotation) is list:
        raise UnknownSpecFieldError(dotted(path), "a list, not a scalar field")
    return annotation


def scalar_field_type(path: SpecPath) -> Any:
    """The scalar field's annotation with its constraints (bounds, lengths), for
    validating a value given for it outside a spec (a list filter)."""
    annotation = scalar_annotation(path)
    model: type[BaseModel] = ExperimentSpec
    for part in path[:-1]:
        model = model.model_fields[part].annotation  # type: ignore[assignment]
    metadata = model.model_fields[path[-1]].metadata
    return Annotated[annotation, *metadata] if metadata else annotation


def is_scalar_field(path: SpecPath) -> bool:
    try:
        scalar_annotation(path)
    except UnknownSpecFieldError:
        return False
    return True


def value_at(document: Mapping[str, Any] | None, path: SpecPath, default: Any = _MISSING) -> Any:
    """The value at ``path`` in a spec document; ``default`` (or KeyError) where absent."""
    value: Any = document
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            if default is _MISSING:
                raise KeyError(dotted(path))
            return default
        value = value[part]
    return value


def with_values(document: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``document`` with each dotted path of ``values`` set (sections
    created where missing)."""
    result: dict[str, Any] = copy.deepcopy(dict(document))
    for key, value in values.items():
        *parents, leaf = parse(key)
        target = result
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = copy.deepcopy(value)
    return result
