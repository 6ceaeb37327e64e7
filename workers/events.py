"""Turning facts into canonical events, exactly once, with their delivery jobs.

An event's id is a hash of the merchant, the provider, the payment and the fact's key, so
the same fact always has the same id however often and however late it is reported. Each
new fact is recorded in one Redis transaction (WATCH on the event and on the payment,
then MULTI/EXEC) that together: stores the event (its key is the deduplication record,
kept `DEDUP_SECONDS`, longer than any provider retries), takes the payment's next
`sequence`, updates the payment's running totals, adds the event to the listings and
enqueues one delivery job per matching hook under a deterministic job id. A worker killed
anywhere leaves either all of that or none of it; running the job again records what is
missing and nothing twice.
"""

from __future__ import annotations

import fnmatch
import hashlib
import time
from collections.abc import Sequence

from redis import Redis, WatchError
from redis.client import Pipeline
from redis.typing import EncodableT
from rq import Queue, Retry
from rq.serializers import JSONSerializer

from shared.models import Callback, EventData, Fact, PaymentEvent, utcnow
from shared.money import to_decimal_string
from shared.queue import DELIVERIES
from shared.settings import HookSettings

DEDUP_SECONDS = 10 * 86400  # IXOPAY retries for about 7 days 18 hours
PAYMENT_SECONDS = 400 * 86400  # how long a payment's sequence and totals are kept
DELIVER_EVENT = "workers.delivery.deliver_event"
ALL_EVENTS = "payhooks:events"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def event_id(merchant: str, provider: str, fact: Fact) -> str:
    digest = hashlib.sha256(
        "\n".join((merchant, provider, fact.payment_id, fact.key)).encode()).hexdigest()
    return f"evt_{digest[:32]}"


def delivery_job_id(event: str, hook: str) -> str:
    return f"dlv_{event.removeprefix('evt_')}_{hook}"


def event_key(event: str) -> str:
    return f"payhooks:event:{event}"


def delivery_key(event: str, hook: str) -> str:
    """The hash with one delivery's state: queued, retrying, delivered, dead, dropped."""
    return f"payhooks:delivery:{event}:{hook}"


def attempts_key(event: str, hook: str) -> str:
    return f"payhooks:attempts:{event}:{hook}"


def merchant_events_key(merchant: str) -> str:
    return f"payhooks:events:{merchant}"


def wants(hook: HookSettings, event_type: str) -> bool:
    """Whether the hook's `events` filter (exact types or `payment.*`) takes this type."""
    return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in hook.events)


def record(
    redis: Redis, callback: Callback, facts: Sequence[Fact], hooks: Sequence[HookSettings],
    retry_schedule: Sequence[float],
) -> list[PaymentEvent]:
    """Record the facts not recorded yet, in order; the new events."""
    queue = Queue(DELIVERIES, connection=redis, serializer=JSONSerializer)
    new = []
    for fact in facts:
        event = _record_one(redis, queue, callback, fact, hooks, retry_schedule)
        if event is not None:
            new.append(event)
    return new


def _record_one(
    redis: Redis, queue: Queue, callback: Callback, fact: Fact, hooks: Sequence[HookSettings],
    retry_schedule: Sequence[float],
) -> PaymentEvent | None:
    event = event_id(callback.merchant, callback.provider, fact)
    payment = f"payhooks:payment:{callback.merchant}:{callback.provider}:{fact.payment_id}"
    with redis.pipeline() as pipe:
        while True:
            try:
                pipe.watch(event_key(event), payment)  # type: ignore[no-untyped-call]
                if pipe.exists(event_key(event)):
                    return None
                state = {_text(k): int(v) for k, v in pipe.hgetall(payment).items()}
                built = _event(event, callback, fact, state)
                if built is None:
                    return None
                pipe.multi()
                _write(pipe, queue, built, payment, fact, hooks, retry_schedule, callback.id)
                pipe.execute()
                return built
            except WatchError:
                continue  # another worker recorded something for this payment: look again


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


def _write(pipe: Pipeline, queue: Queue, event: PaymentEvent, payment: str, fact: Fact,
           hooks: Sequence[HookSettings], retry_schedule: Sequence[float],
           callback_id: str) -> None:
    state: dict[EncodableT, EncodableT] = {"sequence": event.data.sequence}
    if fact.total_minor is not None:
        state[f"total:{fact.type.status}"] = fact.total_minor
    pipe.hset(payment, mapping=state)
    pipe.expire(payment, PAYMENT_SECONDS)
    pipe.set(event_key(event.id), event.model_dump_json(), ex=DEDUP_SECONDS)
    score = event.timestamp.timestamp()
    for index in (merchant_events_key(event.data.merchant), ALL_EVENTS):
        pipe.zadd(index, {event.id: score})
        pipe.zremrangebyscore(index, 0, time.time() - DEDUP_SECONDS)
    for hook in hooks:
        if wants(hook, event.type.value):
            key = delivery_key(event.id, hook.id)
            pipe.hset(key, mapping={"state": "queued", "attempts": 0,
                                    "merchant": event.data.merchant,
                                    "callback_id": callback_id})
            pipe.expire(key, DEDUP_SECONDS)
            queue.enqueue(
                DELIVER_EVENT, event.id, event.data.merchant, hook.id,
                job_id=delivery_job_id(event.id, hook.id), pipeline=pipe,
                retry=Retry(max=len(retry_schedule), interval=[int(s) for s in retry_schedule]),
                job_timeout=120, result_ttl=7 * 86400, failure_ttl=90 * 86400,
                description=f"deliver {event.id} to {event.data.merchant}/{hook.id}",
            )
