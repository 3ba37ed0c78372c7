"""Uploaded datasets: parse an .npz or .csv, validate it, store a normalized .npz.

numpy only (no torch): the stored form is ``x`` float32 and ``y`` int64, which the
engine loads as it loads a built-in dataset.
"""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np
from sqlalchemy.orm import Session

from service.db.models import Dataset
from service.db.repository import datasets as dataset_queries
from service.errors import DatasetNotFound, InvalidRequest, PayloadTooLarge
from service.specs import DataSpec, dataset_layout

logger = logging.getLogger(__name__)

MIN_EXAMPLES = 10
MIN_CLASSES, MAX_CLASSES = 2, 1000
FILE_LOC = ("body", "file")
# An .npz is a zip: refuse archives that would inflate far beyond the upload limit.
MAX_INFLATION = 8
_ANY_UPLOADED = DataSpec(dataset="ds_000000000000")


@dataclass(frozen=True)
class ParsedDataset:
    x: np.ndarray
    y: np.ndarray
    num_classes: int


def _invalid(msg: str) -> InvalidRequest:
    return InvalidRequest.single(FILE_LOC, msg)


def _load_npz(content: bytes, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
        if inflated > MAX_INFLATION * max_bytes:
            raise _invalid(f"the .npz inflates to {inflated} bytes, too large")
        with np.load(io.BytesIO(content), allow_pickle=False) as npz:
            missing = {"x", "y"} - set(npz.files)
            if missing:
                raise _invalid(f"the .npz needs arrays 'x' and 'y' (missing {sorted(missing)})")
            return np.asarray(npz["x"]), np.asarray(npz["y"])
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise _invalid(f"not a readable .npz file: {exc}") from exc


def _load_csv(content: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _invalid("a .csv must be UTF-8 text") from exc
    header, _, body = text.partition("\n")
    columns = [c.strip().strip('"') for c in header.strip().split(",")]
    if len(columns) < 2:
        raise _invalid("a .csv needs a header row with feature columns and a label column")
    label = columns.index("label") if "label" in columns else len(columns) - 1
    try:
        table = np.loadtxt(io.StringIO(body), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise _invalid(f"the .csv must hold numbers only below its header: {exc}") from exc
    if table.shape[1] != len(columns):
        raise _invalid(f"rows have {table.shape[1]} values but the header {len(columns)}")
    return np.delete(table, label, axis=1), table[:, label]


def _check_x(x: np.ndarray) -> np.ndarray:
    if x.dtype.kind not in "iuf":
        raise _invalid(f"x must be numeric (got dtype {x.dtype})")
    if x.ndim not in (2, 3):
        raise _invalid(
            f"x must have 2 dims (examples, features) or 3 (examples, height, width); "
            f"got shape {list(x.shape)}"
        )
    with np.errstate(over="ignore"):  # overflow to inf is reported just below
        x32 = x.astype(np.float32)
    if not np.isfinite(x32).all():
        raise _invalid("x must be finite (no NaN or infinity, and within float32 range)")
    return x32


def _check_y(y: np.ndarray) -> tuple[np.ndarray, int]:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.dtype.kind not in "iuf":
        raise _invalid(f"y must be a 1-D array of integer labels (got shape {list(y.shape)})")
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise _invalid("y must hold integer class labels 0..C-1")
    if y.size and y.min() < 0:
        raise _invalid("y must hold integer class labels 0..C-1 (found a negative label)")
    num_classes = int(y.max()) + 1 if y.size else 0
    if not MIN_CLASSES <= num_classes <= MAX_CLASSES:
        raise _invalid(
            f"labels must be 0..C-1 with {MIN_CLASSES} <= C <= {MAX_CLASSES} (got C={num_classes})"
        )
    return y.astype(np.int64), num_classes


def parse_upload(content: bytes, filename: str, *, max_bytes: int) -> ParsedDataset:
    """Validate an upload; raise InvalidRequest (422) with a message a person understands."""
    suffix = PurePath(filename or "").suffix.lower()
    if suffix == ".npz" or (not suffix and content.startswith(b"PK")):
        x_raw, y_raw = _load_npz(content, max_bytes)
    elif suffix in (".csv", ""):
        x_raw, y_raw = _load_csv(content)
    else:
        raise _invalid(f"upload an .npz (arrays x and y) or a .csv, not {suffix!r}")
    x = _check_x(x_raw)
    y, num_classes = _check_y(y_raw)
    if len(x) != len(y):
        raise _invalid(f"x has {len(x)} examples but y has {len(y)} labels")
    if len(x) < MIN_EXAMPLES:
        raise _invalid(f"need at least {MIN_EXAMPLES} examples (got {len(x)})")
    return ParsedDataset(x=x, y=y, num_classes=num_classes)


def normalized_npz(parsed: ParsedDataset) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=parsed.x, y=parsed.y)
    return buffer.getvalue()


def upload_dataset(
    *, session: Session, content: bytes, filename: str, name: str | None, max_bytes: int
) -> Dataset:
    if len(content) > max_bytes:
        raise PayloadTooLarge(max_bytes)
    parsed = parse_upload(content, filename, max_bytes=max_bytes)
    dataset = dataset_queries.create_dataset(
        session=session,
        name=name or PurePath(filename or "dataset").stem or "dataset",
        n_examples=len(parsed.x),
        x_shape=list(parsed.x.shape),
        num_classes=parsed.num_classes,
        layout=dataset_layout(_ANY_UPLOADED, parsed.x.ndim) or "table",
        content=normalized_npz(parsed),
    )
    session.commit()
    logger.info("stored dataset %s (%d examples)", dataset.id, dataset.n_examples)
    return dataset


def get_dataset(*, session: Session, dataset_id: str) -> Dataset:
    dataset = dataset_queries.get_dataset(session=session, dataset_id=dataset_id)
    if dataset is None:
        raise DatasetNotFound(dataset_id)
    return dataset


def list_datasets(*, session: Session) -> Sequence[Dataset]:
    return dataset_queries.list_datasets(session=session)
