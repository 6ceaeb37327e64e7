"""Callbacks that the provider proved it sent but that gave no event: kept, listed, replayed.

A callback whose outcome is `unsupported` (a transaction type or status payhooks does not
map, a body or query it cannot read, an answer that reports nothing) was acknowledged, so
the provider will not send it again. Its job ends as finished, and RQ keeps a finished job
only ten minutes, so the callback is kept here, as stored by the ingress (secrets already
removed), with the reason, for `UNSUPPORTED_SECONDS`:

- `payhooks:unsupported`: a sorted set of callback ids by the time the worker gave up;
- `payhooks:unsupported:<callback id>`: a hash of merchant, provider, reference, reason,
  received_at, recorded_at and the callback's job data.

`payhooks events --unsupported` lists them; `payhooks replay --unsupported` queues them again
under their own callback ids (after an upgrade that reads them, or a configuration change).
A replay that is still unsupported is recorded again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from shared.clock import redis_now
from shared.keys import UNSUPPORTED, UNSUPPORTED_SECONDS, text, unsupported_key
from shared.models import Callback
from shared.queue import CALLBACK_JOB_OPTIONS, CALLBACKS, PROCESS_CALLBACK


@dataclass(frozen=True, slots=True)
class Unsupported:
    callback_id: str
    merchant: str
    provider: str
    reference: str
    reason: str
    received_at: str
    recorded_at: float

    def as_json(self) -> dict[str, Any]:
        return {"callback_id": self.callback_id, "merchant": self.merchant,
                "provider": self.provider, "reference": self.reference, "reason": self.reason,
                "received_at": self.received_at, "recorded_at": self.recorded_at}


def remember(redis: Redis, callback: Callback, data: dict[str, Any], reason: str) -> None:
    """Keep this callback's job data and the reason it gave no event (two round trips)."""
    now = redis_now(redis)  # the index is trimmed by age: a host's wrong clock trims it all
    key = unsupported_key(callback.id)
    pipe = redis.pipeline(transaction=True)
    pipe.hset(key, mapping={
        "merchant": callback.merchant, "provider": callback.provider,
        "reference": callback.reference, "reason": reason,
        "received_at": callback.received_at.isoformat(), "recorded_at": now,
        "data": orjson.dumps(data)})
    pipe.expire(key, UNSUPPORTED_SECONDS)
    pipe.zadd(UNSUPPORTED, {callback.id: now})
    pipe.zremrangebyscore(UNSUPPORTED, 0, now - UNSUPPORTED_SECONDS)
    pipe.execute()


def unsupported_callbacks(redis: Redis, *, merchant: str | None = None,
                          provider: str | None = None, since: float | None = None,
                          until: float | None = None, limit: int | None = None
                          ) -> list[Unsupported]:
    """The kept unsupported callbacks that match every given filter, newest first."""
    ids = [text(raw) for raw in redis.zrevrangebyscore(  # type: ignore[arg-type]
        UNSUPPORTED, until or "+inf", since or "-inf")]
    pipe = redis.pipeline(transaction=False)
    for callback_id in ids:
        pipe.hmget(unsupported_key(callback_id), "merchant", "provider", "reference", "reason",
                   "received_at", "recorded_at")
    found = []
    for callback_id, values in zip(ids, pipe.execute(), strict=True):
        if values[0] is None:
            continue  # expired
        merchant_id, provider_name, reference, reason, received_at, recorded_at = (
            text(value) for value in values)
        entry = Unsupported(callback_id, merchant_id, provider_name, reference, reason,
                            received_at, float(recorded_at))
        if merchant in (None, entry.merchant) and provider in (None, entry.provider):
            found.append(entry)
            if limit is not None and len(found) >= limit:
                break
    return found


def replay_unsupported(redis: Redis, entries: list[Unsupported]) -> int:
    """Queue these callbacks for processing again, under their own ids; how many."""
    queue = Queue(CALLBACKS, connection=redis, serializer=JSONSerializer)
    options = dict(CALLBACK_JOB_OPTIONS)
    timeout = options.pop("timeout")
    replayed = 0
    for entry in entries:
        data = redis.hget(unsupported_key(entry.callback_id), "data")
        if data is None or not redis.zrem(UNSUPPORTED, entry.callback_id):
            continue  # expired, or another replay took it
        queue.enqueue(PROCESS_CALLBACK, orjson.loads(data), job_id=entry.callback_id,
                      job_timeout=timeout, description=f"replay of {entry.callback_id}",
                      **options)
        redis.delete(unsupported_key(entry.callback_id))
        replayed += 1
    return replayed
