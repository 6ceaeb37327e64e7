"""A new event's first delivery attempts, made by the callback job that recorded it.

Most deliveries succeed at their first attempt, and a delivery job of its own costs RQ's
whole round (taken, started, ended: some 20 Redis commands even as workers/lifecycle.py
writes it, and a turn of the worker's loop). So the worker's callback job, once it has
recorded new events, attempts their deliveries itself, in order, to each hook that is
neither paused nor failing, within the hook's `max_in_flight_per_hook`
(`[worker] inline_first_attempt`, on by default; in `payhooks worker` only: a callback
job run another way queues its deliveries).

Nothing can be lost by it. The transaction that records the events writes each delivery
job as always, but held: in RQ's scheduled registry, due `hold_seconds` later, instead of
on the queue. Then:
- the attempt succeeds: one transaction records it, marks the delivery delivered and
  removes the held job;
- it fails: it is recorded as attempt 1, counted against the hook (workers/delivery.py
  `note_failure`, which may pause it), and the held job becomes an ordinary delivery job
  with one try less, due after the first step of the retry schedule (or the hook's
  Retry-After);
- the hook has no place free, it failed a first attempt of this callback already, or this
  callback's time for first attempts (two delivery timeouts) is spent: the held job is
  queued now, for a delivery job (which probes a failing hook one attempt at a time);
- the worker dies or the callback job fails before: the held job comes due, RQ's
  scheduler queues it, and a delivery job makes the attempt.
A delivery job that finds its delivery delivered already (the attempt here ended after
the held job came due) does nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import structlog
from redis import Redis
from rq import Queue

from shared import metrics, scripts, slots
from shared.keys import attempts_key, delivery_key, hook_in_flight_key
from shared.models import DeliveryState
from shared.queue import DELIVERIES, JobTemplate
from shared.settings import DeliverySettings
from workers import delivery
from workers.events import SCHEDULED, Held, delivery_job_id

log = structlog.get_logger("payhooks.delivery")
BUDGET_TIMEOUTS = 2  # a callback's first attempts take at most this many delivery timeouts
_QUEUE = Queue.redis_queue_namespace_prefix + DELIVERIES

# KEYS: the scheduled registry, the job's hash, the queue. ARGV: the job id. Queue a held
# job now, unless RQ's scheduler has queued it already.
_QUEUE_NOW = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], 'status', 'queued')
  redis.call('RPUSH', KEYS[3], ARGV[1])
end
"""


def hold_seconds(settings: DeliverySettings) -> float:
    """How long a held delivery waits for the callback job's attempt before RQ's scheduler
    queues it for a delivery job: longer than every first attempt of one callback takes."""
    return (BUDGET_TIMEOUTS + 1) * settings.timeout + 30


def attempt_held(redis: Redis, settings: DeliverySettings, held: Sequence[Held],
                 batch: metrics.Batch) -> None:
    """Attempt each held delivery once, in order; hand over what cannot be attempted now."""
    ends = time.monotonic() + BUDGET_TIMEOUTS * settings.timeout
    failed: set[str] = set()  # hooks that failed here: failing now, one probe at a time
    for one in held:
        place = hook_in_flight_key(one.merchant, one.hook.id)
        if time.monotonic() >= ends or one.hook.id in failed or not slots.take(
                redis, place, one.event_id, settings.timeout + 5,
                settings.max_in_flight_per_hook):
            _queue_now(redis, one)
            continue
        try:
            attempt = delivery.post_event(delivery.client_for(settings), one.hook,
                                          one.event_id, one.body, settings.timeout)
        except BaseException:  # the job's own timeout, say: the held job is due later
            slots.give_back(redis, place, one.event_id)
            raise
        batch.observe("delivery_seconds", attempt.duration_ms / 1000, one.merchant)
        if attempt.ok:
            _delivered(redis, one, attempt, settings, batch)
        else:
            _failed(redis, one, attempt, settings, batch)
            failed.add(one.hook.id)


def _queue_now(redis: Redis, one: Held) -> None:
    job = delivery_job_id(one.event_id, one.hook.id)
    scripts.run(redis, _QUEUE_NOW, keys=[SCHEDULED, JobTemplate.job_key(job), _QUEUE],
                args=[job])


def _outcome(one: Held, attempt: delivery.Attempt, number: int) -> dict[str, object]:
    """The attempt's log fields, with the event and hook (the callback job's context has
    neither)."""
    return {"event_id": one.event_id, "hook": one.hook.id,
            **delivery.attempt_fields(attempt, number, one.hook)}


def _delivered(redis: Redis, one: Held, attempt: delivery.Attempt,
               settings: DeliverySettings, batch: metrics.Batch) -> None:
    """Record the attempt, the delivery delivered and the held job gone, all at once."""
    job = delivery_job_id(one.event_id, one.hook.id)
    key, history = delivery_key(one.event_id, one.hook.id), int(settings.history)
    pipe = redis.pipeline()
    pipe.rpush(attempts_key(one.event_id, one.hook.id), delivery.attempt_entry(attempt))
    pipe.expire(attempts_key(one.event_id, one.hook.id), history)
    pipe.hincrby(key, "attempts", 1)
    pipe.hset(key, mapping={"state": DeliveryState.DELIVERED.value,
                            "updated_at": time.time()})
    pipe.expire(key, history)
    pipe.zrem(hook_in_flight_key(one.merchant, one.hook.id), one.event_id)
    pipe.zrem(SCHEDULED, job)
    pipe.delete(JobTemplate.job_key(job))
    number = pipe.execute()[2]
    batch.count("deliveries", one.merchant, one.hook.id, "delivered")
    log.info("event_delivered", **_outcome(one, attempt, int(number)))


def _failed(redis: Redis, one: Held, attempt: delivery.Attempt, settings: DeliverySettings,
            batch: metrics.Batch) -> None:
    """Record attempt 1 and the failure; the held job is the delivery's job from now on,
    due at its first retry, with one try less."""
    number = delivery.record_attempt(redis, one.merchant, one.event_id, one.hook.id, attempt,
                                     settings)
    delivery.note_failure(redis, one.merchant, one.hook, settings,
                          error=attempt.error or f"HTTP {attempt.status}")
    wait = delivery.next_delay(settings.retry_schedule, number, attempt.retry_after)
    job = delivery_job_id(one.event_id, one.hook.id)
    tries = max(len(settings.retry_schedule) - 1, 0)  # one of 1 + len(schedule) was made here
    delivery.set_state(redis, one.event_id, one.hook.id, settings,
                       state=DeliveryState.RETRYING, attempts=number,
                       next_at=time.time() + wait)
    pipe = redis.pipeline()
    pipe.hset(JobTemplate.job_key(job), "retries_left", tries)
    pipe.zadd(SCHEDULED, {job: int(time.time() + wait)}, xx=True)
    pipe.execute()
    batch.count("deliveries", one.merchant, one.hook.id, "failed")
    log.warning("delivery_failed", next_in_s=round(wait, 1), **_outcome(one, attempt, number))

