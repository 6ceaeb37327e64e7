"""`payhooks worker [--burst]`: RQ on `callbacks` and `deliveries`, with the scheduler.

It is RQ's SimpleWorker, which runs jobs in its own process instead of forking one per job:
measured here, a forking worker runs about 60 no-op jobs a second and a non-forking one
about 380, and only a process that lives on can keep HTTP connections to providers and
merchants open between jobs. The price is that a job that crashes the interpreter takes
the worker with it; RQ then sees the job abandoned and, since every job carries a Retry,
runs it again (jobs are idempotent).

How soon: RQ only learns that a SimpleWorker died when the lease on its job runs out, and
by default that lease is the job's timeout plus a minute (three minutes for a callback),
because a SimpleWorker cannot renew it while the job runs. Here a thread renews it every
RENEW_SECONDS, so the lease can be LEASE_SECONDS; the registry clean-up that finds expired
leases runs every MAINTENANCE_SECONDS instead of RQ's 10 minutes, idle or not (RQ's wait
for a job, during which no clean-up runs, is cut to the same length). A worker killed
mid-job has its job running again within about 40 s (lease, clean-up, first retry).

Taking a job is safe too. For a worker of several queues RQ uses BLPOP, and a worker killed
between that pop and registering the job would lose it (it is then in no list at all).
Here every job moves from its queue to the queue's intermediate list, where RQ's clean-up
finds it after a minute if nobody registered it, as RQ does for a worker of one queue.

Redis going away makes RQ's loop give up; `work` then waits until Redis answers and starts
a fresh worker, so no one has to restart the process. Start as many workers as you like,
on as many hosts: they share the queues in Redis, and each also runs RQ's scheduler (one
at a time holds the lock), which moves retries back onto their queue when they are due.
The scheduler is a child process; on Linux it is told to stop when its worker dies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

import redis
import structlog
from redis import Redis
from redis.commands.core import Script
from rq import Queue, SimpleWorker, utils, worker_registration
from rq.exceptions import DequeueTimeout
from rq.executions import Execution
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.registry import (
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    StartedJobRegistry,
)
from rq.serializers import JSONSerializer

from shared.clock import redis_now
from shared.errors import (
    CallbackRejected,
    DeliveryFailed,
    HookPaused,
    ProviderRejected,
    ProviderUnavailable,
)
from shared.keys import WRITE_PROBE
from shared.lifetime import stop_with_this_process
from shared.logging import configure_logging
from shared.queue import CALLBACKS, DELIVERIES
from shared.redis_client import connect
from shared.settings import Settings
from workers import runtime
from workers.runtime import Runtime

MAINTENANCE_SECONDS = 10
LEASE_SECONDS = 20  # how long a running job's registry entry lasts without renewal
RENEW_SECONDS = 5
SWEEP_LOCK_SECONDS = 60  # one worker sweeps a queue at a time; RQ holds the lock 15 minutes
BLOCK_SECONDS = 1  # an idle worker waits on its first queue this long, then looks at all
RECONNECT_SECONDS = (0.2, 5.0)  # first and longest wait between tries to reach Redis

log = structlog.get_logger("payhooks.worker")
# failures the jobs raise on purpose, each after a summary line of its own
EXPECTED_FAILURES = (ProviderUnavailable, ProviderRejected, CallbackRejected, DeliveryFailed,
                     HookPaused)


class _Lease(threading.Thread):
    """Renews the lease on its worker's current job, every RENEW_SECONDS, until released."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(name="payhooks-lease", daemon=True)
        self.worker = worker
        self.job: Job | None = None
        self.lock = threading.Lock()

    def hold(self, job: Job) -> None:
        with self.lock:
            self.job = job

    def release(self) -> None:
        with self.lock:  # waits for a renewal under way, so none comes after the job ended
            self.job = None

    def run(self) -> None:
        while True:
            time.sleep(RENEW_SECONDS)
            with self.lock:
                # in an outage, the job's own Redis calls fail too and report it
                if self.job is not None:
                    with contextlib.suppress(redis.RedisError):
                        self.worker.maintain_heartbeats(self.job)


# KEYS: each queue's list, then its intermediate list. Moves the first job found (queues in
# order) to its queue's intermediate list; returns the queue's key and the job id, or nil.
_TAKE_FIRST = """
local n = #KEYS / 2
for i = 1, n do
  local id = redis.call('LMOVE', KEYS[i], KEYS[n + i], 'LEFT', 'RIGHT')
  if id then return {KEYS[i], id} end
end
return nil
"""


class SafeQueue(Queue):
    """RQ's Queue, except that a worker of several queues takes jobs through their
    intermediate lists (RQ's own way for one queue) instead of with a bare BLPOP, and that
    the lock on sweeping the queue lapses after a minute, not RQ's fifteen: a worker killed
    (or cut off from Redis) while it held the lock stopped every sweep, and so the rescue
    of every abandoned job, for that long."""

    _take_first: Script | None = None

    def acquire_maintenance_lock(self) -> bool:
        return bool(self.connection.set(self.registry_cleaning_key, 1, nx=True,
                                        ex=SWEEP_LOCK_SECONDS))

    @classmethod
    def lpop(cls, queue_keys: Sequence[str], timeout: int | None,
             connection: Redis | None = None) -> tuple[str, Any] | None:
        assert connection is not None
        if cls._take_first is None:
            SafeQueue._take_first = connection.register_script(_TAKE_FIRST)
        assert cls._take_first is not None
        lists = [*queue_keys, *(IntermediateQueue.get_intermediate_queue_key(key)
                                for key in queue_keys)]
        deadline = time.monotonic() + (timeout or 0)
        while True:
            found = cls._take_first(keys=lists, client=connection)
            if found is not None:
                return found[0].decode(), found[1]
            left = deadline - time.monotonic()
            if timeout is None:
                return None
            if left <= 0:
                raise DequeueTimeout(timeout, queue_keys)
            job_id = connection.blmove(queue_keys[0], lists[len(queue_keys)], BLOCK_SECONDS)
            if job_id is not None:
                return queue_keys[0], job_id


# KEYS: the started registry; ARGV: the execution's member, the lease. Re-scores the lease
# by Redis's clock (RQ scores it by the worker host's).
_STAMP_LEASE = """
local time = redis.call('TIME')
redis.call('ZADD', KEYS[1], 'XX', tonumber(time[1]) + tonumber(ARGV[2]), ARGV[1])
"""


class Worker(SimpleWorker):
    """RQ's SimpleWorker, with a short lease on its running job that a thread renews.

    Leases are timed by Redis's clock, not by the hosts': RQ scores a lease by the clock
    of the worker holding it and judges it lapsed by the clock of the worker cleaning up,
    so a cleaner 30 s ahead took running jobs for abandoned and ran them twice. Here each
    lease RQ writes is scored again at once by Redis's TIME, and the clean-up asks Redis
    for the time. RQ's own score is generous (`LEASE_SECONDS` + 60), so that the moment
    between the two writes tolerates a host a minute behind."""

    stopping = False  # a SIGTERM or SIGINT came: do not start again
    _lease_thread: _Lease | None = None
    _stamp: Script | None = None

    def get_heartbeat_ttl(self, job: Job) -> int:
        return LEASE_SECONDS + 60

    def prepare_execution(self, job: Job) -> Execution:
        execution = super().prepare_execution(job)
        self._stamp_lease(job)
        return execution

    def maintain_heartbeats(self, job: Job) -> None:
        super().maintain_heartbeats(job)
        self._stamp_lease(job)

    def _stamp_lease(self, job: Job) -> None:
        if self.execution is None:
            return
        if self._stamp is None:
            self._stamp = self.connection.register_script(_STAMP_LEASE)
        self._stamp(keys=[job.started_job_registry.key],
                    args=[self.execution.composite_key, LEASE_SECONDS])

    def clean_registries(self) -> None:
        """RQ's clean-up of each queue's registries, with the started registry's leases
        judged by Redis's clock."""
        now = redis_now(self.connection)
        for queue in self.queues:
            if not queue.acquire_maintenance_lock():
                continue
            self.log.debug("Worker %s: cleaning registries for queue: %s", self.name,
                           queue.name)
            options: dict[str, Any] = {"name": queue.name, "connection": queue.connection,
                                       "job_class": queue.job_class,
                                       "serializer": queue.serializer}
            FinishedJobRegistry(**options).cleanup()
            StartedJobRegistry(**options).cleanup(timestamp=now,
                                                  exception_handlers=self._exc_handlers)
            FailedJobRegistry(**options).cleanup()
            DeferredJobRegistry(**options).cleanup()
            worker_registration.clean_worker_registry(queue)
            queue.intermediate_queue.cleanup(self, queue)
            queue.release_maintenance_lock()  # type: ignore[no-untyped-call]
        self.last_cleaned_at = utils.now()  # type: ignore[assignment]

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False
                              ) -> None:
        # every job comes through an intermediate list (SafeQueue): take it off in the same
        # transaction that registers it as started
        super().prepare_job_execution(job, remove_from_intermediate_queue=True)
        self._lease().hold(job)

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        self._lease().release()
        super().handle_execution_ended(job, queue, heartbeat_ttl)

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)
        finally:
            self._lease().release()
            structlog.contextvars.clear_contextvars()  # the job's ids stay on the job's lines

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        """RQ logs every failed job at `error` with its traceback. A failure payhooks
        raised on purpose (a provider to ask again, a hook that failed or is paused, a
        permanent answer) has had its own summary line, at `warning` for a retry and at
        `error` for an end: no traceback, no second line. Anything else is RQ's to log."""
        if len(exc_info) > 1 and isinstance(exc_info[1], EXPECTED_FAILURES):
            for handler in self._exc_handlers:
                if handler(job, *exc_info) is False:
                    break
            return
        super().handle_exception(job, *exc_info)

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    def _lease(self) -> _Lease:
        if self._lease_thread is None:
            self._lease_thread = _Lease(self)
            self._lease_thread.start()
        return self._lease_thread


def build_worker(settings: Settings, queues: tuple[str, ...] = (CALLBACKS, DELIVERIES),
                 name: str | None = None) -> Worker:
    """A worker for these settings, with the job runtime installed in this process."""
    runtime.install(Runtime.from_settings(settings))
    connection = connect(settings.redis_url)
    worker = Worker(
        [SafeQueue(queue, connection=connection, serializer=JSONSerializer) for queue in queues],
        connection=connection, serializer=JSONSerializer, name=name, queue_class=SafeQueue,
        worker_ttl=MAINTENANCE_SECONDS + 15,  # an idle worker's wait for a job ends that often
    )
    worker.maintenance_interval = MAINTENANCE_SECONDS
    worker.max_connection_wait_time = RECONNECT_SECONDS[1]
    return worker


def work(settings: Settings, burst: bool = False) -> int:
    """Run workers until SIGTERM or SIGINT (with burst: until nothing is due now). When one
    stops because Redis went away, wait until Redis answers and start a fresh one."""
    configure_logging(settings.logging)
    _children_stop_with_us()
    settle = 0.0  # a worker that keeps failing at once waits longer each time
    while True:
        worker = build_worker(settings)
        started = time.monotonic()
        try:
            # RQ's own lines (a job taken, "Job OK", clean-ups) are below our summary
            # lines: shown at debug only
            worker.work(burst=burst, with_scheduler=True,
                        logging_level="DEBUG" if settings.logging.level == "debug"
                        else "WARNING")
        except redis.RedisError as exc:  # raised on the way out, when Redis is gone
            log.warning("worker.redis_lost", worker=worker.name, error=exc.__class__.__name__)
        if burst or worker.stopping:  # done, or asked to stop: a clean exit either way
            return 0
        lived = time.monotonic() - started
        settle = 0.0 if lived > 2 * RECONNECT_SECONDS[1] else min(
            max(settle * 2, RECONNECT_SECONDS[0]), RECONNECT_SECONDS[1])
        log.warning("worker.restarting", worker=worker.name, after_s=settle)
        if not _wait_for_redis(worker.connection, settle):
            return 0
        _let_go(worker)


def _let_go(worker: Worker) -> None:
    """What RQ's teardown could not do with Redis gone: stop the worker's pubsub thread and
    its scheduler, and free the scheduler's locks, which would otherwise keep the next
    worker's scheduler from starting for a minute."""
    pubsub = getattr(worker, "pubsub_thread", None)
    if pubsub is not None:
        pubsub.stop()
    if worker.scheduler is not None:
        worker.stop_scheduler()  # type: ignore[no-untyped-call]
        with contextlib.suppress(redis.RedisError):
            worker.scheduler.release_locks()  # type: ignore[no-untyped-call]


def _wait_for_redis(connection: Redis, settle: float = 0.0) -> bool:
    """After `settle` seconds, wait until Redis takes a write (True), or until SIGTERM or
    SIGINT (False). A write,
    not a PING: a Redis at `maxmemory` answers PING and refuses every write, and a worker
    restarted at once against it would restart dozens of times a second."""
    stop = threading.Event()

    def stop_waiting(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, stop_waiting)
    signal.signal(signal.SIGINT, stop_waiting)
    stop.wait(settle)
    delay = RECONNECT_SECONDS[0]
    while not stop.is_set():
        try:
            connection.set(WRITE_PROBE, 1, ex=60)
            return True
        except redis.RedisError:
            stop.wait(delay)
            delay = min(delay * 2, RECONNECT_SECONDS[1])
    return False


def _children_stop_with_us() -> None:
    """Make every process forked from here on (RQ's scheduler) get SIGTERM when this one
    dies, even by SIGKILL, instead of living on without its worker (Linux only)."""
    in_child = stop_with_this_process()
    if in_child is not None:
        os.register_at_fork(after_in_child=in_child)
