"""What the console shows, read from Redis: the overview, an event's whole story, a stored
callback. Plain functions of a (synchronous) Redis client, run off the event loop; every
one reads, none writes but `test_event`, which writes nothing either: it POSTs once."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.worker import Worker

from console.auth import Actor
from shared.keys import (
    DEAD_LETTERS,
    FACT_MARK,
    PAUSED_HOOKS,
    attempts_key,
    callback_key,
    delivery_key,
    event_key,
    minute_key,
    payment_key,
    text,
    unsupported_key,
)
from shared.models import EventData, EventType, PaymentEvent, utcnow
from shared.queue import CALLBACKS, DELIVERIES
from shared.settings import HookSettings, Settings
from workers.delivery import send_once
from workers.listing import delivery_states

MINUTES = 60  # the chart's last hour
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # what RQ takes as a job id


def overview(redis: Redis, actor: Actor) -> dict[str, Any]:
    """Callbacks and deliveries per minute by outcome (the last hour), queues with the age
    of their oldest waiting job, workers alive, dead letters and paused hooks. A merchant
    sees its own dead letters and paused hooks, not the system's queues."""
    now = time.time()
    first = int(now // 60) - MINUTES + 1
    pipe = redis.pipeline(transaction=False)
    for minute in range(first, first + MINUTES):
        pipe.hgetall(minute_key(minute))
    pipe.zrange(DEAD_LETTERS, 0, -1)
    pipe.smembers(PAUSED_HOOKS)
    *minutes, letters, paused = pipe.execute()
    series = [{"minute": datetime.fromtimestamp((first + n) * 60, UTC).strftime("%H:%M"),
               **_by_kind(counts)} for n, counts in enumerate(minutes)]
    dead = [raw.decode() for raw in letters]
    paused_hooks = sorted(raw.decode() for raw in paused)
    if actor.merchant is not None:
        dead = [d for d in dead if d.split("|")[0] == actor.merchant]
        paused_hooks = [p for p in paused_hooks if p.split("/")[0] == actor.merchant]
        return {"series": [], "queues": {}, "workers": None, "warnings": [],
                "dead_letters": len(dead), "paused_hooks": paused_hooks}
    queues = {name: _queue(redis, name, now) for name in (CALLBACKS, DELIVERIES)}
    workers = len(Worker.all_keys(connection=redis))
    warnings = []
    if queues[CALLBACKS]["waiting"] and not workers:
        warnings.append("callbacks are waiting and no worker is running: start payhooks worker")
    elif queues[CALLBACKS]["oldest_s"] and queues[CALLBACKS]["oldest_s"] > 60:
        warnings.append(f"the oldest waiting callback has waited "
                        f"{queues[CALLBACKS]['oldest_s']:.0f} s: add workers")
    return {"series": series, "queues": queues, "workers": workers, "warnings": warnings,
            "dead_letters": len(dead), "paused_hooks": paused_hooks}


def _by_kind(counts: dict[bytes, bytes]) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = {"callbacks": {}, "deliveries": {}}
    for raw_field, value in counts.items():
        name, outcome = raw_field.decode().split("|", 1)
        kind = "callbacks" if name == "callbacks_processed" else "deliveries"
        found[kind][outcome] = int(value)
    return found


def _queue(redis: Redis, name: str, now: float) -> dict[str, Any]:
    pipe = redis.pipeline(transaction=False)
    pipe.llen(f"rq:queue:{name}")
    pipe.lindex(f"rq:queue:{name}", 0)
    pipe.zcard(ScheduledJobRegistry.key_template.format(name))
    pipe.zcard(StartedJobRegistry.key_template.format(name))
    pipe.zcard(FailedJobRegistry.key_template.format(name))
    waiting, oldest, scheduled, running, failed = pipe.execute()
    age = None
    if oldest is not None:
        enqueued = redis.hget(f"rq:job:{oldest.decode()}", "enqueued_at")
        if enqueued:
            moment = datetime.fromisoformat(text(enqueued).replace("Z", "+00:00"))
            age = max(0.0, now - moment.replace(tzinfo=moment.tzinfo or UTC).timestamp())
    return {"waiting": waiting, "oldest_s": age, "scheduled": scheduled, "running": running,
            "failed": failed}


def event_story(redis: Redis, settings: Settings, event: PaymentEvent) -> dict[str, Any]:
    """The event, its delivery to each hook with every attempt, the payment's every event
    by sequence, and the callbacks that led to them."""
    deliveries = {}
    for hook, state in delivery_states(redis, settings, event).items():
        attempts = [orjson.loads(raw) for raw in redis.lrange(attempts_key(event.id, hook),
                                                               0, -1)]
        deliveries[hook] = {"state": state, "attempts": attempts}
    data = event.data
    marks = redis.hkeys(payment_key(data.merchant, data.provider, data.payment_id))
    ids = sorted(text(mark)[len(FACT_MARK):] for mark in marks
                 if text(mark).startswith(FACT_MARK))
    stored = redis.mget([event_key(i) for i in ids]) if ids else []
    story = sorted((PaymentEvent.model_validate_json(raw) for raw in stored if raw),
                   key=lambda e: e.data.sequence)
    callbacks: dict[str, str] = {}  # each callback that led to an event: its first event
    for other in story:
        for hook in deliveries:
            origin = redis.hget(delivery_key(other.id, hook), "callback_id")
            if origin:
                callbacks.setdefault(text(origin), other.id)
    return {"event": event.model_dump(mode="json"), "deliveries": deliveries,
            "story": [e.model_dump(mode="json") for e in story],
            "callbacks": [{"callback_id": cid, "first_event": eid,
                           "outcome": callback_outcome(redis, cid)}
                          for cid, eid in sorted(callbacks.items())]}


def callback_outcome(redis: Redis, callback_id: str) -> str:
    """recorded, or what is recorded of a callback not done (retrying, failed, rejected,
    unsupported)."""
    outcome = redis.hget(callback_key(callback_id), "outcome")
    if outcome:
        return text(outcome)
    if redis.exists(unsupported_key(callback_id)):
        return "unsupported"
    return "recorded"


def callback_detail(redis: Redis, callback_id: str) -> dict[str, Any] | None:
    """The callback as the ingress stored it (secrets already left out there), with its
    outcome and reason; None when nothing of it is kept (RQ keeps a finished job ten
    minutes, a failed one 30 days)."""
    if not JOB_ID.fullmatch(callback_id):
        return None  # no callback has such an id (and RQ would refuse to look it up)
    record: dict[str, Any] = {"callback_id": callback_id}
    trouble = {text(k): text(v) for k, v in redis.hgetall(callback_key(callback_id)).items()}
    unsupported = {text(k): text(v)
                   for k, v in redis.hgetall(unsupported_key(callback_id)).items()}
    data: dict[str, Any] | None = None
    try:
        job = Job.fetch(callback_id, connection=redis, serializer=JSONSerializer)
        data = job.args[0] if job.args else None
        record["job_status"] = str(job.get_status())
    except NoSuchJobError:
        if unsupported.get("data"):
            data = orjson.loads(unsupported["data"])
    if data is None and not trouble and not unsupported:
        return None
    if data is not None:
        record["callback"] = data
        record.update(merchant=data.get("merchant"), provider=data.get("provider"))
    if trouble:
        record.update(merchant=trouble["merchant"], provider=trouble["provider"],
                      outcome=trouble["outcome"], reason=trouble["reason"],
                      tries=int(trouble.get("tries") or 0))
    elif unsupported:
        record.update(merchant=unsupported["merchant"], provider=unsupported["provider"],
                      outcome="unsupported", reason=unsupported["reason"])
    else:
        record["outcome"] = "recorded" if record.get("job_status") == "finished" else (
            record.get("job_status", "unknown"))
    return record


def test_event(settings: Settings, merchant: str, hook: HookSettings,
               event_type: EventType = EventType.CAPTURED) -> dict[str, Any]:
    """POST one signed example event to the hook now, as a delivery would (same headers,
    deadline and address rules); recorded nowhere. Its id starts `evt_test_`, and its
    `provider_status` says `{"test": true}`."""
    event = PaymentEvent(
        id=f"evt_test_{uuid.uuid4().hex[:23]}", type=event_type, timestamp=utcnow(),
        data=EventData(merchant=merchant, provider="test", transaction_id="test-transaction",
                       payment_id="test-payment", order_id="test-order",
                       status=event_type.status, amount="1.00", amount_minor=100,
                       currency="EUR", payment_method=None, occurred_at=None,
                       received_at=utcnow(), sequence=1, provider_status={"test": True}))
    attempt = send_once(settings.delivery, hook, event.id, event.model_dump_json().encode())
    return {"event_id": event.id, "ok": attempt.ok, "status": attempt.status,
            "error": attempt.error, "duration_ms": attempt.duration_ms}
