"""Schemas of POST /v1/jobs/{id}/retry-with: the change to make."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.openapi.models import Example
from pydantic import BaseModel, ConfigDict, Field

MAX_PATCH_FIELDS = 64


class RetryWith(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    # Any, not a union of JSON scalars: each value is validated against its spec field,
    # which gives one located message ("model.depth: Input should be a valid integer").
    patch: dict[Annotated[str, Field(max_length=100)], Any] = Field(
        default_factory=dict,
        max_length=MAX_PATCH_FIELDS,
        description="Spec changes by dotted path of a scalar field, e.g. "
        '`{"model.activation": "relu", "model.init": "kaiming"}`. With `apply` as well, '
        "these win over the suggested values.",
    )
    apply: Literal["suggested"] | None = Field(
        None,
        description="`suggested`: apply every current finding's `suggested_spec_patch` "
        "(GET /v1/jobs/{id}/diagnosis), in rank order: where two findings set one field, "
        "the higher-ranked one wins.",
    )


RETRY_EXAMPLES: dict[str, Example] = {
    "suggested": {
        "summary": "Apply the diagnosis' suggested patches",
        "value": {"apply": "suggested"},
    },
    "patch": {
        "summary": "A deep sigmoid net fixed by hand: ReLU and He init",
        "value": {"patch": {"model.activation": "relu", "model.init": "kaiming"}},
    },
}
