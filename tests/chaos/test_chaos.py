"""Faults an operator meets, done for real to running stacks: killed processes, a broker
stopped or frozen, the database cut off or stalled, a worker paused past its lease, a
worker told to stop. Each scenario checks the job's final status and attempt, epoch
metrics 1..N exactly once, each layer's statistics at each telemetry step once, and that
no request answered a 500 or hung past its timeout.

Detection and recovery times are measured (not asserted beyond liveness bounds) and
appended as JSON lines to ``$TRAINLAB_CHAOS_REPORT`` when it is set.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chaos.conftest import (
    SMALL_SPEC,
    ChaosStack,
    Probe,
    assert_recorded_once,
    start_embedded,
)
from tests.integration.conftest import _parent, _wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(300)]

# How long each outage lasts (the operator tried 30 s; the leases and sweeps
# are shortened 10x here, so 10 s is still more than two leases).
OUTAGE_S = 10.0
# Liveness bounds: generous, for a loaded 2-core machine.
RECOVERY_BOUND_S = 90.0
SUBMIT_BOUND_S = 2.0


def report(scenario: str, **figures: float) -> None:
    path = os.environ.get("TRAINLAB_CHAOS_REPORT")
    if path:
        with Path(path).open("a") as handle:
            handle.write(json.dumps({"scenario": scenario, **figures}) + "\n")


def _training(job: dict[str, Any], epoch: int = 2) -> bool:
    return bool(job["status"] == "running" and job["progress"]["epoch"] > epoch)


def _started(stack: ChaosStack) -> str:
    """A long job that has checkpointed at least twice."""
    job_id = stack.submit()
    stack.wait_job(job_id, _training)
    return job_id


def _running_again(attempt: int) -> Any:
    return lambda job: job["status"] == "running" and job["attempt"] == attempt


def _requeued(job: dict[str, Any]) -> bool:
    """The fault was detected: attempt 1 was taken back (the note stays while 2 runs)."""
    return "requeued for attempt 2" in (job["error"] or "")


def _detect_and_recover(stack: ChaosStack, job_id: str, since: float) -> tuple[float, float]:
    """Seconds from the fault until attempt 1 was taken back, and until 2 was running."""
    stack.wait_job(job_id, _requeued, timeout=RECOVERY_BOUND_S)
    detected = time.monotonic() - since
    stack.wait_job(job_id, _running_again(2), timeout=RECOVERY_BOUND_S)
    return detected, time.monotonic() - since


def _finished(job: dict[str, Any]) -> bool:
    return job["status"] in {"succeeded", "failed", "cancelled"}


def _succeeds(stack: ChaosStack, job_id: str, attempt: int) -> dict[str, Any]:
    job = stack.wait_job(job_id, _finished, timeout=240)
    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["attempt"] == attempt, job
    assert_recorded_once(stack, job_id)
    return job


@pytest.fixture
def probe(request: pytest.FixtureRequest) -> Iterator[list[Probe]]:
    probes: list[Probe] = []
    yield probes
    for p in probes:
        p.stop()
    for p in probes:
        p.assert_no_failures()


def _probe(stack: ChaosStack, probes: list[Probe], job_id: str) -> Probe:
    p = Probe(stack.client, [f"/v1/jobs/{job_id}", "/v1/jobs?limit=5", "/readyz"])
    probes.append(p)
    return p


# --- killed processes -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["embedded", "cluster"])
def test_a_killed_pool_process_job_runs_again_and_succeeds(
    mode: str, request: pytest.FixtureRequest, probe: list[Probe]
) -> None:
    stack: ChaosStack = request.getfixturevalue(mode)
    job_id = _started(stack)
    _probe(stack, probe, job_id)
    os.kill(stack.pool_pid_training(), signal.SIGKILL)  # what the OOM killer does
    detected, back = _detect_and_recover(stack, job_id, time.monotonic())
    assert back < 30 + 30, back  # the 30 s, with room for a loaded machine
    assert "pool process" in (stack.job(job_id)["error"] or "")
    job = _succeeds(stack, job_id, attempt=2)
    assert job["result"]["resumed_from_step"] >= 2 * 40
    report(f"kill -9 pool child ({mode})", detected_s=detected, running_again_s=back)


def test_a_killed_worker_under_trainlab_up_is_restarted_and_its_job_resumes(
    embedded: ChaosStack, probe: list[Probe]
) -> None:
    job_id = _started(embedded)
    p = _probe(embedded, probe, job_id)
    [main] = embedded.worker_main_pids()
    os.kill(main, signal.SIGKILL)
    detected, back = _detect_and_recover(embedded, job_id, time.monotonic())
    assert "died" in (embedded.job(job_id)["error"] or "")
    _succeeds(embedded, job_id, attempt=2)
    unready = [a for a in p.answers if a[0] == "GET /readyz" and a[1] == 503]
    assert unready, "readyz never said 503 while no worker was alive"
    report(
        "kill -9 worker main (embedded, restarted by trainlab up)",
        detected_s=detected,
        running_again_s=back,
    )


def test_a_killed_worker_main_process_s_job_resumes_on_its_successor(
    cluster: ChaosStack, probe: list[Probe]
) -> None:
    job_id = _started(cluster)
    _probe(cluster, probe, job_id)
    dead = cluster.workers[-1]
    dead.kill()
    dead.wait()
    killed = time.monotonic()
    # What docker compose's restart policy does: a new worker on the same host.
    cluster.start_worker()
    detected, back = _detect_and_recover(cluster, job_id, killed)
    assert "died" in (cluster.job(job_id)["error"] or "")
    _succeeds(cluster, job_id, attempt=2)
    report(
        "kill -9 worker main (cluster, worker restarted)",
        detected_s=detected,
        running_again_s=back,
    )


# --- the broker -------------------------------------------------------------------------


def _submit_timed(stack: ChaosStack, p: Probe) -> str:
    started = time.monotonic()
    response = p.request("POST", "/v1/jobs", json=SMALL_SPEC)
    took = time.monotonic() - started
    assert response is not None and response.status_code == 201, response
    assert took < SUBMIT_BOUND_S + 1, took
    assert response.json()["status"] == "queued"
    return str(response.json()["id"])


def test_broker_down_fails_no_job_and_strands_none(cluster: ChaosStack, probe: list[Probe]) -> None:
    assert cluster.redis is not None
    job_id = _started(cluster)
    p = _probe(cluster, probe, job_id)
    queued_before = _submit_timed(cluster, p)  # its message is lost with the broker
    cluster.redis.stop()
    during = [_submit_timed(cluster, p) for _ in range(3)]
    time.sleep(OUTAGE_S)
    cluster.redis.start()
    back = time.monotonic()
    for extra in [queued_before, *during]:
        job = cluster.wait_job(extra, _finished, timeout=RECOVERY_BOUND_S + 60)
        assert job["status"] == "succeeded", job
    drained = time.monotonic() - back
    _succeeds(cluster, job_id, attempt=1)  # it trained on through the outage
    report("broker down", outage_s=OUTAGE_S, stranded_jobs_done_after_s=drained)


def test_broker_frozen_never_hangs_a_request(cluster: ChaosStack, probe: list[Probe]) -> None:
    assert cluster.redis is not None
    job_id = _started(cluster)
    p = _probe(cluster, probe, job_id)
    cluster.redis.freeze()
    try:
        during = [_submit_timed(cluster, p) for _ in range(2)]
        started = time.monotonic()
        ready = p.request("GET", "/readyz")
        assert time.monotonic() - started < 1.5
        assert ready is not None and ready.status_code == 503
        assert ready.json()["checks"]["broker"] == "unreachable"
        time.sleep(OUTAGE_S)
    finally:
        cluster.redis.thaw()
    thawed = time.monotonic()
    for extra in during:
        assert cluster.wait_job(extra, _finished, timeout=RECOVERY_BOUND_S)["status"] == (
            "succeeded"
        )
    _succeeds(cluster, job_id, attempt=1)
    report("broker frozen", outage_s=OUTAGE_S, queued_jobs_done_after_s=time.monotonic() - thawed)


# --- the database -----------------------------------------------------------------------


def _answers_503(p: Probe) -> int:
    return sum(1 for a in p.answers if a[1] == 503 and a[0] != "GET /readyz")


def test_database_down_answers_503_and_the_running_job_survives(
    cluster: ChaosStack, probe: list[Probe]
) -> None:
    assert cluster.proxy is not None
    job_id = _started(cluster)
    p = _probe(cluster, probe, job_id)
    cluster.proxy.cut()
    cut = time.monotonic()
    time.sleep(OUTAGE_S)
    cluster.proxy.restore()
    restored = time.monotonic()
    assert _answers_503(p) > 0  # the API said so, with Retry-After, instead of 500s
    cluster.wait_job(job_id, lambda job: job["status"] in {"running", "succeeded"})
    ready_again = time.monotonic() - restored
    _succeeds(cluster, job_id, attempt=1)  # the recorder buffered; nobody lost the job
    report("database down", outage_s=restored - cut, api_answers_again_after_s=ready_again)


def test_database_frozen_never_hangs_a_request(cluster: ChaosStack, probe: list[Probe]) -> None:
    assert cluster.proxy is not None
    job_id = _started(cluster)
    p = _probe(cluster, probe, job_id)
    cluster.proxy.stall()
    try:
        time.sleep(OUTAGE_S / 2)
        started = time.monotonic()
        ready = p.request("GET", "/readyz")
        assert time.monotonic() - started < 1.5
        assert ready is not None and ready.status_code == 503
        time.sleep(OUTAGE_S / 2)
    finally:
        cluster.proxy.restore()
    restored = time.monotonic()
    assert _answers_503(p) > 0
    slowest = max(a[2] for a in p.answers)
    cluster.wait_job(job_id, lambda job: job["status"] in {"running", "succeeded"})
    _succeeds(cluster, job_id, attempt=1)
    report(
        "database frozen",
        outage_s=OUTAGE_S,
        slowest_request_s=slowest,
        api_answers_again_after_s=time.monotonic() - restored,
    )


# --- a paused worker ----------------------------------------------------------------------


def test_a_paused_worker_that_wakes_after_its_lease_writes_nothing(
    cluster: ChaosStack, probe: list[Probe]
) -> None:
    cluster.start_worker()  # a second worker, to take the job over
    job_id = _started(cluster)
    _probe(cluster, probe, job_id)
    child = cluster.training_pid(job_id)
    victims = [_parent(child), child]  # its worker's main process and the pool child
    for pid in victims:
        os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        detected, back = _detect_and_recover(cluster, job_id, stopped)
        assert "lease" in (cluster.job(job_id)["error"] or "")
    finally:
        for pid in victims:
            os.kill(pid, signal.SIGCONT)  # it wakes, its lease long gone: fenced off
    _succeeds(cluster, job_id, attempt=2)
    report("paused worker (SIGSTOP past its lease)", detected_s=detected, running_again_s=back)


# --- graceful stops -----------------------------------------------------------------------


def test_sigterm_to_a_worker_checkpoints_and_requeues_at_once(
    cluster: ChaosStack, probe: list[Probe]
) -> None:
    job_id = _started(cluster)
    _probe(cluster, probe, job_id)
    for worker in cluster.workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    stopping = time.monotonic()
    job = cluster.wait_job(job_id, lambda j: j["status"] == "queued", timeout=RECOVERY_BOUND_S)
    requeued = time.monotonic() - stopping
    assert job["attempt"] == 1 and "shutdown" in (job["error"] or ""), job
    for worker in cluster.workers:
        worker.wait(timeout=60)  # they exit soon, not after a grace period
    exited = time.monotonic() - stopping
    cluster.start_worker()
    started = time.monotonic()
    cluster.wait_job(job_id, _running_again(2), timeout=RECOVERY_BOUND_S)
    back = time.monotonic() - started
    job = _succeeds(cluster, job_id, attempt=2)
    assert job["result"]["resumed_from_step"] > 2 * 40
    report(
        "SIGTERM to the worker (cluster)",
        requeued_s=requeued,
        worker_exited_s=exited,
        running_on_a_new_worker_after_its_start_s=back,
    )


def test_ctrl_c_of_trainlab_up_requeues_and_the_next_up_resumes(
    tmp_path: Path, mnist1d_cache: Path, probe: list[Probe]
) -> None:
    process, url, _env, log_dir = start_embedded(tmp_path, mnist1d_cache)
    try:
        _wait_ready(url, [process], log_dir)
        with httpx.Client(base_url=url, timeout=10) as client:
            stack = ChaosStack(url=url, client=client, log_dir=log_dir, root_pid=process.pid)
            job_id = _started(stack)
            process.send_signal(signal.SIGINT)
            stopping = time.monotonic()
            assert process.wait(timeout=60) == 0, stack.logs()
            stopped = time.monotonic() - stopping
        process, url, _env, log_dir = start_embedded(tmp_path, mnist1d_cache, "up-2.log")
        _wait_ready(url, [process], log_dir)
        with httpx.Client(base_url=url, timeout=10) as client:
            stack = ChaosStack(url=url, client=client, log_dir=log_dir, root_pid=process.pid)
            job = _succeeds(stack, job_id, attempt=2)
            assert job["result"]["resumed_from_step"] > 2 * 40
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
    report("Ctrl-C of trainlab up", stopped_s=stopped)
