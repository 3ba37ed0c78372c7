"""Uploaded datasets: parse an .npz or .csv, validate it, store a normalized .npz.

numpy only (no torch): the stored form is ``x`` float32 and ``y`` int64, which the
engine loads as it loads a built-in dataset.
"""

from __future__ import annotations

import array
import csv
import functools
import io
import logging
import math
import threading
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import IO

import numpy as np
from sqlalchemy.orm import Session

from service import quotas
from service.config import Settings
from service.db.models import Dataset
from service.db.repository import datasets as dataset_queries
from service.errors import (
    DatasetInUse,
    DatasetNotFound,
    InvalidRequest,
    PayloadTooLarge,
    TooManyRequests,
)
from service.keys import Principal
from service.kit import text
from service.specs import DataSpec, dataset_layout

logger = logging.getLogger(__name__)

MIN_EXAMPLES = 10
MIN_CLASSES, MAX_CLASSES = 2, 1000
FILE_LOC = ("body", "file")
NAME_LOC = ("body", "name")
NAME_MAX = 200  # Dataset.name
NPY_MEMBERS = ("x", "y")
NUMERIC_KINDS = "iuf"  # integers, unsigned integers, floats: nothing that needs pickle
MAX_NPY_HEADER = 10_000  # numpy's own default bound on a header's size
_ANY_UPLOADED = DataSpec(dataset="ds_000000000000")


@dataclass(frozen=True)
class ParsedDataset:
    x: np.ndarray
    y: np.ndarray
    num_classes: int


def _invalid(msg: str) -> InvalidRequest:
    return InvalidRequest.single(FILE_LOC, msg)


# --- .npz: headers first, then exactly the bytes they promise ----------------------------


@dataclass(frozen=True)
class _NpyHeader:
    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype
    header_bytes: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _read_npy_header(member: IO[bytes], name: str) -> _NpyHeader:
    """The array's header, read from the (still compressed) member: nothing allocated."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        read = np.lib.format.read_array_header_1_0
    elif version == (2, 0):
        read = np.lib.format.read_array_header_2_0
    else:
        raise _invalid(f"{name}: unsupported .npy format version {version}")
    shape, fortran_order, dtype = read(member, max_header_size=MAX_NPY_HEADER)
    if dtype.hasobject or dtype.kind not in NUMERIC_KINDS or dtype.fields is not None:
        raise _invalid(
            f"{name} has dtype {dtype}: only numeric arrays are accepted (object arrays "
            "and pickles never are)"
        )
    return _NpyHeader(tuple(int(d) for d in shape), bool(fortran_order), dtype, member.tell())


def _npz_headers(archive: zipfile.ZipFile) -> dict[str, tuple[zipfile.ZipInfo, _NpyHeader]]:
    members = {info.filename: info for info in archive.infolist()}
    missing = [n for n in NPY_MEMBERS if f"{n}.npy" not in members]
    if missing:
        raise _invalid(f"the .npz needs arrays 'x' and 'y' (missing {missing})")
    headers: dict[str, tuple[zipfile.ZipInfo, _NpyHeader]] = {}
    for name in NPY_MEMBERS:
        info = members[f"{name}.npy"]
        with archive.open(info) as member:
            header = _read_npy_header(member, name)
        if info.file_size != header.header_bytes + header.nbytes:
            raise _invalid(
                f"{name}: its header promises {header.nbytes} bytes of shape "
                f"{list(header.shape)}, but the archive holds "
                f"{info.file_size - header.header_bytes}"
            )
        headers[name] = (info, header)
    return headers


def _read_npy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, header: _NpyHeader) -> np.ndarray:
    with archive.open(info) as member:
        member.read(header.header_bytes)
        data = member.read(header.nbytes + 1)  # one more: the member must end here
    if len(data) != header.nbytes:
        raise _invalid(f"{info.filename}: holds {len(data)} bytes, its header {header.nbytes}")
    flat = np.frombuffer(data, dtype=header.dtype)
    return flat.reshape(header.shape, order="F" if header.fortran_order else "C")


def _load_npz(content: bytes, max_inflated: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y of an .npz, checked from their headers (dtype, shape, bytes) against
    ``max_inflated`` before a byte of their data is decompressed."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            headers = _npz_headers(archive)
            inflated = sum(header.nbytes for _, header in headers.values())
            if inflated > max_inflated:
                shapes = {n: list(h.shape) for n, (_, h) in headers.items()}
                raise _invalid(
                    f"the .npz inflates to {inflated} bytes of arrays {shapes}; this server "
                    f"accepts at most {max_inflated} bytes once decompressed"
                )
            x, y = (_read_npy(archive, *headers[name]) for name in NPY_MEMBERS)
            return x, y
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error) as exc:
        raise _invalid(f"not a readable .npz file: {exc}") from exc
    except NotImplementedError as exc:  # a compression method zipfile does not have
        raise _invalid(f"unsupported .npz compression: {exc}") from exc


# --- .csv: the csv module (quoted fields), one compact array of doubles -------------------


def _load_csv(content: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        decoded = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _invalid("a .csv must be UTF-8 text") from exc
    reader = csv.reader(io.StringIO(decoded, newline=""))
    try:
        columns = [c.strip() for c in next(reader, [])]
        if len(columns) < 2:
            raise _invalid("a .csv needs a header row with feature columns and a label column")
        values = array.array("d")  # 8 bytes a value, not a Python float object each
        rows = 0
        for row in reader:
            if not row:
                continue  # a blank line
            if len(row) != len(columns):
                raise _invalid(
                    f"line {reader.line_num} has {len(row)} values but the header {len(columns)}"
                )
            try:
                values.extend(float(value) for value in row)
            except ValueError as exc:
                raise _invalid(
                    f"the .csv must hold numbers only below its header (line {reader.line_num})"
                ) from exc
            rows += 1
    except csv.Error as exc:
        raise _invalid(f"not a readable .csv (line {reader.line_num}): {exc}") from exc
    label = columns.index("label") if "label" in columns else len(columns) - 1
    table = np.frombuffer(values, dtype=np.float64).reshape(rows, len(columns))
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


def parse_upload(content: bytes, filename: str, *, max_inflated: int) -> ParsedDataset:
    """Validate an upload; raise InvalidRequest (422) with a message a person understands."""
    suffix = PurePath(filename or "").suffix.lower()
    if suffix == ".npz" or (not suffix and content.startswith(b"PK")):
        x_raw, y_raw = _load_npz(content, max_inflated)
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


@functools.cache
def _upload_slots(slots: int) -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(slots)


def _display_name(name: str | None, filename: str) -> str:
    if name is not None and text.has_forbidden_chars(name):
        raise InvalidRequest.single(NAME_LOC, text.FORBIDDEN_MESSAGE, text.printable(name))
    stem = PurePath(text.printable(filename or "dataset")).stem
    return (name or stem or "dataset")[:NAME_MAX]


def upload_dataset(
    *,
    session: Session,
    settings: Settings,
    principal: Principal,
    content: bytes,
    filename: str,
    name: str | None,
) -> Dataset:
    """Parse, check and store an upload of ``principal``, within its dataset quota.

    At most ``max_concurrent_uploads`` are parsed at once in this process: each may
    take a few times the decompressed limit in memory while it is converted."""
    if len(content) > settings.max_upload_bytes:
        raise PayloadTooLarge(settings.max_upload_bytes)
    display_name = _display_name(name, filename)
    slots = _upload_slots(settings.max_concurrent_uploads)
    if not slots.acquire(timeout=settings.body_total_timeout_s):
        raise TooManyRequests("too many uploads in progress; try again shortly", retry_after=5)
    try:
        parsed = parse_upload(content, filename, max_inflated=settings.max_inflated_upload_bytes)
        stored = normalized_npz(parsed)
    finally:
        slots.release()
    quotas.check_dataset_quota(
        session=session,
        owner=principal.id,
        adding_bytes=len(stored),
        max_datasets=settings.max_datasets,
        max_bytes=settings.max_dataset_storage_bytes,
    )
    dataset = dataset_queries.create_dataset(
        session=session,
        owner=principal.id,
        name=display_name,
        n_examples=len(parsed.x),
        x_shape=list(parsed.x.shape),
        num_classes=parsed.num_classes,
        layout=dataset_layout(_ANY_UPLOADED, parsed.x.ndim) or "table",
        content=stored,
    )
    session.commit()
    logger.info("stored dataset %s (%d examples)", dataset.id, dataset.n_examples)
    return dataset


def get_dataset(*, session: Session, dataset_id: str, principal: Principal) -> Dataset:
    """The dataset, if ``principal`` may see it; another owner's is as unknown (404)."""
    dataset = dataset_queries.get_dataset(
        session=session, dataset_id=dataset_id, owner=principal.scope
    )
    if dataset is None:
        raise DatasetNotFound(dataset_id)
    return dataset


def list_datasets(*, session: Session, principal: Principal) -> Sequence[Dataset]:
    return dataset_queries.list_datasets(session=session, owner=principal.scope)


def delete_dataset(*, session: Session, dataset: Dataset) -> None:
    """Remove a dataset no queued or running job trains on (409 otherwise)."""
    in_use = dataset_queries.count_active_jobs_using(session=session, dataset_id=dataset.id)
    if in_use:
        raise DatasetInUse(dataset.id, in_use)
    dataset_queries.delete_dataset(session=session, dataset_id=dataset.id)
    session.commit()
