"""Writes callback jobs to Redis, one pipeline per batch, and says when each one is stored.

A request hands its job to `JobStore.store` and waits. A single flusher task takes every
job queued since its last round trip and sends them in one pipeline, then wakes each
waiting request with its own outcome: stored, or `StoreUnavailable`. Under load a batch
holds all the callbacks that arrived during the previous round trip, so Redis sees a few
large pipelines instead of thousands of small writes. Nothing is acknowledged before Redis
has answered for that job's commands.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.errors import StoreUnavailable
from shared.queue import JobFields, JobTemplate

log = structlog.get_logger("payhooks.ingress")
_COMMANDS_PER_JOB = 2


@dataclass(slots=True)
class _Pending:
    job_id: str
    fields: JobFields
    done: asyncio.Future[None] = field(repr=False)


class JobStore:
    def __init__(self, redis: Redis, template: JobTemplate, max_batch: int = 512) -> None:
        self._redis = redis
        self._template = template
        self._max_batch = max_batch
        self._pending: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name="payhooks-job-store")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for pending in self._pending:
            if not pending.done.done():
                pending.done.set_exception(StoreUnavailable("ingress shutting down"))
        self._pending.clear()

    async def store(self, job_id: str, argument_json: bytes, description: str) -> None:
        """Return once Redis holds the job; raise StoreUnavailable if it does not."""
        fields = self._template.job_hash(job_id, argument_json, description)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(job_id, fields, done))
        self._wakeup.set()
        await done

    async def _flush_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._flush(batch)

    async def _flush(self, batch: list[_Pending]) -> None:
        template = self._template
        pipe = self._redis.pipeline(transaction=False)
        pipe.sadd(template.queues_key, template.queue_key)
        for pending in batch:
            pipe.hset(template.job_key(pending.job_id), mapping=pending.fields)
            pipe.rpush(template.queue_key, pending.job_id)
        try:
            results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            log.warning("redis_write_failed", error=exc.__class__.__name__, jobs=len(batch))
            _fail_all(batch, exc)
            return
        except asyncio.CancelledError:
            _fail_all(batch, StoreUnavailable("ingress shutting down"))
            raise
        self.batches += 1
        for index, pending in enumerate(batch):
            first = 1 + index * _COMMANDS_PER_JOB
            errors = [r for r in results[first : first + _COMMANDS_PER_JOB]
                      if isinstance(r, Exception)]
            if pending.done.done():
                continue  # the request went away; the job is stored all the same
            if errors:
                pending.done.set_exception(StoreUnavailable(errors[0].__class__.__name__))
            else:
                pending.done.set_result(None)


def _fail_all(batch: list[_Pending], exc: BaseException) -> None:
    for pending in batch:
        if not pending.done.done():
            pending.done.set_exception(StoreUnavailable(exc.__class__.__name__))
