"""Workers recover by themselves: from being killed mid-job or just after taking a job, and
from Redis going away.

The workers here are `workers.worker.work`, as `payhooks worker` runs it, in forked
children (so that the lease and clean-up periods can be shortened for the test), on a
Redis of the test's own with AOF on, so that it can be stopped and started again.
The job is `slow_job`: it counts its runs in Redis, then sleeps.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

import workers.worker as worker_main
from shared.sandbox.redis_server import RedisServer
from tests.helpers import (
    ROOT,
    RUNS,
    enqueue,
    faketime_binary,
    finished,
    fork_worker,
    make_settings,
    wait_until,
)
from workers import taking


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer(appendonly=True, appendfsync="always") as started:
        yield started


@pytest.fixture
def short_periods(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_main, "LEASE_SECONDS", 2)
    monkeypatch.setattr(worker_main, "RENEW_SECONDS", 0.3)
    monkeypatch.setattr(worker_main, "MAINTENANCE_SECONDS", 1)










def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop(pid: int) -> int:
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.parametrize("renewed", [True, False])
def test_a_running_job_keeps_its_lease_only_while_renewed(
    server: RedisServer, short_periods: None, monkeypatch: pytest.MonkeyPatch, renewed: bool
) -> None:
    if not renewed:
        monkeypatch.setattr(worker_main, "RENEW_SECONDS", 60)
    job = enqueue(server.url, 3.5)
    client = redis.Redis.from_url(server.url)
    seen: list[int | None] = []

    def clean_up_after_the_lease() -> None:  # what another worker's maintenance does
        time.sleep(2.8)
        StartedJobRegistry("callbacks", connection=client, serializer=JSONSerializer).cleanup()
        seen.append(Job.fetch(job.id, connection=client, serializer=JSONSerializer).retries_left)

    cleaner = threading.Thread(target=clean_up_after_the_lease)
    cleaner.start()
    worker = worker_main.build_worker(make_settings(server.url), queues=("callbacks",))
    worker.work(burst=True)
    cleaner.join()
    # renewed: the job is still held when the clean-up looks, so it is not taken for abandoned
    assert seen == ([2] if renewed else [1])
    if renewed:
        assert int(client.get(RUNS) or 0) == 1
        assert job.get_status(refresh=True) == JobStatus.FINISHED
        assert client.llen("rq:queue:callbacks:intermediate") == 0


def test_a_killed_workers_job_runs_again_and_its_scheduler_stops(
    server: RedisServer, short_periods: None
) -> None:
    client = redis.Redis.from_url(server.url)
    job = enqueue(server.url, 3.0)
    first = fork_worker(server.url)
    try:
        wait_until(lambda: client.get(RUNS) == b"1", 20, "the first worker did not start the job")
        wait_until(lambda: children(first) != [], 10, "the worker started no scheduler")
        scheduler = children(first)[0]
        os.kill(first, signal.SIGKILL)
        os.waitpid(first, 0)
        wait_until(lambda: not alive(scheduler), 10, "the scheduler outlived its worker")

        second = fork_worker(server.url)
        try:
            wait_until(functools.partial(finished, job), 30,
                     "the abandoned job was not run again")
            assert client.get(RUNS) == b"2"
            assert client.llen("rq:queue:callbacks:intermediate") == 0
        finally:
            assert stop(second) == 0
    finally:
        if alive(first):
            os.kill(first, signal.SIGKILL)


def test_workers_come_back_after_a_redis_restart_without_help(
    server: RedisServer, short_periods: None
) -> None:
    pid = fork_worker(server.url)
    try:
        client = redis.Redis.from_url(server.url)
        wait_until(lambda: client.scard("rq:workers") == 1, 20, "the worker did not register")
        during = enqueue(server.url, 1.5)  # running when Redis stops: abandoned, run again
        wait_until(lambda: client.get(RUNS) == b"1", 20, "the worker did not start the job")
        server.stop()
        time.sleep(2)
        server.start()
        after = enqueue(server.url, 0.0)
        for job in (after, during):
            wait_until(functools.partial(finished, job), 40,
                     f"job {job.id} was not run after Redis came back")
        assert alive(pid)  # the same process: nobody restarted it
        assert client.get(RUNS) == b"3"
    finally:
        assert stop(pid) == 0


def test_a_job_taken_by_a_worker_that_dies_at_once_is_found_again(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis.Redis.from_url(server.url)
    names = ("callbacks", "deliveries")  # a worker of two queues, as `payhooks worker` is

    def take(queue_class: type[Queue]) -> Job:
        queues = [queue_class(name, connection=client, serializer=JSONSerializer)
                  for name in names]
        taken = queue_class.dequeue_any(queues, None, connection=client,
                                        serializer=JSONSerializer)
        assert taken is not None
        return taken[0]

    def anywhere(job: Job) -> bool:
        lists = [f"rq:queue:{name}{suffix}" for name in names for suffix in ("", ":intermediate")]
        return any(job.id.encode() in client.lrange(key, 0, -1) for key in lists) or any(
            client.zscore(f"rq:{registry}:{name}", job.id) is not None
            for registry in ("scheduled", "failed") for name in names)

    # RQ's own two-queue dequeue is a BLPOP: the job is then in no list at all
    enqueue(server.url, 0.0)
    assert not anywhere(take(Queue))

    job = enqueue(server.url, 0.0)
    assert take(taking.SafeQueue).id == job.id  # ...and the worker dies here
    assert client.lrange("rq:queue:callbacks:intermediate", 0, -1) == [job.id.encode()]
    worker = worker_main.build_worker(make_settings(server.url))
    queue = worker.queues[0]
    monkeypatch.setattr(worker_main, "STRANDED_SECONDS", 0.2)
    for _ in range(2):  # maintenance sees the job there, again and again...
        worker._rescue_stranded(queue)
        assert client.lrange("rq:queue:callbacks:intermediate", 0, -1) == [job.id.encode()]
    time.sleep(0.3)
    worker._rescue_stranded(queue)  # ...and puts it back: it never ran, no try is spent
    job.refresh()
    assert (job.get_status(), job.retries_left) == (JobStatus.QUEUED, 2)
    assert client.lrange("rq:queue:callbacks", 0, -1) == [job.id.encode()]
    assert client.llen("rq:queue:callbacks:intermediate") == 0


def test_a_job_passing_through_the_intermediate_list_again_is_not_taken_for_stranded(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RQ's clean-up failed a retried job whose id it had seen on the list up to a day
    before, if it saw it again in the moment between taken and started."""
    client = redis.Redis.from_url(server.url)
    job = enqueue(server.url, 0.0)
    worker = worker_main.build_worker(make_settings(server.url))
    queue = worker.queues[0]
    monkeypatch.setattr(worker_main, "STRANDED_SECONDS", 0.2)
    intermediate = "rq:queue:callbacks:intermediate"
    for passing in (True, False, True, False, True):  # seen between taken and started, or not
        if passing:
            client.lmove("rq:queue:callbacks", intermediate)
        time.sleep(0.1)
        worker._rescue_stranded(queue)
        if passing:  # started: off the list, and later back on the queue for a retry
            client.lmove(intermediate, "rq:queue:callbacks")
    assert client.lrange("rq:queue:callbacks", 0, -1) == [job.id.encode()]  # never doubled
    assert job.get_status(refresh=True) == JobStatus.QUEUED  # never failed
    client.lmove("rq:queue:callbacks", intermediate)  # now stranded: put back
    for _ in range(3):
        time.sleep(0.1)
        worker._rescue_stranded(queue)
    assert client.lrange("rq:queue:callbacks", 0, -1) == [job.id.encode()]
    assert client.llen(intermediate) == 0


def test_a_sweep_lock_left_by_a_killed_worker_lapses_within_a_minute(server: RedisServer) -> None:
    client = redis.Redis.from_url(server.url)
    rq_queue = Queue("callbacks", connection=client, serializer=JSONSerializer)
    assert rq_queue.acquire_maintenance_lock()  # RQ's own: a worker dies holding it...
    assert client.ttl(rq_queue.registry_cleaning_key) > 15 * 60 - 5  # ...no sweep for 15 min
    client.delete(rq_queue.registry_cleaning_key)

    queue = worker_main.build_worker(make_settings(server.url)).queues[0]
    assert queue.acquire_maintenance_lock()
    assert 0 < client.ttl(queue.registry_cleaning_key) <= taking.SWEEP_LOCK_SECONDS
    assert not queue.acquire_maintenance_lock()  # still one sweeper at a time


SKEWED_WORKER = """
import sys
import workers.worker as worker_main
from workers import taking
from tests.helpers import make_settings
worker_main.LEASE_SECONDS, worker_main.RENEW_SECONDS, worker_main.MAINTENANCE_SECONDS = 2, 0.3, 1
sys.exit(worker_main.work(make_settings(sys.argv[1], logging={"level": "warning"})))
"""


def test_a_worker_whose_clock_is_ahead_takes_no_running_job_for_abandoned(
    server: RedisServer, short_periods: None, tmp_path: Path
) -> None:
    """Leases are timed by Redis's clock: a worker host 30 s ahead cleans up while another
    worker runs a 6 s job under a 2 s lease, and the job is left to it. With the hosts'
    clocks (RQ's own), the lease looked 28 s lapsed and the job was set to run again."""
    faketime = faketime_binary()
    client = redis.Redis.from_url(server.url)
    job = enqueue(server.url, 6.0)
    holder = fork_worker(server.url)
    log = (tmp_path / "skewed.log").open("wb")
    try:
        wait_until(lambda: client.get(RUNS) == b"1", 20, "the worker did not start the job")
        skewed = subprocess.Popen(
            [faketime, "-f", "+30s", sys.executable, "-c", SKEWED_WORKER, server.url],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
        try:
            wait_until(lambda: client.scard("rq:workers") == 2, 20,
                     "the worker 30 s ahead did not start")
            wait_until(functools.partial(finished, job), 30, "the job did not finish")
            time.sleep(2)  # a few more clean-ups by the worker ahead
        finally:  # faketime does not pass SIGTERM on to its child: stop them both
            os.killpg(skewed.pid, signal.SIGTERM)
            try:
                skewed.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(skewed.pid, signal.SIGKILL)
                skewed.wait(5)
    finally:
        assert stop(holder) == 0
        log.close()
    assert client.get(RUNS) == b"1"
    # not taken for abandoned: no try spent, nothing waiting to run it again (with the hosts'
    # clocks it was scheduled to run a second time, by the clock of the worker behind)
    assert Job.fetch(job.id, connection=client, serializer=JSONSerializer).retries_left == 2
    assert client.zcard("rq:scheduled:callbacks") == 0 and client.zcard("rq:failed:callbacks") == 0
