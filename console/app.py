"""The console's aiohttp app: the admin API (console/api.py), the pages (console/pages.py)
on top of it, and the guard every request passes: who is asking, what they may see, forms
only from our own pages, and headers that keep the pages out of frames and scripts out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlencode

import structlog
from aiohttp import web
from redis import Redis

from console import api, auth, data, pages
from console.keys import ACTOR, REDIS, SETTINGS
from shared.redis_client import connect
from shared.settings import Settings
from workers import callbacks, hooks

log = structlog.get_logger("payhooks.console")
OPEN = ("/login", "/static/console.css", "/healthz")
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make Chromium send Origin: null
    "Cache-Control": "no-store",
}


def create_app(settings: Settings, redis: Redis | None = None) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app[SETTINGS] = settings
    app[REDIS] = redis or connect(settings.redis_url, socket_timeout=10,
                                         socket_connect_timeout=5)
    app.cleanup_ctx.append(_close_redis)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/static/console.css", stylesheet)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    for path, read in api.READS:
        app.router.add_get(path, read)
    for path, action in api.ACTIONS:
        app.router.add_post(path, acting(action))
    for method, path, action in api.CHANGES:
        app.router.add_route(method, path, acting(action))
    app.router.add_get("/", overview_page)
    app.router.add_get("/events", events_page)
    app.router.add_get("/events/{event}", event_page)
    app.router.add_post("/events/{event}/resend", acting(api.resend_event))
    app.router.add_get("/callbacks", callbacks_page)
    app.router.add_get("/callbacks/{callback}", callback_page)
    app.router.add_get("/hooks", hooks_page)
    return app


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def stylesheet(request: web.Request) -> web.Response:
    return web.Response(text=pages.STYLE, content_type="text/css")


async def _close_redis(app: web.Application) -> AsyncIterator[None]:
    yield
    app[REDIS].close()


@web.middleware
async def guard(request: web.Request, handler: api.Handler) -> web.StreamResponse:
    try:
        response = await _guarded(request, handler)
    except api.BadRequest as exc:
        response = api.answer({"error": str(exc)}, status=400)
    except web.HTTPException as exc:  # a redirect, a 404: with the same headers
        exc.headers.update(HEADERS)
        raise
    response.headers.update(HEADERS)
    return response


async def _guarded(request: web.Request, handler: api.Handler) -> web.StreamResponse:
    if request.path in OPEN:
        return await handler(request)
    redis, settings = request.app[REDIS], request.app[SETTINGS]
    headers = {k.lower(): v for k, v in request.headers.items()}
    actor = await asyncio.to_thread(auth.identify, headers, request.cookies.get(auth.COOKIE),
                                    redis, settings)
    if actor is None:
        if request.path.startswith("/api/"):
            return api.answer({"error": "a token is needed: Authorization: Bearer <token>"},
                              status=401)
        raise web.HTTPSeeOther("/login?" + urlencode({"next": request.path_qs}))
    request[ACTOR] = actor
    return await handler(request)


def acting(action: api.Action) -> api.Handler:
    """A POST that changes something: JSON (or nothing) from an API client, a form from a
    page (checked against cross-site use, then sent back to the page it came from)."""
    async def handle(request: web.Request) -> web.StreamResponse:
        actor = request[ACTOR]
        from_page = request.content_type in ("application/x-www-form-urlencoded",
                                             "multipart/form-data")
        if from_page:
            form = {k: str(v) for k, v in (await request.post()).items()}
        elif request.body_exists:
            try:
                body = await request.json()
            except ValueError:
                raise api.BadRequest("the body is not JSON") from None
            if not isinstance(body, dict):
                raise api.BadRequest("the body must be a JSON object")
            form = {k: v for k, v in body.items() if v is not None}
        else:
            form = {}
        token = form.get("csrf")
        if not auth.form_allowed(request, actor, token if isinstance(token, str) else None):
            return api.answer({"error": "this form did not come from this console's pages"},
                              status=403)
        try:
            done = await action(request, form)
        except api.BadRequest as exc:
            if not from_page:
                raise
            raise web.HTTPSeeOther(_back(form, f"Not done: {exc}")) from None
        status = int(done.pop("status", 200))
        if from_page:
            shown = {k: v for k, v in done.items() if k != "secret"}  # never in a URL
            raise web.HTTPSeeOther(_back(form, _said(shown)))
        return api.answer(done, status=status)
    return handle


def _back(form: dict[str, Any], notice: str) -> str:
    """The page a form came from (a path of this console only), with what was done."""
    back = str(form.get("next", "/"))
    if not back.startswith("/") or back.startswith("//") or "\\" in back:
        back = "/"
    return f"{back.split('?')[0]}?{urlencode({'done': notice})}"


def _said(done: dict[str, Any]) -> str:
    return "Done: " + ", ".join(f"{k} {v}" for k, v in done.items())


async def login_page(request: web.Request) -> web.Response:
    return _html(pages.sign_in_page(back=request.query.get("next", "/")))


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    settings, redis = request.app[SETTINGS], request.app[REDIS]
    actor = auth.actor_for_token(settings, str(form.get("token", "")))
    if actor is None:
        log.warning("console.sign_in_refused", peer=request.remote)
        return _html(pages.sign_in_page("That token is not one of the configuration's."),
                     status=401)
    cookie = await asyncio.to_thread(auth.sign_in, redis, settings, actor)
    log.info("console.signed_in", actor=actor.name)
    back = _back({"next": str(form.get("next", "/"))}, "").split("?")[0]
    response = web.HTTPSeeOther(back)
    response.set_cookie(auth.COOKIE, cookie, httponly=True, samesite="Strict",
                        secure=request.secure, max_age=int(settings.console.session), path="/")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    actor = request[ACTOR]
    form = await request.post()
    if not auth.form_allowed(request, actor, str(form.get("csrf", ""))):
        return api.answer({"error": "this form did not come from this console's pages"},
                          status=403)
    cookie = request.cookies.get(auth.COOKIE)
    if cookie:
        await asyncio.to_thread(auth.sign_out, request.app[REDIS], cookie)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(auth.COOKIE, path="/")
    raise response


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, content_type="text/html", status=status)


def _notice(request: web.Request) -> str | None:
    return request.query.get("done") or None


async def overview_page(request: web.Request) -> web.Response:
    found = await api.off_loop(data.overview, request.app[REDIS], request[ACTOR])
    return _html(pages.overview_page(found, request[ACTOR]))


async def events_page(request: web.Request) -> web.StreamResponse:
    query = dict(request.query)
    if query.get("event"):
        raise web.HTTPSeeOther(f"/events/{quote(query['event'].strip(), safe='')}")
    try:
        rows = await api.event_rows(request)
    except api.BadRequest as exc:
        return _html(pages.events_page([], query, request[ACTOR], str(exc)), status=400)
    return _html(pages.events_page(rows, query, request[ACTOR]))


async def event_page(request: web.Request) -> web.Response:
    event = await api.visible_event(request)
    story = await api.off_loop(data.event_story, request.app[REDIS], request.app[SETTINGS],
                               event)
    return _html(pages.event_page(story, request[ACTOR], _notice(request)))


async def callbacks_page(request: web.Request) -> web.Response:
    actor = request[ACTOR]
    found = await api.off_loop(callbacks.troubled_callbacks, request.app[REDIS],
                               merchant=actor.merchant, limit=200)
    return _html(pages.callbacks_page([entry.as_json() for entry in found], actor,
                                      _notice(request)))


async def callback_page(request: web.Request) -> web.Response:
    found = await api.visible_callback(request)
    return _html(pages.callback_page(found, request[ACTOR], _notice(request)))


async def hooks_page(request: web.Request) -> web.Response:
    actor = request[ACTOR]
    found = await api.off_loop(hooks.health, request.app[REDIS], request.app[SETTINGS],
                               actor.merchant)
    return _html(pages.hooks_page([entry.as_json() for entry in found], actor,
                                  _notice(request)))
