"""The console app's keys: what create_app puts on the app and the middleware on a request."""

from __future__ import annotations

from aiohttp import web
from redis import Redis

from console.auth import Actor
from shared.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
ACTOR = web.RequestKey("actor", Actor)  # who asks (console.auth), set by the guard
__all__ = ["ACTOR", "REDIS", "SETTINGS", "Actor"]
