"""Many jobs in flight in one worker process (workers/pool.py), and every guarantee kept:
jobs overlap, a job past its timeout is stopped in its thread and retried, a warm stop
finishes what is in flight, a cold stop gives it back to the queue, a burst waits for what
its jobs queue. The workers are real RQ workers (`build_worker`, `work`), in this process
or forked, on a Redis of the test's own."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
import redis
from rq import Queue, Retry, get_current_job
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

import workers.worker as worker_main
from shared.sandbox.redis_server import RedisServer
from tests.helpers import make_settings, wait_until

IN_FLIGHT, MOST, DONE = "test:in-flight", "test:most-in-flight", "test:done"


def overlapping_job(seconds: float) -> None:
    """Counts the jobs of its kind running now, and the most seen at once."""
    job = get_current_job()
    assert job is not None
    client = job.connection
    now = client.incr(IN_FLIGHT)
    client.eval("if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[1]) or '0') then "
                "redis.call('SET', KEYS[1], ARGV[1]) end", 1, MOST, now)
    time.sleep(seconds)
    client.decr(IN_FLIGHT)
    client.incr(DONE)


def spinning_job(seconds: float) -> None:
    """Busy in Python (no blocking call) for `seconds`."""
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        pass
    job = get_current_job()
    assert job is not None
    job.connection.incr(DONE)


def queuing_job(count: int) -> None:
    """Queues `count` overlapping jobs, a moment before it ends."""
    job = get_current_job()
    assert job is not None
    time.sleep(0.3)
    queue = Queue("callbacks", connection=job.connection, serializer=JSONSerializer)
    for _ in range(count):
        queue.enqueue(overlapping_job, 0.01)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as started:
        yield started


def queue_of(server: RedisServer) -> Queue:
    return Queue("callbacks", connection=redis.Redis.from_url(server.url),
                 serializer=JSONSerializer)


@pytest.mark.parametrize("concurrency", [1, 6])
def test_a_worker_runs_up_to_its_concurrency_of_jobs_at_once(
    server: RedisServer, concurrency: int
) -> None:
    queue = queue_of(server)
    jobs = [queue.enqueue(overlapping_job, 0.4) for _ in range(12)]
    worker = worker_main.build_worker(make_settings(server.url), queues=("callbacks",),
                                      concurrency=concurrency)
    worker.work(burst=True)
    client = queue.connection
    assert int(client.get(DONE) or 0) == 12
    assert int(client.get(MOST) or 0) == concurrency
    assert all(job.get_status(refresh=True) == JobStatus.FINISHED for job in jobs)
    assert client.zcard("rq:wip:callbacks") == 0  # every lease ended with its job
    worker.renew_leases([])  # what the lease thread writes: the counters added up
    assert int(client.hget(worker.key, "successful_job_count") or 0) == 12


def test_a_job_past_its_timeout_is_stopped_in_its_thread_and_retried(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_main, "RENEW_SECONDS", 0.2)
    queue = queue_of(server)
    stuck = queue.enqueue(spinning_job, 30, job_timeout=1, retry=Retry(max=1, interval=0))
    others = [queue.enqueue(overlapping_job, 0.2) for _ in range(3)]
    started = time.monotonic()
    worker = worker_main.build_worker(make_settings(server.url), queues=("callbacks",),
                                      concurrency=2)
    worker.work(burst=True)
    assert time.monotonic() - started < 15  # the spinning job did not run its 30 s, twice
    assert stuck.get_status(refresh=True) == JobStatus.FAILED
    assert "JobTimeoutException" in (stuck.latest_result().exc_string or "")  # type: ignore[union-attr]
    assert stuck.id in FailedJobRegistry("callbacks", connection=queue.connection,
                                         serializer=JSONSerializer)
    assert all(job.get_status(refresh=True) == JobStatus.FINISHED for job in others)


def test_a_pool_thread_lives_on_when_running_a_job_fails(server: RedisServer) -> None:
    """Redis failing as a job starts or ends raises out of the worker's run: the thread
    logs it and takes the next job (else the pool would shrink for good)."""
    from workers.pool import Pool

    queue = queue_of(server)
    jobs = [queue.enqueue(overlapping_job, 0) for _ in range(3)]
    ran: list[str] = []

    def run(job: Job, _queue: Queue) -> None:
        ran.append(job.id)
        if len(ran) == 1:
            raise redis.ConnectionError("Redis went away")

    pool = Pool(1, run)
    for job in jobs:
        pool.submit(job, queue)
    wait_until(lambda: len(ran) == 3 and pool.busy == 0, 5, lambda: f"ran only {ran}")
    assert ran == [job.id for job in jobs]


def test_a_burst_waits_for_its_jobs_in_flight_and_runs_what_they_queue(
    server: RedisServer
) -> None:
    queue = queue_of(server)
    queue.enqueue(queuing_job, 5)
    worker = worker_main.build_worker(make_settings(server.url), queues=("callbacks",),
                                      concurrency=4)
    worker.work(burst=True)
    assert int(queue.connection.get(DONE) or 0) == 5
    assert queue.count == 0


def _fork_worker(url: str) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = worker_main.work(make_settings(url, logging={"level": "warning"},
                                                  worker={"concurrency": 4}))
        finally:
            os._exit(code)
    return pid


def _exit_code(pid: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the worker did not stop")


def _busy_worker(server: RedisServer, jobs: int, seconds: float
                 ) -> tuple[Queue, list[Job], int]:
    """`jobs` jobs of `seconds` queued, and a forked worker of 4 threads running 4 of them."""
    queue = queue_of(server)
    queued = [queue.enqueue(overlapping_job, seconds) for _ in range(jobs)]
    pid = _fork_worker(server.url)
    wait_until(lambda: int(queue.connection.get(IN_FLIGHT) or 0) == 4, 20,
               "4 jobs did not start")
    return queue, queued, pid


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_warm_stop_finishes_the_jobs_in_flight_and_takes_no_more(server: RedisServer) -> None:
    queue, jobs, pid = _busy_worker(server, 6, 1.5)
    os.kill(pid, signal.SIGTERM)
    assert _exit_code(pid, 20) == 0
    states = [job.get_status(refresh=True) for job in jobs]
    assert states.count(JobStatus.FINISHED) == 4  # the four in flight, finished
    assert states.count(JobStatus.QUEUED) == 2 and queue.count == 2  # the rest, not taken
    assert queue.connection.zcard("rq:wip:callbacks") == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_cold_stop_gives_the_jobs_in_flight_back_to_their_queue(server: RedisServer) -> None:
    queue, jobs, pid = _busy_worker(server, 4, 30)
    os.kill(pid, signal.SIGTERM)
    time.sleep(1.2)  # a second signal within a second is the same stop, signalled twice
    os.kill(pid, signal.SIGTERM)
    _exit_code(pid, 10)
    assert sorted(job.id.encode() for job in jobs) == sorted(
        queue.connection.lrange("rq:queue:callbacks", 0, -1))
    assert all(job.get_status(refresh=True) == JobStatus.QUEUED for job in jobs)
    assert queue.connection.zcard("rq:wip:callbacks") == 0
