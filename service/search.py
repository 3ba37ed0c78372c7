"""Job search: filters on spec and result fields with comparison operators, and sorts.

A filter is ``field op value`` with ``op`` one of ``= != < <= > >=``. It is written as a
``where`` query parameter (``?where=train.lr>=0.01&where=result.val_acc>0.9``), or as the
query string spells it directly (``?train.lr>=0.01``, ``?model.activation=relu``: the
older equality form). A field is a spec field by its dotted path, or ``result.`` and one
of ``RESULT_FIELDS``. Numbers compare with every operator; strings and booleans with
``=`` and ``!=``; ``null`` (= or !=) matches a field that is null or absent.

``sort`` is ``created_at`` or any such field, ``-`` first for descending; jobs without
the field come last either way, and the cursor of a page holds its sort key.

How they run (``repository.jobs.list_jobs``): every number and string of a job's spec
and result is also a ``job_field`` row, indexed by (owner, field, value, job id). One
owner's sorts on a number or string walk that index; range filters on a number that
match few jobs are read from it; equalities, booleans and an admin's view read the
JSONB documents (GIN indexes on PostgreSQL). Both paths answer the same.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from datetime import datetime
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, cast, get_args, get_origin

from pydantic import TypeAdapter, ValidationError

from service.db.repository.jobs import FieldFilter, FieldRef, SortKey
from service.errors import InvalidRequest
from service.kit import specpath
from service.vocabulary import FieldKind, FilterOp

# The fields of a finished job's ``result`` (worker.tasks.result_summary) and their kind.
RESULT_FIELDS: dict[str, FieldKind] = {
    "train_loss": "number",
    "train_acc": "number",
    "val_loss": "number",
    "val_acc": "number",
    "best_val_loss": "number",
    "best_epoch": "number",
    "epochs_run": "number",
    "steps": "number",
    "seconds": "number",
    "layer_stat_rows": "number",
    "resumed_from_step": "number",
    "stopped_early": "boolean",
    "cancelled": "boolean",
    "diverged": "boolean",
    "suspended": "boolean",
    "timed_out": "boolean",
    "device": "string",
    "landscape.dims": "number",
    "landscape.points": "number",
    "landscape.roughness": "number",
    "landscape.sharpness": "number",
    "landscape.local_minima": "number",
}
RESULT_PREFIX = "result."
CREATED_AT = "created_at"
WHERE = "where"
# Filters compare as SQL numbers: integers beyond this are refused (as before).
MAX_SQL_INT = 2**31 - 1
ORDERED_OPS: frozenset[FilterOp] = frozenset({"<", "<=", ">", ">="})
_EXPRESSION = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(!=|>=|<=|=|<|>)(.*)", re.DOTALL)


class SearchError(ValueError):
    """A filter or sort that cannot be run; the message is for a person."""


def _kind_of(annotation: Any, dotted: str) -> FieldKind:
    """How a spec field's values compare, from its type annotation."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, UnionType):
        options = [a for a in get_args(annotation) if a is not NoneType]
        if len(options) == 1:
            return _kind_of(options[0], dotted)
    if get_origin(annotation) is Literal:
        annotation = type(get_args(annotation)[0])
    if annotation is bool:
        return "boolean"
    if annotation in (int, float):
        return "number"
    if annotation is str:
        return "string"
    raise specpath.UnknownSpecFieldError(dotted, "not a number, string or boolean field")


def field_ref(name: str) -> FieldRef:
    """The field a filter or sort names; UnknownSpecFieldError if there is none."""
    if name.startswith(RESULT_PREFIX):
        result_name = name.removeprefix(RESULT_PREFIX)
        if result_name not in RESULT_FIELDS:
            known = ", ".join(RESULT_FIELDS)
            raise specpath.UnknownSpecFieldError(name, f"no such result field (one of {known})")
        return FieldRef("result", specpath.parse(result_name), RESULT_FIELDS[result_name])
    path = specpath.parse(name)
    return FieldRef("spec", path, _kind_of(specpath.scalar_annotation(path), name))


def _scalar(value: Any) -> str | int | float | bool | None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SQL_INT:
        raise SearchError(f"must be at most {MAX_SQL_INT} in absolute value")
    if isinstance(value, float) and not math.isfinite(value):
        raise SearchError("must be a finite number")
    if value is not None and not isinstance(value, str | int | float | bool):
        raise SearchError("not a scalar value")
    return value


@functools.cache
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    # Building a TypeAdapter costs far more than a validation: one per field type.
    return TypeAdapter(annotation)


def _value(ref: FieldRef, op: FilterOp, raw: str) -> str | int | float | bool | None:
    if raw == "null":
        if op in ORDERED_OPS:
            raise SearchError(f"null compares with = or != only, not {op}")
        return None
    if op in ORDERED_OPS and ref.kind != "number":
        raise SearchError(f"a {ref.kind} field compares with = or != only, not {op}")
    if ref.document == "result":
        annotation: Any = {"number": float, "string": str, "boolean": bool}[ref.kind]
    elif op == "=":
        # As the field is validated, bounds included: a value it can never hold is an
        # error, not an empty list.
        annotation = specpath.scalar_field_type(ref.path)
    else:
        annotation = {"number": float, "string": str, "boolean": bool}[ref.kind]
        if ref.kind == "string":
            annotation = specpath.scalar_annotation(ref.path)
    try:
        return _scalar(_adapter(annotation).validate_python(raw))
    except ValidationError as exc:
        raise SearchError(str(exc.errors()[0]["msg"])) from exc


def parse_filter(expression: str, *, loc: tuple[str, ...]) -> FieldFilter:
    """``train.lr>=0.01`` -> a filter, or a 422 at ``loc`` that says what is wrong."""
    match = _EXPRESSION.fullmatch(expression)
    if match is None:
        msg = "a filter is field, operator (one of = != < <= > >=) and value: e.g. train.lr>=0.01"
        raise InvalidRequest.single(loc, msg, expression)
    name, op, raw = match.group(1), cast("FilterOp", match.group(2)), match.group(3).strip()
    try:
        ref = field_ref(name)
    except specpath.UnknownSpecFieldError as exc:
        msg = f"unknown filter field {name!r}: {exc.reason} (a scalar spec field or result.*)"
        raise InvalidRequest.single(loc, msg, expression) from exc
    try:
        value = _value(ref, op, raw)
    except SearchError as exc:
        msg = f"invalid value for {name!r}: {exc}"
        raise InvalidRequest.single(loc, msg, expression) from exc
    return FieldFilter(field=ref, op=op, value=value)


def _expression_of_param(key: str, raw: str) -> str:
    """The filter a query parameter spells: ``train.lr>=0.01`` arrives as the key
    ``train.lr>`` and the value ``0.01``; ``val_acc>0.9`` as a key with no value."""
    if key.endswith((">", "<", "!")):
        return f"{key}={raw}"
    if ("<" in key or ">" in key) and raw == "":
        return key
    return f"{key}={raw}"


def parse_filters(
    params: Sequence[tuple[str, str]], *, reserved: frozenset[str]
) -> list[FieldFilter]:
    """Every filter of a list query: ``where`` parameters and any other parameter that
    is not one of ``reserved`` (the list's own parameters)."""
    filters: list[FieldFilter] = []
    for key, raw in params:
        if key == WHERE:
            filters.append(parse_filter(raw, loc=("query", WHERE)))
        elif key not in reserved:
            filters.append(parse_filter(_expression_of_param(key, raw), loc=("query", key)))
    return filters


def parse_sort(sort: str) -> SortKey:
    """``-result.val_acc`` -> descending on that field; ``created_at`` -> creation time."""
    name = sort.removeprefix("-")
    descending = sort.startswith("-")
    if name == CREATED_AT:
        return SortKey(field=None, descending=descending)
    try:
        return SortKey(field=field_ref(name), descending=descending)
    except specpath.UnknownSpecFieldError as exc:
        msg = f"cannot sort by {name!r}: {exc.reason} (created_at, a spec field or result.*)"
        raise InvalidRequest.single(("query", "sort"), msg, sort) from exc


def cursor_key_types(sort: SortKey) -> tuple[type, ...]:
    """The types a cursor's sort key may have under ``sort``."""
    if sort.field is None:
        return (datetime,)
    return {
        "number": (int, float, NoneType),
        "string": (str, NoneType),
        "boolean": (bool, NoneType),
    }[sort.field.kind]
