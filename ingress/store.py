"""Writes callback jobs to Redis in batches and says when each one is stored.

A request hands its job to `JobStore.store` and waits. A single flusher task takes every
job queued since its last round trip and writes them with one call of the enqueue script
(shared/queue.py), then wakes each waiting request: stored, or `StoreUnavailable`. The
script's reply is read before anyone is answered, and an error reply fails the batch. Under
load a batch holds all the callbacks that arrived during the previous round trip, so Redis
sees a few large writes instead of thousands of small ones. Nothing is acknowledged before
Redis has answered for the batch that holds the job, and nobody waits longer than
`STORE_DEADLINE`: when Redis stalls, each waiting callback gets its 503 on time, instead
of after every batch queued before it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import structlog
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from shared.errors import StoreUnavailable
from shared.queue import ENQUEUE_SCRIPT, JobTemplate, PendingJob, resp_command

log = structlog.get_logger("payhooks.ingress")


@dataclass(slots=True)
class _Pending:
    job: PendingJob
    done: asyncio.Future[None] = field(repr=False)


STORE_DEADLINE = 2.0  # seconds from a callback's arrival at the store to its answer


class NotReplicated(RedisError):
    """The batch reached the primary but fewer replicas than `min_replicas` in time."""


class JobStore:
    def __init__(self, redis: Redis, template: JobTemplate, max_batch: int = 512,
                 deadline: float = STORE_DEADLINE, min_replicas: int = 0,
                 replica_timeout: float = 0.05) -> None:
        self._pool = redis.connection_pool
        # with min_replicas, a batch is acknowledged only once that many replicas have it:
        # WAIT, sent with the batch's EVALSHA in the same write (no round trip more)
        self._wait = (resp_command("WAIT", min_replicas, max(1, round(replica_timeout * 1000)))
                      if min_replicas else b"")
        self._min_replicas = min_replicas
        self._template = template
        self._max_batch = max_batch
        self._pending: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0
        self.jobs = 0
        self._deadline = deadline
        self.write_failures = 0  # batches Redis did not take (down, or refusing writes)
        self._closing = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._flush_forever(), name="payhooks-job-store")

    def _supervise(self) -> None:
        """Start the flusher again if it ended (it never should): else every later
        callback would wait forever for a write that nobody makes."""
        if self._task is not None and self._task.done() and not self._closing:
            log.error("job_store_restarted", pending=len(self._pending))
            self._task = asyncio.create_task(self._flush_forever(), name="payhooks-job-store")

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        _fail_all(self._pending, StoreUnavailable("ingress shutting down"))
        self._pending.clear()

    async def store(self, job_id: str, argument_json: bytes, description: str) -> None:
        """Return once Redis holds the job; raise StoreUnavailable if it does not."""
        assert self._loop is not None, "JobStore.start() was not awaited"
        done: asyncio.Future[None] = self._loop.create_future()
        job = (job_id, self._template.data(argument_json), description)
        pending = _Pending(job, done)
        self._pending.append(pending)
        self._wakeup.set()
        self._supervise()
        try:
            async with asyncio.timeout(self._deadline):
                await done
        except TimeoutError:
            # Redis stalls: answer 503 now, not after every batch before this one. A job
            # not sent yet is taken back (never stored); one in flight may still be
            # stored, and the provider's retry of it is a duplicate, which collapses.
            with contextlib.suppress(ValueError):
                self._pending.remove(pending)
            raise StoreUnavailable(f"Redis did not take it within {self._deadline:g} s"
                                   ) from None

    async def _write(self, jobs: list[PendingJob]) -> None:
        """Send the batch as one EVALSHA that the template encoded (redis-py's encoder took a
        tenth of the ingress's CPU); load the script first when Redis does not know it.
        With min_replicas, WAIT follows in the same write; too few replicas is
        NotReplicated (the batch is on the primary, but not yet safe from its loss)."""
        connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(self._template.evalsha_command(jobs)
                                                 + self._wait)
            try:
                await connection.read_response()
            except NoScriptError:
                if self._wait:  # the WAIT sent with it; refused if this is a replica, and
                    # then the EVALSHA below is READONLY: the client asks the Sentinels again
                    with contextlib.suppress(ResponseError):
                        await connection.read_response()
                await connection.send_packed_command(
                    resp_command("SCRIPT", "LOAD", ENQUEUE_SCRIPT))
                await connection.read_response()
                await connection.send_packed_command(self._template.evalsha_command(jobs)
                                                     + self._wait)
                await connection.read_response()
            if self._wait:
                replicas = int(await connection.read_response())
                if replicas < self._min_replicas:
                    raise NotReplicated(f"{replicas} of {self._min_replicas} replicas")
        finally:
            await self._pool.release(connection)

    async def _flush_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._flush(batch)

    async def _flush(self, batch: list[_Pending]) -> None:
        try:
            await self._write([pending.job for pending in batch])
        except (RedisError, OSError) as exc:
            self.write_failures += 1
            log.warning("redis_write_failed", error=exc.__class__.__name__, jobs=len(batch))
            _fail_all(batch, StoreUnavailable(exc.__class__.__name__))
            return
        except Exception as exc:  # a bug: answer this batch 503 and keep the flusher alive
            self.write_failures += 1
            log.exception("redis_write_failed", error=exc.__class__.__name__, jobs=len(batch))
            _fail_all(batch, StoreUnavailable(exc.__class__.__name__))
            return
        except asyncio.CancelledError:
            _fail_all(batch, StoreUnavailable("ingress shutting down"))
            raise
        self.batches += 1
        self.jobs += len(batch)
        for pending in batch:
            if not pending.done.done():  # else the request went away; the job is stored
                pending.done.set_result(None)


def _fail_all(batch: list[_Pending], exc: StoreUnavailable) -> None:
    for pending in batch:
        if not pending.done.done():
            pending.done.set_exception(exc)
