"""The aiohttp application: routes, the Redis connection and the job store's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from ingress import handlers
from ingress.metrics import IngressMetrics
from ingress.store import JobStore
from shared.logging import flush_logs
from shared.providers import build_providers
from shared.providers.base import Provider
from shared.providers.ifthenpay import Ifthenpay
from shared.providers.ixopay import Ixopay
from shared.providers.netaxept import Netaxept
from shared.providers.payex import Payex
from shared.queue import callback_template
from shared.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
MERCHANTS = web.AppKey("merchants", dict[str, dict[str, Provider]])
REDIS = web.AppKey("redis", Redis)
STORE = web.AppKey("store", JobStore)
METRICS = web.AppKey("metrics", IngressMetrics)

PROVIDER_CLASSES = (Ixopay, Ifthenpay, Netaxept, Payex)


def create_app(settings: Settings) -> web.Application:
    """The ingress for these settings; Redis is connected when the app starts."""
    app = web.Application(client_max_size=settings.ingress.max_body_bytes)
    app[SETTINGS] = settings
    app[MERCHANTS] = {
        merchant_id: build_providers(merchant)
        for merchant_id, merchant in settings.merchants.items()
    }
    app[METRICS] = IngressMetrics()
    app.cleanup_ctx.append(_redis_and_store)
    app.cleanup_ctx.append(_flush_stdout)
    for provider in PROVIDER_CLASSES:
        app.router.add_route(
            provider.method,
            f"/callbacks/{{merchant}}/{provider.name}",
            handlers.callback_handler(provider.name),
        )
    app.router.add_get("/healthz", handlers.healthz, allow_head=False)
    app.router.add_get("/readyz", handlers.readyz, allow_head=False)
    app.router.add_get("/metrics", handlers.metrics, allow_head=False)
    return app


def connect_redis(url: str) -> Redis:
    """A client that gives up fast: while Redis is down, callbacks get 503, not a hang."""
    return Redis.from_url(
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
    store = JobStore(redis, callback_template())
    await store.start()
    app[REDIS] = redis
    app[STORE] = store
    yield
    await store.close()
    await redis.aclose()
