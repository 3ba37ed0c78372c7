"""How fast can a client poll one job? ``GET /v1/jobs/{id}`` under ``wrk -t2 -c50``.

Starts one uvicorn process per (source tree, backend), as that tree's ``trainlab up``
serves the API (``service.cli.server.api_server_config`` where the tree has it, else
uvicorn's defaults; one process, keys off), and one serving a bare FastAPI route that
answers a constant (this machine's floor for the stack, same uvicorn options), submits
one job to each, then runs rounds:
every configuration once per round, in rotating order, so that a noisy neighbour hits all
of them alike. Prints the median req/s and p50/p99 latency of the rounds, their spread,
the server process's CPU time per request (all its threads, from /proc: on a shared
machine the figure that the neighbours disturb least; 1e6 / it is the req/s the server
would reach on one core of its own) and the ratios to the baseline tree and to the bare
route.

  200   a plain read (the full job as JSON)
  304   a read with ``If-None-Match`` set to the job's ETag (no body)

The baseline is another source tree (e.g. main, extracted with ``git archive``) served
from this virtual environment with ``PYTHONPATH`` set to it: the 304 configuration is
skipped there when it answers no ETag. The rate limit is raised for every server (the
check still runs on each request), since 50 connections from one address are far past
the default 1200/minute.

    mkdir -p /tmp/poll-base && git archive 51b1f07 | tar -x -C /tmp/poll-base
    .venv/bin/python bench/bench_polling.py --baseline /tmp/poll-base
    .venv/bin/python bench/bench_polling.py --backends sqlite --rounds 3 --duration 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.specs import EXAMPLE_SPEC

THIS_TREE = Path(__file__).resolve().parents[1]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
RATE_LIMIT = "100000000/minute"
BARE = "bare"

# Run in each tree's directory with the tree on PYTHONPATH: argv is the port and the tree
# label ("bare": a FastAPI route answering a constant, no database, no middleware).
SERVE = """
import sys
import uvicorn
host, port, label = "127.0.0.1", int(sys.argv[1]), sys.argv[2]
try:
    from service.cli.server import api_server_config
except ImportError:  # a tree from before it: its `trainlab up` used uvicorn's defaults
    config = uvicorn.Config("service.api.app:create_app", factory=True, host=host, port=port)
else:
    config = api_server_config(host=host, port=port)
if label == "bare":
    from fastapi import FastAPI
    bare = FastAPI()

    @bare.get("/v1/jobs/{job_id}")
    async def read_job(job_id: str) -> dict[str, str]:
        return {"id": job_id, "status": "queued"}

    config.app, config.factory = bare, False
uvicorn.Server(config).run()
"""


@dataclass
class Server:
    tree: str  # "this" or "base"
    backend: str
    port: int
    process: subprocess.Popen[bytes]
    database_url: str = ""  # a PostgreSQL database made for the run, dropped after it
    job_url: str = ""
    etag: str | None = None


@dataclass
class Figures:
    rps: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # server CPU time per request
    errors: list[int] = field(default_factory=list)


def _pg_database(name: str, *, create: bool) -> str:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        if create:
            conn.execute(f'CREATE DATABASE "{name}"')
        else:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def _start(tree: Path, label: str, backend: str, port: int, workdir: Path) -> Server:
    data_dir = workdir / f"{label}-{backend}"
    data_dir.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "TRAINLAB_DATA_DIR": str(data_dir),
        "TRAINLAB_RATE_LIMIT": RATE_LIMIT,
    }
    for name in ("TRAINLAB_API_KEYS", "TRAINLAB_ADMIN_KEYS", "TRAINLAB_DATABASE_URL"):
        env.pop(name, None)
    if backend == "postgres" and label != BARE:
        env["TRAINLAB_DATABASE_URL"] = _pg_database(
            f"trainlab_bench_{uuid.uuid4().hex[:10]}", create=True
        )
    migrate = "from service.db.migrate import upgrade_database as up; "
    migrate += "from service.config import get_settings as s; up(s().resolved_database_url)"
    if label != BARE:
        subprocess.run([sys.executable, "-c", migrate], cwd=tree, env=env, check=True)
    command = [sys.executable, "-c", SERVE, str(port), label]
    process = subprocess.Popen(
        command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return Server(label, backend, port, process, env.get("TRAINLAB_DATABASE_URL", ""))


def _submit(server: Server) -> None:
    base = f"http://127.0.0.1:{server.port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{base}/v1/jobs/-", timeout=2)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline or server.process.poll() is not None:
                msg = f"{server.tree}/{server.backend} server did not start"
                raise RuntimeError(msg) from None
            time.sleep(0.3)
    if server.tree == BARE:
        server.job_url = f"{base}/v1/jobs/{uuid.uuid4().hex}"
        return
    created = httpx.post(f"{base}/v1/jobs", json=EXAMPLE_SPEC, timeout=30)
    created.raise_for_status()
    server.job_url = f"{base}/v1/jobs/{created.json()['id']}"
    read = httpx.get(server.job_url, timeout=5)
    read.raise_for_status()
    server.etag = read.headers.get("etag")


_LATENCY = re.compile(r"^\s*(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(
    url: str, *, etag: str | None, duration: int, connections: int, pid: int
) -> tuple[float, ...]:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", url]
    if etag is not None:
        command[1:1] = ["-H", f"If-None-Match: {etag}"]
    cpu_before = _cpu_seconds(pid)
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    cpu = _cpu_seconds(pid) - cpu_before
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = {p: float(v) * _UNIT_MS[u] for p, v, u in _LATENCY.findall(out)}
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return rps, latency["50"], latency["99"], float(errors), cpu / max(requests, 1) * 1e6


@contextlib.contextmanager
def _servers(trees: dict[str, Path], backends: list[str]) -> Iterator[list[Server]]:
    workdir = Path(tempfile.mkdtemp(prefix="trainlab-bench-polling-"))
    servers: list[Server] = []
    try:
        port = 18_700
        for label, tree in trees.items():
            for backend in backends:
                servers.append(_start(tree, label, backend, port, workdir))
                port += 1
        servers.append(_start(THIS_TREE, BARE, "-", port, workdir))
        for server in servers:
            _submit(server)
        yield servers
    finally:
        for server in servers:
            server.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.process.wait(10)
            if server.database_url:
                _pg_database(server.database_url.rsplit("/", 1)[1], create=False)
        shutil.rmtree(workdir, ignore_errors=True)


def _spread(values: list[float]) -> str:
    return f"{min(values):.0f}..{max(values):.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, help="another source tree to serve beside")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    trees = {"this": THIS_TREE}
    if args.baseline is not None:
        trees = {"base": args.baseline.resolve(), **trees}
    backends = args.backends.split(",")
    with _servers(trees, backends) as servers:
        configs = [(s, "200") for s in servers] + [(s, "304") for s in servers if s.etag]
        figures = {(s.tree, s.backend, kind): Figures() for s, kind in configs}
        for round_no in range(args.rounds):
            shift = round_no % len(configs)
            for server, kind in configs[shift:] + configs[:shift]:
                etag = server.etag if kind == "304" else None
                rps, p50, p99, errors, cpu_us = _wrk(
                    server.job_url,
                    etag=etag,
                    duration=args.duration,
                    connections=args.connections,
                    pid=server.process.pid,
                )
                f = figures[(server.tree, server.backend, kind)]
                f.rps.append(rps)
                f.p50_ms.append(p50)
                f.p99_ms.append(p99)
                f.errors.append(int(errors))
                f.cpu_us.append(cpu_us)
                print(
                    f"round {round_no + 1}: {server.tree:4} {server.backend:8} {kind}: "
                    f"{rps:7.0f} req/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  "
                    f"server CPU {cpu_us:5.0f} us/request  errors {errors:.0f}",
                    flush=True,
                )
    print(
        f"\nGET /v1/jobs/{{id}}, wrk -t2 -c{args.connections} -d{args.duration}s, "
        f"{args.rounds} rounds (medians; spread min..max of req/s)"
    )
    print(
        "| tree | backend | answer | req/s | spread | p50 ms | p99 ms | server CPU us/req "
        "| req/s per CPU-s | errors | req/s vs base 200 | CPU/req vs base 200 "
        "| req/s vs bare | CPU/req vs bare |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    bare = figures[(BARE, "-", "200")]
    for (tree, backend, kind), f in figures.items():
        rps = statistics.median(f.rps)
        base = figures.get(("base", backend, "200"))
        cpu = statistics.median(f.cpu_us)
        ratio = f"{rps / statistics.median(base.rps):.2f}x" if base else "-"
        cpu_ratio = f"{cpu / statistics.median(base.cpu_us):.2f}x" if base else "-"
        print(
            f"| {tree} | {backend} | {kind} | {rps:.0f} | {_spread(f.rps)} | "
            f"{statistics.median(f.p50_ms):.1f} | {statistics.median(f.p99_ms):.1f} | "
            f"{cpu:.0f} | {1e6 / cpu:.0f} | {sum(f.errors)} | {ratio} | {cpu_ratio} | "
            f"{rps / statistics.median(bare.rps):.2f}x | "
            f"{cpu / statistics.median(bare.cpu_us):.2f}x |"
        )


if __name__ == "__main__":
    main()
