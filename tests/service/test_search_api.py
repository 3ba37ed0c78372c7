"""Job search: filters with comparison operators on spec and result fields, by sweep,
sorts on any of them with keyset pagination, and their 422s (both backends)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from service import search
from service.db.models import JobField
from service.db.repository import jobs as job_queries
from service.db.repository import sweeps as sweep_queries
from service.keys import ANONYMOUS
from service.kit.pagination import Position
from service.specs import ExperimentSpec

# (lr, depth, activation, val_acc or None: not finished; "nan": diverged)
JOBS: list[tuple[float, int, str, float | str | None]] = [
    (0.001, 4, "relu", 0.95),
    (0.01, 4, "sigmoid", 0.62),
    (0.01, 8, "relu", 0.91),
    (0.1, 8, "tanh", "nan"),
    (0.05, 2, "relu", None),
    (0.01, 6, "relu", 0.91),
]


@pytest.fixture
def searched(session: Session) -> list[str]:
    sweep_queries.create_sweep(
        session=session, owner=ANONYMOUS, sweep_id="sw1", name="s", base={}, grid={}
    )
    ids = []
    for i, (lr, depth, activation, val_acc) in enumerate(JOBS):
        spec = ExperimentSpec.model_validate(
            {
                "name": f"j{i}",
                "train": {"lr": lr},
                "model": {"depth": depth, "activation": activation, "skip": depth == 8},
            }
        )
        job = job_queries.create_job(
            session=session,
            owner=ANONYMOUS,
            spec=spec,
            queue="cpu",
            sweep_id="sw1" if i < 3 else None,
        )
        if val_acc is not None:
            value = math.nan if val_acc == "nan" else val_acc
            result = {"val_acc": value, "diverged": val_acc == "nan", "device": "cpu"}
            job_queries.finish_job(
                session=session, job_id=job.id, status="succeeded", result=result
            )
        ids.append(job.id)
    session.commit()
    return ids


def _ids(client: TestClient, query: str) -> set[str]:
    response = client.get(f"/v1/jobs?{query}")
    assert response.status_code == 200, response.text
    return {job["id"] for job in response.json()["items"]}


def _where(ids: list[str], keep: Callable[[tuple[float, int, str, Any]], bool]) -> set[str]:
    return {job_id for job_id, row in zip(ids, JOBS, strict=True) if keep(row)}


def _number(value: Any) -> float | None:
    return value if isinstance(value, float) else None


OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


@pytest.mark.parametrize("op", list(OPERATORS))
def test_each_operator_on_a_spec_and_a_result_field(
    client: TestClient, searched: list[str], op: str
) -> None:
    compare = OPERATORS[op]
    assert _ids(client, f"where=train.lr{op}0.01") == _where(
        searched, lambda r: compare(r[0], 0.01)
    )
    assert _ids(client, f"where=model.depth{op}6") == _where(searched, lambda r: compare(r[1], 6))
    # A job with no result, or a NaN (stored as "NaN"), matches no comparison of a number.
    expected = _where(searched, lambda r: (v := _number(r[3])) is not None and compare(v, 0.91))
    assert _ids(client, f"where=result.val_acc{op}0.91") == expected


def test_the_query_string_may_spell_comparisons_directly(
    client: TestClient, searched: list[str]
) -> None:
    assert _ids(client, "train.lr>=0.05") == _where(searched, lambda r: r[0] >= 0.05)
    assert _ids(client, "result.val_acc%3E0.9") == _where(
        searched, lambda r: (_number(r[3]) or 0) > 0.9
    )
    assert _ids(client, "model.depth!=4") == _where(searched, lambda r: r[1] != 4)
    # The older equality form is unchanged.
    assert _ids(client, "model.activation=relu") == _where(searched, lambda r: r[2] == "relu")


def test_strings_booleans_nulls_sweeps_and_filters_combined(
    client: TestClient, searched: list[str]
) -> None:
    assert _ids(client, "where=model.activation!=relu") == _where(
        searched, lambda r: r[2] != "relu"
    )
    assert _ids(client, "where=model.skip=true") == _where(searched, lambda r: r[1] == 8)
    assert _ids(client, "where=model.skip!=true") == _where(searched, lambda r: r[1] != 8)
    assert _ids(client, "where=result.diverged=true") == _where(searched, lambda r: r[3] == "nan")
    assert _ids(client, "where=result.device=cpu") == _where(searched, lambda r: r[3] is not None)
    assert _ids(client, "where=result.val_acc=null") == _where(searched, lambda r: r[3] is None)
    assert _ids(client, "where=result.val_acc!=null") == _where(
        searched, lambda r: r[3] is not None
    )
    assert _ids(client, "sweep_id=sw1") == set(searched[:3])
    assert _ids(client, "sweep_id=sw1&where=train.lr>=0.01&where=result.val_acc>0.9") == {
        searched[2]
    }


def _expected_order(ids: list[str], descending: bool) -> list[str]:
    """Numbers by (value, id) in the asked direction, then jobs without one, by id."""
    valued = [
        (v, i) for i, row in zip(ids, JOBS, strict=True) if (v := _number(row[3])) is not None
    ]
    rest = sorted((i for i, row in zip(ids, JOBS, strict=True) if _number(row[3]) is None))
    return [i for _, i in sorted(valued, reverse=descending)] + (rest[::-1] if descending else rest)


@pytest.mark.parametrize("sort", ["result.val_acc", "-result.val_acc"])
def test_sort_by_a_result_field_pages_through_every_job_once(
    client: TestClient, searched: list[str], sort: str
) -> None:
    seen: list[str] = []
    url: str | None = f"/v1/jobs?limit=2&sort={sort}"
    while url:
        body = client.get(url).json()
        seen += [job["id"] for job in body["items"]]
        cursor = body["next_cursor"]
        url = f"/v1/jobs?limit=2&sort={sort}&cursor={cursor}" if cursor else None
    assert seen == _expected_order(searched, descending=sort.startswith("-"))


def test_sort_by_a_spec_field_with_a_filter_pages_in_order(
    client: TestClient, searched: list[str]
) -> None:
    rows = sorted(
        ((lr, job_id) for job_id, (lr, *_) in zip(searched, JOBS, strict=True) if lr >= 0.01),
        reverse=True,
    )
    seen: list[str] = []
    url: str | None = "/v1/jobs?limit=1&sort=-train.lr&where=train.lr>=0.01"
    while url:
        body = client.get(url).json()
        seen += [job["id"] for job in body["items"]]
        cursor = body["next_cursor"]
        url = (
            f"/v1/jobs?limit=1&sort=-train.lr&where=train.lr>=0.01&cursor={cursor}"
            if cursor
            else None
        )
    assert seen == [job_id for _, job_id in rows]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("where=train.lrr>0.1", "where"),
        ("where=result.nope>1", "where"),
        ("where=train>0.1", "where"),
        ("where=train.lr~0.1", "where"),
        ("where=train.lr", "where"),
        ("where=train.lr>abc", "where"),
        ("where=train.lr>nan", "where"),
        ("where=model.activation>relu", "where"),
        ("where=model.activation!=swish", "where"),
        ("where=result.val_acc>null", "where"),
        ("where=result.diverged<true", "where"),
        ("train.lr>=abc", "train.lr>"),
        ("model.depthh=3", "model.depthh"),
        ("sort=result.nope", "sort"),
        ("sort=-train", "sort"),
        ("sort=tags", "sort"),
    ],
)
def test_unknown_fields_and_bad_operators_or_values_are_422(
    client: TestClient, query: str, param: str
) -> None:
    response = client.get(f"/v1/jobs?{query}")
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", param]


def test_a_cursor_of_one_sort_is_refused_by_another(
    client: TestClient, searched: list[str]
) -> None:
    cursor = client.get("/v1/jobs?limit=1&sort=result.val_acc").json()["next_cursor"]
    response = client.get(f"/v1/jobs?limit=1&sort=-result.val_acc&cursor={cursor}")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "cursor"]


# --- the field index (job_field) against the documents -------------------------------

INDEXED_SEARCHES: list[tuple[list[str], str]] = [
    (["train.lr>=0.01"], "-created_at"),
    (["result.val_acc>0.9"], "created_at"),
    (["result.val_acc<=0.91", "model.depth>2"], "-created_at"),
    ([], "-result.val_acc"),
    ([], "result.val_acc"),
    ([], "-train.lr"),
    ([], "model.activation"),
    (["train.lr>=0.01"], "-result.val_acc"),
    (["result.val_acc>0.9"], "train.lr"),
    (["model.activation=relu", "model.skip!=true"], "-result.val_acc"),
    (["model.activation!=relu", "result.diverged=false"], "model.depth"),
    (["result.val_acc=null"], "-train.lr"),
    (["result.device=cpu", "model.depth!=4"], "-model.depth"),
]


def _every_page(session: Session, owner: str | None, filters: list[str], sort: str) -> list[str]:
    """Every job the search lists, two per page, through the keyset cursor."""
    parsed = [search.parse_filter(f, loc=("query", "where")) for f in filters]
    sort_key = search.parse_sort(sort)
    seen: list[str] = []
    after: Position | None = None
    while True:
        page = job_queries.list_jobs(
            session=session, owner=owner, filters=parsed, sort=sort_key, after=after, limit=2
        )
        seen += [job.id for job in page]
        if len(page) < 2:
            return seen
        last = page[-1]
        key = (
            last.created_at
            if sort_key.field is None
            else job_queries.sort_value(last, sort_key.field)
        )
        after = Position(key=key, id=last.id)


@pytest.mark.parametrize("selective_matches", [job_queries.SELECTIVE_MATCHES, 1])
@pytest.mark.parametrize(("filters", "sort"), INDEXED_SEARCHES)
def test_the_field_index_lists_what_the_documents_list(
    session: Session,
    searched: list[str],
    monkeypatch: pytest.MonkeyPatch,
    selective_matches: int,
    filters: list[str],
    sort: str,
) -> None:
    """One owner's search reads job_field; an admin's (owner None) reads the documents.
    With a threshold of 1 no range filter is selective and pages walk the jobs."""
    monkeypatch.setattr(job_queries, "SELECTIVE_MATCHES", selective_matches)
    indexed = _every_page(session, ANONYMOUS, filters, sort)
    assert indexed == _every_page(session, None, filters, sort)
    assert len(indexed) == len(set(indexed))


def test_a_job_field_row_per_number_and_string_of_the_spec_and_result(
    session: Session, searched: list[str]
) -> None:
    rows = session.execute(
        select(JobField.path, JobField.number, JobField.string).where(
            JobField.job_id == searched[3]
        )
    ).all()
    fields = {path: (number, string) for path, number, string in rows}
    assert fields["train.lr"] == (0.1, None)
    assert fields["model.depth"] == (8, None)
    assert fields["model.activation"] == (None, "tanh")
    assert fields["result.device"] == (None, "cpu")
    # A NaN is the string "NaN": no number. Booleans and nulls have no row.
    assert fields["result.val_acc"] == (None, "NaN")
    assert "model.skip" not in fields and "result.diverged" not in fields
    assert "data.train_size" not in fields
    # An unfinished job has no result rows.
    unfinished = session.scalars(
        select(JobField.path).where(JobField.job_id == searched[4], JobField.path.like("result.%"))
    ).all()
    assert unfinished == []


def test_indexed_searches_never_list_another_owners_jobs(
    session: Session, searched: list[str]
) -> None:
    spec = ExperimentSpec.model_validate({"name": "theirs", "train": {"lr": 0.01}})
    theirs = job_queries.create_job(session=session, owner="alice", spec=spec, queue="cpu")
    job_queries.finish_job(
        session=session, job_id=theirs.id, status="succeeded", result={"val_acc": 0.99}
    )
    session.commit()
    for filters, sort in INDEXED_SEARCHES:
        assert theirs.id not in _every_page(session, ANONYMOUS, filters, sort)
    assert _every_page(session, "alice", ["result.val_acc>0.9"], "-train.lr") == [theirs.id]
    assert _every_page(session, "alice", [], "-result.val_acc") == [theirs.id]


def test_a_deleted_job_takes_its_field_rows_along(session: Session, searched: list[str]) -> None:
    job_queries.delete_job(session=session, job_id=searched[0])
    session.commit()
    left = session.scalars(select(JobField.job_id).where(JobField.job_id == searched[0])).all()
    assert left == []
    assert searched[0] not in _every_page(session, ANONYMOUS, [], "-train.lr")
