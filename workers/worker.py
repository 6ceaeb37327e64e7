"""`payhooks worker`: RQ on `callbacks` and `deliveries`, with the scheduler, running up to
`[worker] concurrency` jobs at once (workers/pool.py).

It builds on RQ's SimpleWorker, which runs jobs in its own process instead of forking one
per job: measured here, a forking worker runs about 60 no-op jobs a second and a
non-forking one about 380, and only a process that lives on can keep HTTP connections to
providers and merchants open between jobs. The price is that a job that crashes the
interpreter takes the worker with it; RQ then sees its jobs abandoned and, since every job
carries a Retry, runs them again (jobs are idempotent).

How soon: RQ only learns that a SimpleWorker died when the lease on its job runs out, and
by default that lease is the job's timeout plus a minute (three minutes for a callback),
because a SimpleWorker cannot renew it while the job runs. Here a thread renews the lease
of every job in flight every RENEW_SECONDS, so a lease can be LEASE_SECONDS; the registry
clean-up that finds expired leases runs every MAINTENANCE_SECONDS instead of RQ's 10
minutes, idle or not (RQ's wait for a job, during which no clean-up runs, is cut to the
same length). A worker killed mid-job has its jobs running again within about 40 s
(lease, clean-up, first retry). Jobs are taken safely (workers/taking.py), and started and
ended in one round trip each (workers/lifecycle.py).

Redis going away makes RQ's loop give up; `work` then waits until Redis answers and starts
a fresh worker, so no one has to restart the process. Start as many workers as you like,
on as many hosts: they share the queues in Redis, and each also runs RQ's scheduler (one
at a time holds the lock), which moves retries back onto their queue when they are due.
The scheduler is a child process; on Linux it is told to stop when its worker dies.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from types import FrameType
from typing import Any

import redis
import structlog
from redis import Redis
from rq import Queue, SimpleWorker, utils, worker_registration
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import (
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    StartedJobRegistry,
)
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException
from rq.worker import WorkerStatus

from shared import metrics
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
from workers import lifecycle, runtime
from workers.pool import NoDeathPenalty, Pool, Running
from workers.runtime import Runtime
from workers.taking import STOPPING, SafeQueue

MAINTENANCE_SECONDS = 10
LEASE_SECONDS = 20  # how long a running job's registry entry lasts without renewal
RENEW_SECONDS = 5
STRANDED_SECONDS = 60  # on a queue's intermediate list, seen at every clean-up: put back
HEARTBEAT_SECONDS = 5  # the worker's own hash, written by the main loop at most this often
RECONNECT_SECONDS = (0.2, 5.0)  # first and longest wait between tries to reach Redis

log = structlog.get_logger("payhooks.worker")
# failures the jobs raise on purpose, each after a summary line of its own
EXPECTED_FAILURES = (ProviderUnavailable, ProviderRejected, CallbackRejected, DeliveryFailed,
                     HookPaused)


class _Lease(threading.Thread):
    """Every RENEW_SECONDS, until stopped: stops the jobs in flight that ran past their
    timeout, then renews the lease of every job in flight and the worker's heartbeat, in
    one round trip."""

    def __init__(self, worker: Worker, pool: Pool) -> None:
        super().__init__(name="payhooks-lease", daemon=True)
        self.worker, self.pool = worker, pool
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(RENEW_SECONDS):
            for late in self.pool.stop_overdue():
                log.error("job_timed_out", job_id=late.job.id, timeout_s=late.job.timeout)
            try:
                if self.worker.tally is not None:
                    self.worker.tally.flush_if_due(self.worker.connection)
                self.worker.renew_leases(self.pool.running())
            except redis.RedisError as exc:  # in an outage, the jobs' own calls fail too
                log.warning("worker.lease_not_renewed", error=exc.__class__.__name__)


_executions = threading.local()  # the execution each pool thread runs (RQ keeps one)


class Worker(SimpleWorker):
    """RQ's SimpleWorker, running up to `concurrency` jobs at once (workers/pool.py), with
    a short lease on each that a thread renews, and a job's start and successful end
    written in one round trip each (workers/lifecycle.py).

    Leases are timed by Redis's clock, not by the hosts': RQ scores a lease by the clock
    of the worker holding it and judges it lapsed by the clock of the worker cleaning up,
    so a cleaner 30 s ahead took running jobs for abandoned and ran them twice. Here every
    lease is scored by Redis's TIME, and the clean-up asks Redis for the time.

    The worker's own hash (state, heartbeat) is written when it changes or every
    HEARTBEAT_SECONDS, not several times per job; its job counters are added up in the
    process and written with the leases."""

    stopping = False  # a SIGTERM or SIGINT came: do not start again
    concurrency = 1
    death_penalty_class = NoDeathPenalty  # threads get no SIGALRM: the lease thread times jobs
    _pool: Pool | None = None
    _lease_thread: _Lease | None = None
    _cold = False
    _state_written: str | None = None
    tally: metrics.Tally | None = None

    @functools.cached_property
    def _stranded(self) -> dict[str, dict[str, tuple[float, int]]]:
        """By queue: each job id seen on its intermediate list, when first and how often
        in a row."""
        return {}

    @property
    def execution(self) -> Execution | None:
        return getattr(_executions, "execution", None)

    @execution.setter
    def execution(self, execution: Execution | None) -> None:
        _executions.execution = execution

    # Taking, running and ending jobs ---------------------------------------------------

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Hand the job to a free thread; return once another one is free."""
        pool = self._running()
        pool.submit(job, queue)
        self.set_state(WorkerStatus.BUSY)
        pool.wait_for_room()

    def dequeue_job_and_maintain_ttl(self, timeout: int | None,
                                     max_idle_time: int | None = None
                                     ) -> tuple[Job, Queue] | None:
        """RQ's, except that in burst mode a worker finding its queues empty waits for
        its jobs in flight, which may queue more (deliveries, retries due now), and looks
        again before it ends."""
        while True:
            STOPPING.check()
            found = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            pool = self._pool
            if found is not None or timeout is not None or pool is None or not pool.busy:
                return found
            pool.drain()

    def perform(self, job: Job, queue: Queue) -> None:
        """Run one job in this (pool) thread: start it, call it, record how it ended."""
        structlog.contextvars.clear_contextvars()
        execution = Execution(uuid.uuid4().hex, job.id, self.connection, worker_name=self.name)
        self.execution = execution
        job.worker_name, job.started_at = self.name, utils.now()
        job.last_heartbeat = job.started_at
        lifecycle.start(self.connection, job, queue, execution.composite_key, self.name,
                        LEASE_SECONDS)
        pool = self._running()
        pool.started(execution.composite_key)
        try:
            self._call(job, pool)
        except Exception:  # recorded by RQ's failure handling: retried or failed
            self._failed(job, queue)
        else:
            job._status = JobStatus.FINISHED
            lifecycle.finish(self.connection, job, queue, execution.composite_key,
                             job.get_result_ttl(self.default_result_ttl))
            self._succeeded(job)
        finally:
            self.execution = None
            structlog.contextvars.clear_contextvars()  # the job's ids stay on the job's lines

    def _call(self, job: Job, pool: Pool) -> None:
        stopped = False
        try:
            job._result = job.perform()
        except JobTimeoutException:
            stopped = True
            raise
        finally:
            job.ended_at = utils.now()
            pool.performed(stopped)

    def _failed(self, job: Job, queue: Queue) -> None:
        """What RQ's perform_job does with a job that raised (its retry, its failure
        callback, the failed registry), in this thread."""
        job._status = JobStatus.FAILED
        exc_info = sys.exc_info()
        exc_string = "".join(traceback.format_exception(*exc_info))
        try:
            job.execute_failure_callback(self.death_penalty_class, *exc_info)
        except Exception:
            exc_info = sys.exc_info()
            exc_string = "".join(traceback.format_exception(*exc_info))
        self.handle_exception(job, *exc_info)
        self.handle_job_failure(job=job, exc_string=exc_string, queue=queue,
                                started_job_registry=queue.started_job_registry)

    def _succeeded(self, job: Job) -> None:
        assert job.started_at is not None and job.ended_at is not None
        with self._counted:
            self._succeeded_jobs += 1
            self._working_time += (job.ended_at - job.started_at).total_seconds()

    # The worker's own records ------------------------------------------------------------

    def renew_leases(self, running: list[Running]) -> None:
        """Renew the lease of each job in flight (from the lease thread) and the worker's
        heartbeat; write the job counters added up since the last time."""
        with self._counted:
            counts = (self._succeeded_jobs, self._working_time)
            self._succeeded_jobs, self._working_time = 0, 0.0
        leases = [(r.queue.started_job_registry.key, r.member) for r in running if r.member]
        self.last_heartbeat = utils.now()
        try:
            lifecycle.renew(self.connection, self.key, self.worker_ttl + 60,
                            utils.utcformat(self.last_heartbeat), leases, LEASE_SECONDS, counts)
        except redis.RedisError:
            with self._counted:  # counted again next time
                self._succeeded_jobs += counts[0]
                self._working_time += counts[1]
            raise

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's, except that the main loop's own (several per job) are written at most every
        HEARTBEAT_SECONDS; the lease thread writes one every RENEW_SECONDS anyway."""
        last = self.last_heartbeat
        if (timeout is None and pipeline is None and last is not None
                and (utils.now() - last).total_seconds() < HEARTBEAT_SECONDS):
            return
        super().heartbeat(timeout, pipeline)

    def set_state(self, state: str, pipeline: Any = None) -> None:
        """RQ's, written only when it changes; busy while any job is in flight."""
        if state == WorkerStatus.IDLE and self._pool is not None and self._pool.busy:
            state = WorkerStatus.BUSY
        if pipeline is None and state == self._state_written:
            self._state = state
            return
        super().set_state(state, pipeline)
        if pipeline is None:
            self._state_written = state

    def check_for_suspension(self, burst: bool) -> None:
        """RQ's, looked at most every HEARTBEAT_SECONDS instead of before every job."""
        now = time.monotonic()
        if now - self._suspension_checked < HEARTBEAT_SECONDS:
            return
        self._suspension_checked = now
        super().check_for_suspension(burst)

    _suspension_checked = -math.inf
    _succeeded_jobs = 0
    _working_time = 0.0

    @functools.cached_property
    def _counted(self) -> threading.Lock:
        return threading.Lock()

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
            self._rescue_stranded(queue)
            queue.release_maintenance_lock()  # type: ignore[no-untyped-call]
        self.last_cleaned_at = utils.now()  # type: ignore[assignment]

    def _rescue_stranded(self, queue: Queue) -> None:
        """Put back on the queue the jobs left on its intermediate list by a worker that
        died between taking and starting them: those this worker saw there at every one of
        its clean-ups for STRANDED_SECONDS. RQ's own clean-up fails such a job instead, and
        takes for stranded any job id it saw there before, up to a day earlier: a delivery
        job retried under its fixed id, passing through the list in the milliseconds
        between taken and started as a clean-up looked, was failed as "stuck"."""
        listed = {utils.as_text(job) for job in
                  self.connection.lrange(queue.intermediate_queue_key, 0, -1)}
        seen = self._stranded.setdefault(queue.name, {})
        for job_id in set(seen) - listed:
            del seen[job_id]
        now = time.monotonic()
        for job_id in listed:
            first, times = seen.get(job_id, (now, 0))
            seen[job_id] = (first, times + 1)
            if now - first >= STRANDED_SECONDS and times + 1 >= 3:
                lifecycle.put_back(self.connection, queue, job_id)
                log.warning("worker.job_put_back", job_id=job_id, queue=queue.name)
                del seen[job_id]

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

    # Stopping ----------------------------------------------------------------------------

    def work(self, *args: Any, **kwargs: Any) -> bool:
        STOPPING.clear()
        self.tally = metrics.Tally()
        metrics.install(self.tally)  # the jobs' metrics, sent once a second (shared/metrics.py)
        return bool(super().work(*args, **kwargs))

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    def _shutdown(self) -> None:
        """A warm stop: take no more jobs, finish those in flight (`teardown`). Never
        raised from the signal handler, as RQ does when idle: the main thread may be
        handing a job to a thread; it stops at its next look at the queues instead."""
        self._stop_requested = True
        STOPPING.set()
        self.set_shutdown_requested_date()  # type: ignore[no-untyped-call]
        if self.scheduler:
            self.stop_scheduler()  # type: ignore[no-untyped-call]

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        """A second SIGTERM or SIGINT: give every job in flight back to the front of its
        queue and exit now (their threads are daemons; a job given back may have done
        part of its work, which running it again does not double)."""
        requested = self._shutdown_requested_date
        if requested is not None and (utils.now() - requested).total_seconds() < 1:
            return  # the same stop, signalled twice (RQ's worker pool does that)
        self._cold = True
        given = 0
        for running in self._pool.running() if self._pool is not None else []:
            if running.member:
                with contextlib.suppress(redis.RedisError):
                    lifecycle.give_back(self.connection, running.job, running.queue,
                                        running.member)
                    given += 1
        log.warning("worker.stopped_cold", worker=self.name, given_back=given)
        raise SystemExit()

    def teardown(self) -> None:
        try:
            if self._pool is not None and not self._cold:
                self._pool.drain()
        finally:
            if self._lease_thread is not None:
                self._lease_thread.stopped.set()
            metrics.install(None)
            if self.tally is not None:
                self.tally.flush(self.connection)
            super().teardown()  # type: ignore[no-untyped-call]

    def _running(self) -> Pool:
        if self._pool is None:
            self._pool = Pool(self.concurrency, self.perform)
            self._lease_thread = _Lease(self, self._pool)
            self._lease_thread.start()
        return self._pool


def build_worker(settings: Settings, queues: tuple[str, ...] = (CALLBACKS, DELIVERIES),
                 name: str | None = None, concurrency: int | None = None) -> Worker:
    """A worker for these settings (`concurrency`: jobs in flight at once, by default
    `[worker] concurrency`), with the job runtime installed in this process."""
    jobs = Runtime.from_settings(settings)
    jobs.first_attempts = settings.worker.inline_first_attempt
    runtime.install(jobs)
    connection = connect(settings.redis_url)
    worker = Worker(
        [SafeQueue(queue, connection=connection, serializer=JSONSerializer) for queue in queues],
        connection=connection, serializer=JSONSerializer, name=name, queue_class=SafeQueue,
        worker_ttl=MAINTENANCE_SECONDS + 15,  # an idle worker's wait for a job ends that often
    )
    worker.concurrency = concurrency or settings.worker.concurrency
    worker.maintenance_interval = MAINTENANCE_SECONDS
    worker.max_connection_wait_time = RECONNECT_SECONDS[1]
    return worker


def work(settings: Settings, burst: bool = False, concurrency: int | None = None,
         queues: tuple[str, ...] = (CALLBACKS, DELIVERIES)) -> int:
    """Run workers until SIGTERM or SIGINT (with burst: until nothing is due now). When one
    stops because Redis went away, wait until Redis answers and start a fresh one."""
    configure_logging(settings.logging)
    _children_stop_with_us()
    settle = 0.0  # a worker that keeps failing at once waits longer each time
    while True:
        worker = build_worker(settings, queues, concurrency=concurrency)
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
