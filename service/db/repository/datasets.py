"""Queries of uploaded datasets; the arrays are loaded only when asked for."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.db.models import Dataset, Job
from service.vocabulary import ACTIVE_STATUSES, DataLayout


def create_dataset(
    *,
    session: Session,
    owner: str,
    name: str,
    n_examples: int,
    x_shape: Sequence[int],
    num_classes: int,
    layout: DataLayout,
    content: bytes,
) -> Dataset:
    dataset = Dataset(
        id="ds_" + uuid.uuid4().hex[:12],
        owner=owner,
        name=name,
        created_at=utcnow(),
        n_examples=n_examples,
        x_shape=list(x_shape),
        num_classes=num_classes,
        layout=layout,
        size_bytes=len(content),
        content=content,
    )
    session.add(dataset)
    session.flush()
    return dataset


def get_dataset(*, session: Session, dataset_id: str, owner: str | None) -> Dataset | None:
    """The dataset, if ``owner`` owns it (None: whoever does)."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or (owner is not None and dataset.owner != owner):
        return None
    return dataset


def dataset_usage(*, session: Session, owner: str) -> tuple[int, int]:
    """(datasets, stored bytes) of one owner."""
    row = session.execute(
        select(func.count(), func.coalesce(func.sum(Dataset.size_bytes), 0)).where(
            Dataset.owner == owner
        )
    ).one()
    return int(row[0]), int(row[1])


def count_active_jobs_using(*, session: Session, dataset_id: str) -> int:
    """Queued or running jobs whose spec trains on the dataset."""
    stmt = select(func.count()).where(
        Job.spec[("data", "dataset")].as_string() == dataset_id,
        Job.status.in_(sorted(ACTIVE_STATUSES)),
    )
    return int(session.scalar(stmt) or 0)


def delete_dataset(*, session: Session, dataset_id: str) -> None:
    session.execute(delete(Dataset).where(Dataset.id == dataset_id))


def get_dataset_content(*, session: Session, dataset_id: str) -> bytes | None:
    return session.scalar(select(Dataset.content).where(Dataset.id == dataset_id))


def list_datasets(*, session: Session, owner: str | None, limit: int = 200) -> Sequence[Dataset]:
    stmt = select(Dataset)
    if owner is not None:
        stmt = stmt.where(Dataset.owner == owner)
    return session.scalars(
        stmt.order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit)
    ).all()
