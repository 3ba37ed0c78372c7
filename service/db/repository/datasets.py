"""Queries of uploaded datasets; the arrays are loaded only when asked for."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.db.models import Dataset
from service.vocabulary import DataLayout


def create_dataset(
    *,
    session: Session,
    name: str,
    n_examples: int,
    x_shape: Sequence[int],
    num_classes: int,
    layout: DataLayout,
    content: bytes,
) -> Dataset:
    dataset = Dataset(
        id="ds_" + uuid.uuid4().hex[:12],
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


def get_dataset(*, session: Session, dataset_id: str) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def get_dataset_content(*, session: Session, dataset_id: str) -> bytes | None:
    return session.scalar(select(Dataset.content).where(Dataset.id == dataset_id))


def list_datasets(*, session: Session, limit: int = 200) -> Sequence[Dataset]:
    return session.scalars(
        select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit)
    ).all()
