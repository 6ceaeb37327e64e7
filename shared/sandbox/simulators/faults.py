"""The middleware that counts every provider request and injects the configured faults.

Which provider a request is for follows from its path (the four APIs do not share a
prefix). Before the handler runs it waits `latency` seconds, then with `timeout_rate`
waits `timeout_seconds` (30 s unless changed) so the client times out, with
`error_rate` answers as the provider's front end would when failing: Netaxept's IIS with
HTTP 500, the others with 503 (PayEx as problem+json), and with `drip_rate` sends the
real answer's status and headers at once, then its body a byte every `drip_interval`
seconds (shared/sandbox/simulators/drip.py), which only a deadline on the whole request cuts off.
Admin requests (`/_sim/`) are neither counted nor faulted. With no faults configured
nothing waits.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler

from shared.sandbox.simulators.drip import drip
from shared.sandbox.simulators.state import STATE, State, guid

_PREFIXES = (
    ("/netaxept/", "netaxept"),
    ("/psp/", "payex"),
    ("/api/v3/status/", "ixopay"),
    ("/v2/payments/", "ifthenpay"),
)


def provider_of(path: str) -> str | None:
    """The simulated provider a request path belongs to, or None."""
    lower = path.lower()  # IIS paths (Netaxept) are case-insensitive
    for prefix, name in _PREFIXES:
        if lower.startswith(prefix):
            return name
    return None


def failure(provider: str, path: str) -> web.Response:
    """What the provider answers when it is down."""
    if provider == "netaxept":
        return web.Response(status=500, text="<h1>Server Error</h1>", content_type="text/html")
    if provider == "payex":
        body = {
            "type": "https://api.payex.com/psp/errordetail/systemerror",
            "title": "Service Unavailable", "status": 503,
            "detail": "The service is temporarily unavailable", "instance": guid(),
            "problems": [],
        }
        return web.json_response(body, status=503, content_type="application/problem+json")
    return web.Response(status=503, text="Service Unavailable")


@web.middleware
async def inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    provider = provider_of(request.path)
    if provider is None:
        return await handler(request)
    state = request.app[STATE]
    with state.lock:
        state.requests[provider] += 1
        faults = state.faults[provider]
        latency, timeout_seconds = faults.latency, faults.timeout_seconds
        times_out = state.roll(faults.timeout_rate)
        fails = state.roll(faults.error_rate)
        drips = not (times_out or fails) and state.roll(faults.drip_rate)
        interval = faults.drip_interval
    if latency > 0:
        await asyncio.sleep(latency)
    if times_out:
        await asyncio.sleep(timeout_seconds)
    try:
        response = failure(provider, request.path) if fails else await handler(request)
    except web.HTTPException as exc:
        _record(state, provider, exc.status)
        raise
    _record(state, provider, response.status)
    if drips and isinstance(response, web.Response):
        with state.lock:
            state.dripped[provider] += 1
        body = response.body if isinstance(response.body, bytes) else b""
        return await drip(request, response.status, response.headers, body, interval)
    return response


def _record(state: State, provider: str, status: int) -> None:
    with state.lock:
        state.responses[provider][status] += 1
