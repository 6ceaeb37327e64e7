"""Callbacks that are not done: retrying, given up, rejected. Kept with the reason, listed
by `payhooks callbacks`, and queued again by `payhooks callbacks --retry-now`.

A callback whose follow-up fails (the provider's API is down, the transaction is not listed
yet, the credentials are wrong) was acknowledged: the provider will not send it again, so
nothing but payhooks remembers it. Each such outcome is recorded, in the job's metrics
round trip (no round trip of its own):

- `payhooks:callback:<id>`: a hash of merchant, provider, reference, outcome (`retrying`,
  `failed`: out of tries, `rejected`: a permanent answer), reason, tries and the time of
  the last one; kept `TROUBLE_SECONDS`, as long as RQ keeps a failed job;
- `payhooks:callbacks`: a sorted set of those callback ids by the time of their last try.

A callback that then gives its events (or turns out a duplicate) is taken out of both (its
job's meta says it was recorded, so a callback done at its first try costs nothing): the
set holds only callbacks that still need someone. Unsupported callbacks have their own
record (workers/unsupported.py) and are listed beside these.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from redis import Redis
from redis.client import Pipeline
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from shared.keys import TROUBLE_SECONDS, TROUBLED_CALLBACKS, callback_key, text
from shared.models import Callback
from shared.queue import CALLBACK_JOB_OPTIONS, CALLBACKS
from workers.unsupported import unsupported_callbacks

RETRYING, FAILED, REJECTED, UNSUPPORTED = "retrying", "failed", "rejected", "unsupported"
OUTCOMES = (RETRYING, FAILED, REJECTED, UNSUPPORTED)
NOT_DONE = (RETRYING, FAILED, REJECTED)
META = "troubled"  # in the job's meta once a try was recorded here: its end is recorded too


@dataclass(frozen=True, slots=True)
class TroubledCallback:
    callback_id: str
    merchant: str
    provider: str
    reference: str
    outcome: str
    reason: str
    tries: int
    at: float

    def as_json(self) -> dict[str, Any]:
        return {"callback_id": self.callback_id, "merchant": self.merchant,
                "provider": self.provider, "reference": self.reference,
                "outcome": self.outcome, "reason": self.reason, "tries": self.tries,
                "at": self.at}


def note(pipe: Pipeline, callback: Callback, outcome: str, reason: str | None) -> None:
    """Add to `pipe` what records this try's outcome: kept with the reason for a callback
    that is not done, forgotten for one that is."""
    key = callback_key(callback.id)
    if outcome not in NOT_DONE:
        pipe.zrem(TROUBLED_CALLBACKS, callback.id)
        pipe.delete(key)
        return
    now = time.time()
    pipe.hset(key, mapping={"merchant": callback.merchant, "provider": callback.provider,
                            "reference": callback.reference, "outcome": outcome,
                            "reason": reason or "", "at": now})
    pipe.hincrby(key, "tries", 1)
    pipe.expire(key, TROUBLE_SECONDS)
    pipe.zadd(TROUBLED_CALLBACKS, {callback.id: now})


def troubled_callbacks(redis: Redis, *, outcome: str | None = None,
                       merchant: str | None = None, provider: str | None = None,
                       limit: int | None = None) -> list[TroubledCallback]:
    """Callbacks not done, newest try first; unsupported ones included (outcome
    `unsupported`) unless another outcome is asked for."""
    found: list[TroubledCallback] = []
    if outcome in (None, RETRYING, FAILED, REJECTED):
        found += _recorded(redis, outcome, merchant, provider)
    if outcome in (None, UNSUPPORTED):
        found += [TroubledCallback(entry.callback_id, entry.merchant, entry.provider,
                                   entry.reference, UNSUPPORTED, entry.reason, 1,
                                   entry.recorded_at)
                  for entry in unsupported_callbacks(redis, merchant=merchant,
                                                     provider=provider, limit=limit)]
    found.sort(key=lambda entry: entry.at, reverse=True)
    return found[:limit] if limit is not None else found


def _recorded(redis: Redis, outcome: str | None, merchant: str | None,
              provider: str | None) -> list[TroubledCallback]:
    ids = [text(raw) for raw in redis.zrevrange(TROUBLED_CALLBACKS, 0, -1)]  # type: ignore[arg-type]
    pipe = redis.pipeline(transaction=False)
    fields = ("merchant", "provider", "reference", "outcome", "reason", "tries", "at")
    for callback_id in ids:
        pipe.hmget(callback_key(callback_id), fields)
    found, gone = [], []
    for callback_id, values in zip(ids, pipe.execute(), strict=True):
        if values[0] is None:
            gone.append(callback_id)  # its record expired: the set forgets it now
            continue
        merchant_id, provider_name, reference, kind, reason, tries, at = (
            text(value) for value in values)
        entry = TroubledCallback(callback_id, merchant_id, provider_name, reference, kind,
                                 reason, int(tries or 0), float(at))
        if (outcome in (None, entry.outcome) and merchant in (None, entry.merchant)
                and provider in (None, entry.provider)):
            found.append(entry)
    if gone:
        redis.zrem(TROUBLED_CALLBACKS, *gone)
    return found


def callback_lines(redis: Redis, entries: list[TroubledCallback], as_json: bool) -> list[str]:
    """A line for each callback (`--json`: an object), a retrying one with its next try."""
    scheduled = ScheduledJobRegistry.key_template.format(CALLBACKS)
    pipe = redis.pipeline(transaction=False)
    for entry in entries:
        pipe.zscore(scheduled, entry.callback_id)
    pipe.time()
    *due, now = pipe.execute()
    lines = []
    for entry, at in zip(entries, due, strict=True):
        next_in = None if at is None else max(0.0, float(at) - float(now[0]))
        if as_json:
            lines.append(orjson.dumps({**entry.as_json(), "next_in_s": next_in}).decode())
            continue
        when = datetime.fromtimestamp(entry.at, UTC)
        tries = f"{entry.tries} {'try' if entry.tries == 1 else 'tries'}"
        state = entry.outcome if entry.outcome == UNSUPPORTED else f"{entry.outcome} ({tries}" + (
            f", next in {next_in:.0f} s)" if next_in is not None else ")")
        lines.append(f"{when:%Y-%m-%d %H:%M:%S}  {entry.callback_id}  {entry.merchant:<12} "
                     f"{entry.provider:<9} ref {entry.reference}  {state}: {entry.reason}")
    return lines


def summary(redis: Redis, entries: list[TroubledCallback]) -> str:
    """How many callbacks wait, run, and are not done, by outcome."""
    pipe = redis.pipeline(transaction=False)
    pipe.llen(f"{Queue.redis_queue_namespace_prefix}{CALLBACKS}")
    pipe.zcard(StartedJobRegistry.key_template.format(CALLBACKS))
    waiting, running = pipe.execute()
    counts = {outcome: sum(1 for e in entries if e.outcome == outcome) for outcome in OUTCOMES}
    return (f"callbacks: {waiting} waiting, {running} running, "
            + ", ".join(f"{count} {outcome}" for outcome, count in counts.items()))


def retry_now(redis: Redis, entries: list[TroubledCallback]) -> int:
    """Run these callbacks again now, each with a fresh retry schedule: a retrying one
    comes forward from RQ's scheduled registry, a failed or rejected one out of the failed
    registry (after a configuration fix, say). How many were queued."""
    queue = Queue(CALLBACKS, connection=redis, serializer=JSONSerializer)
    registries = (ScheduledJobRegistry.key_template.format(CALLBACKS),
                  FailedJobRegistry.key_template.format(CALLBACKS))
    retry = CALLBACK_JOB_OPTIONS["retry"]
    queued = 0
    for entry in entries:
        if entry.outcome == UNSUPPORTED:
            continue  # payhooks replay --unsupported: its job is gone, its data is kept
        try:
            job = Job.fetch(entry.callback_id, connection=redis, serializer=JSONSerializer)
        except NoSuchJobError:
            continue  # RQ's copy is gone (failure_ttl)
        if not any(redis.zrem(registry, job.id) for registry in registries):
            continue  # queued or running already
        job.retries_left = retry.max
        job.retry_intervals = retry.intervals
        job.meta[META] = 1
        job.save()
        queue.enqueue_job(job)
        queued += 1
    return queued
