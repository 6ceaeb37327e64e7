"""The request handlers: find the merchant's provider, verify, store, answer.

Order of checks, each with its status: unknown merchant or provider 404; source address
403; body size 413; a body that does not arrive within `read_timeout` 408; verification
401; content 400 (only where nothing proved the sender: content that came with a valid
signature, key or credential is stored however it reads); Redis 503; then 200 with what
the provider expects. Nothing is stored before verification passes, and nothing is
answered 200 before Redis confirms the job. No input reaches a 500: anything unexpected is
logged and answered 503, so the provider retries.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from aiohttp import HttpVersion11, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from rq import Queue

from ingress import keys as app_keys
from shared import metrics as shared_metrics
from shared.errors import (
    CallbackRejected,
    Forbidden,
    Malformed,
    StoreUnavailable,
    TooLarge,
    TooSlow,
    Unauthorized,
)
from shared.keys import DEAD_LETTERS, METRICS, PAUSED_HOOKS, READY_PROBE
from shared.models import callback_json, new_callback_id, utcnow
from shared.providers.base import Incoming, Provider
from shared.queue import CALLBACKS, DELIVERIES

log = structlog.get_logger("payhooks.ingress")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_OUTCOMES = {400: "malformed", 401: "unauthorized", 403: "forbidden", 408: "timeout",
             413: "too_large"}
# Headers that carry a credential or a signed value. Given twice, which copy counts would
# depend on who reads the request (a proxy, a provider module), so neither copy does.
_SINGLE_HEADERS = ("Authorization", "X-Authorization", "X-Signature", "Date", "X-Date")


def callback_handler(provider_name: str) -> Handler:
    async def receive_callback(request: web.Request) -> web.Response:
        try:
            return await _receive(request, provider_name)
        except Exception:  # the one catch-all of this process: log it, answer, move on
            log.exception("callback_failed", provider=provider_name, status=503)
            return _text(503, "temporarily unavailable, retry later")

    return receive_callback


async def _receive(request: web.Request, provider_name: str) -> web.Response:
    started = time.perf_counter()
    merchant = request.match_info["merchant"]
    metrics = request.app[app_keys.METRICS]
    provider = request.app[app_keys.MERCHANTS].get(merchant, {}).get(provider_name)
    if provider is None:
        metrics.count(provider_name, "", "unknown_merchant")
        log.info("callback_rejected", provider=provider_name, merchant=merchant[:64],
                 status=404, reason="merchant or provider not configured")
        return _text(404, "unknown merchant or provider")
    try:
        incoming = await _incoming(request, provider)
        accepted = provider.verify(incoming)
    except CallbackRejected as exc:
        outcome = _OUTCOMES[exc.status]
        metrics.count(provider_name, merchant, outcome)
        log.info("callback_rejected", provider=provider_name, merchant=merchant,
                 status=exc.status, reason=exc.reason)
        response = _text(exc.status, exc.public_message if exc.status != 400 else
                         f"{exc.public_message}: {exc.reason}")
        if exc.status == 408:
            response.force_close()  # the rest of the body may never come
        return response
    callback_id = new_callback_id()
    callback = callback_json(
        id=callback_id,
        merchant=merchant,
        provider=provider_name,
        method=incoming.method,
        uri=accepted.uri,
        headers=accepted.headers,
        body=incoming.body,
        source=incoming.source,
        received_at=utcnow(),
        reference=accepted.reference,
    )
    try:
        await request.app[app_keys.STORE].store(
            callback_id, callback, f"{provider_name} callback {callback_id} for {merchant}"
        )
    except StoreUnavailable as exc:
        metrics.count(provider_name, merchant, "unavailable")
        log.warning("callback_not_stored", provider=provider_name, merchant=merchant,
                    status=503, error=str(exc))
        return _text(503, "temporarily unavailable, retry later")
    elapsed = time.perf_counter() - started
    metrics.count(provider_name, merchant, "accepted")
    metrics.observe_ack(provider_name, elapsed)
    # a proven callback that we cannot read is stored, and recorded as unsupported
    unreadable = {} if accepted.unreadable is None else {"unreadable": accepted.unreadable}
    (log.warning if unreadable else log.info)(
        "callback_received", provider=provider_name, merchant=merchant,
        callback_id=callback_id, reference=accepted.reference, status=200,
        duration_ms=round(elapsed * 1000, 3), **unreadable)
    return _text(200, provider.ack_body)


async def _incoming(request: web.Request, provider: Provider) -> Incoming:
    settings = request.app[app_keys.SETTINGS].ingress
    peer = request.remote or ""
    trusted = bool(settings.trusted_proxies) and _in_networks(peer, settings.trusted_proxies)
    source = _forwarded_for(request, settings.trusted_proxies) if trusted else peer
    if provider.allowed_ips and not _in_networks(source, provider.allowed_ips):
        raise Forbidden(f"source {source!r} not allowed")
    uri = request.raw_path
    original = request.headers.get("X-Original-URI") if trusted else None
    if original and original.startswith("/"):
        uri = original
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        raise TooLarge(f"Content-Length {request.content_length}")
    body = await _body(request, settings.read_timeout) if request.method == "POST" else b""
    body = decode_body(body, request.headers.getall("Content-Encoding", ()),
                       settings.max_body_bytes)
    for name in _SINGLE_HEADERS:
        if len(request.headers.getall(name, ())) > 1:
            raise Unauthorized(f"{name} given more than once")
    return Incoming(
        method=request.method,
        uri=uri,
        query=uri.partition("?")[2],
        headers=request.headers,
        body=body,
        source=source,
    )


async def _body(request: web.Request, timeout: float) -> bytes:
    """The whole body, if it arrives within `timeout` of the headers; TooSlow if not."""
    try:
        if request.content.is_eof():  # it came with the headers, as callbacks do: no timer
            return await request.read()
        async with asyncio.timeout(timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise TooLarge("body over max_body_bytes") from None
    except TimeoutError:
        raise TooSlow(f"body not received within {timeout:g}s") from None
    except web.RequestPayloadError:  # e.g. Content-Encoding: gzip over bytes that are not gzip
        raise Malformed("body cannot be decoded") from None
    except ConnectionError:
        raise Malformed("the client closed the connection before the end of the body") from None


_INFLATE_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
                  "deflate": zlib.MAX_WBITS}


def decode_body(body: bytes, encodings: Sequence[str], limit: int) -> bytes:
    """The body undone of its Content-Encodings (last applied, first undone), inflating at
    most `limit` bytes: aiohttp inflated all of a 64 KB gzip bomb (64 MiB, ~155 ms a request)
    before its size check. TooLarge beyond the limit, Malformed for an encoding no provider
    uses or bytes that are not what they claim."""
    names = [name.strip().lower() for line in encodings for name in line.split(",")]
    for name in reversed([name for name in names if name and name != "identity"]):
        if name not in _INFLATE_WBITS:
            raise Malformed(f"Content-Encoding {name[:20]!r} is not one payhooks reads")
        body = _inflate(body, name, limit)
    return body


def _inflate(body: bytes, name: str, limit: int) -> bytes:
    # deflate as sent is zlib-wrapped, or (by some clients) raw: try both, as aiohttp did
    for wbits in (_INFLATE_WBITS[name], *((-zlib.MAX_WBITS,) if name == "deflate" else ())):
        inflater = zlib.decompressobj(wbits)
        try:
            inflated = inflater.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(inflated) > limit:
            raise TooLarge(f"body over max_body_bytes once inflated ({name})")
        if inflater.eof and not inflater.unused_data:
            return inflated
    raise Malformed("body cannot be decoded")


def _forwarded_for(request: web.Request, trusted: Sequence[Any]) -> str:
    """The nearest address in X-Forwarded-For that is not one of our trusted proxies."""
    # Every X-Forwarded-For line, in order: a proxy may append its own line (HAProxy's
    # `option forwardfor` does) after one the client made up.
    lines = ",".join(request.headers.getall("X-Forwarded-For", ()))
    hops = [hop.strip() for hop in lines.split(",")]
    hops = [hop for hop in hops if hop]
    for hop in reversed(hops):
        if not _in_networks(hop, trusted):
            return hop
    return hops[0] if hops else (request.remote or "")


def _in_networks(address: str, networks: Sequence[Any]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def _text(status: int, body: str) -> web.Response:
    return web.Response(status=status, text=body, content_type="text/plain")


async def expect(request: web.Request) -> None:
    """`Expect: 100-continue` as aiohttp answers it; any other Expect gets 417. aiohttp's
    own handler writes the value into its 417, and answers 500 instead when the value is
    not UTF-8 (aiohttp decodes header bytes with surrogateescape)."""
    if request.version != HttpVersion11:
        return
    if request.headers.get("Expect", "").lower() != "100-continue":
        raise web.HTTPExpectationFailed(text="unsupported Expect header")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the answer proper has not started


async def not_found(request: web.Request) -> web.Response:
    raise web.HTTPNotFound()


def method_not_allowed(allowed: str) -> Handler:
    async def refuse(request: web.Request) -> web.Response:
        raise web.HTTPMethodNotAllowed(request.method, [allowed])

    return refuse


async def healthz(request: web.Request) -> web.Response:
    return _text(200, "ok")


async def readyz(request: web.Request) -> web.Response:
    """Ready when Redis takes a write: a Redis at `maxmemory` answers PING and refuses
    every callback."""
    try:
        await request.app[app_keys.REDIS].set(READY_PROBE, 1, ex=60)
    except (RedisError, OSError):
        return _text(503, "redis unavailable or refusing writes")
    return _text(200, "ready")


async def metrics(request: web.Request) -> web.Response:
    app_metrics = request.app[app_keys.METRICS]
    redis = request.app[app_keys.REDIS]
    store = request.app[app_keys.STORE]
    app_metrics.store_batches, app_metrics.store_jobs = store.batches, store.jobs
    app_metrics.write_failures = store.write_failures
    connections = request.app[app_keys.CONNECTIONS]
    app_metrics.connections_at_cap = {"idle_closed": connections.shed,
                                      "refused": connections.refused}
    try:
        pipe = redis.pipeline(transaction=False)
        pipe.hgetall(METRICS)
        pipe.zcard(DEAD_LETTERS)
        pipe.scard(PAUSED_HOOKS)
        for queue in (CALLBACKS, DELIVERIES):
            pipe.llen(Queue.redis_queue_namespace_prefix + queue)
        stored, dead, paused, *depths = await pipe.execute()
        app_metrics.system = list(shared_metrics.families(
            stored, dead, paused, dict(zip((CALLBACKS, DELIVERIES), depths, strict=True))))
    except (RedisError, OSError):
        pass  # the system figures stay at their last reading; /readyz tells Redis is down
    return web.Response(
        body=generate_latest(app_metrics.registry),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )

