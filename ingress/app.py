"""The aiohttp application: routes, the Redis connection and the job store's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from ingress import handlers
from ingress.connections import ConnectionCap
from ingress.keys import CONNECTIONS, MERCHANTS, METRICS, REDIS, SETTINGS, STORE
from ingress.metrics import IngressMetrics
from ingress.store import JobStore
from shared.logging import flush_logs
from shared.providers import PROVIDERS, build_providers
from shared.queue import callback_template
from shared.redis_client import connect_async
from shared.settings import Settings


class _WithoutRequestBytes(logging.Filter):
    """aiohttp logs a request it cannot parse with the offending bytes: the request line
    (an ifthenpay query holds the anti-phishing key) or a header line (Basic credentials).
    Keep the kind of error (BadStatusLine, LineTooLong, ...), never the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError | web.RequestPayloadError):
            record.msg = f"{record.msg}: %s"
            record.args = (*(record.args or ()), error.__class__.__name__)
            record.exc_info = record.exc_text = None
        return True


_SERVER_LOG_FILTER = _WithoutRequestBytes()


def create_app(settings: Settings) -> web.Application:
    """The ingress for these settings; Redis is connected when the app starts."""
    read_timeout = settings.ingress.read_timeout
    app = web.Application(
        client_max_size=settings.ingress.max_body_bytes,
        # aiohttp closes a connection that has not sent a whole request head within the
        # keep-alive timeout of its opening (or of the previous answer), so a client that
        # trickles its headers is cut off after read_timeout; its body has read_timeout
        # too (handlers.py). A body left unread after the answer is drained for at most
        # read_timeout (lingering_time), then the connection is closed.
        # Bodies are inflated by handlers.decode_body, which stops at max_body_bytes.
        handler_args={"keepalive_timeout": read_timeout, "lingering_time": read_timeout,
                      "auto_decompress": False},
    )
    logging.getLogger("aiohttp.server").addFilter(_SERVER_LOG_FILTER)  # once: same object
    app[SETTINGS] = settings
    app[MERCHANTS] = {
        merchant_id: build_providers(merchant)
        for merchant_id, merchant in settings.merchants.items()
    }
    app[METRICS] = IngressMetrics()
    app[CONNECTIONS] = ConnectionCap(settings.ingress.max_connections)
    app.cleanup_ctx.append(_redis_and_store)
    app.cleanup_ctx.append(_flush_stdout)
    for provider in PROVIDERS.values():
        _route(app, provider.method, f"/callbacks/{{merchant}}/{provider.name}",
               handlers.callback_handler(provider.name))
    _route(app, "GET", "/healthz", handlers.healthz)
    _route(app, "GET", "/readyz", handlers.readyz)
    _route(app, "GET", "/metrics", handlers.metrics)
    # [\s\S], not ".": a path whose percent-escapes decode to a newline must match too, or
    # aiohttp answers it itself (a 500 when an Expect header is not UTF-8)
    app.router.add_route("*", r"/{path:[\s\S]*}", handlers.not_found,
                         expect_handler=handlers.expect)
    return app


def _route(app: web.Application, method: str, path: str, handler: handlers.Handler) -> None:
    """`method` to `handler`, every other method (HEAD too) to 405. Our routes, 404 and
    405 included, answer an Expect header with handlers.expect, not aiohttp's own."""
    app.router.add_route(method, path, handler, expect_handler=handlers.expect)
    app.router.add_route("*", path, handlers.method_not_allowed(method),
                         expect_handler=handlers.expect)


def connect_redis(url: str) -> Redis:
    """A client that gives up fast: while Redis is down, callbacks get 503, not a hang."""
    return connect_async(
        url,
        socket_timeout=2.0,
        socket_connect_timeout=1.0,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.005), 2),
        health_check_interval=10,
    )


async def _flush_stdout(app: web.Application) -> AsyncIterator[None]:
    """Log lines are buffered (shared/logging.py); write them out twice a second."""

    async def flush_forever() -> None:
        while True:
            await asyncio.sleep(0.5)
            flush_logs()

    task = asyncio.create_task(flush_forever(), name="payhooks-flush-stdout")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    flush_logs()


async def _redis_and_store(app: web.Application) -> AsyncIterator[None]:
    redis = connect_redis(app[SETTINGS].redis_url)
    settings = app[SETTINGS].ingress
    store = JobStore(redis, callback_template(), min_replicas=settings.min_replicas,
                     replica_timeout=settings.replica_timeout)
    await store.start()
    app[REDIS] = redis
    app[STORE] = store
    yield
    await store.close()
    await redis.aclose()
