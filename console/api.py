"""The admin API under `/api/`: JSON, everything the pages do (the pages call the same
functions). Each handler reads its parameters, checks what the actor may see, and runs
the Redis work off the event loop. A merchant's token sees only that merchant: anything of
another merchant is answered as if it did not exist (404)."""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web

from console import data
from console.auth import Actor
from console.keys import ACTOR, REDIS, SETTINGS
from shared.models import EventType, PaymentEvent
from shared.settings import PROVIDER_SECTIONS, parse_duration, parse_moment
from workers import callbacks, hook_store, hooks, listing, replay

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
        return parse_moment(value)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


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


async def event_rows(request: web.Request) -> list[dict[str, Any]]:
    """The events the query asks for, newest first, each with its deliveries' states."""
    where, limit = event_filter(request), limit_of(request)
    redis, settings = request.app[REDIS], request.app[SETTINGS]
    found = await off_loop(listing.find_events, redis, where, limit)
    return [{**event.model_dump(mode="json"),
             "deliveries": await off_loop(listing.delivery_states, redis, settings, event)}
            for event in found]


async def find_events(request: web.Request) -> web.Response:
    return answer({"events": await event_rows(request)})


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

async def visible_hook(request: web.Request) -> tuple[str, Any]:
    name = f"{request.match_info['merchant']}/{request.match_info['hook']}"
    if not actor_of(request).sees(request.match_info["merchant"]):
        raise not_found("such hook")
    try:
        found: tuple[str, Any] = await off_loop(hooks.find_hook, request.app[REDIS],
                                                request.app[SETTINGS], name)
    except ValueError:
        raise not_found("such hook") from None
    return found


async def pause_hook(request: web.Request, form: dict[str, Any]) -> dict[str, Any]:
    merchant, hook = await visible_hook(request)
    given = form.get("for") or None
    try:
        seconds = parse_duration(str(given)) if given else None
    except ValueError:
        raise BadRequest(f"for: {given!r} is not a duration (30m, 2h)") from None
    await off_loop(hooks.pause, request.app[REDIS], merchant, hook.id, seconds)
    acted(request, "hook.pause", merchant=merchant, hook=hook.id, seconds=seconds)
    return {"paused": f"{merchant}/{hook.id}", "for_s": seconds}


async def resume_hook(request: web.Request, form: dict[str, Any]) -> dict[str, Any]:
    merchant, hook = await visible_hook(request)
    count = await off_loop(hooks.resume, request.app[REDIS], merchant, hook.id)
    acted(request, "hook.resume", merchant=merchant, hook=hook.id, due_now=count)
    return {"resumed": f"{merchant}/{hook.id}", "due_now": count}


async def test_hook(request: web.Request, form: dict[str, Any]) -> dict[str, Any]:
    merchant, hook = await visible_hook(request)
    try:
        kind = EventType(str(form.get("type") or EventType.CAPTURED.value))
    except ValueError:
        raise BadRequest("type: an event type such as payment.captured") from None
    sent = await off_loop(data.test_event, request.app[SETTINGS], merchant, hook, kind)
    acted(request, "hook.test", merchant=merchant, hook=hook.id, ok=sent["ok"])
    return sent  # type: ignore[no-any-return]


async def replay_hook(request: web.Request, form: dict[str, Any]) -> dict[str, Any]:
    merchant, hook = await visible_hook(request)
    redis = request.app[REDIS]
    letters = await off_loop(replay.dead_letters, redis, hook=hook.id, merchant=merchant)
    count = await off_loop(replay.replay, redis, request.app[SETTINGS], letters)
    acted(request, "hook.replay", merchant=merchant, hook=hook.id, replayed=count)
    return {"replayed": count, "of": len(letters)}


async def resend_event(request: web.Request, form: dict[str, Any]) -> dict[str, Any]:
    event = await visible_event(request)
    try:
        hook = form.get("hook") or None
        done = await off_loop(replay.resend, request.app[REDIS], request.app[SETTINGS], event,
                              str(hook) if hook is not None else None)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    acted(request, "event.resend", event_id=event.id, merchant=event.data.merchant, done=done)
    return {"event": event.id, "hooks": done}


async def retry_callback(request: web.Request, form: dict[str, Any]) -> dict[str, Any]:
    found = await visible_callback(request)
    entries = [entry for entry in await off_loop(callbacks.troubled_callbacks,
                                                 request.app[REDIS])
               if entry.callback_id == found["callback_id"]]
    count = await off_loop(callbacks.retry_now, request.app[REDIS], entries)
    acted(request, "callback.retry", callback=found["callback_id"], queued=count)
    return {"callback": found["callback_id"], "queued": count}


# --- hooks made at run time (workers/hook_store.py) ------------------------------------

def _store_errors(exc: Exception) -> web.HTTPException | BadRequest:
    """The store's refusals as answers: 409 for an id taken or a config file's hook (which
    is read-only here), 404 for a hook that is not there, 400 for a bad value."""
    body = orjson.dumps({"error": str(exc)}).decode()
    if isinstance(exc, hook_store.HookConflict | hook_store.ReadOnlyHook):
        return web.HTTPConflict(text=body, content_type="application/json")
    if isinstance(exc, hook_store.UnknownHook):
        return web.HTTPNotFound(text=body, content_type="application/json")
    return BadRequest(str(exc))


def _events_of(form: dict[str, Any]) -> tuple[str, ...] | None:
    events = form.get("events")
    if events is None:
        return None
    if isinstance(events, str):
        events = [part.strip() for part in events.split(",") if part.strip()]
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise BadRequest("events: a list of event types or patterns")
    return tuple(events)


def _merchant_in_path(request: web.Request) -> str:
    merchant = request.match_info["merchant"]
    if not actor_of(request).sees(merchant):
        raise not_found("such merchant")
    return merchant


async def create_hook(request: web.Request, form: dict[str, Any]) -> dict[str, Any]:
    merchant = _merchant_in_path(request)
    hook_id, url = form.get("id"), form.get("url")
    if not isinstance(hook_id, str) or not isinstance(url, str):
        raise BadRequest("id and url are needed, as strings")
    actor = actor_of(request).name
    try:
        made, secret = await off_loop(hook_store.create, request.app[REDIS],
                                      request.app[SETTINGS], merchant, hook_id, url,
                                      _events_of(form) or ("*",), actor=actor)
    except (ValueError, LookupError) as exc:
        raise _store_errors(exc) from None
    acted(request, "hook.create", merchant=merchant, hook=hook_id)
    return {"hook": made.as_json(), "secret": secret, "status": 201,
            "note": "the secret is shown this once: keep it to verify the signatures"}


async def change_hook(request: web.Request, form: dict[str, Any]) -> dict[str, Any]:
    merchant = _merchant_in_path(request)
    enabled = form.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        enabled = {"true": True, "false": False}.get(str(enabled).lower())
        if enabled is None:
            raise BadRequest("enabled: true or false")
    url = form.get("url")
    if url is not None and not isinstance(url, str):
        raise BadRequest("url: a string")
    try:
        changed = await off_loop(hook_store.update, request.app[REDIS], request.app[SETTINGS],
                                 merchant, request.match_info["hook"], url=url,
                                 events=_events_of(form), enabled=enabled,
                                 actor=actor_of(request).name)
    except (ValueError, LookupError) as exc:
        raise _store_errors(exc) from None
    acted(request, "hook.change", merchant=merchant, hook=changed.id,
          changed=sorted(k for k in ("url", "events", "enabled") if k in form))
    return {"hook": changed.as_json()}


async def delete_hook(request: web.Request, form: dict[str, Any]) -> dict[str, Any]:
    merchant, hook_id = _merchant_in_path(request), request.match_info["hook"]
    try:
        await off_loop(hook_store.delete, request.app[REDIS], request.app[SETTINGS], merchant,
                       hook_id, actor=actor_of(request).name)
    except (ValueError, LookupError) as exc:
        raise _store_errors(exc) from None
    acted(request, "hook.delete", merchant=merchant, hook=hook_id)
    return {"deleted": f"{merchant}/{hook_id}",
            "note": "its waiting deliveries are dead-lettered: replay them once a hook of "
                    "this id exists again"}


async def rotate_hook(request: web.Request, form: dict[str, Any]) -> dict[str, Any]:
    merchant, hook_id = _merchant_in_path(request), request.match_info["hook"]
    given = str(form.get("retire_after") or "24h")
    try:
        overlap = parse_duration(given)
    except ValueError:
        raise BadRequest(f"retire_after: {given!r} is not a duration (30m, 24h)") from None
    try:
        rotated, secret = await off_loop(hook_store.rotate, request.app[REDIS],
                                         request.app[SETTINGS], merchant, hook_id, overlap,
                                         actor=actor_of(request).name)
    except (ValueError, LookupError) as exc:
        raise _store_errors(exc) from None
    acted(request, "hook.rotate", merchant=merchant, hook=hook_id, retire_after_s=overlap)
    return {"hook": rotated.as_json(), "secret": secret,
            "note": f"both secrets sign for {overlap:.0f} s, then only this one"}


Action = Callable[[web.Request, dict[str, Any]], Awaitable[dict[str, Any]]]
ACTIONS: list[tuple[str, Action]] = [
    ("/api/hooks/{merchant}/{hook}/pause", pause_hook),
    ("/api/hooks/{merchant}/{hook}/resume", resume_hook),
    ("/api/hooks/{merchant}/{hook}/test", test_hook),
    ("/api/hooks/{merchant}/{hook}/replay", replay_hook),
    ("/api/events/{event}/resend", resend_event),
    ("/api/callbacks/{callback}/retry", retry_callback),
    ("/api/hooks/{merchant}", create_hook),
    ("/api/hooks/{merchant}/{hook}/rotate", rotate_hook),
]
# other methods than POST: (method, path, action)
CHANGES: list[tuple[str, str, Action]] = [
    ("PATCH", "/api/hooks/{merchant}/{hook}", change_hook),
    ("DELETE", "/api/hooks/{merchant}/{hook}", delete_hook),
]
READS: list[tuple[str, Handler]] = [
    ("/api/overview", get_overview),
    ("/api/events", find_events),
    ("/api/events/{event}", get_event),
    ("/api/callbacks", list_callbacks),
    ("/api/callbacks/{callback}", get_callback),
    ("/api/hooks", list_hooks),
]
