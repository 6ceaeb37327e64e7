"""The RQ job behind every queued callback.

`process_callback` asks the provider's module for the facts (the follow-up query), records
the new ones as canonical events and enqueues their deliveries (workers/events.py); in
`payhooks worker`, it then makes their first delivery attempts itself
(workers/first_attempt.py). It is idempotent: RQ runs jobs at least once, and a second run
finds every fact recorded.

Outcomes, each ending in one `callback_processed` log line:
- recorded: new facts were recorded (some may have been recorded before);
- duplicate: every fact the source reports was recorded before (a provider's retry);
- unsupported: a genuine callback that gives no event: a type or status that maps to none,
  content the provider proved it sent but payhooks cannot read, an answer that reports no
  fact; logged as a warning with the reason, counted, kept with its reason for 30 days
  (workers/unsupported.py: `payhooks events --unsupported`, `payhooks replay --unsupported`);
- retry: the provider could not answer now, or its answer does not list yet the
  transaction the callback names; the job fails and RQ retries it on the callback job's
  schedule (shared/queue.py), or after the provider's Retry-After (at most an hour), as
  long as a worker runs the scheduler. When our own limit stopped the request (the budget
  a minute, the follow-ups in flight to that API), no attempt is spent;
- rejected: a permanent answer (unknown transaction, bad credentials, the merchant or
  provider is no longer configured), or a stored callback the provider module refuses on
  its second look (a PayEx path not of the documented form); the job ends in the failed
  registry, without retries, with the reason in its log line and in rq-dashboard.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import structlog
from rq import get_current_job

from shared import metrics
from shared.errors import (
    CallbackRejected,
    ProviderBusy,
    ProviderRejected,
    ProviderUnavailable,
    UnsupportedEvent,
)
from shared.models import Callback
from workers import callbacks, unsupported
from workers import runtime as runtimes
from workers.events import record_and_hold
from workers.first_attempt import attempt_held, hold_seconds

log = structlog.get_logger("payhooks.worker")
RETRY_AFTER_MAX = 3600  # the longest a provider's Retry-After delays a callback


def process_callback(callback_data: dict[str, Any]) -> dict[str, Any]:
    """Follow up, deduplicate and record one callback; the ids of the new events."""
    started = time.perf_counter()
    callback = Callback.model_validate_json(orjson.dumps(callback_data))
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        callback_id=callback.id, merchant=callback.merchant, provider=callback.provider)
    runtime = runtimes.current()
    batch = metrics.Batch()
    try:
        return _process(runtime, callback, callback_data, started, batch)
    finally:
        batch.send(runtime.redis)


def _process(runtime: runtimes.Runtime, callback: Callback, data: dict[str, Any],
             started: float, batch: metrics.Batch) -> dict[str, Any]:
    try:
        merchant = runtime.settings.merchants.get(callback.merchant)
        provider = runtime.providers.get(callback.merchant, {}).get(callback.provider)
        if merchant is None or provider is None:
            raise ProviderRejected("the merchant or provider is no longer configured")
        section = merchant.providers()[callback.provider]
        context = runtime.follow_up_context(
            f"followup:{callback.merchant}:{callback.provider}",
            section.max_follow_ups_per_minute, callback.received_at,
            in_flight=section.max_follow_ups_in_flight)
        asked = time.perf_counter()
        try:
            facts = provider.follow_up(callback, context)
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
            # an answer of a shape the provider module does not expect (a list for an
            # object, a string for a number): a provider error, retried and logged
            raise ProviderUnavailable(f"{callback.provider}: an answer of an unexpected shape "
                                      f"({exc.__class__.__name__})") from None
        batch.observe("followup_seconds", time.perf_counter() - asked, callback.provider)
        if not facts:
            raise UnsupportedEvent(f"{callback.provider}: the answer reports no fact we deliver")
        hold = hold_seconds(runtime.settings.delivery) if runtime.first_attempts else None
        events, held = record_and_hold(
            runtime.redis, callback, facts, runtime.hooks(callback.merchant),
            runtime.settings.delivery.retry_schedule, hold)
    except UnsupportedEvent as exc:
        unsupported.remember(runtime.redis, callback, data, str(exc))
        _done(batch, callback, "unsupported", started, reason=str(exc), level="warning")
        return {"events": [], "unsupported": str(exc)}
    except ProviderUnavailable as exc:
        busy = isinstance(exc, ProviderBusy)
        _retry_next(exc.retry_after, free=busy)
        batch.count("followup_errors", callback.provider, "busy" if busy else "unavailable")
        _done(batch, callback, "retry", started, reason=str(exc), level="warning")
        raise
    # CallbackRejected: a stored callback that the provider module's own checks refuse
    except (ProviderRejected, CallbackRejected) as exc:
        job = get_current_job()
        if job is not None:
            job.retries_left = 0  # a permanent answer: RQ would retry any failure
        batch.count("followup_errors", callback.provider, "rejected")
        _done(batch, callback, "rejected", started, reason=str(exc), level="error")
        raise
    for event in events:
        batch.count("events_recorded", callback.provider, event.type.value)
    if not events:  # every fact was recorded before: a provider's retry, say
        _done(batch, callback, "duplicate", started, facts=len(facts))
    else:
        _done(batch, callback, "recorded", started, facts=len(facts),
              new_events=[e.id for e in events], types=[e.type.value for e in events])
    attempt_held(runtime.redis, runtime.settings.delivery, held, batch)
    return {"events": [e.id for e in events], "facts": len(facts)}


def _retry_next(seconds: float | None, free: bool) -> None:
    """Have RQ run the job again after `seconds` (a provider's Retry-After, or our own wait
    for a place), the rest of its schedule unchanged; `free`: no request was made, so no
    attempt is spent."""
    job = get_current_job()
    if job is None or not job.retries_left:
        return
    if free:
        job.retries_left += 1
    if seconds is None:
        return
    schedule, left = list(job.retry_intervals or [0]), job.retries_left
    # RQ takes the interval at index len(schedule) - retries_left (at least 0): spell the
    # schedule out, one step per retry left, with this one first
    later = [schedule[max(len(schedule) - (left - step), 0)] for step in range(1, left)]
    job.retry_intervals = [max(1, min(round(seconds), RETRY_AFTER_MAX)), *later]


def _done(batch: metrics.Batch, callback: Callback, outcome: str, started: float,
          level: str = "info", **fields: Any) -> None:
    batch.count("callbacks_processed", callback.provider, outcome)
    _keep(batch, callback, outcome, fields.get("reason"))
    getattr(log, level)("callback_processed", outcome=outcome,
                        duration_ms=round((time.perf_counter() - started) * 1000, 2), **fields)


def _keep(batch: metrics.Batch, callback: Callback, outcome: str, reason: str | None) -> None:
    """Record a callback that is not done, with why (workers/callbacks.py); forget it once
    done, if it was recorded."""
    kept = {"retry": callbacks.RETRYING, "rejected": callbacks.REJECTED}.get(outcome, outcome)
    job = get_current_job()
    if kept == callbacks.RETRYING and job is not None and not job.retries_left:
        kept = callbacks.FAILED  # no try left: RQ moves it to its failed registry
    if kept in callbacks.NOT_DONE:
        if job is not None:
            job.meta[callbacks.META] = 1  # saved by RQ with the job, as it reschedules it
    elif job is not None and not job.meta.get(callbacks.META):
        return  # done at its first try: nothing was recorded, nothing to forget
    batch.also(lambda pipe: callbacks.note(pipe, callback, kept, reason))
