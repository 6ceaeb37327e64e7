"""What jobs run with: the settings, one Redis client, one HTTP client, the providers.

A worker process builds one `Runtime` at start-up (`payhooks worker`, the composition root)
and jobs reach it through `current()`. A job picked up by a plain `rq worker` (a requeue
from rq-dashboard, say) builds it on first use from `PAYHOOKS_CONFIG`. Keeping the HTTP
client for the life of the process keeps provider connections alive across jobs.

A merchant's hooks are those of the config file and those of the hook store
(workers/hook_store.py). The runtime keeps a copy of the store's, and looks whether it
changed (one GET of its version) at most every `HOOKS_CHECK_EVERY` seconds: a hook
created, changed, disabled or deleted reaches every worker within that, without a restart.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime

import httpx
from redis import Redis

from shared import scripts, slots
from shared.errors import ProviderBusy
from shared.http import PROVIDER_DEADLINE, make_client
from shared.keys import RUNTIME_HOOKS_VERSION, provider_in_flight_key, rate_limit_key
from shared.providers import build_providers
from shared.providers.base import FollowUp, Provider
from shared.redis_client import connect
from shared.settings import HookSettings, Settings, load_settings
from workers import hook_store

BUSY_WAIT = 2.0  # seconds (to twice that) before a callback tries again for a place in flight
HOOKS_CHECK_EVERY = 2.0  # seconds between two looks at the hook store's version, at most

# KEYS: the budget's key. Counts one request in the current minute by Redis's clock; returns
# the count and the seconds left in the minute.
_SPEND = """
local now = tonumber(redis.call('TIME')[1])
local window = KEYS[1] .. ':' .. math.floor(now / 60)
local used = redis.call('INCR', window)
if used == 1 then redis.call('EXPIRE', window, 120) end  -- set with the key, in this script
return {used, 60 - now % 60}
"""


@dataclass
class _HookCopy:
    """This process's copy of the hook store, and the hooks built from it."""
    loaded: bool = False
    version: bytes | None = None
    checked_at: float = -math.inf  # time.monotonic() of the last look at the version
    runtime: dict[str, tuple[hook_store.RuntimeHook, ...]] = field(default_factory=dict)
    # (merchant, include_disabled) -> the hooks, and until when they hold (a secret retires)
    built: dict[tuple[str, bool], tuple[tuple[HookSettings, ...], float]] = field(
        default_factory=dict)


@dataclass
class Runtime:
    settings: Settings
    redis: Redis
    http: httpx.Client = field(default_factory=make_client)
    # callback jobs attempt their new events' deliveries themselves (workers/first_attempt.py)
    first_attempts: bool = False
    providers: dict[str, dict[str, Provider]] = field(init=False)
    _hooks: _HookCopy = field(init=False, default_factory=_HookCopy, repr=False)

    def __post_init__(self) -> None:
        self.providers = {merchant_id: build_providers(merchant)
                          for merchant_id, merchant in self.settings.merchants.items()}

    @classmethod
    def from_settings(cls, settings: Settings, http: httpx.Client | None = None) -> Runtime:
        redis = connect(settings.redis_url, socket_timeout=10, socket_connect_timeout=5,
                               health_check_interval=30)
        return cls(settings, redis, http or make_client())

    def hooks(self, merchant: str, include_disabled: bool = False, *,
              fresh: bool = False) -> tuple[HookSettings, ...]:
        """The merchant's hooks: the config file's, then the store's (enabled ones, or all),
        with the secrets active now. From this process's copy of the store, which is read
        again when its version changed, looked at most every HOOKS_CHECK_EVERY seconds
        (`fresh`: now)."""
        copy = self._hooks
        moment = time.monotonic()
        if fresh or moment - copy.checked_at >= HOOKS_CHECK_EVERY:
            version = self.redis.get(RUNTIME_HOOKS_VERSION)
            copy.checked_at = moment
            if not copy.loaded or version != copy.version:
                copy.version, found = hook_store.snapshot(self.redis)
                copy.loaded = True
                copy.runtime = {}
                for hook in sorted(found, key=lambda hook: hook.id):
                    copy.runtime[hook.merchant] = (*copy.runtime.get(hook.merchant, ()), hook)
                copy.built.clear()
        now = time.time()
        built = copy.built.get((merchant, include_disabled))
        if built is None or now >= built[1]:
            section = self.settings.merchants.get(merchant)
            runtime = copy.runtime.get(merchant, ())
            built = (hook_store.combined(section.hooks if section else (), runtime, now,
                                         include_disabled),
                     hook_store.next_retirement(runtime, now))
            copy.built[(merchant, include_disabled)] = built
        return built[0]

    def follow_up_context(self, key: str | None = None, per_minute: int = 0,
                          received_at: datetime | None = None,
                          in_flight: int = 0) -> FollowUp:
        """The context of a follow-up; with `key`, its requests share that budget a minute;
        with `in_flight`, at most that many are in flight to one base URL at once."""
        context = FollowUp(http=self.http, limit=self.limit, received_at=received_at)
        if key is not None:
            context = replace(context, spend=functools.partial(self.limit, key, per_minute))
        if in_flight:
            context = replace(context, occupy=functools.partial(self.occupy, in_flight))
        return context

    def limit(self, key: str, per_minute: int) -> None:
        """A fixed one-minute window shared by every worker, timed by Redis's clock (the
        workers' hosts may disagree): ProviderBusy when spent."""
        used, left = scripts.run(self.redis, _SPEND, keys=[rate_limit_key(key)])
        if int(used) > per_minute:
            raise ProviderBusy(f"{key}: {per_minute} requests a minute already used",
                               retry_after=float(left))

    @contextlib.contextmanager
    def occupy(self, cap: int, url: str) -> Iterator[None]:
        """One of `cap` places among the follow-ups in flight to the URL's scheme, host and
        port, for the request's duration (shared.slots); ProviderBusy when all are taken."""
        parsed = httpx.URL(url)
        key = provider_in_flight_key(f"{parsed.scheme}://{parsed.netloc.decode()}")
        member = uuid.uuid4().hex
        if not slots.take(self.redis, key, member, PROVIDER_DEADLINE + 5, cap):
            raise ProviderBusy(f"{parsed.host}: {cap} follow-up queries already in flight",
                               retry_after=BUSY_WAIT * random.uniform(1, 2))  # noqa: S311
        try:
            yield
        finally:
            slots.give_back(self.redis, key, member)

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
