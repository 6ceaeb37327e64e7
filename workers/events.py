"""Turning facts into canonical events, exactly once, with their delivery jobs.

An event's id is a hash of the merchant, the provider, the payment and the fact's key, so
the same fact always has the same id however often and however late it is reported. A
callback's new facts are recorded, per payment, in one Redis transaction (WATCH on the
events and on the payment, then MULTI/EXEC) that together: stores each event (kept
`DEDUP_SECONDS`, longer than any provider retries), marks the fact in the payment's hash
(kept `PAYMENT_SECONDS`, as long as the payment can change: a refund months later makes the
provider list the whole history again, and an old fact must not come back as a new event
with a newer `sequence`), takes the payment's next `sequence`, updates the payment's
running totals, adds the event to the listings and enqueues one delivery job per matching
hook under a deterministic job id (a real RQ job, written from a template RQ built, as the
ingress writes callback jobs). A worker killed anywhere leaves either all of that or none
of it; running the job again records what is missing and nothing twice.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis import Redis, WatchError
from redis.client import Pipeline
from redis.typing import EncodableT
from rq import Callback as RQCallback
from rq import Retry
from rq.job import JobStatus
from rq.registry import ScheduledJobRegistry

from shared.clock import from_reply
from shared.keys import (
    ALL_EVENTS,
    DEDUP_SECONDS,
    FACT_MARK,
    PAYMENT_SECONDS,
    delivery_key,
    event_key,
    hook_key,
    merchant_events_key,
    payment_key,
)
from shared.models import Callback, DeliveryState, EventData, Fact, PaymentEvent, utcnow
from shared.money import to_decimal_string
from shared.queue import DELIVERIES, JobTemplate
from shared.settings import HookSettings

DELIVER_EVENT = "workers.delivery.deliver_event"
DELIVERY_FAILED = "workers.delivery.delivery_failed"
# Facts of one payment recorded in one transaction: an answer listing 100,000 transactions
# made one WATCH/MGET block Redis for 47 s; in slices, each Redis call stays small.
FACTS_PER_TRANSACTION = 256
# The longest a delivery waits for a paused hook before it looks again (a pause by hand
# lasts until resumed; `payhooks hooks resume` brings the waiting ones forward at once)
LOOK_AGAIN = 3600.0
SCHEDULED = ScheduledJobRegistry.key_template.format(DELIVERIES)  # RQ's, of the deliveries


def event_id(merchant: str, provider: str, fact: Fact) -> str:
    digest = hashlib.sha256(
        "\n".join((merchant, provider, fact.payment_id, fact.key)).encode()).hexdigest()
    return f"evt_{digest[:32]}"


def delivery_job_id(event: str, hook: str) -> str:
    return f"dlv_{event.removeprefix('evt_')}_{hook}"


def wants(hook: HookSettings, event_type: str) -> bool:
    """Whether the hook's `events` filter (exact types or `payment.*`) takes this type."""
    return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in hook.events)


@dataclass(frozen=True, slots=True)
class Held:
    """A delivery written held (workers/first_attempt.py): the callback job attempts it."""

    event_id: str
    merchant: str
    hook: HookSettings
    body: bytes  # the event's JSON, as recorded


def record(
    redis: Redis, callback: Callback, facts: Sequence[Fact], hooks: Sequence[HookSettings],
    retry_schedule: Sequence[float],
) -> list[PaymentEvent]:
    """Record the facts not recorded yet, in order; the new events."""
    return record_and_hold(redis, callback, facts, hooks, retry_schedule)[0]


def record_and_hold(
    redis: Redis, callback: Callback, facts: Sequence[Fact], hooks: Sequence[HookSettings],
    retry_schedule: Sequence[float], hold: float | None = None,
) -> tuple[list[PaymentEvent], list[Held]]:
    """`record`; with `hold`, the deliveries to hooks neither paused nor failing are held
    for that many seconds (in RQ's scheduled registry, not queued): the new events, and
    the deliveries held."""
    template = delivery_template(tuple(retry_schedule))
    payments: dict[str, list[Fact]] = {}
    for fact in facts:
        payments.setdefault(fact.payment_id, []).append(fact)
    new: list[PaymentEvent] = []
    held: list[Held] = []
    for payment_facts in payments.values():
        for start in range(0, len(payment_facts), FACTS_PER_TRANSACTION):
            chunk = payment_facts[start:start + FACTS_PER_TRANSACTION]
            new += _record_payment(redis, template, callback, chunk, hooks, hold, held)
    return new, held


@dataclass(frozen=True, slots=True)
class _HookStates:
    paused: dict[str, float]  # hook id: the end of its pause
    failing: set[str]  # hooks with failures in a row (a probe at a time)
    now: float  # Redis's time


def _hook_states(redis: Redis, merchant: str, hooks: Sequence[HookSettings]) -> _HookStates:
    """Which of the merchant's hooks are paused now (with the end of their pause) or
    failing, and Redis's time (one round trip)."""
    pipe = redis.pipeline(transaction=False)
    pipe.time()
    for hook in hooks:
        pipe.hmget(hook_key(merchant, hook.id), ["paused_until", "failures"])
    reply, *states = pipe.execute()
    now = from_reply(reply)
    paused = {hook.id: min(float(until), now + LOOK_AGAIN)
              for hook, (until, _) in zip(hooks, states, strict=True)
              if until is not None and float(until) > now}
    failing = {hook.id for hook, (_, failures) in zip(hooks, states, strict=True)
               if failures is not None and int(failures) > 0}
    return _HookStates(paused, failing, now)


def _record_payment(
    redis: Redis, template: JobTemplate, callback: Callback, facts: list[Fact],
    hooks: Sequence[HookSettings], hold: float | None, held: list[Held],
) -> list[PaymentEvent]:
    """One transaction for all the new facts of one payment: four round trips, and one to
    see which hooks are paused (and Redis's time) when there is something new to deliver."""
    ids = [event_id(callback.merchant, callback.provider, fact) for fact in facts]
    keys = [event_key(event) for event in ids]
    payment = payment_key(callback.merchant, callback.provider, facts[0].payment_id)
    with redis.pipeline() as pipe:
        while True:
            try:
                pipe.watch(payment, *keys)  # type: ignore[no-untyped-call]
                recorded = pipe.mget(keys)
                state = _payment_state(pipe, payment, ids, facts)
                events = []
                changed: dict[str, int] = {}  # what to write back to the payment's hash
                for event, fact, stored in zip(ids, facts, recorded, strict=True):
                    mark = FACT_MARK + event
                    built = None if stored or mark in state else _event(
                        event, callback, fact, state)
                    if (stored or built is not None) and mark not in state:
                        # marked with its event, or from its event's record if that was
                        # written before payments kept their facts' marks
                        state[mark] = changed[mark] = 1
                    if built is not None:
                        events.append((built, fact))
                        state["sequence"] = changed["sequence"] = built.data.sequence
                        if fact.total_minor is not None:
                            total = f"total:{fact.type.status}"
                            state[total] = changed[total] = fact.total_minor
                if not events:
                    if changed:
                        pipe.multi()
                        _keep_state(pipe, payment, changed)
                        pipe.execute()
                    return []  # a duplicate: nothing more to read or write
                states = _hook_states(redis, callback.merchant, hooks)
                pipe.multi()
                holding = _write(pipe, template, events, payment, changed, hooks, callback.id,
                                 states, hold)
                pipe.execute()
                held += holding
                return [event for event, _ in events]
            except WatchError:
                continue  # another worker recorded something for this payment: look again


def _payment_state(pipe: Pipeline, payment: str, ids: list[str], facts: Sequence[Fact]
                   ) -> dict[str, int]:
    """What of the payment's hash these facts need: its sequence, the totals they report
    and their marks (one HMGET, small however many facts the payment has had)."""
    totals = {f"total:{fact.type.status}" for fact in facts if fact.total_minor is not None}
    fields = ["sequence", *sorted(totals), *(FACT_MARK + event for event in ids)]
    values = pipe.hmget(payment, fields)
    return {field: int(value) for field, value in zip(fields, values, strict=True)
            if value is not None}


def _event(event: str, callback: Callback, fact: Fact, state: dict[str, int]
           ) -> PaymentEvent | None:
    amount = fact.amount_minor
    if fact.total_minor is not None:
        amount = fact.total_minor - state.get(f"total:{fact.type.status}", 0)
        if amount <= 0:
            return None  # a total that did not grow is no new fact
    return PaymentEvent(
        id=event, type=fact.type, timestamp=utcnow(),
        data=EventData(
            merchant=callback.merchant, provider=callback.provider,
            transaction_id=fact.transaction_id, payment_id=fact.payment_id,
            order_id=fact.order_id, status=fact.type.status,
            amount=to_decimal_string(amount, fact.currency) if amount is not None else None,
            amount_minor=amount, currency=fact.currency, payment_method=fact.payment_method,
            occurred_at=fact.occurred_at, received_at=callback.received_at,
            sequence=state.get("sequence", 0) + 1, provider_status=fact.provider_status,
        ),
    )


def _write(pipe: Pipeline, template: JobTemplate, events: list[tuple[PaymentEvent, Fact]],
           payment: str, changed: dict[str, int], hooks: Sequence[HookSettings],
           callback_id: str, states: _HookStates, hold: float | None) -> list[Held]:
    """The events and their deliveries; `states.now`, Redis's time, trims the listings.
    The deliveries written held (with `hold`, to hooks neither paused nor failing)."""
    _keep_state(pipe, payment, changed)
    queued, held = False, []
    for event, _fact in events:
        body = event.model_dump_json().encode()
        pipe.set(event_key(event.id), body, ex=DEDUP_SECONDS)
        score = event.timestamp.timestamp()
        for index in (merchant_events_key(event.data.merchant), ALL_EVENTS):
            pipe.zadd(index, {event.id: score})
            pipe.zremrangebyscore(index, 0, states.now - DEDUP_SECONDS)
        for hook in hooks:
            if not wants(hook, event.type.value):
                continue
            paused = states.paused.get(hook.id)
            if hold is not None and paused is None and hook.id not in states.failing:
                _enqueue_delivery(pipe, template, event, hook.id, callback_id,
                                  states.now + hold, DeliveryState.QUEUED)
                held.append(Held(event.id, event.data.merchant, hook, body))
            elif paused is not None:
                _enqueue_delivery(pipe, template, event, hook.id, callback_id, paused + 1,
                                  DeliveryState.PAUSED)
            else:
                _enqueue_delivery(pipe, template, event, hook.id, callback_id, None,
                                  DeliveryState.QUEUED)
                queued = True
    if queued:
        pipe.sadd(template.queues_key, template.queue_key)
    return held


def _enqueue_delivery(pipe: Pipeline, template: JobTemplate, event: PaymentEvent, hook: str,
                      callback_id: str, due: float | None, state: DeliveryState) -> None:
    """What Queue.enqueue does for the deterministic delivery job, inside our transaction;
    with `due` (a paused hook, a delivery held), what Queue.schedule_job does, for then
    (so that the job does not run, and step aside, while the hook is paused)."""
    merchant = event.data.merchant
    key = delivery_key(event.id, hook)
    pipe.hset(key, mapping={"state": state.value, "attempts": 0,
                            "merchant": merchant, "callback_id": callback_id})
    pipe.expire(key, DEDUP_SECONDS)
    job_id = delivery_job_id(event.id, hook)
    arguments = orjson.dumps([event.id, merchant, hook])[1:-1]
    fields = template.job_hash(arguments, f"deliver {event.id} to {merchant}/{hook}")
    if due is None:
        pipe.hset(template.job_key(job_id), mapping=fields)
        pipe.rpush(template.queue_key, job_id)
        return
    fields["status"] = JobStatus.SCHEDULED.value
    pipe.hset(template.job_key(job_id), mapping=fields)
    pipe.zadd(SCHEDULED, {job_id: int(due)})


def _keep_state(pipe: Pipeline, payment: str, changed: dict[str, int]) -> None:
    payment_state: dict[EncodableT, EncodableT] = {k: v for k, v in changed.items()}
    pipe.hset(payment, mapping=payment_state)
    pipe.expire(payment, PAYMENT_SECONDS)


def delivery_job_options(retry_schedule: Sequence[float]) -> dict[str, Any]:
    """The options of every delivery job (Job.create's names), recorded here or replayed.
    `on_failure` runs on every failure RQ sees, our code's or not (RQ's job timeout, a
    worker lost mid-job): once no try is left it dead-letters the delivery."""
    steps = [int(step) for step in retry_schedule] or [60]
    return {"timeout": 120, "result_ttl": 7 * 86400, "failure_ttl": 90 * 86400,
            "retry": Retry(max=len(steps), interval=steps),
            "on_failure": RQCallback(DELIVERY_FAILED)}


@functools.cache
def delivery_template(retry_schedule: tuple[float, ...]) -> JobTemplate:
    """The delivery jobs' template (built by RQ once per process and retry schedule)."""
    return JobTemplate(DELIVERIES, DELIVER_EVENT, delivery_job_options(retry_schedule))


def bring_forward(redis: Redis, merchant: str, hook: str, event: str | None = None) -> int:
    """Make the hook's deliveries waiting in RQ's scheduled registry (or only this event's)
    due now; how many."""
    suffix = f"_{hook}"
    ids = [raw.decode() for raw in redis.zrange(SCHEDULED, 0, -1)]  # type: ignore[union-attr]
    mine = [job for job in ids if job.startswith("dlv_") and job.endswith(suffix)
            and len(job) == len("dlv_") + 32 + len(suffix)
            and event in (None, "evt_" + job[4:36])]
    pipe = redis.pipeline(transaction=False)
    for job in mine:
        pipe.hget(delivery_key("evt_" + job[4:36], hook), "merchant")
    owners = pipe.execute()
    due = {job: 0 for job, owner in zip(mine, owners, strict=True)
           if owner is not None and owner.decode() == merchant}
    if due:
        redis.zadd(SCHEDULED, due, xx=True)  # score 0: the scheduler queues them next
    return len(due)
