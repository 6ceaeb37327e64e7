"""What jobs run with: the settings, one Redis client, one HTTP client, the providers.

A worker process builds one `Runtime` at start-up (`payhooks worker`, the composition root)
and jobs reach it through `current()`. A job picked up by a plain `rq worker` (a requeue
from rq-dashboard, say) builds it on first use from `PAYHOOKS_CONFIG`. Keeping the HTTP
client for the life of the process keeps provider connections alive across jobs.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from datetime import datetime

import httpx
from redis import Redis

from shared.errors import ProviderUnavailable
from shared.http import make_client
from shared.providers import build_providers
from shared.providers.base import FollowUp, Provider
from shared.settings import Settings, load_settings


@dataclass
class Runtime:
    settings: Settings
    redis: Redis
    http: httpx.Client = field(default_factory=make_client)
    providers: dict[str, dict[str, Provider]] = field(init=False)

    def __post_init__(self) -> None:
        self.providers = {merchant_id: build_providers(merchant)
                          for merchant_id, merchant in self.settings.merchants.items()}

    @classmethod
    def from_settings(cls, settings: Settings, http: httpx.Client | None = None) -> Runtime:
        redis = Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5,
                               health_check_interval=30)
        return cls(settings, redis, http or make_client())

    def follow_up_context(self, key: str | None = None, per_minute: int = 0,
                          received_at: datetime | None = None) -> FollowUp:
        """The context of a follow-up; with `key`, its requests share that budget."""
        if key is None:
            return FollowUp(http=self.http, limit=self.limit, received_at=received_at)
        return FollowUp(http=self.http, limit=self.limit, received_at=received_at,
                        spend=functools.partial(self.limit, key, per_minute))

    def limit(self, key: str, per_minute: int) -> None:
        """A fixed one-minute window shared by every worker: ProviderUnavailable when spent."""
        now = time.time()
        window = f"payhooks:ratelimit:{key}:{int(now // 60)}"
        pipe = self.redis.pipeline(transaction=True)
        pipe.incr(window)
        pipe.expire(window, 120)
        used, _ = pipe.execute()
        if int(used) > per_minute:
            raise ProviderUnavailable(f"{key}: {per_minute} requests a minute already used",
                                      retry_after=60 - now % 60)

    def close(self) -> None:
        self.http.close()
        self.redis.close()


_current: Runtime | None = None


def install(runtime: Runtime | None) -> None:
    """Make `runtime` the one jobs in this process use (None: build it again on demand)."""
    global _current
    _current = runtime


def current() -> Runtime:
    global _current
    if _current is None:
        _current = Runtime.from_settings(load_settings())
    return _current
