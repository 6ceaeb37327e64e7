"""`payhooks events`: the recorded events, newest first, with each hook's delivery state;
with `--unsupported`, the callbacks acknowledged that gave no event, with the reason.

Events are found by walking the listing (a sorted set by time, kept `DEDUP_SECONDS`) from
the newest down, a page at a time, keeping those that match every filter, until `limit`
match: "what happened to order 77" reads at most the window it is given (`--since`)."""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from redis import Redis

from shared.keys import ALL_EVENTS, attempts_key, delivery_key, event_key, merchant_events_key, text
from shared.models import FINAL_STATES, DeliveryState, PaymentEvent
from shared.settings import Settings
from workers.events import wants
from workers.hook_store import listed_hooks
from workers.unsupported import unsupported_callbacks

PAGE = 500  # events read per round trip while filtering


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Every given field must match. `type`: an event type or a pattern (`payment.refund*`);
    `since`/`until`: Unix times of the event's recording."""

    merchant: str | None = None
    provider: str | None = None
    type: str | None = None
    order: str | None = None
    payment: str | None = None
    transaction: str | None = None
    since: float | None = None
    until: float | None = None

    def matches(self, event: PaymentEvent) -> bool:
        data = event.data
        return all(wanted is None or wanted == found for wanted, found in (
            (self.merchant, data.merchant), (self.provider, data.provider),
            (self.order, data.order_id), (self.payment, data.payment_id),
            (self.transaction, data.transaction_id),
        )) and (self.type is None or fnmatch.fnmatchcase(event.type.value, self.type))


def recent_events(redis: Redis, merchant: str | None = None, limit: int = 50
                  ) -> list[PaymentEvent]:
    """The newest recorded events (of one merchant, or of all), newest first."""
    return find_events(redis, EventFilter(merchant=merchant), limit)


def find_events(redis: Redis, where: EventFilter, limit: int = 50) -> list[PaymentEvent]:
    """The newest recorded events that match, newest first, at most `limit`."""
    index = merchant_events_key(where.merchant) if where.merchant else ALL_EVENTS
    top = where.until if where.until is not None else "+inf"
    bottom = where.since if where.since is not None else "-inf"
    plain = where == EventFilter(merchant=where.merchant)  # nothing to skip: read what is kept
    found: list[PaymentEvent] = []
    offset = 0
    while len(found) < limit:
        count = limit - len(found) if plain else PAGE
        ids = [raw.decode() if isinstance(raw, bytes) else str(raw)
               for raw in redis.zrevrangebyscore(index, top, bottom, start=offset, num=count)]
        if not ids:
            break
        offset += len(ids)
        for raw in redis.mget([event_key(event) for event in ids]):
            if raw:  # else expired since it was listed
                event = PaymentEvent.model_validate_json(raw)
                if where.matches(event) and len(found) < limit:
                    found.append(event)
    return found


def get_event(redis: Redis, event: str) -> PaymentEvent | None:
    raw = redis.get(event_key(event))
    return PaymentEvent.model_validate_json(raw) if isinstance(raw, bytes) else None


def delivery_states(redis: Redis, settings: Settings, event: PaymentEvent) -> dict[str, str]:
    """Each hook that takes this event (config or runtime, enabled or not), with its
    delivery state (shared.models.DeliveryState): queued, paused, retrying (attempt n, next
    try), delivered (after n attempts), dead (dead-lettered, with RQ's reason when it ended
    the last try), dropped; expired once its history is gone."""
    states = {}
    for listed in listed_hooks(redis, settings, event.data.merchant):
        hook = listed.hook.id
        if not wants(listed.hook, event.type.value):
            continue
        pipe = redis.pipeline(transaction=False)
        pipe.hgetall(delivery_key(event.id, hook))
        pipe.lindex(attempts_key(event.id, hook), -1)
        stored, last = pipe.execute()
        if not stored and not listed.enabled:
            continue  # recorded while the hook was disabled: it never had a delivery
        fields = {text(k): text(v) for k, v in stored.items() if k != b"event"}
        states[hook] = _describe(fields, orjson.loads(last) if last else None)
    return states


def _describe(fields: dict[str, str], last: dict[str, Any] | None = None) -> str:
    """`last`: the latest attempt's record, whose answer or error says why it failed."""
    state = fields.get("state", "expired")  # a DeliveryState, or gone with its history
    attempts = int(fields.get("attempts") or 0)
    failed = "" if last is None else (
        f": {last['error']}" if last.get("error") else f": HTTP {last.get('status')}")
    if state == DeliveryState.RETRYING and "next_at" in fields:
        wait = max(0, float(fields["next_at"]) - time.time())
        return f"retrying (attempt {attempts} failed{failed}, next in {wait:.0f} s)"
    details = [f"{attempts} attempt{'s' if attempts > 1 else ''}"] if attempts else []
    if state in (DeliveryState.DEAD, DeliveryState.DROPPED) and "reason" in fields:
        details.append(fields["reason"])  # an ending our attempts did not see (RQ's)
    elif state == DeliveryState.DEAD and last is not None:
        details.append(f"last attempt{failed}")
    if state in FINAL_STATES and details:
        return f"{state} ({', '.join(details)})"
    return state


def event_lines(redis: Redis, settings: Settings, events: list[PaymentEvent],
                as_json: bool) -> list[str]:
    lines = []
    for event in events:
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


def event_detail_lines(redis: Redis, settings: Settings, event: PaymentEvent) -> list[str]:
    """One event in full: its JSON, then per hook its state and every attempt kept."""
    lines = [orjson.dumps(event.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode()]
    for hook, state in delivery_states(redis, settings, event).items():
        lines.append(f"{hook}: {state}")
        for raw in redis.lrange(attempts_key(event.id, hook), 0, -1):
            attempt = orjson.loads(raw)
            when = datetime.fromtimestamp(attempt["at"], UTC)
            outcome = attempt.get("error") or f"HTTP {attempt.get('status')}"
            lines.append(f"  {when:%Y-%m-%d %H:%M:%S}  {outcome:<40} "
                         f"{attempt.get('duration_ms', 0):>8.1f} ms")
    return lines


def unsupported_lines(redis: Redis, merchant: str | None, limit: int,
                      as_json: bool) -> list[str]:
    """The kept unsupported callbacks (workers/unsupported.py), newest first."""
    lines = []
    for entry in unsupported_callbacks(redis, merchant=merchant, limit=limit):
        if as_json:
            lines.append(orjson.dumps(entry.as_json()).decode())
            continue
        when = datetime.fromtimestamp(entry.recorded_at, UTC)
        lines.append(f"{when:%Y-%m-%d %H:%M:%S}  {entry.callback_id}  {entry.merchant:<12} "
                     f"{entry.provider:<9} ref {entry.reference}  unsupported: {entry.reason}")
    return lines
