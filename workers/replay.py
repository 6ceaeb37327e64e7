"""`payhooks replay`: send dead-lettered deliveries again, under the same event id; and
`payhooks resend`: send one event again, whatever its deliveries ended as.

A dead letter is a delivery job that used up its retry schedule (workers/delivery.py). It
stays in RQ's failed registry and in `payhooks:dead`, a sorted set of
`merchant|event|hook` by the time it died, and its delivery hash keeps the event's JSON.
Replaying takes it out of `payhooks:dead` (so two replays cannot both send it), gives the
job a fresh retry schedule and puts it back on `deliveries` under its own job id: the
merchant receives the same `webhook-id` as before.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.serializers import JSONSerializer

from shared.keys import DEAD_LETTERS, dead_letter_member, dead_letter_parts, delivery_key
from shared.models import DeliveryState, PaymentEvent
from shared.queue import DELIVERIES
from shared.settings import Settings
from workers.events import (
    DELIVER_EVENT,
    bring_forward,
    delivery_job_id,
    delivery_job_options,
    wants,
)
from workers.hook_store import hooks_of


@dataclass(frozen=True, slots=True)
class DeadLetter:
    merchant: str
    event: str
    hook: str
    died_at: float

    @property
    def member(self) -> str:
        return dead_letter_member(self.merchant, self.event, self.hook)


def dead_letters(redis: Redis, *, event: str | None = None, hook: str | None = None,
                 merchant: str | None = None, since: float | None = None,
                 until: float | None = None) -> list[DeadLetter]:
    """The dead letters that match every given filter, oldest first."""
    found = []
    entries: list[tuple[bytes, float]] = redis.zrangebyscore(  # type: ignore[assignment]
        DEAD_LETTERS, since or "-inf", until or "+inf", withscores=True)
    for raw, score in entries:
        parts = dead_letter_parts(raw.decode())
        if parts is None:
            continue
        merchant_id, event_id, hook_id = parts
        letter = DeadLetter(merchant_id, event_id, hook_id, died_at=float(score))
        if (event in (None, letter.event) and hook in (None, letter.hook)
                and merchant in (None, letter.merchant)):
            found.append(letter)
    return found


def replay(redis: Redis, settings: Settings, letters: list[DeadLetter],
           progress: Callable[[int, int], None] | None = None) -> int:
    """Queue these dead letters for delivery again; how many were queued."""
    replayed = 0
    for done, letter in enumerate(letters, 1):
        if redis.zrem(DEAD_LETTERS, letter.member):  # else another replay took it
            requeue_delivery(redis, settings, letter.event, letter.merchant, letter.hook)
            replayed += 1
        if progress is not None:
            progress(done, len(letters))
    return replayed


def requeue_delivery(redis: Redis, settings: Settings, event: str, merchant: str, hook: str
                     ) -> None:
    """Put the delivery's job back on `deliveries` under its own id, with a fresh retry
    schedule, whatever it ended as (delivered, dead, dropped); made again if RQ's copy
    is gone."""
    schedule = [int(step) for step in settings.delivery.retry_schedule]
    job_id = delivery_job_id(event, hook)
    queue = Queue(DELIVERIES, connection=redis, serializer=JSONSerializer)
    redis.hset(delivery_key(event, hook), mapping={
        "state": DeliveryState.QUEUED.value, "replayed_at": time.time(), "merchant": merchant})
    try:
        job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    except NoSuchJobError:  # RQ's copy expired (result_ttl, failure_ttl): make it again
        options = delivery_job_options(schedule)
        queue.enqueue(DELIVER_EVENT, event, merchant, hook, job_id=job_id,
                      job_timeout=options.pop("timeout"), **options)
        return
    for registry in (FailedJobRegistry, FinishedJobRegistry):
        redis.zrem(registry.key_template.format(DELIVERIES), job_id)
    job.retries_left = len(schedule)
    job.retry_intervals = schedule
    job.save()
    queue.enqueue_job(job)


def resend(redis: Redis, settings: Settings, event: PaymentEvent, hook: str | None = None
           ) -> dict[str, str]:
    """Deliver the event again to each hook that takes it (or to this one), under the same
    event id: what was done for each hook. A delivery on its way already is not doubled:
    one waiting for a retry or a pause is made due now instead."""
    merchant = event.data.merchant
    configured = hooks_of(redis, settings, merchant)  # and the runtime hooks, enabled ones
    targets = [h.id for h in configured if wants(h, event.type.value) and hook in (None, h.id)]
    if hook is not None and not targets:
        disabled = hooks_of(redis, settings, merchant, include_disabled=True)
        if any(h.id == hook and wants(h, event.type.value) for h in disabled):
            raise ValueError(f"{merchant}/{hook} is disabled: enable it first")
        known = ", ".join(h.id for h in configured if wants(h, event.type.value)) or "none"
        raise ValueError(f"{merchant} has no hook {hook!r} that takes {event.type.value} "
                         f"events (hooks that do: {known})")
    done = {}
    for target in targets:
        try:
            status = Job.fetch(delivery_job_id(event.id, target), connection=redis,
                               serializer=JSONSerializer).get_status()
        except NoSuchJobError:
            status = None
        if status in (JobStatus.QUEUED, JobStatus.STARTED):
            done[target] = "on its way already"
        elif status == JobStatus.SCHEDULED and bring_forward(redis, merchant, target, event.id):
            done[target] = "was waiting, due now"
        else:
            redis.zrem(DEAD_LETTERS, dead_letter_member(merchant, event.id, target))
            requeue_delivery(redis, settings, event.id, merchant, target)
            done[target] = "queued"
    return done


def text_progress(done: int, total: int) -> None:
    """A progress bar on stderr, for long replays."""
    width = 30
    filled = width * done // total if total else width
    sys.stderr.write(f"\rreplay [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()
