"""/v1/datasets: upload a labelled dataset (.npz or .csv) and read what is stored."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, UploadFile, status

from service import datasets
from service.api.deps import SessionDep, SettingsDep
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
    responses=error_responses(413, 422),
    summary="Upload a dataset",
    description=UPLOAD_HELP + " Use the returned id as `data.dataset` in a spec.",
)
def upload_dataset(
    session: SessionDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description=UPLOAD_HELP)],
    name: Annotated[
        str | None, Form(max_length=200, examples=["my-signals"], description="Display name.")
    ] = None,
) -> DatasetRead:
    dataset = datasets.upload_dataset(
        session=session,
        content=file.file.read(),
        filename=file.filename or "",
        name=name,
        max_bytes=settings.max_upload_bytes,
    )
    return DatasetRead.model_validate(dataset)


@router.get("", response_model=list[DatasetRead], summary="List datasets")
def list_datasets(session: SessionDep) -> list[DatasetRead]:
    return [DatasetRead.model_validate(d) for d in datasets.list_datasets(session=session)]


@router.get("/{dataset_id}", response_model=DatasetRead, responses=error_responses(404, 422))
def get_dataset(
    session: SessionDep,
    dataset_id: Annotated[str, Path(max_length=64, description="The dataset's id (ds_...).")],
) -> DatasetRead:
    return DatasetRead.model_validate(datasets.get_dataset(session=session, dataset_id=dataset_id))
