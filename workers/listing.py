"""`payhooks events`: the recorded events, newest first, with each hook's delivery state."""

from __future__ import annotations

from typing import Any

import orjson
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from shared.models import PaymentEvent
from shared.settings import Settings
from workers.events import (
    ALL_EVENTS,
    delivery_job_id,
    event_key,
    merchant_events_key,
    wants,
)


def recent_events(redis: Redis, merchant: str | None = None, limit: int = 50
                  ) -> list[PaymentEvent]:
    """The newest recorded events (of one merchant, or of all), newest first."""
    index = merchant_events_key(merchant) if merchant else ALL_EVENTS
    ids = [raw.decode() if isinstance(raw, bytes) else str(raw)
           for raw in redis.zrevrange(index, 0, limit - 1)]
    stored = redis.mget([event_key(event) for event in ids]) if ids else []
    return [PaymentEvent.model_validate_json(raw) for raw in stored if raw]


def delivery_states(redis: Redis, settings: Settings, event: PaymentEvent) -> dict[str, str]:
    """Each hook that takes this event, with the status of its delivery job."""
    merchant = settings.merchants.get(event.data.merchant)
    configured = merchant.hooks if merchant else ()
    hooks = [hook.id for hook in configured if wants(hook, event.type.value)]
    jobs = Job.fetch_many([delivery_job_id(event.id, hook) for hook in hooks],
                          connection=redis, serializer=JSONSerializer)
    return {hook: (job.get_status(refresh=False) or "unknown") if job else "expired"
            for hook, job in zip(hooks, jobs, strict=True)}


def event_lines(redis: Redis, settings: Settings, merchant: str | None, limit: int,
                as_json: bool) -> list[str]:
    lines = []
    for event in recent_events(redis, merchant, limit):
        deliveries = delivery_states(redis, settings, event)
        if as_json:
            record: dict[str, Any] = event.model_dump(mode="json")
            record["deliveries"] = deliveries
            lines.append(orjson.dumps(record).decode())
            continue
        data = event.data
        amount = f"{data.amount} {data.currency}" if data.amount is not None else "-"
        states = ", ".join(f"{hook}: {state}" for hook, state in deliveries.items()) or "no hook"
        lines.append(
            f"{event.timestamp:%Y-%m-%d %H:%M:%S}  {event.id}  {data.merchant:<12} "
            f"{data.provider:<9} {event.type.value:<28} #{data.sequence:<3} {amount:>14}  "
            f"order {data.order_id or '-'}  [{states}]")
    return lines
