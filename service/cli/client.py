"""Client commands: the HTTP API from a terminal (submit, watch, jobs, show, compare,
cancel, retry, plot).

Every failure is one clear line on stderr and a non-zero exit: the URL that could not be
reached and what to run, a 422 as ``field.path: message`` per error, a missing file or
a bad JSON/YAML spec without a traceback.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
import yaml
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from service.vocabulary import FINISHED_STATUSES, HIDDEN_WEIGHT_KINDS, JOB_PLOT_NAMES

DEFAULT_URL = "http://127.0.0.1:8000"
# `trainlab up` writes the URL it listens on here, so that `make run PORT=8001` and the
# CLI agree without an environment variable.
URL_FILE = "api-url"
POLL_S = 1.0
RECONNECTS = 5
BAR = 18  # characters of the longest gradient bar
BAR_DECADES = 3  # the bar scale spans at least this many decades
VANISHED_RATIO = 1e-3  # a layer whose gradient norm is this far below the last one's
FLOW_KINDS = frozenset(HIDDEN_WEIGHT_KINDS) | {"projection", "output"}
STATUS_STYLE = {
    "queued": "dim",
    "running": "blue",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
}
SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}

out = Console(highlight=False)
if not out.is_terminal:
    out.width = 120  # logs and pipes: rich would assume 80 columns
err = Console(stderr=True, highlight=False, soft_wrap=True)
JOB_ID_LENGTH = 32
PREFIX_SCAN_PAGES = 5  # a short id is looked up among the newest 5 x 200 jobs

UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="TRAINLAB_URL",
        help="The API's base URL. Default: what `trainlab up` wrote in --data-dir, "
        f"else {DEFAULT_URL}.",
        show_default=False,
    ),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key", envvar="TRAINLAB_API_KEY", help="Sent as X-API-Key.", show_default=False
    ),
]
DataDirOpt = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="TRAINLAB_DATA_DIR",
        help="Where `trainlab up` keeps its data (and the URL it listens on).",
    ),
]
WatchOpt = Annotated[
    bool,
    typer.Option(
        "--watch",
        "--wait",
        "-w",
        help="Follow the job live, then print its diagnosis; exit 1 unless it succeeds.",
    ),
]


class CliError(Exception):
    """One line for the person at the terminal."""


def fail(message: str) -> NoReturn:
    raise CliError(message)


def resolve_url(url: str | None, data_dir: Path) -> str:
    if url:
        return url.rstrip("/")
    written = data_dir / URL_FILE
    if written.is_file() and (text := written.read_text().strip()):
        return text.rstrip("/")
    return DEFAULT_URL


def error_lines(response: httpx.Response) -> list[str]:
    """The API's error body as lines a person reads: ``model.depth: message`` for 422."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = response.text.strip() or response.reason_phrase
    if isinstance(detail, list):
        lines = []
        for item in detail:
            loc = [str(part) for part in item.get("loc", [])]
            if loc and loc[0] == "body":
                loc = loc[1:]
            where = ".".join(loc) or "body"
            lines.append(f"{where}: {item.get('msg', item)}")
        return lines
    return [str(detail)]


class Api:
    def __init__(self, url: str, api_key: str | None, *, timeout: float = 30) -> None:
        self.url = url
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def unreachable(self, exc: Exception) -> CliError:
        reason = type(exc).__name__ if not str(exc) else str(exc)
        return CliError(
            f"cannot reach the trainlab API at {self.url} ({reason}): start it with "
            "`trainlab up` (or `make run`), or point --url / TRAINLAB_URL at it"
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from exc
        if response.is_error:
            lines = error_lines(response)
            hint = ""
            if response.status_code in (401, 403):
                hint = " (set TRAINLAB_API_KEY or pass --api-key)"
            prefix = f"error {response.status_code}: "
            if response.status_code == 422:
                count = f"{len(lines)} error" + ("" if len(lines) == 1 else "s")
                raise CliError(f"invalid request ({count}):\n" + "\n".join(lines))
            raise CliError(prefix + "; ".join(lines) + hint)
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params).json()

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body).json()


def _api(url: str | None, api_key: str | None, data_dir: Path) -> Api:
    return Api(resolve_url(url, data_dir), api_key)


def resolve_job(api: Api, job_id: str) -> dict[str, Any]:
    """The job with this id, or with this unique id prefix (the 8 characters `trainlab
    jobs` shows) among the newest jobs."""
    try:
        return dict(api.get(f"/v1/jobs/{job_id}"))
    except CliError:
        if len(job_id) >= JOB_ID_LENGTH or len(job_id) < 4:
            raise
    matches: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(PREFIX_SCAN_PAGES):
        params: dict[str, Any] = {"limit": 200} | ({"cursor": cursor} if cursor else {})
        page = api.get("/v1/jobs", **params)
        matches += [job for job in page["items"] if job["id"].startswith(job_id)]
        cursor = page["next_cursor"]
        if not cursor:
            break
    if len(matches) == 1:
        return matches[0]
    if matches:
        fail(f"{job_id!r} is the start of {len(matches)} job ids: give more characters")
    fail(f"no job with id {job_id!r}")


def guarded(function: Any) -> Any:
    """Commands print CliError as one line (no traceback) and exit 1."""
    import functools

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except CliError as exc:
            err.print(Text(f"trainlab: {exc}", style="red"))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


# --- reading a spec -----------------------------------------------------------------


def read_document(source: str) -> Any:
    """A spec (or sweep) from a JSON or YAML file, or '-' for stdin."""
    if source == "-":
        text, name = sys.stdin.read(), "stdin"
    else:
        path = Path(source)
        if not path.is_file():
            fail(f"no such file: {source}")
        text, name = path.read_text(), source
    if name.endswith((".yaml", ".yml")) or (name == "stdin" and not text.lstrip().startswith("{")):
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
            fail(f"{name}: invalid YAML{where}: {getattr(exc, 'problem', exc)}")
    else:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            fail(f"{name}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")
    if not isinstance(document, dict):
        fail(f"{name}: a spec is a JSON/YAML object ({{...}}), not {type(document).__name__}")
    return document


# --- formatting -----------------------------------------------------------------------


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if isinstance(value, int):  # bool too
        return str(value)
    x = float(value)
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.2e}"
    return f"{x:.{digits}g}"


def pct(value: Any) -> str:
    return "—" if value is None or isinstance(value, str) else f"{float(value):.1%}"


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def age(iso: str | None) -> str:
    if not iso:
        return "—"
    from datetime import UTC, datetime

    seconds = (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    if seconds < 60:
        return f"{max(0, int(seconds))} s ago"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} d ago"


def print_findings(findings: Sequence[Mapping[str, Any]], job: Mapping[str, Any]) -> None:
    if not findings:
        if job.get("status") == "failed":
            out.print(Text(f"failed: {job.get('error') or 'no error recorded'}", style="red"))
        else:
            out.print(Text("diagnosis: no problems found", style="green"))
        return
    out.print(Text("diagnosis", style="bold"))
    for finding in findings:
        severity = str(finding["severity"])
        line = Text("  ")
        line.append(f"{severity:<8}", style=SEVERITY_STYLE.get(severity, ""))
        line.append(f" {finding['code']}", style="bold")
        if finding.get("layers"):
            line.append(f"  layers {_ranges(finding['layers'])}", style="dim")
        out.print(line)
        out.print(f"           {finding['summary']}")
        out.print(Text(f"           fix: {finding['remedy']}", style="green"))
        patch = finding.get("suggested_spec_patch")
        if patch:
            out.print(
                Text(f"           patch: {json.dumps(patch)}", style="cyan"),
                Text(f"  (trainlab retry-with {job['id'][:12]} --suggested)", style="dim"),
            )


def _ranges(indexes: Sequence[int]) -> str:
    parts: list[str] = []
    start = prev = None
    for i in [*sorted(indexes), None]:
        if start is not None and (i is None or i != prev + 1):  # type: ignore[operator]
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if i is not None and start is None:
            start = i
        prev = i
    return ", ".join(parts)


def gradient_flow_table(layers: Sequence[Mapping[str, Any]], series: Sequence[Any]) -> Table:
    """Per weight layer: the last recorded gradient norm as a bar on a log scale, so a
    vanishing gradient is a column of bars that shrink towards the input."""
    names = {layer["index"]: layer for layer in layers}
    rows = []
    for s in series:
        if s["kind"] not in FLOW_KINDS or not s["points"]:
            continue
        last = s["points"][-1]
        rows.append((s["layer_index"], s["name"], last))
    table = Table(
        title="gradient flow at the last recorded step (bar: log ‖∇W‖; red: vanished)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column, justify in (("#", "right"), ("layer", "left"), ("‖∇W‖", "right")):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    table.add_column("", no_wrap=True)
    table.add_column("‖ΔW‖/‖W‖", justify="right", no_wrap=True)
    table.add_column("units", justify="right", no_wrap=True)
    norms = [_positive(r[2].get("grad_norm")) for r in rows]
    logs = [math.log10(n) for n in norms if n is not None]
    lo, hi = (min(logs), max(logs)) if logs else (0.0, 1.0)
    lo = min(lo, hi - BAR_DECADES)  # small differences stay small bars
    top = norms[-1] if norms else None
    for (index, name, point), norm in zip(rows, norms, strict=True):
        width = (
            0 if norm is None else 1 + round(BAR - 1) * (math.log10(norm) - lo) / max(hi - lo, 1e-9)
        )
        width = round(width)
        vanished = norm is not None and top is not None and norm < VANISHED_RATIO * top
        bar = Text("█" * width, style="red" if vanished else "green")
        activation = names.get(index, {}).get("activation")
        table.add_row(
            str(index),
            name,
            fmt(point.get("grad_norm")),
            bar,
            fmt(point.get("update_ratio")),
            _activation_cell(activation, point.get("act_saturation")),
        )
    return table


def _positive(value: Any) -> float | None:
    if value is None or isinstance(value, str):
        return None
    x = float(value)
    return x if x > 0 and math.isfinite(x) else None


def _activation_cell(activation: str | None, fraction: Any) -> str:
    if fraction is None or activation is None:
        return "—"
    share = f"{float(fraction):.0%}" if not isinstance(fraction, str) else fraction
    if activation == "relu":
        return f"{share} at 0"
    if activation in ("sigmoid", "tanh"):
        return f"{share} saturated"
    return "—"


# --- watching a job ---------------------------------------------------------------------


@dataclass
class Sse:
    event: str
    id: str
    data: Any


def parse_sse(lines: Iterator[str]) -> Iterator[Sse]:
    fields: dict[str, str] = {}
    for line in lines:
        if line.startswith(":"):
            continue
        if not line:
            if "data" in fields:
                yield Sse(
                    fields.get("event", "message"), fields.get("id", ""), json.loads(fields["data"])
                )
            fields = {}
            continue
        key, _, value = line.partition(":")
        fields[key] = value.removeprefix(" ")


def job_events(api: Api, job_id: str) -> Iterator[Sse]:
    """The job's event stream, reconnecting with Last-Event-ID when it drops; falls back
    to polling GET /v1/jobs/{id} when the server has no stream."""
    last_id: str | None = None
    failures = 0
    while True:
        headers = {"Accept": "text/event-stream"}
        if last_id:
            headers["Last-Event-ID"] = last_id
        try:
            with api.http.stream(
                "GET",
                f"/v1/jobs/{job_id}/events",
                headers=headers,
                timeout=httpx.Timeout(30, read=None),
            ) as response:
                if response.status_code == 404 and last_id is None:
                    response.read()
                    if "no job" in " ".join(error_lines(response)):
                        fail(f"no job with id {job_id!r}")
                    yield from poll_events(api, job_id)
                    return
                if response.is_error:
                    response.read()
                    fail(f"error {response.status_code}: " + "; ".join(error_lines(response)))
                for event in parse_sse(response.iter_lines()):
                    last_id = event.id or last_id
                    failures = 0
                    yield event
                    if event.event == "end":
                        return
        except httpx.TransportError as exc:
            failures += 1
            if failures > RECONNECTS:
                raise api.unreachable(exc) from exc
            time.sleep(min(5.0, 0.5 * failures))


def poll_events(api: Api, job_id: str) -> Iterator[Sse]:
    """Polling fallback, shaped like the stream (status, metric, progress, end)."""
    status, epoch, step = "", 0, -1
    while True:
        job = api.get(f"/v1/jobs/{job_id}")
        if job["status"] != status:
            status = job["status"]
            yield Sse("status", "", {"status": status, "error": job["error"]})
        for metric in api.get(f"/v1/jobs/{job_id}/metrics"):
            if metric["epoch"] > epoch:
                epoch = metric["epoch"]
                yield Sse("metric", "", metric)
        if job["progress"]["step"] != step:
            step = job["progress"]["step"]
            yield Sse("progress", "", job["progress"])
        if status in FINISHED_STATUSES:
            yield Sse("end", "", {"status": status, "error": job["error"], "result": job["result"]})
            return
        time.sleep(POLL_S)


def _metric_line(metric: Mapping[str, Any], epochs: int | None) -> str:
    of = f"/{epochs}" if epochs else ""
    return (
        f"epoch {metric['epoch']}{of}  train loss {fmt(metric.get('train_loss'))}  "
        f"val loss {fmt(metric.get('val_loss'))}  train acc {pct(metric.get('train_acc'))}  "
        f"val acc {pct(metric.get('val_acc'))}"
    )


def watch(api: Api, job: Mapping[str, Any]) -> dict[str, Any]:
    """Follow a job to its end: a live bar on a terminal, one line per epoch otherwise.
    Returns the finished job."""
    job_id = job["id"]
    epochs = job["spec"]["train"]["epochs"]
    state: dict[str, Any] = {"status": job["status"], "loss": None, "acc": None}
    if out.is_terminal:
        columns = (
            TextColumn("{task.fields[status]:<9}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            TextColumn("step {task.fields[steps]}"),
            TextColumn("train loss {task.fields[loss]}  val acc {task.fields[acc]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=out) as progress:
            task = progress.add_task(
                job_id,
                total=None,
                status=state["status"],
                epoch=0,
                epochs=epochs,
                steps="—",
                loss="—",
                acc="—",
            )
            for event in job_events(api, job_id):
                _apply(event, state)
                data = event.data
                if event.event == "progress":
                    progress.update(
                        task,
                        total=max(1, data["total_steps"]),
                        completed=data["step"],
                        epoch=data["epoch"],
                        steps=f"{data['step']}/{data['total_steps']}",
                    )
                elif event.event == "metric":
                    progress.console.print(_metric_line(data, epochs))
                elif event.event == "end" and data["status"] == "succeeded":
                    progress.update(task, completed=progress.tasks[0].total or 1)
                progress.update(
                    task, status=state["status"], loss=fmt(state["loss"]), acc=pct(state["acc"])
                )
    else:
        for event in job_events(api, job_id):
            _apply(event, state)
            if event.event == "status":
                out.print(f"{job_id}  {event.data['status']}")
            elif event.event == "metric":
                out.print(_metric_line(event.data, epochs))
    return dict(api.get(f"/v1/jobs/{job_id}"))


def _apply(event: Sse, state: dict[str, Any]) -> None:
    if event.event in ("status", "end"):
        state["status"] = event.data["status"]
    elif event.event == "metric":
        state["loss"], state["acc"] = event.data.get("train_loss"), event.data.get("val_acc")


def report(api: Api, job: Mapping[str, Any]) -> None:
    """After a job ended: the gradient flow per layer, the findings and their patches."""
    job_id = job["id"]
    layers = api.get(f"/v1/jobs/{job_id}/layers")
    grads = api.get(
        f"/v1/jobs/{job_id}/gradients",
        stat=["grad_norm", "update_ratio", "act_saturation"],
        max_points=2,
    )
    if any(s["points"] for s in grads["series"]):
        out.print(gradient_flow_table(layers, grads["series"]))
    print_findings(api.get(f"/v1/jobs/{job_id}/diagnosis")["findings"], job)
    result = job.get("result") or {}
    line = Text(f"{job['status']}", style=STATUS_STYLE.get(job["status"], ""))
    if result:
        line.append(
            f"  train loss {fmt(result.get('train_loss'))}  val loss {fmt(result.get('val_loss'))}"
            f"  val acc {pct(result.get('val_acc'))}"
        )
    out.print(line)


def finish(job: Mapping[str, Any]) -> None:
    if job["status"] != "succeeded":
        raise typer.Exit(1)


# --- commands ---------------------------------------------------------------------------


@guarded
def submit(
    spec_file: Annotated[
        str,
        typer.Argument(
            help="An ExperimentSpec (or a sweep: {base, grid}) as JSON or YAML; '-' reads stdin."
        ),
    ],
    watch_it: WatchOpt = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = Path(".trainlab"),
) -> None:
    """Submit an experiment (or a sweep) and print its id; --watch follows it live."""
    document = read_document(spec_file)
    with _api(url, api_key, data_dir) as api:
        if "grid" in document:
            sweep = api.post("/v1/sweeps", document)
            out.print(sweep["id"])
            if watch_it:
                watch_sweep(api, sweep)
            return
        job = api.post("/v1/jobs", document)
        out.print(job["id"])
        if watch_it:
            job = watch(api, job)
            report(api, job)
            finish(job)


def watch_sweep(api: Api, sweep: Mapping[str, Any]) -> None:
    """One line per job as it changes status, then the sweep's table."""
    statuses: dict[str, str] = {}
    for event in _sweep_events(api, sweep["id"]):
        if event.event != "job":
            continue
        data = event.data
        if statuses.get(data["job_id"]) != data["status"]:
            statuses[data["job_id"]] = data["status"]
            codes = ", ".join(f["code"] for f in data["findings"])
            out.print(
                Text(f"{data['job_id'][:8]}  ")
                .append(status_text(data["status"]))
                .append(f"  {data['name']}" + (f"  [{codes}]" if codes else ""))
            )
    detail = api.get(f"/v1/sweeps/{sweep['id']}")
    out.print(sweep_table(detail))
    if any(row["status"] != "succeeded" for row in detail["rows"]):
        raise typer.Exit(1)


def _sweep_events(api: Api, sweep_id: str) -> Iterator[Sse]:
    with api.http.stream(
        "GET", f"/v1/sweeps/{sweep_id}/events", timeout=httpx.Timeout(30, read=None)
    ) as response:
        if response.is_error:
            response.read()
            fail(f"error {response.status_code}: " + "; ".join(error_lines(response)))
        yield from parse_sse(response.iter_lines())


def sweep_table(detail: Mapping[str, Any]) -> Table:
    keys = list(detail["grid"])
    table = Table(
        title=f"sweep {detail['name'] or detail['id']}", title_justify="left", box=box.SIMPLE_HEAD
    )
    for key in keys:
        table.add_column(key)
    for column in ("status", "val acc", "val loss", "findings", "job"):
        table.add_column(column, justify="right" if column.startswith("val") else "left")
    for row in detail["rows"]:
        result = row["result"] or {}
        table.add_row(
            *(str(row["point"].get(k)) for k in keys),
            status_text(row["status"]),
            pct(result.get("val_acc")),
            fmt(result.get("val_loss")),
            _finding_codes(row["findings"]),
            row["job_id"][:8],
        )
    return table


def _finding_codes(findings: Sequence[Mapping[str, Any]]) -> Text:
    text = Text()
    for i, finding in enumerate(findings):
        if i:
            text.append(", ")
        text.append(finding["code"], style=SEVERITY_STYLE.get(finding["severity"], ""))
    return text if findings else Text("—", style="dim")


@guarded
def status(
    job_id: str,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = Path(".trainlab"),
) -> None:
    """Print a job as JSON (for scripts)."""
    with _api(url, api_key, data_dir) as api:
        out.print_json(data=resolve_job(api, job_id))


@guarded
def show(
    job_id: str,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = Path(".trainlab"),
) -> None:
    """A job in full: status, spec, result, gradient flow per layer, diagnosis."""
    with _api(url, api_key, data_dir) as api:
        job = resolve_job(api, job_id)
        title = (
            Text(job["name"] or "(unnamed)", style="bold")
            .append("  ")
            .append(status_text(job["status"]))
        )
        out.print(title)
        out.print(Text(job["id"], style="dim"))
        if job.get("parent_id"):
            out.print(Text(f"retry of {job['parent_id']}", style="dim"))
        progress = job["progress"]
        out.print(
            f"{progress['fraction']:.0%}  epoch {progress['epoch']}/{progress['epochs']}  "
            f"step {progress['step']}/{progress['total_steps']}  "
            f"device {job['device'] or job['queue']}"
        )
        out.print(Text(spec_line(job["spec"]), style="dim"))
        if job["error"]:
            out.print(Text(job["error"], style="red"))
        report(api, job)


def spec_line(spec: Mapping[str, Any]) -> str:
    model, train, data = spec["model"], spec["train"], spec["data"]
    parts = [
        f"{data['dataset']}",
        f"{model['arch']} depth {model['depth']} x {model['width']} {model['activation']}",
        f"norm {model['norm']}" if model["norm"] != "none" else "",
        "skip" if model["skip"] else "",
        f"init {model['init']}" if model["init"] != "default" else "",
        f"{train['optimizer']} lr {train['lr']}",
        f"{train['epochs']} epochs",
    ]
    return " · ".join(p for p in parts if p)


@guarded
def jobs(
    status_filter: Annotated[
        list[str] | None, typer.Option("--status", help="Repeat for several.")
    ] = None,
    tag: Annotated[str | None, typer.Option(help="Only jobs with this tag.")] = None,
    name: Annotated[str | None, typer.Option(help="Only jobs with this name.")] = None,
    where: Annotated[
        list[str] | None,
        typer.Option("--where", help="A spec field filter, e.g. model.activation=sigmoid; repeat."),
    ] = None,
    finding: Annotated[str | None, typer.Option(help="Only jobs with this finding code.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="At most this many jobs.")] = 20,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = Path(".trainlab"),
) -> None:
    """Recent jobs as a table: name, status, progress, val acc, findings."""
    params: list[tuple[str, str | int]] = [("limit", limit)]
    params += [("status", s) for s in status_filter or []]
    if tag:
        params.append(("tag", tag))
    if name:
        params.append(("name", name))
    for item in where or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--where {item!r}: write FIELD=VALUE, e.g. model.activation=sigmoid")
        params.append((key, value))
    with _api(url, api_key, data_dir) as api:
        page = api.request("GET", "/v1/jobs", params=params).json()
    # Each row carries its diagnosis in brief (kept current by the worker): no call per job.
    rows = [(job, job["findings"]) for job in page["items"]]
    if finding:
        rows = [(job, found) for job, found in rows if any(f["code"] == finding for f in found)]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column, justify in (
        ("id", "left"), ("name", "left"), ("status", "left"), ("progress", "right"),
        ("val acc", "right"), ("findings", "left"), ("created", "right"),
    ):  # fmt: skip
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for job, found in rows:
        result = job["result"] or {}
        table.add_row(
            job["id"][:8],
            job["name"] or "—",
            status_text(job["status"]),
            f"{job['progress']['fraction']:.0%}",
            pct(result.get("val_acc")),
            _finding_codes(found),
            age(job["created_at"]),
        )
    if not rows:
        out.print(
            "no jobs" + (" match" if (status_filter or tag or name or where or finding) else " yet")
        )
        return
    out.print(table)


@guarded
def compare(
    job_ids: Annotated[list[str], typer.Argument(help="Two or more job ids.")],
    metric: Annotated[
        str | None, typer.Option(help="An epoch metric, e.g. val_loss (the default).")
    ] = None,
    stat: Annotated[
        str | None, typer.Option(help="A layer statistic instead, e.g. grad_norm.")
    ] = None,
    layer: Annotated[str, typer.Option(help="With --stat: layer index or name.")] = "0",
    rows: Annotated[int, typer.Option(min=2, max=200, help="At most this many rows.")] = 12,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = Path(".trainlab"),
) -> None:
    """Overlay jobs: one metric per epoch (or one layer statistic per step), side by side."""
    params: dict[str, Any] = {"jobs": ",".join(job_ids), "max_points": rows}
    if stat:
        params |= {"stat": stat, "layer": layer}
    else:
        params["metric"] = metric or "val_loss"
    with _api(url, api_key, data_dir) as api:
        params["jobs"] = ",".join(resolve_job(api, job_id)["id"] for job_id in job_ids)
        body = api.get("/v1/compare", **params)
    quantity = body["quantity"] + (
        f" of layer {body['layer']}" if body["layer"] is not None else ""
    )
    table = Table(title=f"{quantity} by {body['axis']}", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column(body["axis"], justify="right")
    for series in body["series"]:
        table.add_column(
            f"{series['name'] or series['job_id'][:8]}\n{series['job_id'][:8]}", justify="right"
        )
    x = body["x"]
    keep = sorted({round(i * (len(x) - 1) / max(1, rows - 1)) for i in range(rows)}) if x else []
    for i in keep:
        table.add_row(str(x[i]), *(fmt(series["values"][i]) for series in body["series"]))
    out.print(table)


@guarded
def cancel(
    job_id: str,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = Path(".trainlab"),
) -> None:
    """Cancel a queued or running job (a running one stops within a step)."""
    with _api(url, api_key, data_dir) as api:
        job = api.post(f"/v1/jobs/{resolve_job(api, job_id)['id']}/cancel")
    out.print(
        Text(f"{job['id']}  ")
        .append(status_text(job["status"]))
        .append(
            "  (cancel requested: it stops within one step)" if job["status"] == "running" else ""
        )
    )


@guarded
def retry(
    job_id: str,
    suggested: Annotated[
        bool, typer.Option("--suggested", help="Apply the diagnosis' suggested spec patches.")
    ] = False,
    apply: Annotated[str | None, typer.Option(help="'suggested': the same as --suggested.")] = None,
    set_fields: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="A spec change, e.g. model.activation=relu (JSON values); repeat."
        ),
    ] = None,
    watch_it: WatchOpt = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = Path(".trainlab"),
) -> None:
    """Run a job again with a changed spec, linked to it (POST /v1/jobs/{id}/retry-with):
    --suggested applies the diagnosis' patches, --set FIELD=VALUE your own (both: yours win)."""
    if suggested:
        apply = "suggested"
    if apply is None and not set_fields:
        fail("give --suggested or one or more --set FIELD=VALUE")
    body: dict[str, Any] = {}
    if apply is not None:
        body["apply"] = apply
    if set_fields:
        body["patch"] = dict(_field_value(item) for item in set_fields)
    with _api(url, api_key, data_dir) as api:
        target = resolve_job(api, job_id)["id"]
        try:
            job = api.post(f"/v1/jobs/{target}/retry-with", body)
        except CliError as exc:
            if str(exc) in ("error 404: Not Found", "error 405: Method Not Allowed"):
                fail(f"the server at {api.url} has no POST /v1/jobs/{{id}}/retry-with yet")
            raise
        out.print(job["id"])
        if watch_it:
            job = watch(api, job)
            report(api, job)
            finish(job)


def _field_value(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        fail(f"--set {item!r}: write FIELD=VALUE, e.g. model.activation=relu")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw  # a bare word: a string


@guarded
def plot(
    target_id: Annotated[str, typer.Argument(help="A job id (or a sweep id with --sweep).")],
    name: Annotated[str, typer.Argument(help=f"One of {', '.join(JOB_PLOT_NAMES)}.")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Default: NAME-ID.png")
    ] = None,
    sweep: Annotated[bool, typer.Option(help="TARGET_ID is a sweep.")] = False,
    size: Annotated[str, typer.Option(help="WIDTHxHEIGHT in pixels.")] = "960x540",
    dpi: Annotated[int, typer.Option(help="Dots per inch.")] = 100,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = Path(".trainlab"),
) -> None:
    """Save a figure drawn by the server (PNG, or SVG when OUTPUT ends in .svg)."""
    fmt_ = "svg" if output is not None and output.suffix == ".svg" else "png"
    path = output or Path(f"{name}-{target_id[:8]}.{fmt_}")
    kind = "sweeps" if sweep else "jobs"
    with _api(url, api_key, data_dir) as api:
        if not sweep:
            target_id = resolve_job(api, target_id)["id"]
        response = api.request(
            "GET", f"/v1/{kind}/{target_id}/plots/{name}.{fmt_}", params={"size": size, "dpi": dpi}
        )
    path.write_bytes(response.content)
    out.print(str(path))
