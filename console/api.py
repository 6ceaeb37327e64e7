"""The admin API under `/api/`: JSON, everything the pages do (the pages call the same
functions). Each handler reads its parameters, checks what the actor may see, and runs
the Redis work off the event loop. A merchant's token sees only that merchant: anything of
another merchant is answered as if it did not exist (404)."""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from aiohttp import web

from console import data
from console.auth import Actor
from console.keys import ACTOR, REDIS, SETTINGS
from shared.models import EventType, PaymentEvent
from shared.settings import PROVIDER_SECTIONS, parse_duration
from workers import callbacks, hooks, listing, replay

log = structlog.get_logger("payhooks.console")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(ValueError):
    """A parameter that cannot be read: 400, with the message."""


def answer(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=lambda v: orjson.dumps(v).decode())


def not_found(what: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(text=f'{{"error": "no {what}"}}', content_type="application/json")


def actor_of(request: web.Request) -> Actor:
    actor: Actor = request[ACTOR]
    return actor


def scoped_merchant(request: web.Request, given: str | None) -> str | None:
    """The merchant filter to apply: a merchant's actor is held to its own."""
    actor = actor_of(request)
    if actor.merchant is not None:
        if given not in (None, actor.merchant):
            raise BadRequest("this token sees only its own merchant")
        return actor.merchant
    return given


def moment(value: str | None) -> float | None:
    """`since`/`until`: ISO 8601 or an age ("2h": two hours ago), as a Unix time."""
    if not value:
        return None
    try:
        return time.time() - parse_duration(value)
    except ValueError:
        pass
    try:
        found = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{value!r} is neither a time (ISO 8601) nor an age (30m, 2h, 3d)"
                         ) from None
    return (found if found.tzinfo else found.replace(tzinfo=UTC)).timestamp()


def limit_of(request: web.Request, default: int = 50) -> int:
    try:
        value = int(request.query.get("limit", default))
    except ValueError:
        raise BadRequest("limit: expected a whole number") from None
    if not 1 <= value <= 1000:
        raise BadRequest("limit: from 1 to 1000")
    return value


def event_filter(request: web.Request) -> listing.EventFilter:
    query = request.query
    provider = query.get("provider") or None
    if provider is not None and provider not in PROVIDER_SECTIONS:
        raise BadRequest(f"provider: one of {', '.join(PROVIDER_SECTIONS)}")
    kind = query.get("type") or None
    if kind and not any(fnmatch.fnmatchcase(t.value, kind) for t in EventType):
        raise BadRequest(f"type: {kind!r} matches no event type")
    return listing.EventFilter(
        merchant=scoped_merchant(request, query.get("merchant") or None), provider=provider,
        type=kind, order=query.get("order") or None, payment=query.get("payment") or None,
        transaction=query.get("transaction") or None, since=moment(query.get("since")),
        until=moment(query.get("until")))


async def off_loop(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(function, *args, **kwargs)


def acted(request: web.Request, action: str, **fields: Any) -> None:
    """Every action, logged with who did it."""
    log.info("console.action", action=action, actor=actor_of(request).name, **fields)


# --- reading -------------------------------------------------------------------------

async def get_overview(request: web.Request) -> web.Response:
    return answer(await off_loop(data.overview, request.app[REDIS], actor_of(request)))


async def find_events(request: web.Request) -> web.Response:
    where = event_filter(request)
    found = await off_loop(listing.find_events, request.app[REDIS], where, limit_of(request))
    settings = request.app[SETTINGS]
    rows = []
    for event in found:
        states = await off_loop(listing.delivery_states, request.app[REDIS], settings, event)
        rows.append({**event.model_dump(mode="json"), "deliveries": states})
    return answer({"events": rows})


async def visible_event(request: web.Request) -> PaymentEvent:
    event: PaymentEvent | None = await off_loop(listing.get_event, request.app[REDIS],
                                                request.match_info["event"])
    if event is None or not actor_of(request).sees(event.data.merchant):
        raise not_found("such event (or older than the 10 days events are kept)")
    return event


async def get_event(request: web.Request) -> web.Response:
    event = await visible_event(request)
    return answer(await off_loop(data.event_story, request.app[REDIS], request.app[SETTINGS],
                                 event))


async def list_callbacks(request: web.Request) -> web.Response:
    outcome = request.query.get("outcome") or None
    if outcome is not None and outcome not in callbacks.OUTCOMES:
        raise BadRequest(f"outcome: one of {', '.join(callbacks.OUTCOMES)}")
    found = await off_loop(callbacks.troubled_callbacks, request.app[REDIS], outcome=outcome,
                           merchant=scoped_merchant(request, request.query.get("merchant")),
                           provider=request.query.get("provider") or None,
                           limit=limit_of(request))
    return answer({"callbacks": [entry.as_json() for entry in found]})


async def visible_callback(request: web.Request) -> dict[str, Any]:
    found = await off_loop(data.callback_detail, request.app[REDIS],
                           request.match_info["callback"])
    if found is None or not actor_of(request).sees(str(found.get("merchant"))):
        raise not_found("such callback kept")
    return found  # type: ignore[no-any-return]


async def get_callback(request: web.Request) -> web.Response:
    return answer(await visible_callback(request))


async def list_hooks(request: web.Request) -> web.Response:
    merchant = scoped_merchant(request, request.query.get("merchant") or None)
    found = await off_loop(hooks.health, request.app[REDIS], request.app[SETTINGS], merchant)
    return answer({"hooks": [entry.as_json() for entry in found]})


# --- acting --------------------------------------------------------------------------

def visible_hook(request: web.Request) -> tuple[str, Any]:
    name = f"{request.match_info['merchant']}/{request.match_info['hook']}"
    try:
        merchant, hook = hooks.find_hook(request.app[SETTINGS], name)
    except ValueError:
        raise not_found("such hook") from None
    if not actor_of(request).sees(merchant):
        raise not_found("such hook")
    return merchant, hook


async def pause_hook(request: web.Request, form: dict[str, str]) -> dict[str, Any]:
    merchant, hook = visible_hook(request)
    given = form.get("for") or None
    try:
        seconds = parse_duration(given) if given else None
    except ValueError:
        raise BadRequest(f"for: {given!r} is not a duration (30m, 2h)") from None
    await off_loop(hooks.pause, request.app[REDIS], merchant, hook.id, seconds)
    acted(request, "hook.pause", merchant=merchant, hook=hook.id, seconds=seconds)
    return {"paused": f"{merchant}/{hook.id}", "for_s": seconds}


async def resume_hook(request: web.Request, form: dict[str, str]) -> dict[str, Any]:
    merchant, hook = visible_hook(request)
    count = await off_loop(hooks.resume, request.app[REDIS], merchant, hook.id)
    acted(request, "hook.resume", merchant=merchant, hook=hook.id, due_now=count)
    return {"resumed": f"{merchant}/{hook.id}", "due_now": count}


async def test_hook(request: web.Request, form: dict[str, str]) -> dict[str, Any]:
    merchant, hook = visible_hook(request)
    try:
        kind = EventType(form.get("type") or EventType.CAPTURED.value)
    except ValueError:
        raise BadRequest("type: an event type such as payment.captured") from None
    sent = await off_loop(data.test_event, request.app[SETTINGS], merchant, hook, kind)
    acted(request, "hook.test", merchant=merchant, hook=hook.id, ok=sent["ok"])
    return sent  # type: ignore[no-any-return]


async def replay_hook(request: web.Request, form: dict[str, str]) -> dict[str, Any]:
    merchant, hook = visible_hook(request)
    redis = request.app[REDIS]
    letters = await off_loop(replay.dead_letters, redis, hook=hook.id, merchant=merchant)
    count = await off_loop(replay.replay, redis, request.app[SETTINGS], letters)
    acted(request, "hook.replay", merchant=merchant, hook=hook.id, replayed=count)
    return {"replayed": count, "of": len(letters)}


async def resend_event(request: web.Request, form: dict[str, str]) -> dict[str, Any]:
    event = await visible_event(request)
    try:
        done = await off_loop(replay.resend, request.app[REDIS], request.app[SETTINGS], event,
                              form.get("hook") or None)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    acted(request, "event.resend", event_id=event.id, merchant=event.data.merchant, done=done)
    return {"event": event.id, "hooks": done}


async def retry_callback(request: web.Request, form: dict[str, str]) -> dict[str, Any]:
    found = await visible_callback(request)
    entries = [entry for entry in await off_loop(callbacks.troubled_callbacks,
                                                 request.app[REDIS])
               if entry.callback_id == found["callback_id"]]
    count = await off_loop(callbacks.retry_now, request.app[REDIS], entries)
    acted(request, "callback.retry", callback=found["callback_id"], queued=count)
    return {"callback": found["callback_id"], "queued": count}


Action = Callable[[web.Request, dict[str, str]], Awaitable[dict[str, Any]]]
ACTIONS: list[tuple[str, Action]] = [
    ("/api/hooks/{merchant}/{hook}/pause", pause_hook),
    ("/api/hooks/{merchant}/{hook}/resume", resume_hook),
    ("/api/hooks/{merchant}/{hook}/test", test_hook),
    ("/api/hooks/{merchant}/{hook}/replay", replay_hook),
    ("/api/events/{event}/resend", resend_event),
    ("/api/callbacks/{callback}/retry", retry_callback),
]
READS: list[tuple[str, Handler]] = [
    ("/api/overview", get_overview),
    ("/api/events", find_events),
    ("/api/events/{event}", get_event),
    ("/api/callbacks", list_callbacks),
    ("/api/callbacks/{callback}", get_callback),
    ("/api/hooks", list_hooks),
]
