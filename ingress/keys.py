"""The keys of what the ingress application holds (`app[KEY]`), apart from the app factory
so that the handlers can use them without importing it."""

from __future__ import annotations

from aiohttp import web
from redis.asyncio import Redis

from ingress.connections import ConnectionCap
from ingress.metrics import IngressMetrics
from ingress.store import JobStore
from shared.providers.base import Provider
from shared.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
MERCHANTS = web.AppKey("merchants", dict[str, dict[str, Provider]])
REDIS = web.AppKey("redis", Redis)
STORE = web.AppKey("store", JobStore)
METRICS = web.AppKey("metrics", IngressMetrics)
CONNECTIONS = web.AppKey("connections", ConnectionCap)
