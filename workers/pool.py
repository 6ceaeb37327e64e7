"""Many jobs in flight in one worker process: `concurrency` threads, one job each.

Callback and delivery jobs spend most of their time waiting for a provider or a hook to
answer, so one process runs N of them at once (`payhooks worker --concurrency N`, or
`[worker] concurrency`), the way Celery's and dramatiq's thread pools do: RQ's loop takes
a job only when a thread is free, hands it over and goes back for the next one. Threads
share the process's Redis connection pool and HTTP clients (and so their kept-alive
connections); structlog's context and RQ's `get_current_job` are per thread.

What a thread cannot have is a signal: RQ times a job out with SIGALRM, which only the
main thread receives. Here the worker's lease thread (workers/worker.py) keeps the time
of every job in flight and raises RQ's JobTimeoutException inside a thread whose job has
run past its timeout (an asynchronous exception, delivered at the thread's next bytecode:
our own requests end by their total deadlines, shared/http.py, so no job sits in a
blocking call much past its timeout). The threads are daemons: a worker stopped cold does
not wait for them, and what they were running is given back to the queue
(workers/worker.py, `Worker.request_force_stop`).
"""

from __future__ import annotations

import ctypes
import queue as queues
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from redis import RedisError
from rq import Queue
from rq.job import Job
from rq.timeouts import BaseDeathPenalty, JobTimeoutException

Run = Callable[[Job, Queue], None]
log = structlog.get_logger("payhooks.worker")


@dataclass
class Running:
    """A job in flight: what the lease thread renews, times and, if need be, stops."""

    job: Job
    queue: Queue
    thread: int  # the ident of the thread running it
    member: str = ""  # its entry in the queue's started registry, once started
    started: float = field(default_factory=time.monotonic)
    timed_out: bool = False  # JobTimeoutException was raised in its thread
    ending: bool = False  # the job's function has returned or raised: never raise now

    def overdue(self, now: float) -> bool:
        timeout = self.job.timeout
        return (not (self.timed_out or self.ending) and timeout is not None
                and timeout >= 0 and now - self.started > timeout)


class Pool:
    """`size` daemon threads running jobs; `submit` hands one over, `wait_for_room` waits
    until a thread is free, `drain` until none is busy."""

    def __init__(self, size: int, run: Run) -> None:
        if size < 1:
            raise ValueError(f"a pool of {size!r} threads")
        self.size = size
        self._run = run
        self._tasks: queues.SimpleQueue[tuple[Job, Queue]] = queues.SimpleQueue()
        self._changed = threading.Condition()
        self._busy = 0
        self._running: dict[int, Running] = {}
        for number in range(size):
            threading.Thread(target=self._serve, name=f"payhooks-job-{number}",
                             daemon=True).start()

    @property
    def busy(self) -> int:
        return self._busy

    def submit(self, job: Job, queue: Queue) -> None:
        with self._changed:
            self._busy += 1
        self._tasks.put((job, queue))

    def wait_for_room(self) -> None:
        self._wait(lambda: self._busy < self.size)

    def drain(self) -> None:
        self._wait(lambda: self._busy == 0)

    def running(self) -> list[Running]:
        """A snapshot of the jobs in flight."""
        with self._changed:
            return list(self._running.values())

    def started(self, member: str) -> None:
        """Called by the thread running a job, once its lease is in the started registry."""
        with self._changed:
            self._running[threading.get_ident()].member = member

    def performed(self, stopped: bool) -> None:
        """Called by the thread running a job as soon as the job's function has returned
        or raised (`stopped`: it raised JobTimeoutException): from now on no timeout is
        raised in it. One raised just before, not delivered yet, is taken here."""
        with self._changed:
            running = self._running[threading.get_ident()]
            running.ending = True
            pending = running.timed_out and not stopped
        if pending:
            try:
                while True:  # delivered at one of the next bytecodes
                    time.sleep(0.001)
            except JobTimeoutException:
                pass

    def stop_overdue(self) -> list[Running]:
        """Raise JobTimeoutException in each thread whose job ran past its timeout; those."""
        now, stopped = time.monotonic(), []
        with self._changed:
            for running in self._running.values():
                if running.overdue(now):
                    running.timed_out = True
                    _raise_in(running.thread, JobTimeoutException)
                    stopped.append(running)
        return stopped

    def _wait(self, done: Callable[[], bool]) -> None:
        with self._changed:
            while not done():
                # woken at least every half second, so the main thread's signal handlers
                # (a stop request) run while it waits
                self._changed.wait(0.5)

    def _serve(self) -> None:
        ident = threading.get_ident()
        while True:
            job, queue = self._tasks.get()
            with self._changed:
                self._running[ident] = Running(job, queue, ident)
            try:
                self._run(job, queue)
            except Exception as exc:  # the thread's outermost place: it must live on
                # Redis failing as the job started or ended: the job's lease, or the
                # intermediate list it is still on, has it run again (workers/worker.py)
                log.error("job_not_finished", job_id=job.id, error=exc.__class__.__name__,
                          exc_info=not isinstance(exc, RedisError))
            finally:
                with self._changed:
                    self._running.pop(ident, None)
                    self._busy -= 1
                    self._changed.notify_all()


class NoDeathPenalty(BaseDeathPenalty):
    """RQ's timeouts are SIGALRM, which a pool thread cannot take: none here (the lease
    thread stops a job that overruns its timeout, `Pool.stop_overdue`)."""

    def setup_death_penalty(self) -> None:
        pass

    def cancel_death_penalty(self) -> None:
        pass


def _raise_in(thread: int, exception: type[BaseException]) -> None:
    """Have `exception` raised in the thread `thread` at its next bytecode."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread),
                                               ctypes.py_object(exception))
