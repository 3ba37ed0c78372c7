"""Dataset queries (service.db.repository.datasets)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.db.repository import datasets as dataset_queries


def test_dataset_content_roundtrip(session: Session) -> None:
    dataset = dataset_queries.create_dataset(
        session=session,
        owner="anonymous",
        name="d",
        n_examples=10,
        x_shape=[10, 2],
        num_classes=2,
        layout="seq",
        content=b"\x00npz",
    )
    session.commit()
    assert dataset_queries.get_dataset_content(session=session, dataset_id=dataset.id) == b"\x00npz"
    assert dataset_queries.get_dataset_content(session=session, dataset_id="ds_x") is None
