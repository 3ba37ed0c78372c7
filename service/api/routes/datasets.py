"""/v1/datasets: upload a labelled dataset (.npz or .csv) and read what is stored."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile, status

from service import datasets
from service.api.deps import DatasetDep, PrincipalDep, SessionDep, SettingsDep
from service.api.schemas.common import error_responses
from service.api.schemas.datasets import DatasetRead

router = APIRouter(prefix="/datasets", tags=["datasets"])

UPLOAD_HELP = (
    "An .npz with arrays `x` (examples, features) or (examples, height, width) and `y` "
    "(integer labels 0..C-1), or a .csv with a header row and a `label` column (else the "
    "last column is the label)."
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetRead,
    responses=error_responses(408, 413, 422, 429),
    summary="Upload a dataset",
    description=UPLOAD_HELP + " Use the returned id as `data.dataset` in a spec. A key may "
    "store at most `max_datasets` datasets and `max_dataset_storage_bytes` bytes (429).",
)
def upload_dataset(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    file: Annotated[UploadFile, File(description=UPLOAD_HELP)],
    name: Annotated[
        str | None, Form(max_length=200, examples=["my-signals"], description="Display name.")
    ] = None,
) -> DatasetRead:
    dataset = datasets.upload_dataset(
        session=session,
        settings=settings,
        principal=principal,
        content=file.file.read(),
        filename=file.filename or "",
        name=name,
    )
    return DatasetRead.model_validate(dataset)


@router.get("", response_model=list[DatasetRead], summary="List datasets")
def list_datasets(session: SessionDep, principal: PrincipalDep) -> list[DatasetRead]:
    found = datasets.list_datasets(session=session, principal=principal)
    return [DatasetRead.model_validate(d) for d in found]


@router.get("/{dataset_id}", response_model=DatasetRead, responses=error_responses(404, 422))
def get_dataset(dataset: DatasetDep) -> DatasetRead:
    return DatasetRead.model_validate(dataset)


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(404, 409, 422),
    summary="Delete a dataset",
    description="Frees its place in the key's dataset quota. A dataset that a queued or "
    "running job trains on is a 409.",
)
def delete_dataset(dataset: DatasetDep, session: SessionDep) -> Response:
    datasets.delete_dataset(session=session, dataset=dataset)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
